//! Partial checksums in decapsulated frames.
//!
//! A Linux host sends a sandbox's TCP/UDP segments with `CHECKSUM_PARTIAL`: the
//! checksum field holds only the folded pseudo-header sum, to be completed by the NIC.
//! Over a veth underlay nothing ever completes it (the receiving kernel trusts the skb's
//! state), but a UDP socket hands us the bytes without that state. So a decapsulated
//! segment whose checksum does not verify, and whose field holds exactly the
//! pseudo-header sum, is completed here; anything else is passed on untouched (a
//! corrupt segment stays corrupt and its receiver drops it). A corrupt segment is
//! mistaken for a partial one only if its field happens to equal that value: the same
//! odds as a corrupt segment passing the checksum itself.

use crate::packet::ethernet::{EthernetFrame, ethertype};
use crate::packet::ipv4::Ipv4Packet;
use crate::packet::ipv6::Ipv6Packet;
use crate::packet::offload::{F_NEEDS_CSUM, VirtioNetHdr, gso_type};
use crate::packet::{checksum, ip_proto};

/// What the upper-layer checksum of a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4Checksum {
    /// Verifies, is absent (IPv4 UDP zero), or the frame is not TCP/UDP.
    Fine,
    /// Holds the pseudo-header sum: complete the field at this offset (from the start of
    /// the frame) over the bytes from `start`.
    Partial { start: usize, field: usize },
    /// Wrong: leave it for the receiver to drop.
    Bad,
}

/// Inspects the TCP/UDP checksum of an Ethernet frame.
pub(crate) fn inspect(frame: &[u8]) -> L4Checksum {
    let Ok(eth) = EthernetFrame::parse(frame) else {
        return L4Checksum::Fine;
    };
    let l3_offset = eth.header_len();
    let (protocol, l4_offset, l4, pseudo) = match eth.ethertype() {
        ethertype::IPV4 => {
            let Ok(ip) = Ipv4Packet::parse(eth.payload()) else {
                return L4Checksum::Fine;
            };
            if ip.is_fragment() {
                return L4Checksum::Fine;
            }
            (
                ip.protocol(),
                l3_offset + ip.header_len(),
                ip.payload(),
                ip.pseudo_header(),
            )
        }
        ethertype::IPV6 => {
            let Ok(ip) = Ipv6Packet::parse(eth.payload()) else {
                return L4Checksum::Fine;
            };
            if ip.fragment().is_some() {
                return L4Checksum::Fine;
            }
            (
                ip.upper_protocol(),
                l3_offset + ip.upper_offset(),
                ip.upper_payload(),
                ip.pseudo_header(),
            )
        }
        _ => return L4Checksum::Fine,
    };
    let field = match protocol {
        ip_proto::TCP if l4.len() >= 20 => 16,
        ip_proto::UDP if l4.len() >= 8 => 6,
        _ => return L4Checksum::Fine,
    };
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if protocol == ip_proto::UDP && stored == 0 && eth.ethertype() == ethertype::IPV4 {
        return L4Checksum::Fine;
    }
    if checksum::verifies(checksum::add(pseudo, l4)) {
        return L4Checksum::Fine;
    }
    if stored == checksum::fold(pseudo) {
        L4Checksum::Partial {
            start: l4_offset,
            field: l4_offset + field,
        }
    } else {
        L4Checksum::Bad
    }
}

