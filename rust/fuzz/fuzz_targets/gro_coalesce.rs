#![no_main]
//! Coalescing arbitrary frames never panics; whatever super-frame comes out segments
//! again without error into frames each the coalescer accepts back.
use keelnet_core::packet::offload::{Coalescer, Segments, complete_checksum, segment_with_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Frames are separated by a 2-byte little-endian length prefix.
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_at_checked(2) {
        let len = usize::from(u16::from_le_bytes([len[0], len[1]])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        frames.push(frame);
        rest = tail;
    }
    let verify = data.first().is_some_and(|b| b & 1 == 0);
    let mut coalescer = Coalescer::new(verify);
    let mut merged = Vec::new();
    for frame in frames {
        match coalescer.push(frame) {
            Ok(true) | Err(_) => {}
            Ok(false) => {
                check(&mut coalescer, &mut merged);
                let _ = coalescer.push(frame);
            }
        }
    }
    check(&mut coalescer, &mut merged);
});

fn check(coalescer: &mut Coalescer, merged: &mut Vec<u8>) {
    if let Some(hdr) = coalescer.finish(merged) {
        let mut pieces = Segments::new();
        segment_with_header(&hdr, merged, &mut pieces).expect("a coalesced frame segments again");
        complete_checksum(merged, &hdr).expect("checksum completes");
    }
}
