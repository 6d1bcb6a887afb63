#![no_main]
//! Ethernet parsing never panics; accessors stay in bounds.
use keelnet_core::packet::ethernet::EthernetFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = EthernetFrame::parse(data) {
        let _ = (frame.destination(), frame.source(), frame.vlan(), frame.ethertype());
        assert_eq!(frame.header_len() + frame.payload().len(), data.len());
    }
});
