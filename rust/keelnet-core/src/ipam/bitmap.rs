//! A bitmap over up to 2^64 offsets whose every operation is O(1) in practice,
//! however fragmented it is, and whose memory follows what is set.
//!
//! The first 2^24 offsets are dense: 4096-bit chunks, each with a word-level
//! summary, under a two-level summary of chunks that still have a free bit. A
//! chunk that is all clear or all set holds no memory at all (`None`), so an
//! empty /8 costs ~33 KB and a full one the same. Offsets past 2^24 (the rest of
//! an IPv6 /64) are sparse: a hash map of the 4096-bit chunks that hold a set bit,
//! each a few offsets inline or, once it fills, a chunk bitmap; so memory grows
//! with the addresses handed out, and a serial walk through fresh space costs a
//! lookup in a small, hot tree.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

const WORD_BITS: u64 = 64;
const CHUNK_WORDS: usize = 64;
const CHUNK_BITS: u64 = WORD_BITS * CHUNK_WORDS as u64;
/// Offsets below this are kept dense.
pub const DENSE_LIMIT: u64 = 1 << 24;
const MAX_CHUNKS: usize = (DENSE_LIMIT / CHUNK_BITS) as usize;

/// Where a chunk stands, as serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState<'a> {
    Clear,
    Set,
    Mixed(&'a [u64; CHUNK_WORDS]),
}

#[derive(Clone)]
struct Chunk {
    words: [u64; CHUNK_WORDS],
    /// Bit i is set while `words[i]` has a clear bit.
    not_full: u64,
    /// Set bits in `words`.
    ones: u32,
}

impl Chunk {
    fn all_clear() -> Box<Chunk> {
        Box::new(Chunk {
            words: [0; CHUNK_WORDS],
            not_full: u64::MAX,
            ones: 0,
        })
    }

    fn all_set() -> Box<Chunk> {
        Box::new(Chunk {
            words: [u64::MAX; CHUNK_WORDS],
            not_full: 0,
            ones: CHUNK_BITS as u32,
        })
    }

    fn from_words(words: &[u64; CHUNK_WORDS]) -> Box<Chunk> {
        let mut not_full = 0;
        let mut ones = 0;
        for (i, word) in words.iter().enumerate() {
            if *word != u64::MAX {
                not_full |= 1 << i;
            }
            ones += word.count_ones();
        }
        Box::new(Chunk {
            words: *words,
            not_full,
            ones,
        })
    }

    #[inline]
    fn get(&self, bit: u64) -> bool {
        self.words[(bit / WORD_BITS) as usize] >> (bit % WORD_BITS) & 1 == 1
    }

    /// Set `bit`; false when it was set already.
    #[inline]
    fn set(&mut self, bit: u64) -> bool {
        let (w, mask) = ((bit / WORD_BITS) as usize, 1u64 << (bit % WORD_BITS));
        if self.words[w] & mask != 0 {
            return false;
        }
        self.words[w] |= mask;
        self.ones += 1;
        if self.words[w] == u64::MAX {
            self.not_full &= !(1 << w);
        }
        true
    }

    /// Clear `bit`; false when it was clear already.
    #[inline]
    fn clear(&mut self, bit: u64) -> bool {
        let (w, mask) = ((bit / WORD_BITS) as usize, 1u64 << (bit % WORD_BITS));
        if self.words[w] & mask == 0 {
            return false;
        }
        self.words[w] &= !mask;
        self.not_full |= 1 << w;
        self.ones -= 1;
        true
    }

    /// First clear bit at or after `bit`.
    #[inline]
    fn first_clear_from(&self, bit: u64) -> Option<u64> {
        let w = (bit / WORD_BITS) as usize;
        let here = !self.words[w] & (u64::MAX << (bit % WORD_BITS));
        if here != 0 {
            return Some(w as u64 * WORD_BITS + u64::from(here.trailing_zeros()));
        }
        let later = self.not_full & above(w as u32);
        if later == 0 {
            return None;
        }
        let w = later.trailing_zeros() as usize;
        Some(w as u64 * WORD_BITS + u64::from((!self.words[w]).trailing_zeros()))
    }
}

