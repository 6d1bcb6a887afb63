//! Packet figures of issue 3: VXLAN encap/decap per packet (IPv4 and IPv6 outer),
//! segmenting a 64 KB TCP super-frame into 1448-byte segments and coalescing them back;
//! of issue 10: the port security check per frame.

use std::hint::black_box;

#[path = "support/thread_cpu_time.rs"]
#[macro_use]
mod thread_cpu_time;

#[path = "support/packet_cases.rs"]
mod packet_cases;

use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput};
use keelnet_core::packet::checksum;
use keelnet_core::packet::ethernet::EthernetFrame;
use keelnet_core::packet::offload::build::tcp_frame;
use keelnet_core::packet::offload::{Coalescer, Segments, segment};
use keelnet_core::packet::vxlan::{self, DecapConfig, Encapsulator, VxlanConfig};
use keelnet_core::switch::PortSecurity;
use packet_cases::{endpoints, inner_frame, super_frame_payload, tcp_spec};

fn encap_decap<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("vxlan");
    group.throughput(Throughput::Elements(1));
    // (name, IPv6 outer, inner TCP payload bytes, IPv4 UDP checksum)
    let cases = [
        ("ipv4_outer", false, 0, false),
        ("ipv4_outer_udp_csum_1400B", false, 1400, true),
        ("ipv6_outer_64B_inner", true, 0, false),
        ("ipv6_outer_1400B_inner", true, 1400, false),
    ];
    for (name, v6, payload, udp_checksum_v4) in cases {
        let config = VxlanConfig {
            udp_checksum_v4,
            ..VxlanConfig::default()
        };
        let mut encap = Encapsulator::new(config, &endpoints(v6)).unwrap();
        let inner = inner_frame(payload);
        let mut buf = vec![0u8; vxlan::MAX_OVERHEAD];
        buf.extend_from_slice(&inner);
        group.bench_function(format!("encap_{name}"), |b| {
            b.iter(|| {
                black_box(
                    encap
                        .encapsulate(black_box(&mut buf), vxlan::MAX_OVERHEAD, 42, None)
                        .unwrap(),
                )
            })
        });
        let outer = encap.encapsulate_to_vec(&inner, 42, None).unwrap();
        let trusting = DecapConfig {
            verify_udp_checksum: false,
            ..DecapConfig::default()
        };
        group.bench_function(format!("decap_{name}_headers_only"), |b| {
            b.iter(|| {
                black_box(
                    vxlan::decapsulate(black_box(&outer), &trusting)
                        .unwrap()
                        .vni,
                )
            })
        });
        if v6 || udp_checksum_v4 {
            let verifying = DecapConfig::default();
            group.bench_function(format!("decap_{name}_verify_udp_csum"), |b| {
                b.iter(|| {
                    black_box(
                        vxlan::decapsulate(black_box(&outer), &verifying)
                            .unwrap()
                            .vni,
                    )
                })
            });
        }
    }
    group.finish();
}

fn offload<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("offload");
    let payload = super_frame_payload();
    for v6 in [false, true] {
        let family = if v6 { "tcp6" } else { "tcp4" };
        let frame = tcp_frame(&tcp_spec(v6), &payload).unwrap();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        let mut out = Segments::new();
        group.bench_function(format!("segment_64KB_{family}_mss1448"), |b| {
            b.iter(|| {
                out.clear();
                black_box(segment(black_box(&frame), 1448, &mut out).unwrap())
            })
        });
        out.clear();
        segment(&frame, 1448, &mut out).unwrap();
        let pieces: Vec<&[u8]> = out.iter().collect();
        for verify in [true, false] {
            let mut coalescer = Coalescer::new(verify);
            let mut merged = Vec::with_capacity(frame.len());
            let label = if verify { "verify_csum" } else { "trust_csum" };
            group.bench_function(format!("coalesce_45_{family}_{label}"), |b| {
                b.iter(|| {
                    for piece in &pieces {
                        coalescer.push(piece).unwrap();
                    }
                    black_box(coalescer.finish(&mut merged))
                })
            });
        }
    }
    group.finish();
}

fn checksums<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("checksum");
    for len in [20usize, 1500, 65536] {
        let data: Vec<u8> = (0..len).map(|n| (n * 31) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{len}B"), |b| {
            b.iter(|| black_box(checksum::checksum(black_box(&data))))
        });
    }
    group.finish();
}

/// Port security (issue 10): the check every frame of a guarded port passes, for the
/// common case (TCP from the port's own MAC and address).
fn port_security<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("port_security");
    group.throughput(Throughput::Elements(1));
    for (name, v6) in [("ipv4_tcp_1400B", false), ("ipv6_tcp_1400B", true)] {
        let spec = tcp_spec(v6);
        let frame = tcp_frame(&spec, &[0x5a; 1400]).unwrap();
        let mac: [u8; 6] = frame[6..12].try_into().unwrap();
        let guard = PortSecurity::new(mac, &[spec.source, "fe80::1".parse().unwrap()]);
        group.bench_function(name, |b| {
            b.iter(|| {
                let eth = EthernetFrame::parse(black_box(&frame)).unwrap();
                black_box(guard.check(&eth))
            })
        });
    }
    group.finish();
}

wall_or_cpu_time_main!(encap_decap, offload, checksums, port_security);
