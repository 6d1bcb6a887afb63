//! ARP for IPv4 over Ethernet (RFC 826): the only kind a container network carries.

use std::net::Ipv4Addr;

use super::ethernet::{ethertype, mac_at};
use super::{Layer, MacAddr, PacketError, be16, need, put16, room};

pub const PACKET_LEN: usize = 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A parsed ARP packet (Ethernet hardware, IPv4 protocol addresses).
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<'a> {
    bytes: &'a [u8],
}

impl<'a> ArpPacket<'a> {
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Arp, bytes, PACKET_LEN)?;
        let unsupported = |what, value: u16| PacketError::Unsupported {
            layer: Layer::Arp,
            what,
            value: u32::from(value),
        };
        if be16(bytes, 0) != 1 {
            return Err(unsupported("hardware type", be16(bytes, 0)));
        }
        if be16(bytes, 2) != ethertype::IPV4 {
            return Err(unsupported("protocol type", be16(bytes, 2)));
        }
        if bytes[4] != 6 || bytes[5] != 4 {
            return Err(PacketError::Invalid {
                layer: Layer::Arp,
                what: "address lengths are not 6 and 4",
            });
        }
        Ok(ArpPacket { bytes })
    }

    #[inline]
    pub fn operation(&self) -> u16 {
        be16(self.bytes, 6)
    }
    #[inline]
    pub fn sender_mac(&self) -> MacAddr {
        mac_at(self.bytes, 8)
    }
    #[inline]
    pub fn sender_ip(&self) -> Ipv4Addr {
        ipv4_at(self.bytes, 14)
    }
    #[inline]
    pub fn target_mac(&self) -> MacAddr {
        mac_at(self.bytes, 18)
    }
    #[inline]
    pub fn target_ip(&self) -> Ipv4Addr {
        ipv4_at(self.bytes, 24)
    }
}

#[inline]
fn ipv4_at(bytes: &[u8], offset: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    )
}

/// The fields of an ARP packet to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// Writes the packet at the start of `buf`; returns its length (28).
    #[inline]
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, PacketError> {
        room(buf, PACKET_LEN)?;
        put16(buf, 0, 1);
        put16(buf, 2, ethertype::IPV4);
        buf[4] = 6;
        buf[5] = 4;
        put16(buf, 6, self.operation);
        buf[8..14].copy_from_slice(&self.sender_mac);
        buf[14..18].copy_from_slice(&self.sender_ip.octets());
        buf[18..24].copy_from_slice(&self.target_mac);
        buf[24..28].copy_from_slice(&self.target_ip.octets());
        Ok(PACKET_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let arp = Arp {
            operation: OP_REQUEST,
            sender_mac: [2, 0, 0, 0, 0, 1],
            sender_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_mac: [0; 6],
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut buf = [0u8; 28];
        arp.write(&mut buf).unwrap();
        let parsed = ArpPacket::parse(&buf).unwrap();
        assert_eq!(parsed.operation(), OP_REQUEST);
        assert_eq!(parsed.sender_mac(), arp.sender_mac);
        assert_eq!(parsed.sender_ip(), arp.sender_ip);
        assert_eq!(parsed.target_mac(), arp.target_mac);
        assert_eq!(parsed.target_ip(), arp.target_ip);
        assert!(ArpPacket::parse(&buf[..27]).is_err());
        buf[5] = 16;
        assert!(matches!(
            ArpPacket::parse(&buf),
            Err(PacketError::Invalid { .. })
        ));
    }
}
