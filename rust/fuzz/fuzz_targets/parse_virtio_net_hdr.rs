#![no_main]
//! The virtio-net header parses and writes back byte for byte; with whatever frame
//! follows it, the tunnel header for a super-frame is written or refused, never a panic.
use keelnet_core::packet::offload::{TUNNEL_HDR_LEN, VirtioNetHdr, write_tunnel_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hdr) = VirtioNetHdr::parse(data) {
        let mut buf = [0u8; 10];
        hdr.write(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..10]);
        let frame = &data[10..];
        let mut tunnel = [0u8; TUNNEL_HDR_LEN];
        let _ = write_tunnel_header(&mut tunnel, &hdr, frame, 50, 34, false, false);
        let _ = write_tunnel_header(&mut tunnel, &hdr, frame, 70, 54, true, true);
    }
});
