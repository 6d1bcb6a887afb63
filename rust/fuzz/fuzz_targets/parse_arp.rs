#![no_main]
//! ARP parsing never panics; a parsed packet rebuilds to the same 28 bytes.
use keelnet_core::packet::arp::{Arp, ArpPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = ArpPacket::parse(data) {
        let rebuilt = Arp {
            operation: packet.operation(),
            sender_mac: packet.sender_mac(),
            sender_ip: packet.sender_ip(),
            target_mac: packet.target_mac(),
            target_ip: packet.target_ip(),
        };
        let mut buf = [0u8; 28];
        rebuilt.write(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..28]);
    }
});
