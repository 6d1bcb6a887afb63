//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::checksum;
use super::{Layer, PacketError, be16, need, put16, room};

pub const MIN_HEADER_LEN: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A parsed IPv4 packet: header checked for version, header length and total length.
/// The header checksum is checked separately ([`Ipv4Packet::checksum_ok`]), because a
/// receiver that trusts offloads may skip it.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    /// Exactly the packet (trailing Ethernet padding excluded).
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4Packet<'a> {
    /// Parses a packet at the start of `bytes`; bytes past the total length (Ethernet
    /// padding) are ignored.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Ipv4, bytes, MIN_HEADER_LEN)?;
        let version = bytes[0] >> 4;
        if version != 4 {
            return Err(PacketError::BadVersion {
                layer: Layer::Ipv4,
                version,
            });
        }
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(PacketError::BadLength {
                layer: Layer::Ipv4,
                value: header_len,
            });
        }
        let total_len = usize::from(be16(bytes, 2));
        if total_len < header_len {
            return Err(PacketError::BadLength {
                layer: Layer::Ipv4,
                value: total_len,
            });
        }
        need(Layer::Ipv4, bytes, total_len)?;
        Ok(Ipv4Packet {
            bytes: &bytes[..total_len],
            header_len,
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.bytes[1]
    }
    #[inline]
    pub fn identification(&self) -> u16 {
        be16(self.bytes, 4)
    }
    #[inline]
    pub fn dont_fragment(&self) -> bool {
        be16(self.bytes, 6) & FLAG_DF != 0
    }
    /// True for any fragment (more-fragments set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.bytes, 6) & (FLAG_MF | OFFSET_MASK) != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.bytes[8]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }
    #[inline]
    pub fn header_checksum(&self) -> u16 {
        be16(self.bytes, 10)
    }
    #[inline]
    pub fn source(&self) -> Ipv4Addr {
        addr_at(self.bytes, 12)
    }
    #[inline]
    pub fn destination(&self) -> Ipv4Addr {
        addr_at(self.bytes, 16)
    }
    /// True when the header checksum verifies.
    #[inline]
    pub fn checksum_ok(&self) -> bool {
        if self.header_len == MIN_HEADER_LEN {
            // The common option-less header: five 32-bit words, no loop.
            let word = |i: usize| {
                u64::from(u32::from_be_bytes([
                    self.bytes[i],
                    self.bytes[i + 1],
                    self.bytes[i + 2],
                    self.bytes[i + 3],
                ]))
            };
            return checksum::verifies(word(0) + word(4) + word(8) + word(12) + word(16));
        }
        checksum::verifies(checksum::add(0, &self.bytes[..self.header_len]))
    }
    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &'a [u8] {
        &self.bytes[..self.header_len]
    }
    /// The payload up to the total length.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
    /// The pseudo-header sum for the upper-layer checksum of this packet's payload.
    #[inline]
    pub fn pseudo_header(&self) -> u64 {
        checksum::pseudo_header_v4(
            self.source(),
            self.destination(),
            self.protocol(),
            self.payload().len() as u16,
        )
    }
}

#[inline]
fn addr_at(bytes: &[u8], offset: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    )
}

/// The fields of an option-less IPv4 header to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub identification: u16,
    pub dont_fragment: bool,
    /// Payload length in bytes (the total length is this plus 20).
    pub payload_len: u16,
}

impl Ipv4Header {
    /// Writes the 20-byte header, checksum included, at the start of `buf`.
    #[inline]
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, PacketError> {
        room(buf, MIN_HEADER_LEN)?;
        let total =
            self.payload_len
                .checked_add(MIN_HEADER_LEN as u16)
                .ok_or(PacketError::BadLength {
                    layer: Layer::Ipv4,
                    value: usize::from(self.payload_len) + MIN_HEADER_LEN,
                })?;
        let header = &mut buf[..MIN_HEADER_LEN];
        header[0] = 0x45;
        header[1] = self.dscp_ecn;
        put16(header, 2, total);
        put16(header, 4, self.identification);
        put16(header, 6, if self.dont_fragment { FLAG_DF } else { 0 });
        header[8] = self.ttl;
        header[9] = self.protocol;
        put16(header, 10, 0);
        header[12..16].copy_from_slice(&self.source.octets());
        header[16..20].copy_from_slice(&self.destination.octets());
        let sum = checksum::checksum(header);
        put16(header, 10, sum);
        Ok(MIN_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ipv4Header {
        Ipv4Header {
            source: Ipv4Addr::new(192, 0, 2, 1),
            destination: Ipv4Addr::new(198, 51, 100, 2),
            protocol: 17,
            ttl: 64,
            dscp_ecn: 0,
            identification: 0x1234,
            dont_fragment: true,
            payload_len: 4,
        }
    }

    #[test]
    fn round_trip_and_padding_ignored() {
        let mut buf = [0u8; 30];
        sample().write(&mut buf).unwrap();
        let packet = Ipv4Packet::parse(&buf).unwrap();
        assert_eq!(packet.total_len(), 24);
        assert_eq!(packet.payload().len(), 4);
        assert!(packet.checksum_ok());
        assert!(packet.dont_fragment());
        assert!(!packet.is_fragment());
        assert_eq!(packet.source(), Ipv4Addr::new(192, 0, 2, 1));
        buf[8] = 1;
        assert!(!Ipv4Packet::parse(&buf).unwrap().checksum_ok());
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let mut buf = [0u8; 24];
        sample().write(&mut buf).unwrap();
        assert!(matches!(
            Ipv4Packet::parse(&buf[..23]),
            Err(PacketError::Truncated { .. })
        ));
        let mut bad = buf;
        bad[0] = 0x44;
        assert!(matches!(
            Ipv4Packet::parse(&bad),
            Err(PacketError::BadLength { .. })
        ));
        let mut bad = buf;
        bad[0] = 0x65;
        assert!(matches!(
            Ipv4Packet::parse(&bad),
            Err(PacketError::BadVersion { version: 6, .. })
        ));
        let mut bad = buf;
        bad[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::parse(&bad),
            Err(PacketError::BadLength { value: 10, .. })
        ));
    }
}
