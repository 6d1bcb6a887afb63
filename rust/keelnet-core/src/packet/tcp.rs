//! TCP headers (RFC 9293): what forwarding, segmentation and coalescing need.

use super::{Layer, PacketError, be16, be32, need};

pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits (the low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A parsed TCP segment (header checked for its data offset).
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> TcpSegment<'a> {
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Tcp, bytes, MIN_HEADER_LEN)?;
        let header_len = usize::from(bytes[12] >> 4) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(PacketError::BadLength {
                layer: Layer::Tcp,
                value: header_len,
            });
        }
        need(Layer::Tcp, bytes, header_len)?;
        Ok(TcpSegment { bytes, header_len })
    }

    #[inline]
    pub fn source_port(&self) -> u16 {
        be16(self.bytes, 0)
    }
    #[inline]
    pub fn destination_port(&self) -> u16 {
        be16(self.bytes, 2)
    }
    #[inline]
    pub fn sequence(&self) -> u32 {
        be32(self.bytes, 4)
    }
    #[inline]
    pub fn acknowledgment(&self) -> u32 {
        be32(self.bytes, 8)
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.bytes[13]
    }
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.bytes, 14)
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.bytes, 16)
    }
    #[inline]
    pub fn urgent_pointer(&self) -> u16 {
        be16(self.bytes, 18)
    }
    /// Header bytes, options included.
    #[inline]
    pub fn header(&self) -> &'a [u8] {
        &self.bytes[..self.header_len]
    }
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
    /// True when the checksum verifies against the IP layer's pseudo-header sum.
    #[inline]
    pub fn checksum_ok(&self, pseudo_header: u64) -> bool {
        super::checksum::verifies(super::checksum::add(pseudo_header, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_rejects_bad_offsets() {
        let mut header = [0u8; 24];
        header[0..2].copy_from_slice(&80u16.to_be_bytes());
        header[4..8].copy_from_slice(&7u32.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = flags::ACK | flags::PSH;
        let segment = TcpSegment::parse(&header).unwrap();
        assert_eq!(segment.source_port(), 80);
        assert_eq!(segment.sequence(), 7);
        assert_eq!(segment.payload().len(), 4);
        assert_eq!(segment.flags(), flags::ACK | flags::PSH);
        header[12] = 4 << 4;
        assert!(matches!(
            TcpSegment::parse(&header),
            Err(PacketError::BadLength { .. })
        ));
        header[12] = 7 << 4;
        assert!(matches!(
            TcpSegment::parse(&header),
            Err(PacketError::Truncated { .. })
        ));
    }
}
