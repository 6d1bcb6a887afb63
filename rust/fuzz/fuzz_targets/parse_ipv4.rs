#![no_main]
//! IPv4 parsing never panics; lengths of a parsed packet are consistent.
use keelnet_core::packet::ipv4::Ipv4Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ip) = Ipv4Packet::parse(data) {
        assert!(ip.total_len() <= data.len());
        assert_eq!(ip.header().len() + ip.payload().len(), ip.total_len());
        let _ = (ip.checksum_ok(), ip.is_fragment(), ip.pseudo_header(), ip.source(), ip.destination());
    }
});
