//! The Internet checksum (RFC 1071): ones'-complement sum of 16-bit big-endian words,
//! with pseudo-headers for UDP/TCP and the incremental update of RFC 1624.
//!
//! Words are summed as native-endian integers into 64-bit (or 128-bit) accumulators, so
//! carries are folded once at the end instead of per word. Short buffers (headers, small
//! frames) take a chain of 64-bit adds with carry, which needs no lane setup; long ones
//! a lane-parallel loop that the compiler vectorises, built for AVX2 too and chosen at
//! run time where the CPU has it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Shorter buffers take the add-with-carry chain: inlined, and without the lane loop's
/// setup and final reduction, which dominate for headers and small frames.
const WIDE_MIN_LEN: usize = 128;
/// 64-bit lanes of the copy-and-sum loop: two AVX2 vectors, so that each vector
/// accumulator's dependency chain has half the additions. (The sum-only loop keeps
/// four: with eight, LLVM's loop vectoriser interleaves iterations and gathers every
/// lane with scalar loads.)
const COPY_LANES: usize = 8;
const SUM_LANES: usize = 4;

/// Adds `data` to a running (unfolded) sum. Sums of separately summed pieces may be
/// added together as long as every piece but the last has an even length.
#[inline]
pub fn add(sum: u64, data: &[u8]) -> u64 {
    // The short path is inlined into callers (headers, small frames); the wide one not.
    let native = if data.len() >= WIDE_MIN_LEN {
        wide_native_sum(data)
    } else {
        short_native_sum(data)
    };
    sum + network_order(native)
}

/// Copies `src` into `dst` (same length) and returns the unfolded sum of the bytes, in
/// one pass: segmentation copies every payload byte and must checksum it too.
#[inline]
pub fn copy_and_add(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return network_order(unsafe { copy_and_sum_lanes_avx2(dst, src) });
    }
    network_order(copy_and_sum_lanes(dst, src))
}

/// Native-endian sum of `data` (any length), unfolded.
#[inline(never)]
fn wide_native_sum(data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { sum_lanes_avx2(data) };
    }
    sum_lanes(data)
}

/// [`sum_lanes`] compiled for AVX2 (32-byte vectors).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_lanes_avx2(data: &[u8]) -> u64 {
    sum_lanes(data)
}

/// [`copy_and_sum_lanes`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_and_sum_lanes_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    copy_and_sum_lanes(dst, src)
}

/// Independent lanes of 32-bit halves: no carry chain, so the compiler vectorises it.
/// Halves below 2^32 added into 64 bits cannot overflow for any slice.
#[inline(always)]
fn add_to_lanes<const N: usize>(lanes: &mut [u64; N], chunk: &[u8]) {
    for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        *lane += (word & 0xffff_ffff) + (word >> 32);
    }
}

/// The lanes' total, below 2^33.
#[inline(always)]
fn reduce_lanes<const N: usize>(lanes: &[u64; N]) -> u64 {
    lanes
        .iter()
        .fold(0, |total, lane| fold64_into32(total + fold64_into32(*lane)))
}

#[inline(always)]
fn sum_lanes(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(SUM_LANES * 8);
    let mut lanes = [0u64; SUM_LANES];
    for chunk in &mut chunks {
        add_to_lanes(&mut lanes, chunk);
    }
    reduce_lanes(&lanes) + fold64_into32(short_native_sum(chunks.remainder()))
}

#[inline(always)]
fn copy_and_sum_lanes(dst: &mut [u8], src: &[u8]) -> u64 {
    const BLOCK: usize = COPY_LANES * 8;
    let mut dst_chunks = dst.chunks_exact_mut(BLOCK);
    let mut src_chunks = src.chunks_exact(BLOCK);
    let mut lanes = [0u64; COPY_LANES];
    for (out, chunk) in (&mut dst_chunks).zip(&mut src_chunks) {
        // Loaded once, summed and stored from the same registers: a reload after the
        // store would wait on it whenever source and destination alias modulo 4 KiB.
        let block: [u8; BLOCK] = chunk.try_into().unwrap_or([0; BLOCK]);
        add_to_lanes(&mut lanes, &block);
        out.copy_from_slice(&block);
    }
    let rest = src_chunks.remainder();
    dst_chunks.into_remainder().copy_from_slice(rest);
    reduce_lanes(&lanes) + fold64_into32(short_native_sum(rest))
}

