#![no_main]
//! Encapsulating arbitrary inner bytes and decapsulating gives them back unchanged.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keelnet_core::packet::vxlan::{DecapConfig, Encapsulator, Endpoints, VxlanConfig, decapsulate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, inner)) = data.split_first() else { return };
    let v6 = control & 1 != 0;
    let (source, destination) = if v6 {
        (IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)))
    } else {
        (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
    };
    let endpoints = Endpoints { source_mac: [2, 0, 0, 0, 0, 1], destination_mac: [2, 0, 0, 0, 0, 2], source, destination, vlan: None };
    let config = VxlanConfig { udp_checksum_v4: control & 2 != 0, ..VxlanConfig::default() };
    let mut encap = Encapsulator::new(config, &endpoints).unwrap();
    let vni = u32::from(control) * 65_793;
    match encap.encapsulate_to_vec(inner, vni, None) {
        Ok(outer) => {
            let decap = decapsulate(&outer, &DecapConfig::default()).unwrap();
            assert_eq!(decap.inner, inner);
            assert_eq!(decap.vni, vni);
        }
        // Only too-short or too-long inner frames are refused.
        Err(_) => assert!(inner.len() < 14 || inner.len() > 65_000),
    }
});
