//! Counters of the switch: traffic per port, per VNI and per VTEP, and drops by reason.

use std::fmt;

/// Packets and bytes. A GSO super-frame counts as one packet (it crossed one syscall).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// Why the switch dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the headers it must have (or cut short on receive).
    Truncated,
    /// Headers that do not parse (Ethernet, virtio-net header).
    Malformed,
    /// Larger than the destination port's MTU allows, without GSO metadata.
    Oversized,
    /// A group or all-zero source MAC.
    InvalidSource,
    /// VXLAN for a VNI this switch does not serve.
    UnknownVni,
    /// VXLAN from an underlay address that is not a configured peer of the VNI.
    UnknownPeer,
    /// A UDP payload on the VXLAN port that is not valid VXLAN (flags, reserved bits).
    BadVxlan,
    /// A frame for a remote VTEP of an address family no local VTEP has.
    NoVtep,
    /// A frame whose destination is where it came from (port or, for tunnels, the
    /// underlay: VXLAN is never forwarded VTEP to VTEP).
    Hairpin,
    /// A super-frame that could not be segmented for the tunnel.
    Segmentation,
    /// The kernel refused a transmit (queue full, unreachable, too big).
    TxError,
    /// The destination port failed (its device vanished) while sending.
    PortGone,
    /// Between two private ports (also when the wire reflected it back).
    Isolated,
    /// Port security: a source MAC that is not the port's.
    SpoofedMac,
    /// Port security: an IPv4 or IPv6 source that is not one of the port's addresses.
    SpoofedIp,
    /// Port security: ARP whose sender is not the port (its MAC and one of its addresses).
    SpoofedArp,
    /// Port security: neighbour discovery about another's address or link-layer address,
    /// or a router advertisement or redirect.
    SpoofedNd,
    /// Port security: a VLAN-tagged frame.
    Tagged,
}

impl DropReason {
    pub const ALL: [DropReason; 18] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::InvalidSource,
        DropReason::UnknownVni,
        DropReason::UnknownPeer,
        DropReason::BadVxlan,
        DropReason::NoVtep,
        DropReason::Hairpin,
        DropReason::Segmentation,
        DropReason::TxError,
        DropReason::PortGone,
        DropReason::Isolated,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SpoofedNd,
        DropReason::Tagged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::InvalidSource => "invalid_source",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadVxlan => "bad_vxlan",
            DropReason::NoVtep => "no_vtep",
            DropReason::Hairpin => "hairpin",
            DropReason::Segmentation => "segmentation",
            DropReason::TxError => "tx_error",
            DropReason::PortGone => "port_gone",
            DropReason::Isolated => "isolated",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::Tagged => "tagged",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    #[inline]
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&reason| (reason, self.get(reason)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        let mut drops = Drops::default();
        for (times, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=times {
                drops.count(*reason);
            }
        }
        for (times, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(drops.get(*reason), times as u64 + 1, "{reason}");
        }
        assert_eq!(
            drops.total(),
            (1..=DropReason::ALL.len() as u64).sum::<u64>()
        );
    }
}
