#![no_main]
//! UDP parsing never panics; the datagram never claims more than it was given.
use keelnet_core::packet::udp::UdpDatagram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(udp) = UdpDatagram::parse(data) {
        assert!(udp.length() <= data.len());
        let _ = (udp.source_port(), udp.destination_port(), udp.checksum_ok(0), udp.payload());
    }
});