/// Mask of the bits strictly above `i` in a word.
#[inline]
fn above(i: u32) -> u64 {
    u64::MAX.checked_shl(i + 1).unwrap_or(0)
}

/// Hashes chunk indexes (plain integers, not attacker-chosen keys) with the
/// splitmix64 finalizer: a few cycles, and every output bit depends on every input bit.
#[derive(Default)]
struct ChunkIndexHasher(u64);

impl Hasher for ChunkIndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type ChunkMap = HashMap<u64, SparseChunk, BuildHasherDefault<ChunkIndexHasher>>;

/// Offsets a sparse chunk keeps inline before it becomes a bitmap.
const FEW: usize = 11;

/// A chunk past the dense part: a few sorted offsets inline, or a bitmap.
#[derive(Clone)]
enum SparseChunk {
    Few { len: u8, bits: [u16; FEW] },
    Many(Box<Chunk>),
}

impl SparseChunk {
    fn few(&self) -> Option<&[u16]> {
        match self {
            SparseChunk::Few { len, bits } => Some(&bits[..usize::from(*len)]),
            SparseChunk::Many(_) => None,
        }
    }

    fn get(&self, bit: u16) -> bool {
        match self {
            SparseChunk::Few { .. } => self
                .few()
                .is_some_and(|few| few.binary_search(&bit).is_ok()),
            SparseChunk::Many(chunk) => chunk.get(u64::from(bit)),
        }
    }

    /// Set `bit`; false when it was set already.
    fn set(&mut self, bit: u16) -> bool {
        match self {
            SparseChunk::Few { len, bits } => {
                let n = usize::from(*len);
                let Err(at) = bits[..n].binary_search(&bit) else {
                    return false;
                };
                if n < FEW {
                    bits.copy_within(at..n, at + 1);
                    bits[at] = bit;
                    *len += 1;
                } else {
                    let mut chunk = Chunk::all_clear();
                    for b in bits.iter().chain(std::iter::once(&bit)) {
                        chunk.set(u64::from(*b));
                    }
                    *self = SparseChunk::Many(chunk);
                }
                true
            }
            SparseChunk::Many(chunk) => chunk.set(u64::from(bit)),
        }
    }

