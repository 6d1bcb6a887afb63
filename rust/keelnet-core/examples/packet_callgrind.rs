//! Runs one packet operation of the benchmarks `count` times, for instruction counts
//! that do not depend on the machine's load:
//!
//! ```text
//! cargo build --release --example packet_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/packet_callgrind encap_ipv6_64B 20000
//! ```
//!
//! Run it with `count` and `2 * count`: the difference of the two totals over `count`
//! is the cost of one operation, without the setup.

use std::hint::black_box;

#[path = "../benches/support/packet_cases.rs"]
mod packet_cases;

use keelnet_core::packet::offload::build::tcp_frame;
use keelnet_core::packet::offload::{Coalescer, Segments, segment};
use keelnet_core::packet::vxlan::{self, Encapsulator, VxlanConfig};
use packet_cases::{endpoints, inner_frame, super_frame_payload, tcp_spec};

const OPERATIONS: &str = "encap_ipv4 | encap_ipv6_64B | encap_ipv6_1400B | segment_tcp4 | \
     segment_tcp6 | coalesce_tcp4_verify | coalesce_tcp6_verify | coalesce_tcp4_trust";

fn encapsulate(v6: bool, payload: usize, count: usize) {
    let mut encap = Encapsulator::new(VxlanConfig::default(), &endpoints(v6)).unwrap();
    let mut buf = vec![0u8; vxlan::MAX_OVERHEAD];
    buf.extend_from_slice(&inner_frame(payload));
    for _ in 0..count {
        black_box(
            encap
                .encapsulate(black_box(&mut buf), vxlan::MAX_OVERHEAD, 42, None)
                .unwrap(),
        );
    }
}

fn segment_super_frame(v6: bool, count: usize) {
    let frame = tcp_frame(&tcp_spec(v6), &super_frame_payload()).unwrap();
    let mut out = Segments::new();
    for _ in 0..count {
        out.clear();
        black_box(segment(black_box(&frame), 1448, &mut out).unwrap());
    }
}

fn coalesce_segments(v6: bool, verify: bool, count: usize) {
    let frame = tcp_frame(&tcp_spec(v6), &super_frame_payload()).unwrap();
    let mut pieces = Segments::new();
    segment(&frame, 1448, &mut pieces).unwrap();
    let mut coalescer = Coalescer::new(verify);
    let mut merged = Vec::with_capacity(frame.len());
    for _ in 0..count {
        for piece in pieces.iter() {
            coalescer.push(black_box(piece)).unwrap();
        }
        black_box(coalescer.finish(&mut merged));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(operation), Some(Ok(count))) = (args.get(1), args.get(2).map(|n| n.parse())) else {
        eprintln!("usage: packet_callgrind <{OPERATIONS}> <count>");
        std::process::exit(2);
    };
    match operation.as_str() {
        "encap_ipv4" => encapsulate(false, 0, count),
        "encap_ipv6_64B" => encapsulate(true, 0, count),
        "encap_ipv6_1400B" => encapsulate(true, 1400, count),
        "segment_tcp4" => segment_super_frame(false, count),
        "segment_tcp6" => segment_super_frame(true, count),
        "coalesce_tcp4_verify" => coalesce_segments(false, true, count),
        "coalesce_tcp6_verify" => coalesce_segments(true, true, count),
        "coalesce_tcp4_trust" => coalesce_segments(false, false, count),
        other => {
            eprintln!("unknown operation {other}: one of {OPERATIONS}");
            std::process::exit(2);
        }
    }
}
