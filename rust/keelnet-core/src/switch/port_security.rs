//! Port security: what a sandbox's port may send (OpenStack's port security, libvirt's
//! clean-traffic). A guarded port sends untagged frames from its own MAC only; IPv4 and
//! IPv6 only from its addresses; ARP only about itself; neighbour discovery only about
//! its own addresses and link-layer address, and never as a router (no router
//! advertisements, no redirects). Anything else is dropped and counted by reason.
//!
//! The check runs on every frame a guarded port sends, so the common case (TCP or UDP
//! from the right MAC and address) is a 6-byte and a 4- or 16-byte comparison, with no
//! header walked; only ICMPv6 and IPv6 extension headers are looked into.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::DropReason;
use crate::fdb::MacAddr;
use crate::packet::arp::ArpPacket;
use crate::packet::ethernet::{EthernetFrame, ethertype};
use crate::packet::ipv6::Ipv6Packet;

/// IPv6 next-header value of ICMPv6.
const ICMPV6: u8 = 58;
/// ICMPv6 types (RFC 4861 neighbour discovery, RFC 2710 / 3810 listener reports).
mod icmpv6_type {
    pub const MLD_REPORT: u8 = 131;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOR_SOLICITATION: u8 = 135;
    pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLD2_REPORT: u8 = 143;
}
/// ND options carrying a link-layer address: source (1) and target (2).
const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;

/// What one guarded port may send: its MAC and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSecurity {
    mac: MacAddr,
    ipv4: Vec<[u8; 4]>,
    ipv6: Vec<[u8; 16]>,
}

impl PortSecurity {
    /// A port with `mac` that may use `addresses` (an IPv6 network's sandboxes need their
    /// link-local address among them).
    pub fn new(mac: MacAddr, addresses: &[IpAddr]) -> PortSecurity {
        let mut guard = PortSecurity {
            mac,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        };
        for address in addresses {
            match address {
                IpAddr::V4(v4) if !guard.ipv4.contains(&v4.octets()) => {
                    guard.ipv4.push(v4.octets())
                }
                IpAddr::V6(v6) if !guard.ipv6.contains(&v6.octets()) => {
                    guard.ipv6.push(v6.octets())
                }
                _ => {}
            }
        }
        guard
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The addresses the port may send from.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let v4 = self.ipv4.iter().map(|a| IpAddr::V4(Ipv4Addr::from(*a)));
        let v6 = self.ipv6.iter().map(|a| IpAddr::V6(Ipv6Addr::from(*a)));
        v4.chain(v6).collect()
    }

    /// Whether the port may send `eth`; the reason to drop it otherwise.
    #[inline]
    pub fn check(&self, eth: &EthernetFrame<'_>) -> Result<(), DropReason> {
        if eth.bytes()[6..12] != self.mac {
            return Err(DropReason::SpoofedMac);
        }
        if eth.vlan().is_some() {
            return Err(DropReason::Tagged);
        }
        let payload = eth.payload();
        match eth.ethertype() {
            ethertype::IPV4 => self.check_ipv4(payload),
            ethertype::IPV6 => self.check_ipv6(payload),
            ethertype::ARP => self.check_arp(payload),
            // Other protocols carry no address to forge beyond the MAC.
            _ => Ok(()),
        }
    }

    #[inline]
    fn check_ipv4(&self, packet: &[u8]) -> Result<(), DropReason> {
        // Only the source matters here: a receiver drops what else is wrong.
        match packet.get(12..16) {
            Some(source) if packet[0] >> 4 == 4 && self.ipv4.iter().any(|a| a == source) => Ok(()),
            Some(_) => Err(DropReason::SpoofedIp),
            None => Err(DropReason::Malformed),
        }
    }

    #[inline]
    fn check_ipv6(&self, packet: &[u8]) -> Result<(), DropReason> {
        let Some(source) = packet.get(8..24) else {
            return Err(DropReason::Malformed);
        };
        if packet[0] >> 4 != 6 {
            return Err(DropReason::SpoofedIp);
        }
        let next_header = packet[6];
        let own_source = self.ipv6.iter().any(|a| a == source);
        if own_source && matches!(next_header, 6 | 17) {
            return Ok(()); // TCP, UDP: the common case
        }
        let unspecified = source.iter().all(|&byte| byte == 0);
        if !own_source && !unspecified {
            return Err(DropReason::SpoofedIp);
        }
        // ICMPv6 may hide behind extension headers: walk them (bounded).
        let Ok(parsed) = Ipv6Packet::parse(packet) else {
            return Err(DropReason::Malformed);
        };
        if parsed.upper_protocol() != ICMPV6 {
            // Only neighbour discovery and listener reports come from `::`.
            return if unspecified {
                Err(DropReason::SpoofedIp)
            } else {
                Ok(())
            };
        }
        self.check_icmpv6(parsed.upper_payload(), unspecified)
    }