    /// Clear `bit`; false when it was clear. A bitmap that empties down to a few
    /// offsets goes back inline, so memory follows what is allocated.
    fn clear(&mut self, bit: u16) -> bool {
        match self {
            SparseChunk::Few { len, bits } => {
                let n = usize::from(*len);
                let Ok(at) = bits[..n].binary_search(&bit) else {
                    return false;
                };
                bits.copy_within(at + 1..n, at);
                *len -= 1;
                true
            }
            SparseChunk::Many(chunk) => {
                if !chunk.clear(u64::from(bit)) {
                    return false;
                }
                if chunk.ones as usize <= FEW / 2 {
                    let mut few = SparseChunk::Few {
                        len: 0,
                        bits: [0; FEW],
                    };
                    for (w, word) in chunk.words.iter().enumerate() {
                        let mut word = *word;
                        while word != 0 {
                            few.set((w * 64) as u16 + word.trailing_zeros() as u16);
                            word &= word - 1;
                        }
                    }
                    *self = few;
                }
                true
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, SparseChunk::Few { len: 0, .. })
    }

    /// First clear bit at or after `bit`.
    fn first_clear_from(&self, bit: u64) -> Option<u64> {
        match self {
            SparseChunk::Few { .. } => {
                let mut candidate = bit;
                for b in self.few().unwrap_or(&[]).iter().map(|b| u64::from(*b)) {
                    if b == candidate {
                        candidate += 1;
                    } else if b > candidate {
                        break;
                    }
                }
                (candidate < CHUNK_BITS).then_some(candidate)
            }
            SparseChunk::Many(chunk) => chunk.first_clear_from(bit),
        }
    }

    fn count_set(&self) -> u32 {
        match self {
            SparseChunk::Few { len, .. } => u32::from(*len),
            SparseChunk::Many(chunk) => chunk.ones,
        }
    }

    /// The chunk as 64-bit words, for serialization.
    fn words(&self) -> [u64; CHUNK_WORDS] {
        match self {
            SparseChunk::Few { .. } => {
                let mut words = [0u64; CHUNK_WORDS];
                for b in self.few().unwrap_or(&[]) {
                    words[usize::from(*b) / 64] |= 1 << (b % 64);
                }
                words
            }
            SparseChunk::Many(chunk) => chunk.words,
        }
    }
}

#[derive(Clone)]
pub struct Bitmap {
    last: u64,
    chunks: Vec<Option<Box<Chunk>>>,
    /// Bit c is set while chunk c has a clear bit.
    chunk_not_full: Vec<u64>,
    /// Bit i is set while `chunk_not_full[i]` is non-zero.
    top_not_full: u64,
    /// Chunks past the dense part that hold a set bit, by chunk index.
    sparse: ChunkMap,
}

impl Bitmap {
    /// A clear bitmap over offsets `0..=last`.
    pub fn new(last: u64) -> Bitmap {
        let dense_bits = last.min(DENSE_LIMIT - 1) + 1;
        let chunk_count = Bitmap::new_chunk_count(last);
        let summary_words = chunk_count.div_ceil(64);
        let mut chunk_not_full = vec![u64::MAX; summary_words];
        if !chunk_count.is_multiple_of(64) {
            chunk_not_full[summary_words - 1] = (1u64 << (chunk_count % 64)) - 1;
        }
        let top_not_full = if summary_words == 64 {
            u64::MAX
        } else {
            (1u64 << summary_words) - 1
        };
        let mut bitmap = Bitmap {
            last,
            chunks: (0..chunk_count).map(|_| None).collect(),
            chunk_not_full,
            top_not_full,
            sparse: ChunkMap::default(),
        };
        // Bits past `last` in the final chunk are set for good, so searches never find them.
        for offset in dense_bits..chunk_count as u64 * CHUNK_BITS {
            bitmap.set(offset);
        }
        bitmap
    }

