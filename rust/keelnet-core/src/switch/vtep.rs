//! The VTEP side of the engine: VXLAN towards remote hosts and back.
//!
//! Towards a VTEP, a super-frame leaves whole through the VTEP's tunnel TAP as a
//! UDP-tunnel GSO packet where the host allows it ([`crate::io::tunnel_tap`]); otherwise
//! it is segmented in software (checksums completed) and sent as one UDP GSO call, and
//! small equal-sized datagrams to one peer read in one batch leave in one GSO send too.
//! From a VTEP, GRO trains are split into datagrams, decapsulated, and consecutive TCP
//! segments coalesced again into one super-frame per TAP write; a super-frame that
//! crossed the underlay whole goes to its port whole. The port side is [`super::engine`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::VtepStats;
use super::counters::{DropReason, Drops, Traffic};
use super::engine::{At, Engine};
use super::partial::{self, L4Checksum};
use crate::fdb::{Destination, MacAddr};
use crate::io::VNET_HDR_LEN;
use crate::io::tunnel_tap::TunnelTap;
use crate::io::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS, UdpReceiver, UdpSocket};
use crate::packet::ethernet::{self, EthernetFrame};
use crate::packet::offload::{self, Coalescer, Segments, TUNNEL_HDR_LEN, VirtioNetHdr, gso_type};
use crate::packet::{udp, vxlan};

/// `recvmmsg` batches read from one VTEP per wakeup.
const VTEP_BUDGET: usize = 8;
/// Messages per `recvmmsg` (each up to a 64 KB GRO train).
const VTEP_BATCH: usize = 16;

pub(crate) struct Vtep {
    pub socket: UdpSocket,
    /// Where super-frames to peers leave whole; `None` when the kernel or the host's
    /// settings do not allow it (then they are segmented here).
    tunnel: Option<TunnelPath>,
    /// Why super-frames are segmented here (no tunnel TAP, or it failed).
    tunnel_error: Option<String>,
    /// Super-frames sent whole through the tunnel TAP.
    tunnel_frames: u64,
    rx: Traffic,
    tx: Traffic,
    pub(super) drops: Drops,
    errors: u64,
}

/// A VTEP's tunnel TAP and the outer headers of each peer.
pub(crate) struct TunnelPath {
    tap: TunnelTap,
    encapsulators: HashMap<IpAddr, vxlan::Encapsulator>,
    /// Writes the kernel refused in a row: one odd frame is segmented instead, a kernel
    /// that refuses them all ends the tunnel path.
    refused_in_a_row: u32,
}

/// Refused writes in a row after which super-frames are segmented for good.
const TUNNEL_REFUSALS: u32 = 8;

impl TunnelPath {
    pub fn new(tap: TunnelTap) -> TunnelPath {
        TunnelPath {
            tap,
            encapsulators: HashMap::new(),
            refused_in_a_row: 0,
        }
    }
}

/// Small datagrams to one peer waiting to leave in one UDP GSO send.
struct SmallBatch {
    vtep: usize,
    destination: SocketAddr,
    /// Size of every datagram queued.
    segment: usize,
    count: usize,
    data: Vec<u8>,
}

impl Vtep {
    pub(super) fn stats(&self) -> VtepStats {
        VtepStats {
            local: self.socket.local(),
            rx: self.rx,
            tx: self.tx,
            drops: self.drops,
            errors: self.errors,
            gso: self.socket.gso(),
            gro: self.socket.gro(),
            tunnel_device: self.tunnel.as_ref().map(|t| t.tap.ifname().to_owned()),
            tunnel_error: self.tunnel_error.clone(),
            tunnel_frames: self.tunnel_frames,
        }
    }
}

/// What the VTEP side reuses from one frame to the next: receive batches, segments,
/// the coalescer and its pending super-frame, and the batch of small datagrams.
pub(super) struct VtepSide {
    segments: Segments,
    receiver: Option<UdpReceiver>,
    coalescer: Coalescer,
    /// The port the coalescer's pending super-frame is for.
    coalesce_port: Option<u32>,
    super_frame: Vec<u8>,
    header_scratch: [u8; VNET_HDR_LEN],
    /// A decapsulated frame whose partial checksum was completed.
    completed: Vec<u8>,
    small: SmallBatch,
}