    fn check_icmpv6(&self, message: &[u8], unspecified_source: bool) -> Result<(), DropReason> {
        let Some(&kind) = message.first() else {
            return Err(DropReason::Malformed);
        };
        let options_at = match kind {
            icmpv6_type::ROUTER_ADVERTISEMENT | icmpv6_type::REDIRECT => {
                // A sandbox is never a router of its network.
                return Err(DropReason::SpoofedNd);
            }
            icmpv6_type::NEIGHBOR_SOLICITATION | icmpv6_type::NEIGHBOR_ADVERTISEMENT => {
                let Some(target) = message.get(8..24) else {
                    return Err(DropReason::Malformed);
                };
                let own_target = self.ipv6.iter().any(|a| a == target);
                // An advertisement speaks for its target; a solicitation from `::` is
                // duplicate address detection, which may only probe the port's own
                // address (probing another's makes that one give it up).
                let about_itself =
                    kind == icmpv6_type::NEIGHBOR_SOLICITATION && !unspecified_source;
                if !own_target && !about_itself {
                    return Err(DropReason::SpoofedNd);
                }
                24
            }
            icmpv6_type::ROUTER_SOLICITATION => 8,
            icmpv6_type::MLD_REPORT | icmpv6_type::MLD2_REPORT => return Ok(()),
            _ if unspecified_source => return Err(DropReason::SpoofedIp),
            _ => return Ok(()),
        };
        self.check_nd_options(message, options_at)
    }

    /// Every link-layer address option must be the port's MAC (the receiver would
    /// otherwise cache another's).
    fn check_nd_options(&self, message: &[u8], mut offset: usize) -> Result<(), DropReason> {
        while offset < message.len() {
            let Some(&[kind, units]) = message.get(offset..offset + 2) else {
                return Err(DropReason::Malformed);
            };
            let length = usize::from(units) * 8;
            if length == 0 || offset + length > message.len() {
                return Err(DropReason::Malformed);
            }
            let link_layer = kind == OPTION_SOURCE_LL || kind == OPTION_TARGET_LL;
            if link_layer && (length < 8 || message[offset + 2..offset + 8] != self.mac) {
                return Err(DropReason::SpoofedNd);
            }
            offset += length;
        }
        Ok(())
    }

    #[inline]
    fn check_arp(&self, packet: &[u8]) -> Result<(), DropReason> {
        let Ok(arp) = ArpPacket::parse(packet) else {
            return Err(DropReason::SpoofedArp);
        };
        if arp.sender_mac() != self.mac {
            return Err(DropReason::SpoofedArp);
        }
        let sender = arp.sender_ip().octets();
        if self.ipv4.contains(&sender) {
            return Ok(());
        }
        // A probe (RFC 5227) has no sender address yet and may only ask about its own.
        if sender == [0; 4] && self.ipv4.contains(&arp.target_ip().octets()) {
            return Ok(());
        }
        Err(DropReason::SpoofedArp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::arp::{self, Arp};
    use crate::packet::ethernet::{self, VlanTag};
    use proptest::prelude::*;

    const MAC: MacAddr = [0x02, 0x42, 0, 0, 0, 0x0a];
    const OTHER: MacAddr = [0x02, 0x42, 0, 0, 0, 0x0b];

    /// The EUI-64 link-local address (RFC 4291) of `mac`: the one a sandbox's kernel gives
    /// its interface with the default `addr_gen_mode`.
    fn link_local(mac: &MacAddr) -> Ipv6Addr {
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            mac[0] ^ 0x02,
            mac[1],
            mac[2],
            0xff,
            0xfe,
            mac[3],
            mac[4],
            mac[5],
        ])
    }

    fn guard() -> PortSecurity {
        PortSecurity::new(
            MAC,
            &[
                "10.0.0.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                IpAddr::V6(link_local(&MAC)),
            ],
        )
    }