/// Native-endian sum of a short buffer: 64-bit words added with carry (a 128-bit
/// accumulator, i.e. `add`/`adc`) in blocks of 32, 16 and 8 bytes, then the last 0..7
/// bytes; unfolded. Power-of-two steps need no remainder loop.
#[inline(always)]
fn short_native_sum(data: &[u8]) -> u64 {
    let mut total = 0u128;
    let mut rest = data;
    while let Some((block, tail)) = rest.split_first_chunk::<32>() {
        total += words_sum(block);
        rest = tail;
    }
    if let Some((block, tail)) = rest.split_first_chunk::<16>() {
        total += words_sum(block);
        rest = tail;
    }
    if let Some((block, tail)) = rest.split_first_chunk::<8>() {
        total += words_sum(block);
        rest = tail;
    }
    // The last 0..7 bytes without a variable-length copy (which would call memcpy); an
    // odd final byte is padded with a zero after it, as RFC 1071 says.
    if let Some((four, tail)) = rest.split_first_chunk::<4>() {
        total += u128::from(u32::from_ne_bytes(*four));
        rest = tail;
    }
    if let Some((two, tail)) = rest.split_first_chunk::<2>() {
        total += u128::from(u16::from_ne_bytes(*two));
        rest = tail;
    }
    if let Some(&last) = rest.first() {
        total += u128::from(u16::from_ne_bytes([last, 0]));
    }
    // 2^64 is 1 in ones'-complement arithmetic: the carries add to the low word, and
    // that addition's own carry once more (it cannot carry again).
    let (low, carry) = (total as u64).overflowing_add((total >> 64) as u64);
    low + u64::from(carry)
}

/// Sum of the 64-bit words of `block` (a multiple of 8 bytes long).
#[inline(always)]
fn words_sum<const N: usize>(block: &[u8; N]) -> u128 {
    block
        .chunks_exact(8)
        .map(|word| u128::from(u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]))))
        .sum()
}

/// A native-endian sum as a sum of big-endian words (below 2^41). Swapping the bytes
/// of a 16-bit word multiplies it by 256 modulo 0xffff (ones'-complement arithmetic;
/// RFC 1071 §2(B)), and so does it for a whole sum: a shift instead of a fold and swap.
#[inline(always)]
fn network_order(native: u64) -> u64 {
    let below_2_33 = fold64_into32(native);
    if cfg!(target_endian = "little") {
        below_2_33 << 8
    } else {
        below_2_33
    }
}

#[inline(always)]
fn fold64_into32(value: u64) -> u64 {
    (value & 0xffff_ffff) + (value >> 32)
}

/// Folds a running sum to 16 bits (ones'-complement), not yet inverted.
#[inline]
pub fn fold(sum: u64) -> u16 {
    // End-around carries: each addition's carry-out is added back in, which cannot
    // carry again (the truncated sum is at most 2^n - 2 when it carried).
    let (sum32, carry) = (sum as u32).overflowing_add((sum >> 32) as u32);
    let sum32 = sum32 + u32::from(carry);
    let (sum16, carry) = (sum32 as u16).overflowing_add((sum32 >> 16) as u16);
    sum16 + u16::from(carry)
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

/// The sum that removes the 16-bit word `word` from a running sum when added (its
/// ones'-complement negation): how a header's sum is made without the fields that
/// change per packet, which are then added per packet.
#[inline(always)]
pub fn without16(word: u16) -> u64 {
    u64::from(!word)
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

    /// Folds 16 bits at a time, as the definition does.
    fn reference_fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The wide path without AVX2, whatever the CPU has.
    fn portable_sum(data: &[u8]) -> u64 {
        network_order(sum_lanes(data))
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
        /// Short and wide paths, odd lengths, every alignment of the start.
        #[test]
        fn matches_reference(
            data in proptest::collection::vec(any::<u8>(), 0..1100),
            offset in 0usize..8,
        ) {
            let data = data.get(offset..).unwrap_or(&[]);
            prop_assert_eq!(checksum(data), reference(data));
            prop_assert_eq!(checksum(data), finish(portable_sum(data)));
        }

        /// All-ones data drives every lane and carry to its maximum.
        #[test]
        fn saturated_data_matches_reference(len in 0usize..3000) {
            let data = vec![0xff; len];
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn copy_and_add_copies_and_sums(
            data in proptest::collection::vec(any::<u8>(), 0..1100),
            src_offset in 0usize..8,
            dst_offset in 0usize..8,
        ) {
            let data = data.get(src_offset..).unwrap_or(&[]);
            let mut copy = vec![0u8; data.len() + dst_offset];
            let sum = copy_and_add(&mut copy[dst_offset..], data);
            prop_assert_eq!(&copy[dst_offset..], data);
            prop_assert_eq!(finish(sum), checksum(data));
        }

        #[test]
        fn fold_matches_reference(sum in any::<u64>()) {
            prop_assert_eq!(fold(sum), reference_fold(sum));
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