impl VtepSide {
    pub fn new() -> VtepSide {
        VtepSide {
            segments: Segments::new(),
            receiver: Some(UdpReceiver::new(VTEP_BATCH)),
            // It verifies what it merges: a super-frame leaves with a partial checksum
            // that the receiving kernel trusts.
            coalescer: Coalescer::new(true),
            coalesce_port: None,
            super_frame: Vec::new(),
            header_scratch: [0; VNET_HDR_LEN],
            completed: Vec::new(),
            small: SmallBatch {
                vtep: 0,
                destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                segment: 0,
                count: 0,
                data: Vec::new(),
            },
        }
    }

    /// Forgets the super-frame pending for a port that is going away.
    pub fn port_removed(&mut self, id: u32) {
        if self.coalesce_port == Some(id) {
            self.coalesce_port = None;
            self.coalescer.finish(&mut self.super_frame);
        }
    }
}

impl Engine {
    pub fn add_vtep(
        &mut self,
        socket: UdpSocket,
        tunnel: Result<Option<TunnelPath>, String>,
    ) -> usize {
        let (tunnel, tunnel_error) = match tunnel {
            Ok(tunnel) => (tunnel, None),
            Err(error) => (None, Some(error)),
        };
        self.vteps.push(Vtep {
            socket,
            tunnel,
            tunnel_error,
            tunnel_frames: 0,
            rx: Traffic::default(),
            tx: Traffic::default(),
            drops: Drops::default(),
            errors: 0,
        });
        self.vteps.len() - 1
    }

    pub fn add_peer(
        &mut self,
        vni: u32,
        remote: IpAddr,
        mac: Option<MacAddr>,
        ip: Option<Ipv4Addr>,
    ) {
        // A peer's record never takes over a local port's MAC (an address clash, or a
        // peer that lies): the port keeps it, and its address is not answered for.
        let mac =
            mac.filter(|mac| !matches!(self.fdb.lookup(vni, mac), Some(Destination::Port(_))));
        let state = self.vnis.entry(vni).or_default();
        state.peers.insert(remote);
        if let (Some(mac), Some(ip)) = (mac, ip) {
            state.neighbors.insert(ip, (mac, true));
        }
        self.fdb.add_flood(vni, remote);
        if let Some(mac) = mac {
            self.fdb
                .insert_static(vni, &mac, Destination::Remote(remote));
        }
    }

    /// Removes one static MAC behind `remote` (with `mac`), or the whole peer from the
    /// VNI: flood list, and every entry pointing at it. Returns whether anything went.
    pub fn remove_peer(&mut self, vni: u32, remote: IpAddr, mac: Option<MacAddr>) -> bool {
        let Some(state) = self.vnis.get_mut(&vni) else {
            return false;
        };
        let macs: Vec<MacAddr> = match mac {
            Some(mac) => {
                if self.fdb.lookup(vni, &mac) != Some(Destination::Remote(remote)) {
                    return false;
                }
                vec![mac]
            }
            None => {
                if !state.peers.remove(&remote) {
                    return false;
                }
                self.fdb.remove_flood(vni, remote);
                self.fdb
                    .entries()
                    .filter(|(entry_vni, _, dest, _)| {
                        *entry_vni == vni && *dest == Destination::Remote(remote)
                    })
                    .map(|(_, mac, _, _)| mac)
                    .collect()
            }
        };
        for mac in &macs {
            self.fdb.remove(vni, mac);
        }
        state
            .neighbors
            .retain(|_, (neighbor_mac, _)| !macs.contains(neighbor_mac));
        true
    }

