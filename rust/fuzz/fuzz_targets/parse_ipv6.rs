#![no_main]
//! IPv6 parsing (extension header walk included) never panics.
use keelnet_core::packet::ipv6::Ipv6Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ip) = Ipv6Packet::parse(data) {
        assert_eq!(ip.headers().len() + ip.upper_payload().len(), 40 + ip.payload_len());
        let _ = (ip.fragment(), ip.pseudo_header(), ip.flow_label(), ip.traffic_class());
    }
});
