//! Properties of the packet module over generated inputs: encapsulation and
//! decapsulation invert each other, segmentation and coalescing preserve the byte
//! stream, produced checksums verify, and no parser panics on arbitrary bytes.
//! Also writes the fuzz seed corpus (`KEELNET_WRITE_FUZZ_SEEDS=1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keelnet_core::packet::arp::{self, Arp, ArpPacket};
use keelnet_core::packet::checksum;
use keelnet_core::packet::ethernet::{self, EthernetFrame, VlanTag, ethertype};
use keelnet_core::packet::ipv4::Ipv4Packet;
use keelnet_core::packet::ipv6::Ipv6Packet;
use keelnet_core::packet::offload::build::{TcpFrameSpec, tcp_frame};
use keelnet_core::packet::offload::{
    self, Coalescer, Segments, VirtioNetHdr, coalesce, complete_checksum, segment,
};
use keelnet_core::packet::tcp::{self, TcpSegment};
use keelnet_core::packet::udp::UdpDatagram;
use keelnet_core::packet::vxlan::{
    self, DecapConfig, Encapsulator, Endpoints, VxlanConfig, decapsulate,
};
use proptest::prelude::*;

fn endpoints(v6: bool, vlan: Option<VlanTag>) -> Endpoints {
    let (source, destination) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
        )
    };
    Endpoints {
        source_mac: [2, 0xaa, 0, 0, 0, 1],
        destination_mac: [2, 0xbb, 0, 0, 0, 2],
        source,
        destination,
        vlan,
    }
}

fn tcp_spec(v6: bool, sequence: u32, flags: u8) -> TcpFrameSpec {
    let (source, destination): (IpAddr, IpAddr) = if v6 {
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
    } else {
        ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
    };
    TcpFrameSpec {
        source,
        destination,
        source_port: 40000,
        destination_port: 5201,
        sequence,
        acknowledgment: 7,
        flags,
        window: 1024,
        identification: 100,
    }
}