    /// How many dense chunks a bitmap over `0..=last` has.
    pub fn new_chunk_count(last: u64) -> usize {
        (last.min(DENSE_LIMIT - 1) + 1).div_ceil(CHUNK_BITS) as usize
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    fn dense_end(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK_BITS
    }

    #[inline]
    fn chunk_has_clear(&self, c: usize) -> bool {
        self.chunk_not_full[c / 64] >> (c % 64) & 1 == 1
    }

    fn mark_chunk(&mut self, c: usize, has_clear: bool) {
        let (i, bit) = (c / 64, 1u64 << (c % 64));
        if has_clear {
            self.chunk_not_full[i] |= bit;
            self.top_not_full |= 1 << i;
        } else {
            self.chunk_not_full[i] &= !bit;
            if self.chunk_not_full[i] == 0 {
                self.top_not_full &= !(1 << i);
            }
        }
    }

    #[inline]
    pub fn get(&self, offset: u64) -> bool {
        if offset < self.dense_end() {
            let c = (offset / CHUNK_BITS) as usize;
            match &self.chunks[c] {
                None => !self.chunk_has_clear(c),
                Some(chunk) => chunk.get(offset % CHUNK_BITS),
            }
        } else {
            self.sparse
                .get(&(offset / CHUNK_BITS))
                .is_some_and(|chunk| chunk.get((offset % CHUNK_BITS) as u16))
        }
    }

    /// Set the bit; false when it was already set.
    #[inline]
    pub fn set(&mut self, offset: u64) -> bool {
        if offset >= self.dense_end() {
            return self
                .sparse
                .entry(offset / CHUNK_BITS)
                .or_insert(SparseChunk::Few {
                    len: 0,
                    bits: [0; FEW],
                })
                .set((offset % CHUNK_BITS) as u16);
        }
        let c = (offset / CHUNK_BITS) as usize;
        if !self.chunk_has_clear(c) {
            return false;
        }
        let chunk = self.chunks[c].get_or_insert_with(Chunk::all_clear);
        if !chunk.set(offset % CHUNK_BITS) {
            return false;
        }
        if chunk.not_full == 0 {
            self.chunks[c] = None;
            self.mark_chunk(c, false);
        }
        true
    }

    /// Clear the bit; false when it was already clear.
    #[inline]
    pub fn clear(&mut self, offset: u64) -> bool {
        if offset >= self.dense_end() {
            let key = offset / CHUNK_BITS;
            let Some(chunk) = self.sparse.get_mut(&key) else {
                return false;
            };
            let was_set = chunk.clear((offset % CHUNK_BITS) as u16);
            if chunk.is_empty() {
                self.sparse.remove(&key);
            }
            return was_set;
        }
        let c = (offset / CHUNK_BITS) as usize;
        if self.chunks[c].is_none() {
            if self.chunk_has_clear(c) {
                return false;
            }
            self.chunks[c] = Some(Chunk::all_set());
            self.mark_chunk(c, true);
        }
        let Some(chunk) = self.chunks[c].as_mut() else {
            return false;
        };
        if !chunk.clear(offset % CHUNK_BITS) {
            return false;
        }
        if chunk.ones == 0 {
            self.chunks[c] = None;
        }
        true
    }

    /// First chunk at or after `c` with a clear bit.
    #[inline]
    fn next_chunk_with_clear(&self, c: usize) -> Option<usize> {
        if c >= self.chunks.len() {
            return None;
        }
        let i = c / 64;
        let here = self.chunk_not_full[i] & (u64::MAX << (c % 64));
        if here != 0 {
            return Some(i * 64 + here.trailing_zeros() as usize);
        }
        let later = self.top_not_full & above(i as u32);
        if later == 0 {
            return None;
        }
        let i = later.trailing_zeros() as usize;
        Some(i * 64 + self.chunk_not_full[i].trailing_zeros() as usize)
    }

    fn dense_first_clear(&self, from: u64) -> Option<u64> {
        let c = (from / CHUNK_BITS) as usize;
        if self.chunk_has_clear(c) {
            match &self.chunks[c] {
                None => return Some(from),
                Some(chunk) => {
                    if let Some(bit) = chunk.first_clear_from(from % CHUNK_BITS) {
                        return Some(c as u64 * CHUNK_BITS + bit);
                    }
                }
            }
        }
        let c = self.next_chunk_with_clear(c + 1)?;
        let base = c as u64 * CHUNK_BITS;
        match &self.chunks[c] {
            None => Some(base),
            Some(chunk) => chunk.first_clear_from(0).map(|bit| base + bit),
        }
    }

    /// First clear offset past the dense part, at or after `from`. Chunks are
    /// consecutive, so a missing one is free: one lookup, plus one per full chunk.
    fn sparse_first_clear(&self, from: u64) -> Option<u64> {
        let mut key = from / CHUNK_BITS;
        let mut bit = from % CHUNK_BITS;
        while let Some(chunk) = self.sparse.get(&key) {
            if let Some(found) = chunk.first_clear_from(bit) {
                return Some(key * CHUNK_BITS + found);
            }
            key = key.checked_add(1)?;
            bit = 0;
        }
        Some(key.checked_mul(CHUNK_BITS)? + bit)
    }

    /// First clear offset in `from..=to`.
    pub fn first_clear(&self, from: u64, to: u64) -> Option<u64> {
        let to = to.min(self.last);
        if from > to {
            return None;
        }
        let mut from = from;
        if from < self.dense_end() {
            match self.dense_first_clear(from) {
                Some(offset) => return (offset <= to).then_some(offset),
                None => from = self.dense_end(),
            }
            if from > to {
                return None;
            }
        }
        self.sparse_first_clear(from).filter(|offset| *offset <= to)
    }

    /// Set and return the first clear offset in `from..=to`. Past the dense part the
    /// chunk that holds `from` is looked up once for both the search and the set: it
    /// is where a serial walk through fresh space finds its next address.
    pub fn take_first_clear(&mut self, from: u64, to: u64) -> Option<u64> {
        let to = to.min(self.last);
        if from >= self.dense_end() && from <= to {
            let key = from / CHUNK_BITS;
            if let Some(chunk) = self.sparse.get_mut(&key)
                && let Some(bit) = chunk.first_clear_from(from % CHUNK_BITS)
            {
                let offset = key * CHUNK_BITS + bit;
                if offset > to {
                    return None;
                }
                chunk.set(bit as u16);
                return Some(offset);
            }
        }
        let offset = self.first_clear(from, to)?;
        self.set(offset);
        Some(offset)
    }

    /// Each dense chunk's state, in order, for serialization.
    pub fn chunk_states(&self) -> impl Iterator<Item = ChunkState<'_>> {
        self.chunks
            .iter()
            .enumerate()
            .map(|(c, chunk)| match chunk {
                Some(chunk) => ChunkState::Mixed(&chunk.words),
                None if self.chunk_has_clear(c) => ChunkState::Clear,
                None => ChunkState::Set,
            })
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The sparse part as (word index, word) pairs with a set bit, in order.
    pub fn sparse_words(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut keys: Vec<u64> = self.sparse.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter().flat_map(|key| {
            let chunk = &self.sparse[&key];
            let words = chunk.words();
            (0..CHUNK_WORDS)
                .filter(move |w| words[*w] != 0)
                .map(move |w| (key * CHUNK_WORDS as u64 + w as u64, words[w]))
        })
    }

    /// Rebuild from serialized parts; the caller validated counts and ranges.
    pub fn from_parts(
        last: u64,
        chunks: Vec<ChunkStateOwned>,
        sparse: BTreeMap<u64, u64>,
    ) -> Option<Bitmap> {
        let mut bitmap = Bitmap::new(last);
        if chunks.len() != bitmap.chunks.len() || chunks.len() > MAX_CHUNKS {
            return None;
        }
        let padding_from = last.min(DENSE_LIMIT - 1) + 1;
        for (c, state) in chunks.into_iter().enumerate() {
            let chunk = match state {
                ChunkStateOwned::Clear => Chunk::all_clear(),
                ChunkStateOwned::Set => Chunk::all_set(),
                ChunkStateOwned::Mixed(words) => Chunk::from_words(&words),
            };
            // The padding past `last` must be set, as `new` leaves it.
            let base = c as u64 * CHUNK_BITS;
            if (padding_from.max(base)..base + CHUNK_BITS).any(|offset| !chunk.get(offset - base)) {
                return None;
            }
            bitmap.install_chunk(c, chunk);
        }
        let dense_end = bitmap.dense_end();
        for (&key, &word) in &sparse {
            let first = key.checked_mul(WORD_BITS)?;
            let last_bit = first + (WORD_BITS - 1 - u64::from(word.leading_zeros()));
            if word == 0 || first < dense_end || last_bit > last {
                return None;
            }
            let mut rest = word;
            while rest != 0 {
                bitmap.set(first + u64::from(rest.trailing_zeros()));
                rest &= rest - 1;
            }
        }
        Some(bitmap)
    }

    fn install_chunk(&mut self, c: usize, chunk: Box<Chunk>) {
        match chunk.ones {
            0 => {
                self.chunks[c] = None;
                self.mark_chunk(c, true);
            }
            n if u64::from(n) == CHUNK_BITS => {
                self.chunks[c] = None;
                self.mark_chunk(c, false);
            }
            _ => {
                self.chunks[c] = Some(chunk);
                self.mark_chunk(c, true);
            }
        }
    }

    /// Set bits within `0..=last` (the padding past `last` is not counted).
    pub fn count_set(&self) -> u128 {
        let dense: u128 = self
            .chunk_states()
            .map(|state| match state {
                ChunkState::Clear => 0,
                ChunkState::Set => u128::from(CHUNK_BITS),
                ChunkState::Mixed(words) => words.iter().map(|w| u128::from(w.count_ones())).sum(),
            })
            .sum();
        let padding = u128::from(self.dense_end() - (self.last.min(DENSE_LIMIT - 1) + 1));
        let sparse: u128 = self
            .sparse
            .values()
            .map(|w| u128::from(w.count_set()))
            .sum();
        dense - padding + sparse
    }

    /// Heap bytes held, for memory figures.
    pub fn heap_bytes(&self) -> usize {
        let leaves = self.chunks.iter().flatten().count() * std::mem::size_of::<Chunk>();
        // One bucket plus one control byte per slot of the map's capacity.
        let entry = std::mem::size_of::<u64>() + std::mem::size_of::<SparseChunk>() + 1;
        let many = self.sparse.values().filter(|c| c.few().is_none()).count();
        let sparse = self.sparse.capacity() * entry + many * std::mem::size_of::<Chunk>();
        self.chunks.capacity() * std::mem::size_of::<Option<Box<Chunk>>>()
            + self.chunk_not_full.capacity() * 8
            + leaves
            + sparse
    }
}

/// A chunk as read back from bytes.
pub enum ChunkStateOwned {
    Clear,
    Set,
    Mixed(Box<[u64; CHUNK_WORDS]>),
}

pub const WORDS_PER_CHUNK: usize = CHUNK_WORDS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bitmap_fills_and_empties() {
        let mut b = Bitmap::new(99);
        for i in 0..100 {
            assert_eq!(b.first_clear(0, 99), Some(i));
            assert!(b.set(i));
        }
        assert_eq!(b.first_clear(0, u64::MAX), None);
        assert!(!b.set(5));
        assert!(b.clear(42));
        assert!(!b.clear(42));
        assert_eq!(b.first_clear(0, 99), Some(42));
        assert_eq!(b.first_clear(43, 99), None);
    }

