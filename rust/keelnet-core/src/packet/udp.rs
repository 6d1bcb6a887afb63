//! UDP headers (RFC 768).

use super::checksum;
use super::{Layer, PacketError, be16, need, put16, room};

pub const HEADER_LEN: usize = 8;

/// A parsed UDP datagram: the length field is checked against the bytes given (the IP
/// payload); bytes past it are ignored.
#[derive(Debug, Clone, Copy)]
pub struct UdpDatagram<'a> {
    bytes: &'a [u8],
}

impl<'a> UdpDatagram<'a> {
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Udp, bytes, HEADER_LEN)?;
        let len = usize::from(be16(bytes, 4));
        if len < HEADER_LEN || len > bytes.len() {
            return Err(PacketError::BadLength {
                layer: Layer::Udp,
                value: len,
            });
        }
        Ok(UdpDatagram {
            bytes: &bytes[..len],
        })
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
    pub fn length(&self) -> usize {
        self.bytes.len()
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.bytes, 6)
    }
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }
    /// True when the checksum verifies against `pseudo_header` (the sum from the IP
    /// layer); a zero checksum ("none", IPv4 only) is the caller's to treat.
    #[inline]
    pub fn checksum_ok(&self, pseudo_header: u64) -> bool {
        checksum::verifies(checksum::add(pseudo_header, self.bytes))
    }
}

/// Writes a UDP header with a zero checksum; returns 8.
#[inline]
pub fn write_header(
    buf: &mut [u8],
    source_port: u16,
    destination_port: u16,
    length: u16,
) -> Result<usize, PacketError> {
    room(buf, HEADER_LEN)?;
    put16(buf, 0, source_port);
    put16(buf, 2, destination_port);
    put16(buf, 4, length);
    put16(buf, 6, 0);
    Ok(HEADER_LEN)
}

/// Fills the checksum of the datagram `bytes` (header + payload, checksum field zero).
/// A computed zero is sent as 0xffff (RFC 768), zero meaning "no checksum".
#[inline]
pub fn fill_checksum(bytes: &mut [u8], pseudo_header: u64) -> Result<(), PacketError> {
    need(Layer::Udp, bytes, HEADER_LEN)?;
    let mut sum = checksum::finish(checksum::add(pseudo_header, bytes));
    if sum == 0 {
        sum = 0xffff;
    }
    put16(bytes, 6, sum);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn checksum_round_trip_and_length_checks() {
        let mut buf = [0u8; 12];
        write_header(&mut buf, 1234, 4789, 12).unwrap();
        buf[8..].copy_from_slice(b"abcd");
        let pseudo = checksum::pseudo_header_v4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 17, 12);
        fill_checksum(&mut buf, pseudo).unwrap();
        let datagram = UdpDatagram::parse(&buf).unwrap();
        assert!(datagram.checksum_ok(pseudo));
        assert_eq!(datagram.payload(), b"abcd");
        assert_eq!(datagram.destination_port(), 4789);
        assert!(matches!(
            UdpDatagram::parse(&buf[..11]),
            Err(PacketError::BadLength { value: 12, .. })
        ));
        buf[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert!(matches!(
            UdpDatagram::parse(&buf),
            Err(PacketError::BadLength { value: 7, .. })
        ));
    }
}