    /// Encapsulates a local frame to each of `remotes`: super-frames are segmented (and
    /// partial checksums completed) once, then each peer gets one GSO send per 64
    /// segments.
    pub(super) fn send_to_remotes(
        &mut self,
        from: u32,
        vni: u32,
        header: &VirtioNetHdr,
        frame: &[u8],
        remotes: &[IpAddr],
    ) {
        let left;
        let mut remotes = remotes;
        if header.gso_type != gso_type::NONE && self.vteps.iter().any(|vtep| vtep.tunnel.is_some())
        {
            // Keep order: what was queued for any peer leaves before this.
            self.flush_small();
            left = remotes
                .iter()
                .copied()
                .filter(|&remote| !self.send_through_tunnel(vni, header, frame, remote))
                .collect::<Vec<_>>();
            remotes = &left;
            if remotes.is_empty() {
                return;
            }
        }
        self.vtep_side.segments.clear();
        if offload::segment_with_header(header, frame, &mut self.vtep_side.segments).is_err() {
            return self.count_drop(DropReason::Segmentation, At::Port(from), Some(vni));
        }
        let mut vxlan_header = [0u8; vxlan::HEADER_LEN];
        if vxlan::write_header(&mut vxlan_header, vni).is_err() {
            return self.count_drop(DropReason::UnknownVni, At::Port(from), Some(vni));
        }
        let segments = std::mem::take(&mut self.vtep_side.segments);
        for &remote in remotes {
            let Some(index) = self
                .vteps
                .iter()
                .position(|vtep| vtep.socket.local().is_ipv4() == remote.is_ipv4())
            else {
                self.count_drop(DropReason::NoVtep, At::Port(from), Some(vni));
                continue;
            };
            let destination = SocketAddr::new(remote, self.vteps[index].socket.local().port());
            if remotes.len() == 1 && segments.len() == 1 {
                if let Some(segment) = segments.get(0) {
                    self.queue_small(index, destination, vni, &vxlan_header, segment);
                }
                continue;
            }
            // Keep order: what was queued for any peer leaves before this.
            self.flush_small();
            let vtep = &mut self.vteps[index];
            let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * MAX_GSO_SEGMENTS);
            let mut chunk_bytes = 0usize;
            let mut chunk_segments = 0usize;
            let mut segment_size = 0usize;
            let mut failed = false;
            let mut sent = Traffic::default();
            let total = segments.len();
            for (index, segment) in segments.iter().enumerate() {
                let datagram = vxlan::HEADER_LEN + segment.len();
                if chunk_segments == 0 {
                    segment_size = datagram;
                }
                parts.push(&vxlan_header);
                parts.push(segment);
                chunk_bytes += datagram;
                chunk_segments += 1;
                sent.add(datagram);
                let next_fits = index + 1 < total
                    && chunk_segments < MAX_GSO_SEGMENTS
                    && chunk_bytes + segment_size <= MAX_GSO_BYTES;
                if !next_fits {
                    if vtep
                        .socket
                        .send_segmented(&destination, &parts, segment_size)
                        .is_err()
                    {
                        failed = true;
                    }
                    parts.clear();
                    chunk_bytes = 0;
                    chunk_segments = 0;
                }
            }
            if failed {
                vtep.errors += 1;
                self.count_drop(DropReason::TxError, At::Vtep(index), Some(vni));
            } else {
                vtep.tx.packets += sent.packets;
                vtep.tx.bytes += sent.bytes;
                if let Some(state) = self.vnis.get_mut(&vni) {
                    state.tx.add(frame.len());
                }
            }
        }
        self.vtep_side.segments = segments;
    }

    /// Sends a super-frame to `remote` whole through the tunnel TAP of the VTEP of its
    /// family (the host's stack routes it; the kernel segments it, or the underlay
    /// carries it as one UDP-tunnel GSO packet). False: not sent, segment it instead.
    fn send_through_tunnel(
        &mut self,
        vni: u32,
        header: &VirtioNetHdr,
        frame: &[u8],
        remote: IpAddr,
    ) -> bool {
        let Some(vtep) = self
            .vteps
            .iter_mut()
            .find(|vtep| vtep.socket.local().is_ipv4() == remote.is_ipv4())
        else {
            return false;
        };
        let local = vtep.socket.local();
        let Some(tunnel) = vtep.tunnel.as_mut() else {
            return false;
        };
        let encapsulator = match tunnel.encapsulators.entry(remote) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let config = vxlan::VxlanConfig {
                    destination_port: local.port(),
                    ..vxlan::VxlanConfig::default()
                };
                let endpoints = vxlan::Endpoints {
                    source_mac: tunnel.tap.source_mac(),
                    destination_mac: tunnel.tap.mac(),
                    source: local.ip(),
                    destination: remote,
                    vlan: None,
                };
                match vxlan::Encapsulator::new(config, &endpoints) {
                    Ok(encapsulator) => entry.insert(encapsulator),
                    Err(_) => return false,
                }
            }
        };
        let mut outer = [0u8; vxlan::MAX_OVERHEAD];
        let Ok(outer_len) = encapsulator.write_outer_for_gso(&mut outer, frame, vni, None) else {
            // Too long for one outer datagram: segmented here instead.
            return false;
        };
        let mut tunnel_header = [0u8; TUNNEL_HDR_LEN];
        if offload::write_tunnel_header(
            &mut tunnel_header,
            header,
            frame,
            outer_len,
            outer_len - udp::HEADER_LEN - vxlan::HEADER_LEN,
            remote.is_ipv6(),
            encapsulator.offloaded_udp_checksum(),
        )
        .is_err()
        {
            return false;
        }
        match tunnel
            .tap
            .write(&[&tunnel_header, &outer[..outer_len], frame])
        {
            Ok(_) => {
                tunnel.refused_in_a_row = 0;
                let payload = frame.len().saturating_sub(usize::from(header.hdr_len));
                let segments = payload.div_ceil(usize::from(header.gso_size.max(1))).max(1);
                vtep.tx.packets += segments as u64;
                vtep.tx.bytes += (segments * outer_len + frame.len()) as u64;
                vtep.tunnel_frames += 1;
                if let Some(state) = self.vnis.get_mut(&vni) {
                    state.tx.add(frame.len());
                }
                true
            }
            Err(error) => {
                vtep.errors += 1;
                tunnel.refused_in_a_row += 1;
                let frame_refused = error.raw_os_error() == Some(libc::EINVAL);
                if !frame_refused || tunnel.refused_in_a_row >= TUNNEL_REFUSALS {
                    vtep.tunnel_error = Some(format!(
                        "writing to {} failed, segmenting from now on: {error}",
                        tunnel.tap.ifname()
                    ));
                    vtep.tunnel = None;
                }
                false
            }
        }
    }

    /// Queues one small datagram for `destination`: equal-sized datagrams to one peer
    /// read in the same batch (64-byte floods, TCP ACKs) leave in one UDP GSO send.
    fn queue_small(
        &mut self,
        vtep: usize,
        destination: SocketAddr,
        vni: u32,
        vxlan_header: &[u8],
        frame: &[u8],
    ) {
        let datagram = vxlan_header.len() + frame.len();
        let pending = &self.vtep_side.small;
        let fits = pending.count > 0
            && pending.vtep == vtep
            && pending.destination == destination
            && pending.segment == datagram
            && pending.count < MAX_GSO_SEGMENTS
            && pending.data.len() + datagram <= MAX_GSO_BYTES;
        if !fits {
            self.flush_small();
            let pending = &mut self.vtep_side.small;
            pending.vtep = vtep;
            pending.destination = destination;
            pending.segment = datagram;
        }
        let pending = &mut self.vtep_side.small;
        pending.data.extend_from_slice(vxlan_header);
        pending.data.extend_from_slice(frame);
        pending.count += 1;
        if let Some(vtep) = self.vteps.get_mut(vtep) {
            vtep.tx.add(datagram);
        }
        if let Some(state) = self.vnis.get_mut(&vni) {
            state.tx.add(frame.len());
        }
    }

    /// Sends what [`Engine::queue_small`] gathered. Called at the end of every batch and
    /// before any other send to a VTEP.
    pub fn flush_small(&mut self) {
        if self.vtep_side.small.count == 0 {
            return;
        }
        let pending = &mut self.vtep_side.small;
        let count = pending.count;
        pending.count = 0;
        let result = match self.vteps.get_mut(pending.vtep) {
            Some(vtep) => {
                vtep.socket
                    .send_segmented(&pending.destination, &[&pending.data], pending.segment)
            }
            None => Ok(()),
        };
        pending.data.clear();
        if result.is_err() {
            let vtep = pending.vtep;
            if let Some(vtep) = self.vteps.get_mut(vtep) {
                vtep.errors += 1;
            }
            for _ in 0..count {
                self.count_drop(DropReason::TxError, At::Vtep(vtep), None);
            }
        }
    }

    pub fn vtep_readable(&mut self, index: usize) {
        self.clock = self.now();
        let Some(mut receiver) = self.vtep_side.receiver.take() else {
            return;
        };
        for _ in 0..VTEP_BUDGET {
            let Some(vtep) = self.vteps.get(index) else {
                break;
            };
            let count = match receiver.receive(&vtep.socket) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // ICMP errors reported on the socket (port unreachable from a peer
                    // that went away) must not stop the switch.
                    self.vteps[index].errors += 1;
                    continue;
                }
            };
            if count == 0 {
                break;
            }
            for message in 0..count {
                let (received, bytes) = receiver.message(message);
                if received.truncated {
                    self.count_drop(DropReason::Truncated, At::Vtep(index), None);
                    continue;
                }
                let source = received.source.ip();
                for datagram in bytes.chunks(received.segment.max(1)) {
                    self.on_vxlan_datagram(index, source, datagram);
                }
            }
            self.flush_coalesced();
            if count < VTEP_BATCH {
                // recvmmsg stops short only on an empty queue: no need to ask again.
                break;
            }
        }
        self.vtep_side.receiver = Some(receiver);
    }

    fn on_vxlan_datagram(&mut self, index: usize, source: IpAddr, datagram: &[u8]) {
        self.vteps[index].rx.add(datagram.len());
        let (vni, inner) = match vxlan::parse_header(datagram) {
            Ok(parsed) => parsed,
            Err(crate::packet::PacketError::Truncated { .. }) => {
                return self.count_drop(DropReason::Truncated, At::Vtep(index), None);
            }
            Err(_) => return self.count_drop(DropReason::BadVxlan, At::Vtep(index), None),
        };
        let learn_peers = self.config.learn_peers;
        let Some(state) = self.vnis.get_mut(&vni) else {
            return self.count_drop(DropReason::UnknownVni, At::Vtep(index), None);
        };
        if !state.peers.contains(&source) {
            if !learn_peers {
                return self.count_drop(DropReason::UnknownPeer, At::Vtep(index), Some(vni));
            }
            state.peers.insert(source);
            self.fdb.add_flood(vni, source);
        }
        let Ok(eth) = EthernetFrame::parse(inner) else {
            return self.count_drop(DropReason::Malformed, At::Vtep(index), Some(vni));
        };
        let source_mac = eth.source();
        if ethernet::is_multicast(&source_mac) || source_mac == [0; 6] {
            return self.count_drop(DropReason::InvalidSource, At::Vtep(index), Some(vni));
        }
        if let Some(state) = self.vnis.get_mut(&vni) {
            state.rx.add(inner.len());
        }
        if self.config.learn_remote {
            self.fdb
                .learn(vni, &source_mac, Destination::Remote(source), self.clock);
        }
        let destination = eth.destination();
        // A super-frame (the sender's underlay passed UDP tunnel GSO through unsplit):
        // its checksum is partial by design; ports get it with GSO metadata.
        let largest_frame = self.vnis.get(&vni).map_or(0, |state| {
            state
                .ports
                .iter()
                .filter_map(|id| self.ports.get(id))
                .map(|port| port.max_frame)
                .max()
                .unwrap_or(0)
        });
        if inner.len() > largest_frame {
            return self.deliver_decapsulated(index, vni, destination, inner, false);
        }
        // The common case, a TCP segment for a known local port: the coalescer verifies
        // and copies it in one pass. Whatever it refuses (a partial or bad checksum,
        // no payload, not TCP) takes the checked path below.
        if self.config.coalesce
            && !ethernet::is_multicast(&destination)
            && let Some(Destination::Port(to)) = self.fdb.lookup(vni, &destination)
            && self.try_coalesce(to, inner)
        {
            return;
        }
        let mut completed = std::mem::take(&mut self.vtep_side.completed);
        let (inner, verified) = match partial::inspect(inner) {
            L4Checksum::Fine => (inner, true),
            L4Checksum::Bad => (inner, false),
            L4Checksum::Partial { start, field } => {
                completed.clear();
                completed.extend_from_slice(inner);
                partial::complete(&mut completed, start, field);
                (&completed[..], true)
            }
        };
        self.deliver_decapsulated(index, vni, destination, inner, verified);
        self.vtep_side.completed = completed;
    }

    fn deliver_decapsulated(
        &mut self,
        index: usize,
        vni: u32,
        destination: MacAddr,
        inner: &[u8],
        verified: bool,
    ) {
        if !ethernet::is_multicast(&destination) {
            match self.fdb.lookup(vni, &destination) {
                Some(Destination::Port(to)) => {
                    return self.remote_to_port(to, vni, inner, verified);
                }
                // Split horizon: never relay one VTEP's traffic to another.
                Some(Destination::Remote(_)) => {
                    return self.count_drop(DropReason::Hairpin, At::Vtep(index), Some(vni));
                }
                None => {}
            }
        }
        self.flush_coalesced();
        let ports: Vec<u32> = match self.vnis.get_mut(&vni) {
            Some(state) => {
                state.flooded += 1;
                state.ports.clone()
            }
            None => return,
        };
        for to in ports {
            if self.takes_flood(to, &destination) {
                self.decapsulated_to_port(to, vni, inner);
            }
        }
    }

    /// Writes a decapsulated frame to a port as it is, or, when it exceeds the port's
    /// MTU, as a super-frame the port's kernel segments.
    fn decapsulated_to_port(&mut self, to: u32, vni: u32, frame: &[u8]) {
        let Some(port) = self.ports.get(&to) else {
            return;
        };
        let mut header = [0u8; VNET_HDR_LEN];
        let mut gso = false;
        if frame.len() > port.max_frame {
            match partial::gso_header(frame, port.io.mtu()) {
                Some(super_header) if super_header.write(&mut header).is_ok() => gso = true,
                _ => return self.count_drop(DropReason::Oversized, At::Port(to), Some(vni)),
            }
        }
        self.send_to_port(to, vni, &header, frame, gso);
    }

    /// A decapsulated frame for a local port: TCP segments are coalesced into one
    /// super-frame per port (written when the train ends), anything else goes at once.
    fn remote_to_port(&mut self, to: u32, vni: u32, frame: &[u8], verified: bool) {
        if self.config.coalesce && verified {
            if self.vtep_side.coalesce_port != Some(to) {
                self.flush_coalesced();
            }
            match self.vtep_side.coalescer.push(frame) {
                Ok(true) => {
                    self.vtep_side.coalesce_port = Some(to);
                    return;
                }
                Ok(false) => {
                    self.flush_coalesced();
                    if let Ok(true) = self.vtep_side.coalescer.push(frame) {
                        self.vtep_side.coalesce_port = Some(to);
                        return;
                    }
                }
                Err(_) => self.flush_coalesced(),
            }
        } else {
            self.flush_coalesced();
        }
        self.decapsulated_to_port(to, vni, frame);
    }

    /// Adds a segment to the super-frame pending for port `to` (flushing another
    /// port's first); false when the coalescer refuses it.
    fn try_coalesce(&mut self, to: u32, frame: &[u8]) -> bool {
        if self.vtep_side.coalesce_port != Some(to) {
            self.flush_coalesced();
        }
        match self.vtep_side.coalescer.push(frame) {
            Ok(true) => {
                self.vtep_side.coalesce_port = Some(to);
                true
            }
            Ok(false) => {
                self.flush_coalesced();
                if let Ok(true) = self.vtep_side.coalescer.push(frame) {
                    self.vtep_side.coalesce_port = Some(to);
                    return true;
                }
                false
            }
            Err(_) => false,
        }
    }

    fn flush_coalesced(&mut self) {
        let Some(to) = self.vtep_side.coalesce_port.take() else {
            return;
        };
        let mut frame = std::mem::take(&mut self.vtep_side.super_frame);
        if let Some(header) = self.vtep_side.coalescer.finish(&mut frame) {
            let mut header_bytes = self.vtep_side.header_scratch;
            if header.write(&mut header_bytes).is_ok() {
                let vni = self.ports.get(&to).map_or(0, |port| port.vni);
                let gso = header.gso_type != gso_type::NONE;
                self.send_to_port(to, vni, &header_bytes, &frame, gso);
            }
        }
        self.vtep_side.super_frame = frame;
    }
}