/// Completes a partial checksum found by [`inspect`] in place.
pub(crate) fn complete(frame: &mut [u8], start: usize, field: usize) {
    if field + 2 > frame.len() || start > field {
        return;
    }
    let mut sum = checksum::finish(checksum::add(0, &frame[start..]));
    // A computed UDP checksum of zero is sent as 0xffff (zero means "none").
    if sum == 0 && field - start == 6 {
        sum = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}

/// A virtio-net header that lets a port's kernel segment `frame`: a TCP or UDP
/// super-frame as a Linux sender hands it over when the underlay (a veth) carries UDP
/// tunnel GSO packets unsegmented: one datagram, inner checksum partial. Segments of at
/// most `mtu` bytes of IP packet. `None` when the frame is not TCP/UDP over IP.
pub(crate) fn gso_header(frame: &[u8], mtu: u32) -> Option<VirtioNetHdr> {
    let eth = EthernetFrame::parse(frame).ok()?;
    let l3_offset = eth.header_len();
    let (v6, protocol, l4_offset, l3_header) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::parse(eth.payload()).ok()?;
            (
                false,
                ip.protocol(),
                l3_offset + ip.header_len(),
                ip.header_len(),
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::parse(eth.payload()).ok()?;
            (
                true,
                ip.upper_protocol(),
                l3_offset + ip.upper_offset(),
                ip.upper_offset(),
            )
        }
        _ => return None,
    };
    let (kind, l4_header, csum_offset) = match protocol {
        ip_proto::TCP => {
            let data_offset = usize::from(*frame.get(l4_offset + 12)? >> 4) * 4;
            let kind = if v6 { gso_type::TCPV6 } else { gso_type::TCPV4 };
            (kind, data_offset.max(20), 16)
        }
        ip_proto::UDP => (gso_type::UDP_L4, 8, 6),
        _ => return None,
    };
    let headers = l4_offset + l4_header;
    let mss = (mtu as usize).checked_sub(l3_header + l4_header)?;
    if frame.len() <= headers || mss == 0 {
        return None;
    }
    Some(VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: kind,
        hdr_len: headers as u16,
        gso_size: mss.min(usize::from(u16::MAX)) as u16,
        csum_start: l4_offset as u16,
        csum_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::offload::build::{TcpFrameSpec, tcp_frame};
    use std::net::{IpAddr, Ipv4Addr};

    fn frame() -> Vec<u8> {
        let spec = TcpFrameSpec {
            source: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            destination: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            source_port: 40000,
            destination_port: 5201,
            sequence: 1,
            acknowledgment: 1,
            flags: 0x10,
            window: 512,
            identification: 9,
        };
        tcp_frame(&spec, &[7u8; 300]).unwrap()
    }

    #[test]
    fn a_valid_frame_is_fine() {
        assert_eq!(inspect(&frame()), L4Checksum::Fine);
    }

    #[test]
    fn a_partial_checksum_is_found_and_completed() {
        let good = frame();
        let L4Checksum::Fine = inspect(&good) else {
            panic!("built frame must verify")
        };
        // Rewrite the field as Linux leaves it under CHECKSUM_PARTIAL.
        let eth = EthernetFrame::parse(&good).unwrap();
        let ip_offset = eth.header_len();
        let ip = Ipv4Packet::parse(eth.payload()).unwrap();
        let field = ip_offset + ip.header_len() + 16;
        let mut partial = good.clone();
        partial[field..field + 2]
            .copy_from_slice(&checksum::fold(ip.pseudo_header()).to_be_bytes());
        let L4Checksum::Partial {
            start,
            field: found,
        } = inspect(&partial)
        else {
            panic!("partial checksum not recognised")
        };
        assert_eq!(found, field);
        complete(&mut partial, start, found);
        assert_eq!(partial, good);
    }

    #[test]
    fn a_corrupt_checksum_is_bad_and_not_laundered() {
        let mut corrupt = frame();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x55;
        assert_eq!(inspect(&corrupt), L4Checksum::Bad);
    }

    #[test]
    fn a_super_frame_gets_a_gso_header_for_the_port_mtu() {
        let frame = frame();
        let header = gso_header(&frame, 200).unwrap();
        assert_eq!(header.gso_type, gso_type::TCPV4);
        assert_eq!(header.flags, F_NEEDS_CSUM);
        assert_eq!(header.csum_start, 34);
        assert_eq!(header.csum_offset, 16);
        assert_eq!(header.hdr_len, 34 + 32);
        assert_eq!(header.gso_size, 200 - 20 - 32);
        assert!(gso_header(&frame[..40], 1500).is_none());
    }

    #[test]
    fn short_or_foreign_frames_are_left_alone() {
        assert_eq!(inspect(&[]), L4Checksum::Fine);
        assert_eq!(inspect(&[0u8; 14]), L4Checksum::Fine);
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(inspect(&arp), L4Checksum::Fine);
    }
}
