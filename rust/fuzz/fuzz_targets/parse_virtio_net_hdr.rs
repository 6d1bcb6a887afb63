#![no_main]
//! The virtio-net header parses and writes back byte for byte.
use keelnet_core::packet::offload::VirtioNetHdr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hdr) = VirtioNetHdr::parse(data) {
        let mut buf = [0u8; 10];
        hdr.write(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..10]);
    }
});