#[cfg(test)]
mod tests {
    use super::super::SwitchConfig;
    use super::super::engine::testing::*;
    use super::*;
    use crate::packet::checksum;
    use crate::packet::offload::F_NEEDS_CSUM;
    use crate::packet::offload::build::{TcpFrameSpec, tcp_frame};
    use proptest::prelude::*;

    fn tcp(payload: usize) -> Vec<u8> {
        let spec = TcpFrameSpec {
            source: "198.51.100.2".parse().unwrap(),
            destination: "198.51.100.1".parse().unwrap(),
            source_port: 5201,
            destination_port: 40000,
            sequence: 7,
            acknowledgment: 9,
            flags: 0x10,
            window: 512,
            identification: 1,
        };
        let mut frame = tcp_frame(&spec, &vec![0x5a; payload]).unwrap();
        frame[0..6].copy_from_slice(&A);
        frame[6..12].copy_from_slice(&B);
        frame
    }

    fn with_vtep(engine: &mut Engine) -> Option<usize> {
        let socket = UdpSocket::bind(None, "127.0.0.1:0".parse().unwrap()).ok()?;
        let index = engine.add_vtep(socket, Ok(None));
        engine.add_peer(1, "127.0.0.2".parse().unwrap(), None, None);
        Some(index)
    }

