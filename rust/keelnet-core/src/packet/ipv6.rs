//! IPv6 headers (RFC 8200) and the extension headers a tunnel may meet: hop-by-hop
//! options, routing, fragment and destination options.

use std::net::Ipv6Addr;

use super::checksum;
use super::{Layer, PacketError, be16, ip_proto, need, put16, room};

pub const HEADER_LEN: usize = 40;
/// Extension headers walked before giving up: bounds work on hostile chains.
const MAX_EXTENSION_HEADERS: usize = 8;

/// A parsed IPv6 packet: fixed header checked, extension headers walked to the upper
/// layer.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    /// Exactly the packet (40 + payload length; Ethernet padding excluded).
    bytes: &'a [u8],
    upper_protocol: u8,
    upper_offset: usize,
    fragment: Option<Fragment>,
}

/// What a fragment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u16,
    pub more: bool,
    pub identification: u32,
}

impl<'a> Ipv6Packet<'a> {
    /// Parses a packet at the start of `bytes`; bytes past the payload length are ignored.
    /// Jumbograms (payload length 0 with a jumbo option) are not supported.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Ipv6, bytes, HEADER_LEN)?;
        let version = bytes[0] >> 4;
        if version != 6 {
            return Err(PacketError::BadVersion {
                layer: Layer::Ipv6,
                version,
            });
        }
        let total = HEADER_LEN + usize::from(be16(bytes, 4));
        need(Layer::Ipv6, bytes, total)?;
        let bytes = &bytes[..total];
        let mut next = bytes[6];
        let mut offset = HEADER_LEN;
        let mut fragment = None;
        for _ in 0..MAX_EXTENSION_HEADERS {
            match next {
                ip_proto::HOP_BY_HOP | ip_proto::ROUTING | ip_proto::DESTINATION_OPTIONS => {
                    if next == ip_proto::HOP_BY_HOP && offset != HEADER_LEN {
                        return Err(PacketError::Invalid {
                            layer: Layer::Ipv6,
                            what: "hop-by-hop options not first",
                        });
                    }
                    need(Layer::Ipv6, bytes, offset + 2)?;
                    let len = (usize::from(bytes[offset + 1]) + 1) * 8;
                    need(Layer::Ipv6, bytes, offset + len)?;
                    next = bytes[offset];
                    offset += len;
                }
                ip_proto::FRAGMENT => {
                    need(Layer::Ipv6, bytes, offset + 8)?;
                    let field = be16(bytes, offset + 2);
                    fragment = Some(Fragment {
                        offset: field >> 3,
                        more: field & 1 != 0,
                        identification: super::be32(bytes, offset + 4),
                    });
                    next = bytes[offset];
                    offset += 8;
                }
                _ => {
                    return Ok(Ipv6Packet {
                        bytes,
                        upper_protocol: next,
                        upper_offset: offset,
                        fragment,
                    });
                }
            }
        }
        Err(PacketError::Invalid {
            layer: Layer::Ipv6,
            what: "too many extension headers",
        })
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        ((be16(self.bytes, 0) >> 4) & 0xff) as u8
    }
    #[inline]
    pub fn flow_label(&self) -> u32 {
        super::be32(self.bytes, 0) & 0x000f_ffff
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.bytes.len() - HEADER_LEN
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.bytes[7]
    }
    #[inline]
    pub fn source(&self) -> Ipv6Addr {
        addr_at(self.bytes, 8)
    }
    #[inline]
    pub fn destination(&self) -> Ipv6Addr {
        addr_at(self.bytes, 24)
    }
    /// The protocol after the extension headers (59 = no next header).
    #[inline]
    pub fn upper_protocol(&self) -> u8 {
        self.upper_protocol
    }
    /// Offset of the upper-layer header from the start of the packet.
    #[inline]
    pub fn upper_offset(&self) -> usize {
        self.upper_offset
    }
    /// The fragment header, if present.
    #[inline]
    pub fn fragment(&self) -> Option<Fragment> {
        self.fragment
    }
    /// Fixed header plus extension headers.
    #[inline]
    pub fn headers(&self) -> &'a [u8] {
        &self.bytes[..self.upper_offset]
    }
    /// The upper-layer payload (after the extension headers).
    #[inline]
    pub fn upper_payload(&self) -> &'a [u8] {
        &self.bytes[self.upper_offset..]
    }
    /// The pseudo-header sum for the upper-layer checksum. (With a routing header the
    /// final destination would be the last segment; routed packets are not tunnels
    /// keelnet terminates, so this uses the header's destination.)
    #[inline]
    pub fn pseudo_header(&self) -> u64 {
        checksum::pseudo_header_v6(
            &self.source(),
            &self.destination(),
            self.upper_protocol,
            self.upper_payload().len() as u32,
        )
    }
}

