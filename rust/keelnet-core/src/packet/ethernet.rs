//! Ethernet II frames with at most one 802.1Q tag.

use super::{Layer, MacAddr, PacketError, be16, need, put16, room};

pub const HEADER_LEN: usize = 14;
pub const VLAN_HEADER_LEN: usize = 18;

/// EtherTypes used here.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// An 802.1Q tag: priority (PCP), drop eligible (DEI) and VLAN id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl VlanTag {
    fn tci(self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

/// A parsed Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> EthernetFrame<'a> {
    /// Parses the header. Frames with a second (QinQ) tag or an 802.3 length field in
    /// place of the EtherType are rejected.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        need(Layer::Ethernet, bytes, HEADER_LEN)?;
        let mut header_len = HEADER_LEN;
        let mut ethertype = be16(bytes, 12);
        if ethertype == ethertype::VLAN {
            need(Layer::Ethernet, bytes, VLAN_HEADER_LEN)?;
            header_len = VLAN_HEADER_LEN;
            ethertype = be16(bytes, 16);
        }
        if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
            return Err(PacketError::Unsupported {
                layer: Layer::Ethernet,
                what: "second VLAN tag",
                value: u32::from(ethertype),
            });
        }
        if ethertype < 0x0600 {
            return Err(PacketError::Unsupported {
                layer: Layer::Ethernet,
                what: "802.3 length field (not Ethernet II)",
                value: u32::from(ethertype),
            });
        }
        Ok(EthernetFrame { bytes, header_len })
    }

    #[inline]
    pub fn destination(&self) -> MacAddr {
        mac_at(self.bytes, 0)
    }

    #[inline]
    pub fn source(&self) -> MacAddr {
        mac_at(self.bytes, 6)
    }

    /// The 802.1Q tag, if the frame has one.
    #[inline]
    pub fn vlan(&self) -> Option<VlanTag> {
        (self.header_len == VLAN_HEADER_LEN).then(|| {
            let tci = be16(self.bytes, 14);
            VlanTag {
                pcp: (tci >> 13) as u8,
                dei: tci & 0x1000 != 0,
                vid: tci & 0x0fff,
            }
        })
    }

    /// The EtherType of the payload (after the tag, if any).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.bytes, self.header_len - 2)
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

#[inline(always)]
pub(crate) fn mac_at(bytes: &[u8], offset: usize) -> MacAddr {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[offset..offset + 6]);
    mac
}

/// Length of the header [`write_header`] writes.
pub fn header_len(vlan: Option<VlanTag>) -> usize {
    if vlan.is_some() {
        VLAN_HEADER_LEN
    } else {
        HEADER_LEN
    }
}

/// Writes an Ethernet header at the start of `buf`; returns its length.
#[inline]
pub fn write_header(
    buf: &mut [u8],
    destination: &MacAddr,
    source: &MacAddr,
    vlan: Option<VlanTag>,
    ethertype: u16,
) -> Result<usize, PacketError> {
    let len = header_len(vlan);
    room(buf, len)?;
    buf[0..6].copy_from_slice(destination);
    buf[6..12].copy_from_slice(source);
    if let Some(tag) = vlan {
        put16(buf, 12, ethertype::VLAN);
        put16(buf, 14, tag.tci());
    }
    put16(buf, len - 2, ethertype);
    Ok(len)
}

/// True for group (multicast and broadcast) addresses.
pub fn is_multicast(mac: &MacAddr) -> bool {
    mac[0] & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_tag() {
        let dst = [0xff; 6];
        let src = [0x02, 0, 0, 0, 0, 1];
        for vlan in [
            None,
            Some(VlanTag {
                pcp: 5,
                dei: true,
                vid: 100,
            }),
        ] {
            let mut buf = [0u8; 64];
            let len = write_header(&mut buf, &dst, &src, vlan, ethertype::ARP).unwrap();
            buf[len] = 0xaa;
            let frame = EthernetFrame::parse(&buf[..len + 1]).unwrap();
            assert_eq!(frame.destination(), dst);
            assert_eq!(frame.source(), src);
            assert_eq!(frame.vlan(), vlan);
            assert_eq!(frame.ethertype(), ethertype::ARP);
            assert_eq!(frame.payload(), &[0xaa]);
        }
    }

    #[test]
    fn rejects_short_qinq_and_8023() {
        assert!(matches!(
            EthernetFrame::parse(&[0; 13]),
            Err(PacketError::Truncated {
                needed: 14,
                available: 13,
                ..
            })
        ));
        let mut tagged = [0u8; 17];
        tagged[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert!(matches!(
            EthernetFrame::parse(&tagged),
            Err(PacketError::Truncated { .. })
        ));
        let mut double = [0u8; 18];
        double[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        double[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert!(matches!(
            EthernetFrame::parse(&double),
            Err(PacketError::Unsupported { .. })
        ));
        let mut llc = [0u8; 14];
        llc[12..14].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            EthernetFrame::parse(&llc),
            Err(PacketError::Unsupported { .. })
        ));
    }
}