    fn frame(source: MacAddr, kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; ethernet::HEADER_LEN];
        ethernet::write_header(&mut bytes, &[0xff; 6], &source, None, kind).unwrap();
        bytes.extend_from_slice(payload);
        bytes
    }

    fn check(bytes: &[u8]) -> Result<(), DropReason> {
        guard().check(&EthernetFrame::parse(bytes).unwrap())
    }

    fn ipv4(source: &str) -> Vec<u8> {
        let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        packet.extend_from_slice(&source.parse::<Ipv4Addr>().unwrap().octets());
        packet.extend_from_slice(&[10, 0, 0, 3]);
        packet.extend_from_slice(&[0; 8]);
        packet
    }

    fn ipv6(source: &str, next_header: u8, upper: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&(upper.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[next_header, 255]);
        packet.extend_from_slice(&source.parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(upper);
        packet
    }

    /// An NS or NA about `target`, with a link-layer address option for `option_mac`.
    fn neighbor(kind: u8, target: &str, option_mac: Option<MacAddr>) -> Vec<u8> {
        let mut message = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&target.parse::<Ipv6Addr>().unwrap().octets());
        if let Some(mac) = option_mac {
            let option = if kind == icmpv6_type::NEIGHBOR_ADVERTISEMENT {
                OPTION_TARGET_LL
            } else {
                OPTION_SOURCE_LL
            };
            message.extend_from_slice(&[option, 1]);
            message.extend_from_slice(&mac);
        }
        message
    }

    fn arp(sender_mac: MacAddr, sender_ip: &str, target_ip: &str) -> Vec<u8> {
        let mut packet = vec![0u8; arp::PACKET_LEN];
        Arp {
            operation: arp::OP_REPLY,
            sender_mac,
            sender_ip: sender_ip.parse().unwrap(),
            target_mac: OTHER,
            target_ip: target_ip.parse().unwrap(),
        }
        .write(&mut packet)
        .unwrap();
        packet
    }

    #[test]
    fn own_traffic_passes() {
        assert_eq!(
            check(&frame(MAC, ethertype::IPV4, &ipv4("10.0.0.2"))),
            Ok(())
        );
        let tcp6 = ipv6("2001:db8::2", 6, &[0; 20]);
        assert_eq!(check(&frame(MAC, ethertype::IPV6, &tcp6)), Ok(()));
        assert_eq!(
            check(&frame(
                MAC,
                ethertype::ARP,
                &arp(MAC, "10.0.0.2", "10.0.0.1")
            )),
            Ok(())
        );
        // An ARP probe for its own address, duplicate address detection, listener reports.
        assert_eq!(
            check(&frame(
                MAC,
                ethertype::ARP,
                &arp(MAC, "0.0.0.0", "10.0.0.2")
            )),
            Ok(())
        );
        let dad = neighbor(icmpv6_type::NEIGHBOR_SOLICITATION, "2001:db8::2", None);
        assert_eq!(
            check(&frame(MAC, ethertype::IPV6, &ipv6("::", ICMPV6, &dad))),
            Ok(())
        );
        let report = [icmpv6_type::MLD2_REPORT, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            check(&frame(MAC, ethertype::IPV6, &ipv6("::", ICMPV6, &report))),
            Ok(())
        );
        // Resolving a neighbour, answering for itself from its link-local address.
        let link_local = link_local(&MAC).to_string();
        let ns = neighbor(icmpv6_type::NEIGHBOR_SOLICITATION, "2001:db8::1", Some(MAC));
        assert_eq!(
            check(&frame(
                MAC,
                ethertype::IPV6,
                &ipv6(&link_local, ICMPV6, &ns)
            )),
            Ok(())
        );
        let na = neighbor(
            icmpv6_type::NEIGHBOR_ADVERTISEMENT,
            "2001:db8::2",
            Some(MAC),
        );
        assert_eq!(
            check(&frame(
                MAC,
                ethertype::IPV6,
                &ipv6(&link_local, ICMPV6, &na)
            )),
            Ok(())
        );
        // Protocols without addresses only need the right MAC.
        assert_eq!(check(&frame(MAC, 0x88b5, &[0; 46])), Ok(()));
    }

    #[test]
    fn forged_sources_are_dropped_by_reason() {
        let udp6 = ipv6("2001:db8::3", 17, &[0; 8]);
        let foreign_link_local = ipv6("fe80::1", 6, &[0; 20]);
        let cases = [
            (
                frame(OTHER, ethertype::IPV4, &ipv4("10.0.0.2")),
                DropReason::SpoofedMac,
            ),
            (frame(OTHER, 0x88b5, &[0; 46]), DropReason::SpoofedMac),
            (
                frame(MAC, ethertype::IPV4, &ipv4("10.0.0.3")),
                DropReason::SpoofedIp,
            ),
            (frame(MAC, ethertype::IPV6, &udp6), DropReason::SpoofedIp),
            (
                frame(MAC, ethertype::IPV6, &foreign_link_local),
                DropReason::SpoofedIp,
            ),
            (
                frame(MAC, ethertype::IPV4, &[0x45, 0, 0]),
                DropReason::Malformed,
            ),
        ];
        for (bytes, reason) in &cases {
            assert_eq!(check(bytes), Err(*reason), "{bytes:02x?}");
        }
    }

    #[test]
    fn forged_arp_is_dropped() {
        for packet in [
            arp(OTHER, "10.0.0.2", "10.0.0.1"), // another's MAC inside
            arp(MAC, "10.0.0.1", "10.0.0.3"),   // claims the gateway's address
            arp(MAC, "10.0.0.9", "10.0.0.9"),   // gratuitous, for an address not its own
            arp(MAC, "0.0.0.0", "10.0.0.3"),    // a probe that would scare 10.0.0.3 off
        ] {
            assert_eq!(
                check(&frame(MAC, ethertype::ARP, &packet)),
                Err(DropReason::SpoofedArp)
            );
        }
    }

    #[test]
    fn forged_neighbour_discovery_is_dropped() {
        let link_local = link_local(&MAC).to_string();
        let forged = [
            // "2001:db8::1 (the gateway) is at my MAC"
            neighbor(
                icmpv6_type::NEIGHBOR_ADVERTISEMENT,
                "2001:db8::1",
                Some(MAC),
            ),
            // "my address is at another MAC"
            neighbor(
                icmpv6_type::NEIGHBOR_ADVERTISEMENT,
                "2001:db8::2",
                Some(OTHER),
            ),
            // a solicitation that would plant another MAC in the target's cache
            neighbor(
                icmpv6_type::NEIGHBOR_SOLICITATION,
                "2001:db8::3",
                Some(OTHER),
            ),
            // router advertisement and redirect
            vec![
                icmpv6_type::ROUTER_ADVERTISEMENT,
                0,
                0,
                0,
                64,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            vec![icmpv6_type::REDIRECT; 40],
        ];
        for message in forged {
            let packet = ipv6(&link_local, ICMPV6, &message);
            assert_eq!(
                check(&frame(MAC, ethertype::IPV6, &packet)),
                Err(DropReason::SpoofedNd),
                "{message:02x?}"
            );
        }
        // Duplicate address detection for a neighbour's address makes it give it up.
        let dad = neighbor(icmpv6_type::NEIGHBOR_SOLICITATION, "2001:db8::3", None);
        assert_eq!(
            check(&frame(MAC, ethertype::IPV6, &ipv6("::", ICMPV6, &dad))),
            Err(DropReason::SpoofedNd)
        );
        // An advertisement hidden behind a hop-by-hop header is still seen.
        let na = neighbor(
            icmpv6_type::NEIGHBOR_ADVERTISEMENT,
            "2001:db8::1",
            Some(MAC),
        );
        let mut hidden = vec![ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        hidden.extend_from_slice(&na);
        assert_eq!(
            check(&frame(MAC, ethertype::IPV6, &ipv6(&link_local, 0, &hidden))),
            Err(DropReason::SpoofedNd)
        );
        // Other ICMPv6 from `::` is not duplicate address detection.
        let echo = [128, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            check(&frame(MAC, ethertype::IPV6, &ipv6("::", ICMPV6, &echo))),
            Err(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn tagged_frames_are_dropped() {
        let mut bytes = vec![0u8; ethernet::VLAN_HEADER_LEN];
        let tag = VlanTag {
            pcp: 0,
            dei: false,
            vid: 7,
        };
        ethernet::write_header(&mut bytes, &[0xff; 6], &MAC, Some(tag), ethertype::IPV4).unwrap();
        bytes.extend_from_slice(&ipv4("10.0.0.2"));
        assert_eq!(check(&bytes), Err(DropReason::Tagged));
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 14..300)) {
            let mut bytes = bytes;
            bytes[6..12].copy_from_slice(&MAC);
            if let Ok(eth) = EthernetFrame::parse(&bytes) {
                let _ = guard().check(&eth);
            }
        }

        #[test]
        fn arbitrary_ipv6_payloads_never_panic(
            upper in proptest::collection::vec(any::<u8>(), 0..200),
            next_header in prop_oneof![Just(0u8), Just(58u8), Just(60u8), any::<u8>()],
            unspecified in any::<bool>(),
        ) {
            let source = if unspecified { "::" } else { "2001:db8::2" };
            let _ = check(&frame(MAC, ethertype::IPV6, &ipv6(source, next_header, &upper)));
        }
    }
}