/// Parses `bytes` with every parser and walks every accessor.
fn parse_everything(bytes: &[u8]) {
    if let Ok(frame) = EthernetFrame::parse(bytes) {
        let _ = (frame.vlan(), frame.ethertype(), frame.payload());
    }
    if let Ok(packet) = ArpPacket::parse(bytes) {
        let _ = (packet.sender_ip(), packet.target_mac());
    }
    if let Ok(ip) = Ipv4Packet::parse(bytes) {
        let _ = (ip.checksum_ok(), ip.pseudo_header(), ip.payload());
    }
    if let Ok(ip) = Ipv6Packet::parse(bytes) {
        let _ = (ip.pseudo_header(), ip.upper_payload(), ip.fragment());
    }
    if let Ok(udp) = UdpDatagram::parse(bytes) {
        let _ = udp.checksum_ok(0);
    }
    if let Ok(segment) = TcpSegment::parse(bytes) {
        let _ = (segment.payload(), segment.checksum_ok(0));
    }
    let _ = VirtioNetHdr::parse(bytes);
    let _ = vxlan::parse_header(bytes);
    let _ = decapsulate(bytes, &DecapConfig::default());
    let _ = decapsulate(
        bytes,
        &DecapConfig {
            destination_port: None,
            verify_udp_checksum: false,
            allow_zero_checksum_v6: true,
        },
    );
    let mut out = Segments::new();
    let _ = segment(bytes, 100, &mut out);
    let _ = Coalescer::new(true).push(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encapsulate_then_decapsulate_is_identity(
        inner in proptest::collection::vec(any::<u8>(), 14..1600),
        vni in 0u32..=vxlan::MAX_VNI,
        v6 in any::<bool>(),
        tagged in any::<bool>(),
        udp_checksum_v4 in any::<bool>(),
        source_port in proptest::option::of(any::<u16>()),
    ) {
        let vlan = tagged.then_some(VlanTag { pcp: 3, dei: false, vid: 42 });
        let config = VxlanConfig { udp_checksum_v4, ..VxlanConfig::default() };
        let mut encap = Encapsulator::new(config, &endpoints(v6, vlan)).unwrap();
        let mut buf = vec![0u8; vxlan::MAX_OVERHEAD];
        buf.extend_from_slice(&inner);
        let start = encap.encapsulate(&mut buf, vxlan::MAX_OVERHEAD, vni, source_port).unwrap();
        // The inner frame was not moved or touched.
        prop_assert_eq!(&buf[vxlan::MAX_OVERHEAD..], &inner[..]);
        let decap = decapsulate(&buf[start..], &DecapConfig::default()).unwrap();
        prop_assert_eq!(decap.inner, &inner[..]);
        prop_assert_eq!(decap.vni, vni);
        prop_assert_eq!(decap.outer_vlan, vlan);
        prop_assert_eq!(decap.source, endpoints(v6, vlan).source);
        prop_assert_eq!(decap.destination, endpoints(v6, vlan).destination);
        match source_port {
            Some(port) => prop_assert_eq!(decap.source_port, port),
            None => prop_assert!((32768..=60999).contains(&decap.source_port)),
        }
    }

    #[test]
    fn segment_then_coalesce_preserves_the_stream(
        payload in proptest::collection::vec(any::<u8>(), 1..20_000),
        mss in 1usize..3000,
        v6 in any::<bool>(),
        sequence in any::<u32>(),
        fin in any::<bool>(),
    ) {
        let flags = tcp::flags::ACK | tcp::flags::PSH | if fin { tcp::flags::FIN } else { 0 };
        let frame = tcp_frame(&tcp_spec(v6, sequence, flags), &payload).unwrap();
        let mut pieces = Segments::new();
        let count = segment(&frame, mss, &mut pieces).unwrap();
        prop_assert_eq!(count, payload.len().div_ceil(mss));
        let mut stream = Vec::new();
        for piece in pieces.iter() {
            let eth = EthernetFrame::parse(piece).unwrap();
            let (pseudo, tcp_bytes) = if v6 {
                let ip = Ipv6Packet::parse(eth.payload()).unwrap();
                (ip.pseudo_header(), ip.upper_payload())
            } else {
                let ip = Ipv4Packet::parse(eth.payload()).unwrap();
                prop_assert!(ip.checksum_ok());
                (ip.pseudo_header(), ip.payload())
            };
            let segment = TcpSegment::parse(tcp_bytes).unwrap();
            prop_assert!(segment.checksum_ok(pseudo), "segment checksum verifies");
            prop_assert!(segment.payload().len() <= mss);
            stream.extend_from_slice(segment.payload());
        }
        prop_assert_eq!(&stream, &payload);
        let frames: Vec<&[u8]> = pieces.iter().collect();
        let mut merged = Vec::new();
        let hdr = coalesce(&frames, &mut merged, true).unwrap();
        complete_checksum(&mut merged, &hdr).unwrap();
        prop_assert_eq!(merged, frame);
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        parse_everything(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_mutated_real_frames(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = seed_frames()[which].clone();
        for (index, value) in flips {
            let at = index.index(frame.len());
            frame[at] = value;
        }
        let len = cut.index(frame.len() + 1);
        parse_everything(&frame[..len]);
    }

    #[test]
    fn udp_checksum_of_encapsulated_frames_verifies(inner in proptest::collection::vec(any::<u8>(), 14..600)) {
        let mut encap = Encapsulator::new(VxlanConfig::default(), &endpoints(true, None)).unwrap();
        let outer = encap.encapsulate_to_vec(&inner, 5, None).unwrap();
        let ip = Ipv6Packet::parse(&outer[14..]).unwrap();
        prop_assert!(checksum::verifies(checksum::add(ip.pseudo_header(), ip.upper_payload())));
    }
}

fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0u8; 14 + arp::PACKET_LEN];
    ethernet::write_header(
        &mut frame,
        &[0xff; 6],
        &[2, 0, 0, 0, 0, 1],
        None,
        ethertype::ARP,
    )
    .unwrap();
    Arp {
        operation: arp::OP_REQUEST,
        sender_mac: [2, 0, 0, 0, 0, 1],
        sender_ip: Ipv4Addr::new(10, 0, 0, 1),
        target_mac: [0; 6],
        target_ip: Ipv4Addr::new(10, 0, 0, 2),
    }
    .write(&mut frame[14..])
    .unwrap();
    frame
}

/// Outer VXLAN frames over IPv4 (with and without UDP checksum) and IPv6.
fn seed_frames() -> Vec<Vec<u8>> {
    let inner = tcp_frame(
        &tcp_spec(false, 1, tcp::flags::ACK | tcp::flags::PSH),
        b"hello, vxlan",
    )
    .unwrap();
    let mut frames = Vec::new();
    for (v6, udp_checksum_v4) in [(false, false), (false, true), (true, false)] {
        let config = VxlanConfig {
            udp_checksum_v4,
            ..VxlanConfig::default()
        };
        frames.push(
            Encapsulator::new(config, &endpoints(v6, None))
                .unwrap()
                .encapsulate_to_vec(&inner, 42, None)
                .unwrap(),
        );
    }
    frames.push(arp_frame());
    frames
}

/// Writes (with `KEELNET_WRITE_FUZZ_SEEDS=1`) or checks the committed seed corpus: every
/// seed must still be accepted by the code it seeds, so the fuzzer starts from valid
/// frames and mutates inward.
#[test]
fn fuzz_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = std::env::var_os("KEELNET_WRITE_FUZZ_SEEDS").is_some();
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let outer = seed_frames();
    let tcp4 = tcp_frame(&tcp_spec(false, 1000, tcp::flags::ACK), &[0x42; 3000]).unwrap();
    let tcp6 = tcp_frame(
        &tcp_spec(true, 1000, tcp::flags::ACK | tcp::flags::FIN),
        &[0x17; 3000],
    )
    .unwrap();
    for (name, frame) in [
        ("vxlan4", &outer[0]),
        ("vxlan4_csum", &outer[1]),
        ("vxlan6", &outer[2]),
    ] {
        seeds.push(("vxlan_decap", name.into(), frame.clone()));
        seeds.push(("parse_ethernet", name.into(), frame.clone()));
        let decap = decapsulate(frame, &DecapConfig::default()).unwrap();
        let mut control = vec![u8::from(name == "vxlan6") | 2];
        control.extend_from_slice(decap.inner);
        seeds.push(("vxlan_roundtrip", name.into(), control));
        let l3 = &frame[14..];
        if name == "vxlan6" {
            seeds.push(("parse_ipv6", name.into(), l3.to_vec()));
            seeds.push((
                "parse_udp",
                name.into(),
                Ipv6Packet::parse(l3).unwrap().upper_payload().to_vec(),
            ));
        } else {
            seeds.push(("parse_ipv4", name.into(), l3.to_vec()));
            seeds.push((
                "parse_udp",
                name.into(),
                Ipv4Packet::parse(l3).unwrap().payload().to_vec(),
            ));
        }
    }
    seeds.push(("parse_ethernet", "arp".into(), outer[3].clone()));
    seeds.push(("parse_arp", "request".into(), outer[3][14..].to_vec()));
    seeds.push(("parse_tcp", "tcp4".into(), tcp4[34..].to_vec()));
    seeds.push(("parse_tcp", "tcp6".into(), tcp6[54..].to_vec()));
    seeds.push(("parse_ipv4", "tcp4".into(), tcp4[14..].to_vec()));
    seeds.push(("parse_ipv6", "tcp6".into(), tcp6[14..].to_vec()));
    for (name, frame, v6) in [("tcp4", &tcp4, false), ("tcp6", &tcp6, true)] {
        let hdr = VirtioNetHdr {
            flags: offload::F_NEEDS_CSUM,
            gso_type: if v6 {
                offload::gso_type::TCPV6
            } else {
                offload::gso_type::TCPV4
            },
            hdr_len: (frame.len() - 3000) as u16,
            gso_size: 1448,
            csum_start: if v6 { 54 } else { 34 },
            csum_offset: 16,
        };
        let mut hdr_bytes = [0u8; 10];
        hdr.write(&mut hdr_bytes).unwrap();
        seeds.push(("parse_virtio_net_hdr", name.into(), hdr_bytes.to_vec()));
        let mut control = 1448u16.to_le_bytes().to_vec();
        control.extend_from_slice(&hdr_bytes);
        control.extend_from_slice(frame);
        seeds.push(("gso_segment", name.into(), control));
        let mut pieces = Segments::new();
        segment(frame, 1000, &mut pieces).unwrap();
        // First byte even: the target verifies checksums.
        let mut stream = Vec::new();
        for piece in pieces.iter() {
            stream.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            stream.extend_from_slice(piece);
        }
        seeds.push(("gro_coalesce", name.into(), stream));
    }
    for (target, name, bytes) in &seeds {
        let path = dir.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else if path.exists() {
            assert_eq!(
                &std::fs::read(&path).unwrap(),
                bytes,
                "{} is stale: rerun with KEELNET_WRITE_FUZZ_SEEDS=1",
                path.display()
            );
        }
    }
    assert!(seeds.len() >= 20);
}
