//! The Internet checksum (RFC 1071): ones'-complement sum of 16-bit big-endian words,
//! with pseudo-headers for UDP/TCP and the incremental update of RFC 1624.
//!
//! Sums are carried in a `u64` over 32-bit loads, so the carry is folded once at the end
//! instead of per word; the inner loop handles 32 bytes per iteration.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` to a running (unfolded) sum. Sums of separately summed pieces may be
/// added together as long as every piece but the last has an even length.
#[inline]
pub fn add(sum: u64, data: &[u8]) -> u64 {
    // Words are summed as native-endian integers and the result byte-swapped at the end
    // if needed: ones'-complement addition is byte-order independent (RFC 1071 §2(B)).
    let mut native = 0u64;
    let mut rest = data;
    if data.len() >= 256 {
        // Four independent lanes of 32-bit halves: no carry chain, and the compiler
        // vectorises it (~30 GB/s here).
        let mut chunks = data.chunks_exact(32);
        let mut acc = [0u64; 4];
        for chunk in &mut chunks {
            for (lane, pair) in chunk.chunks_exact(8).enumerate() {
                let word = u64::from_ne_bytes(pair.try_into().unwrap_or([0; 8]));
                // Halves below 2^32 added into 64 bits cannot overflow for any slice.
                acc[lane] += (word & 0xffff_ffff) + (word >> 32);
            }
        }
        native = acc
            .iter()
            .fold(0, |total, lane| fold64_into32(total + fold64_into32(*lane)));
        rest = chunks.remainder();
    }
    // Headers and tails: plain 64-bit words, each split into halves.
    let mut words = rest.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        native += (word & 0xffff_ffff) + (word >> 32);
    }
    // The last 0..7 bytes without a variable-length copy (which would call memcpy); an
    // odd final byte is padded with a zero after it, as RFC 1071 says.
    let mut tail = words.remainder();
    if let Some((four, rest)) = tail.split_first_chunk::<4>() {
        native += u64::from(u32::from_ne_bytes(*four));
        tail = rest;
    }
    if let Some((two, rest)) = tail.split_first_chunk::<2>() {
        native += u64::from(u16::from_ne_bytes(*two));
        tail = rest;
    }
    if let Some(&last) = tail.first() {
        native += u64::from(u16::from_ne_bytes([last, 0]));
    }
    let native16 = fold(native);
    let be16 = if cfg!(target_endian = "little") {
        native16.swap_bytes()
    } else {
        native16
    };
    sum + u64::from(be16)
}

/// Copies `src` into `dst` (same length) and returns the unfolded sum of the bytes, in
/// one pass: segmentation copies every payload byte and must checksum it too.
#[inline]
pub fn copy_and_add(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    let mut acc = [0u64; 4];
    let mut dst_chunks = dst.chunks_exact_mut(32);
    let mut src_chunks = src.chunks_exact(32);
    for (out, chunk) in (&mut dst_chunks).zip(&mut src_chunks) {
        out.copy_from_slice(chunk);
        for (lane, pair) in chunk.chunks_exact(8).enumerate() {
            let word = u64::from_ne_bytes(pair.try_into().unwrap_or([0; 8]));
            acc[lane] += (word & 0xffff_ffff) + (word >> 32);
        }
    }
    let rest = src_chunks.remainder();
    dst_chunks.into_remainder().copy_from_slice(rest);
    let native = acc
        .iter()
        .fold(0, |total, lane| fold64_into32(total + fold64_into32(*lane)));
    // `add` byte-swaps its native sum; fold ours into the same big-endian domain.
    let head = u64::from(if cfg!(target_endian = "little") {
        fold(native).swap_bytes()
    } else {
        fold(native)
    });
    add(head, rest)
}

#[inline(always)]
fn fold64_into32(value: u64) -> u64 {
    (value & 0xffff_ffff) + (value >> 32)
}

/// Folds a running sum to 16 bits (ones'-complement), not yet inverted.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for a running sum: the folded sum, inverted.
#[inline]
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data` (the value to store in a zeroed checksum field).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(add(0, data))
}

/// True when `data`, checksum field included, sums to 0xffff.
#[inline]
pub fn verifies(sum: u64) -> bool {
    fold(sum) == 0xffff
}

/// Sum of the IPv4 pseudo-header (RFC 768/793).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    let s = u32::from(src);
    let d = u32::from(dst);
    u64::from(s >> 16)
        + u64::from(s & 0xffff)
        + u64::from(d >> 16)
        + u64::from(d & 0xffff)
        + u64::from(protocol)
        + u64::from(length)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1).
#[inline]
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, protocol: u8, length: u32) -> u64 {
    let words = |addr: &Ipv6Addr| addr.segments().iter().map(|w| u64::from(*w)).sum::<u64>();
    words(src)
        + words(dst)
        + u64::from(length >> 16)
        + u64::from(length & 0xffff)
        + u64::from(protocol)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word of the covered data changed
/// from `old` to `new`, without re-summing the data.
#[inline]
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!checksum) + u64::from(!old) + u64::from(new);
    !fold(sum)
}

/// [`update16`] for a 32-bit field (two words).
#[inline]
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let sum = u64::from(!checksum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from(new >> 16)
        + u64::from(new & 0xffff);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook definition: 16-bit big-endian words, carries folded each step.
    fn reference(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // A real header (Wikipedia's IPv4 checksum example), checksum field b861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verifies(add(0, &header)));
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn copy_and_add_copies_and_sums(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut copy = vec![0u8; data.len()];
            let sum = copy_and_add(&mut copy, &data);
            prop_assert_eq!(&copy, &data);
            prop_assert_eq!(finish(sum), checksum(&data));
        }

        #[test]
        fn split_sums_combine(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..150) {
            let cut = (cut * 2).min(data.len() & !1);
            let (head, tail) = data.split_at(cut);
            prop_assert_eq!(finish(add(add(0, head), tail)), checksum(&data));
        }

        #[test]
        fn stored_checksum_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..300)) {
            let len = data.len() & !1;
            data.truncate(len);
            data[0] = 0;
            data[1] = 0;
            let value = checksum(&data);
            data[0..2].copy_from_slice(&value.to_be_bytes());
            prop_assert!(verifies(add(0, &data)));
        }

        #[test]
        fn incremental_update_matches_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 8..100),
            word_index in 0usize..3,
            new in any::<u16>(),
            new32 in any::<u32>(),
        ) {
            let offset = 2 + word_index * 2;
            data[0] = 0;
            data[1] = 0;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[offset], data[offset + 1]]);
            data[offset..offset + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update16(before, old, new);
            // 0x0000 and 0xffff are the same ones'-complement value.
            prop_assert_eq!(fold(u64::from(!updated)), fold(u64::from(!checksum(&data))));
            let before = checksum(&data);
            let old32 = u32::from_be_bytes(data[2..6].try_into().unwrap());
            data[2..6].copy_from_slice(&new32.to_be_bytes());
            let updated = update32(before, old32, new32);
            prop_assert_eq!(fold(u64::from(!updated)), fold(u64::from(!checksum(&data))));
        }
    }
}
