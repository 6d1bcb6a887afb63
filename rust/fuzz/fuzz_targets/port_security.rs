#![no_main]
//! The port security check never panics on any frame, and never lets a frame with
//! another source MAC through.
use keelnet_core::packet::ethernet::EthernetFrame;
use keelnet_core::switch::{DropReason, PortSecurity};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x0a];

fuzz_target!(|data: &[u8]| {
    let guard = PortSecurity::new(
        MAC,
        &[
            "10.0.0.2".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            "fe80::42:ff:fe00:a".parse().unwrap(),
        ],
    );
    if let Ok(eth) = EthernetFrame::parse(data) {
        let verdict = guard.check(&eth);
        if eth.source() != MAC {
            assert_eq!(verdict, Err(DropReason::SpoofedMac));
        }
    }
});