    fn vxlan_datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut datagram = vec![0u8; vxlan::HEADER_LEN];
        vxlan::write_header(&mut datagram, vni).unwrap();
        datagram.extend_from_slice(inner);
        datagram
    }

    #[test]
    fn partial_checksums_from_a_kernel_peer_are_completed() {
        let mut engine = engine(SwitchConfig {
            coalesce: false,
            ..SwitchConfig::default()
        });
        let Some(vtep) = with_vtep(&mut engine) else {
            return;
        };
        let a = port_id(&engine, "a");
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        let good = tcp(500);
        let mut partial_frame = good.clone();
        let field = 14 + 20 + 16;
        let pseudo = crate::packet::ipv4::Ipv4Packet::parse(&good[14..])
            .unwrap()
            .pseudo_header();
        partial_frame[field..field + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        engine.on_vxlan_datagram(
            vtep,
            "127.0.0.2".parse().unwrap(),
            &vxlan_datagram(1, &partial_frame),
        );
        let frames = written(&engine, "a");
        assert_eq!(frames.last().unwrap()[VNET_HDR_LEN..], good[..]);
        assert_eq!(
            engine.fdb.lookup(1, &B),
            Some(Destination::Remote("127.0.0.2".parse().unwrap()))
        );
    }

    #[test]
    fn a_decapsulated_super_frame_reaches_the_port_with_gso_metadata() {
        let mut engine = engine(SwitchConfig::default());
        let Some(vtep) = with_vtep(&mut engine) else {
            return;
        };
        let a = port_id(&engine, "a");
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        let super_frame = tcp(6000);
        engine.on_vxlan_datagram(
            vtep,
            "127.0.0.2".parse().unwrap(),
            &vxlan_datagram(1, &super_frame),
        );
        let frames = written(&engine, "a");
        let last = frames.last().unwrap();
        let header = VirtioNetHdr::parse(last).unwrap();
        assert_eq!(header.gso_type, gso_type::TCPV4);
        assert_eq!(header.flags, F_NEEDS_CSUM);
        assert_eq!(usize::from(header.gso_size), 1500 - 20 - 32);
        assert_eq!(last[VNET_HDR_LEN..], super_frame[..]);
    }

    #[test]
    fn a_peer_cannot_claim_a_local_mac() {
        let mut engine = engine(SwitchConfig::default());
        let tap = engine.add_port("tap", 1, capture_tap(B));
        let Some(vtep) = with_vtep(&mut engine) else {
            return;
        };
        let a = port_id(&engine, "a");
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        // The peer sends frames from a's (learned) and the TAP's (static) MACs.
        let peer = "127.0.0.2".parse().unwrap();
        for source in [A, B] {
            let frame = local_frame(BROADCAST, source, 0x88b5, 60)[VNET_HDR_LEN..].to_vec();
            engine.on_vxlan_datagram(vtep, peer, &vxlan_datagram(1, &frame));
        }
        assert_eq!(engine.fdb.lookup(1, &A), Some(Destination::Port(a)));
        assert_eq!(engine.fdb.lookup(1, &B), Some(Destination::Port(tap)));
        let counters = engine.fdb.counters();
        assert_eq!(
            (counters.local_conflicts, counters.static_conflicts),
            (1, 1)
        );
    }

    #[test]
    fn a_peer_record_cannot_take_a_local_mac() {
        let mut engine = engine(SwitchConfig::default());
        let tap = engine.add_port("tap", 1, capture_tap(B));
        let peer: IpAddr = "127.0.0.2".parse().unwrap();
        engine.add_peer(1, peer, Some(B), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(engine.fdb.lookup(1, &B), Some(Destination::Port(tap)));
        assert!(engine.fdb.flood_list(1).contains(&peer));
        // Removing what the record named leaves the port's entry alone.
        assert!(!engine.remove_peer(1, peer, Some(B)));
        assert_eq!(engine.fdb.lookup(1, &B), Some(Destination::Port(tap)));
    }

    #[test]
    fn vxlan_from_strangers_or_for_other_vnis_is_dropped() {
        let mut engine = engine(SwitchConfig::default());
        let Some(vtep) = with_vtep(&mut engine) else {
            return;
        };
        let frame = local_frame(BROADCAST, B, 0x88b5, 60)[VNET_HDR_LEN..].to_vec();
        engine.on_vxlan_datagram(
            vtep,
            "127.0.0.3".parse().unwrap(),
            &vxlan_datagram(1, &frame),
        );
        engine.on_vxlan_datagram(
            vtep,
            "127.0.0.2".parse().unwrap(),
            &vxlan_datagram(7, &frame),
        );
        let drops = engine.stats().drops;
        assert_eq!(drops.get(DropReason::UnknownPeer), 1);
        assert_eq!(drops.get(DropReason::UnknownVni), 1);
        assert!(written(&engine, "a").is_empty() && written(&engine, "b").is_empty());
    }

    #[test]
    fn decapsulated_tcp_segments_are_coalesced_into_one_write() {
        let mut engine = engine(SwitchConfig::default());
        let Some(vtep) = with_vtep(&mut engine) else {
            return;
        };
        let a = port_id(&engine, "a");
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        let spec = |sequence: u32, identification: u16| TcpFrameSpec {
            source: "198.51.100.2".parse().unwrap(),
            destination: "198.51.100.1".parse().unwrap(),
            source_port: 5201,
            destination_port: 40000,
            sequence,
            acknowledgment: 9,
            flags: 0x10,
            window: 512,
            identification,
        };
        let before = written(&engine, "a").len();
        for index in 0..3u32 {
            let mut frame = tcp_frame(&spec(1 + index * 1000, index as u16), &[7u8; 1000]).unwrap();
            frame[0..6].copy_from_slice(&A);
            frame[6..12].copy_from_slice(&B);
            engine.on_vxlan_datagram(
                vtep,
                "127.0.0.2".parse().unwrap(),
                &vxlan_datagram(1, &frame),
            );
        }
        engine.flush_coalesced();
        let frames = written(&engine, "a");
        assert_eq!(frames.len(), before + 1, "three segments, one write");
        let header = VirtioNetHdr::parse(frames.last().unwrap()).unwrap();
        assert_eq!(header.gso_type, gso_type::TCPV4);
        assert_eq!(header.gso_size, 1000);
        assert_eq!(
            frames.last().unwrap().len(),
            VNET_HDR_LEN + 14 + 20 + 32 + 3000
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            local in proptest::collection::vec(any::<u8>(), 0..2000),
            remote in proptest::collection::vec(any::<u8>(), 0..2000),
            vni in 0u32..3,
        ) {
            let mut engine = engine(SwitchConfig { arp_suppression: true, ..SwitchConfig::default() });
            let a = port_id(&engine, "a");
            engine.on_local_frame(a, &local);
            if let Some(vtep) = with_vtep(&mut engine) {
                let mut datagram = vxlan_datagram(vni, &remote);
                engine.on_vxlan_datagram(vtep, "127.0.0.2".parse().unwrap(), &datagram);
                engine.on_vxlan_datagram(vtep, "127.0.0.2".parse().unwrap(), &remote);
                datagram.truncate(datagram.len() / 2);
                engine.on_vxlan_datagram(vtep, "127.0.0.2".parse().unwrap(), &datagram);
                engine.flush_coalesced();
            }
        }
    }
}
