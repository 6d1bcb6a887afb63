//! The frames of the packet benchmarks, shared with `examples/packet_callgrind.rs`.

use std::net::IpAddr;

use keelnet_core::packet::offload::build::{TcpFrameSpec, tcp_frame};
use keelnet_core::packet::vxlan::Endpoints;

pub fn endpoints(v6: bool) -> Endpoints {
    let (source, destination): (IpAddr, IpAddr) = if v6 {
        (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
    } else {
        (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
    };
    Endpoints {
        source_mac: [2, 0xaa, 0, 0, 0, 1],
        destination_mac: [2, 0xbb, 0, 0, 0, 2],
        source,
        destination,
        vlan: None,
    }
}

pub fn tcp_spec(v6: bool) -> TcpFrameSpec {
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
        sequence: 1,
        acknowledgment: 1,
        flags: 0x18,
        window: 512,
        identification: 1,
    }
}

/// An inner frame: a TCP segment of `payload` bytes (so the flow hash sees real headers).
pub fn inner_frame(payload: usize) -> Vec<u8> {
    tcp_frame(&tcp_spec(false), &vec![0x5a; payload]).unwrap()
}

/// 45 x 1448 = 65160 payload bytes: the largest TSO super-frame Linux builds at MSS 1448.
pub fn super_frame_payload() -> Vec<u8> {
    (0..45 * 1448u32).map(|n| n as u8).collect()
}