    #[test]
    fn chunk_transitions_free_memory() {
        let mut b = Bitmap::new(DENSE_LIMIT - 1);
        let empty = b.heap_bytes();
        for i in 0..CHUNK_BITS * 3 {
            b.set(i);
        }
        assert_eq!(b.heap_bytes(), empty, "full chunks hold no leaves");
        assert!(b.clear(CHUNK_BITS + 7));
        assert!(b.heap_bytes() > empty);
        assert_eq!(b.first_clear(0, u64::MAX), Some(CHUNK_BITS + 7));
        assert!(b.set(CHUNK_BITS + 7));
        assert_eq!(b.first_clear(0, u64::MAX), Some(3 * CHUNK_BITS));
    }

    #[test]
    fn sparse_chunks_go_inline_and_back() {
        let mut b = Bitmap::new(u64::MAX);
        let base = DENSE_LIMIT * 7;
        for i in 0..100 {
            assert!(b.set(base + i * 3));
        }
        assert_eq!(b.first_clear(base, u64::MAX), Some(base + 1));
        for i in 0..100 {
            assert!(b.get(base + i * 3) && !b.get(base + i * 3 + 1));
        }
        for i in 1..100 {
            assert!(b.clear(base + i * 3));
        }
        assert!(b.get(base) && !b.get(base + 3));
        assert_eq!(b.sparse_words().collect::<Vec<_>>(), vec![(base / 64, 1)]);
        assert!(b.clear(base));
        assert_eq!(b.sparse_words().count(), 0);
    }

    #[test]
    fn sparse_part_finds_gaps() {
        let mut b = Bitmap::new(u64::MAX);
        let base = DENSE_LIMIT + 640;
        for i in 0..200 {
            assert!(b.set(base + i));
        }
        assert_eq!(b.first_clear(base, u64::MAX), Some(base + 200));
        assert_eq!(b.first_clear(base - 1, u64::MAX), Some(base - 1));
        assert!(b.set(u64::MAX));
        assert_eq!(b.first_clear(u64::MAX, u64::MAX), None);
        assert!(b.clear(base + 100));
        assert_eq!(b.first_clear(base, u64::MAX), Some(base + 100));
    }
}
