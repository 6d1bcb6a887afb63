//! The byte format pools persist in: `magic(4) version(1) payload crc32(4)`.
//! Readers check everything and return `Corrupt` errors, never panic.

use std::collections::BTreeMap;

use super::bitmap::{Bitmap, ChunkState, ChunkStateOwned, WORDS_PER_CHUNK};
use super::error::{IpamError, Result};

pub const VERSION: u8 = 1;

pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(magic: &[u8; 4]) -> Writer {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(magic);
        buf.push(VERSION);
        Writer { buf }
    }

    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn varint(&mut self, mut value: u128) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    pub fn bytes(&mut self, data: &[u8]) {
        self.varint(data.len() as u128);
        self.buf.extend_from_slice(data);
    }

    pub fn bitmap(&mut self, bitmap: &Bitmap) {
        self.varint(u128::from(bitmap.last()));
        self.varint(bitmap.chunk_count() as u128);
        for state in bitmap.chunk_states() {
            match state {
                ChunkState::Clear => self.u8(0),
                ChunkState::Set => self.u8(1),
                ChunkState::Mixed(words) => {
                    self.u8(2);
                    for word in words {
                        self.u64(*word);
                    }
                }
            }
        }
        let sparse: Vec<(u64, u64)> = bitmap.sparse_words().collect();
        self.varint(sparse.len() as u128);
        let mut previous = 0;
        for (key, word) in sparse {
            self.varint(u128::from(key - previous));
            self.u64(word);
            previous = key;
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Check magic, version and checksum; the reader then yields the payload.
    pub fn open(data: &'a [u8], magic: &[u8; 4], what: &str) -> Result<Reader<'a>> {
        if data.len() < 9 {
            return Err(IpamError::corrupt(format!(
                "{what} blob is truncated ({} bytes)",
                data.len()
            )));
        }
        if &data[..4] != magic {
            return Err(IpamError::corrupt(format!(
                "not a keelnet {what} blob (bad magic)"
            )));
        }
        if data[4] != VERSION {
            return Err(IpamError::corrupt(format!(
                "{what} blob has format version {}, this keelnet reads version {VERSION}",
                data[4]
            )));
        }
        let (body, tail) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32(body) != stored {
            return Err(IpamError::corrupt(format!(
                "{what} blob fails its checksum"
            )));
        }
        Ok(Reader { data: body, pos: 5 })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| IpamError::corrupt("blob ends early"))?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u64(&mut self) -> Result<u64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    pub fn varint(&mut self) -> Result<u128> {
        let mut value: u128 = 0;
        for shift in (0..19 * 7).step_by(7) {
            let byte = self.u8()?;
            let bits = u128::from(byte & 0x7f);
            if shift > 0 && bits.leading_zeros() < shift {
                return Err(IpamError::corrupt("integer overflows"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(IpamError::corrupt("integer too long"))
    }

    pub fn varint_u64(&mut self) -> Result<u64> {
        u64::try_from(self.varint()?).map_err(|_| IpamError::corrupt("integer out of range"))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.varint_u64()?;
        let len = usize::try_from(len).map_err(|_| IpamError::corrupt("length out of range"))?;
        self.take(len)
    }

    pub fn bitmap(&mut self, expected_last: u64) -> Result<Bitmap> {
        let last = self.varint_u64()?;
        if last != expected_last {
            return Err(IpamError::corrupt("bitmap size does not match the subnet"));
        }
        let count = self.varint_u64()?;
        let expected_chunks = Bitmap::new_chunk_count(last);
        if count != expected_chunks as u64 {
            return Err(IpamError::corrupt(
                "bitmap chunk count does not match the subnet",
            ));
        }
        let mut chunks = Vec::with_capacity(expected_chunks);
        for _ in 0..expected_chunks {
            chunks.push(match self.u8()? {
                0 => ChunkStateOwned::Clear,
                1 => ChunkStateOwned::Set,
                2 => {
                    let mut words = Box::new([0u64; WORDS_PER_CHUNK]);
                    for word in words.iter_mut() {
                        *word = self.u64()?;
                    }
                    ChunkStateOwned::Mixed(words)
                }
                tag => return Err(IpamError::corrupt(format!("unknown chunk tag {tag}"))),
            });
        }
        let sparse_count = self.varint_u64()?;
        // Each entry takes at least 9 bytes; refuse counts the blob cannot hold.
        if sparse_count > (self.data.len() - self.pos) as u64 / 9 {
            return Err(IpamError::corrupt("sparse entry count exceeds the blob"));
        }
        let mut sparse = BTreeMap::new();
        let mut key = 0u64;
        for i in 0..sparse_count {
            let delta = self.varint_u64()?;
            if i > 0 && delta == 0 {
                return Err(IpamError::corrupt("sparse entries out of order"));
            }
            key = key
                .checked_add(delta)
                .ok_or_else(|| IpamError::corrupt("sparse key overflows"))?;
            sparse.insert(key, self.u64()?);
        }
        Bitmap::from_parts(last, chunks, sparse)
            .ok_or_else(|| IpamError::corrupt("bitmap contents are inconsistent"))
    }

    pub fn finish(self) -> Result<()> {
        if self.pos != self.data.len() {
            return Err(IpamError::corrupt("trailing bytes after the payload"));
        }
        Ok(())
    }
}

/// CRC-32 (IEEE 802.3), bitwise-table form; only run on (de)serialization.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for byte in data {
        crc = TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn varint_round_trips() {
        for value in [0u128, 1, 127, 128, 300, u128::from(u64::MAX), u128::MAX] {
            let mut w = Writer::new(b"TEST");
            w.varint(value);
            let bytes = w.finish();
            let mut r = Reader::open(&bytes, b"TEST", "test").unwrap();
            assert_eq!(r.varint().unwrap(), value);
            r.finish().unwrap();
        }
    }
}
