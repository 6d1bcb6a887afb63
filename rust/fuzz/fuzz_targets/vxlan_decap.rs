#![no_main]
//! Decapsulation of arbitrary frames never panics, under every check setting; an
//! accepted frame's inner frame lies inside it where the offset says.
use keelnet_core::packet::vxlan::{DecapConfig, decapsulate, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for config in [
        DecapConfig::default(),
        DecapConfig { destination_port: None, verify_udp_checksum: false, allow_zero_checksum_v6: true },
    ] {
        if let Ok(decap) = decapsulate(data, &config) {
            let end = decap.inner_offset + decap.inner.len();
            assert_eq!(&data[decap.inner_offset..end], decap.inner);
            assert!(decap.vni <= 0x00ff_ffff);
        }
    }
    let _ = parse_header(data);
});