#[inline]
fn addr_at(bytes: &[u8], offset: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[offset..offset + 16]);
    Ipv6Addr::from(octets)
}

/// The fields of an IPv6 header (no extension headers) to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub payload_len: u16,
}

impl Ipv6Header {
    /// Writes the 40-byte header at the start of `buf`.
    #[inline]
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, PacketError> {
        room(buf, HEADER_LEN)?;
        let first =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff);
        buf[0..4].copy_from_slice(&first.to_be_bytes());
        put16(buf, 4, self.payload_len);
        buf[6] = self.next_header;
        buf[7] = self.hop_limit;
        buf[8..24].copy_from_slice(&self.source.octets());
        buf[24..40].copy_from_slice(&self.destination.octets());
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, payload_len: u16) -> [u8; 40] {
        let mut buf = [0u8; 40];
        Ipv6Header {
            source: "2001:db8::1".parse().unwrap(),
            destination: "2001:db8::2".parse().unwrap(),
            next_header: next,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
            payload_len,
        }
        .write(&mut buf)
        .unwrap();
        buf
    }

    #[test]
    fn walks_extension_headers_to_udp() {
        let mut packet = header(ip_proto::HOP_BY_HOP, 8 + 8 + 16 + 8).to_vec();
        packet.extend_from_slice(&[ip_proto::FRAGMENT, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, PadN
        packet.extend_from_slice(&[ip_proto::DESTINATION_OPTIONS, 0, 0, 0, 0, 0, 0, 7]); // fragment, id 7
        packet.extend_from_slice(&[ip_proto::UDP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0; 8]);
        let parsed = Ipv6Packet::parse(&packet).unwrap();
        assert_eq!(parsed.upper_protocol(), ip_proto::UDP);
        assert_eq!(parsed.upper_offset(), 40 + 32);
        assert_eq!(parsed.upper_payload().len(), 8);
        assert_eq!(
            parsed.fragment(),
            Some(Fragment {
                offset: 0,
                more: false,
                identification: 7
            })
        );
        assert_eq!(parsed.traffic_class(), 0xb8);
        assert_eq!(parsed.flow_label(), 0x12345);
    }

    #[test]
    fn rejects_truncated_and_looping_chains() {
        let short_ext = {
            let mut packet = header(ip_proto::ROUTING, 8).to_vec();
            packet.extend_from_slice(&[ip_proto::UDP, 3, 0, 0, 0, 0, 0, 0]);
            packet
        };
        assert!(matches!(
            Ipv6Packet::parse(&short_ext),
            Err(PacketError::Truncated { .. })
        ));
        let mut chain = header(ip_proto::DESTINATION_OPTIONS, 80).to_vec();
        for _ in 0..10 {
            chain.extend_from_slice(&[ip_proto::DESTINATION_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert!(matches!(
            Ipv6Packet::parse(&chain),
            Err(PacketError::Invalid { .. })
        ));
        assert!(matches!(
            Ipv6Packet::parse(&header(ip_proto::UDP, 1)),
            Err(PacketError::Truncated { .. })
        ));
        let mut v4 = header(ip_proto::UDP, 0);
        v4[0] = 0x45;
        assert!(matches!(
            Ipv6Packet::parse(&v4),
            Err(PacketError::BadVersion { .. })
        ));
    }
}
