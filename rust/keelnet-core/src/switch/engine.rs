//! The forwarding engine: what happens to one frame or datagram. Shared by the worker
//! threads while the switch runs (behind a mutex the control calls take briefly).
//!
//! This file is the port side: ports, VNIs, learning, local forwarding and flooding.
//! Frames from local ports carry a virtio-net header. Local-to-local forwarding passes
//! frame and header through untouched, so a 64 KB TCP super-frame from one sandbox
//! reaches the other in one write. What goes to or comes from remote VTEPs is handled
//! by the VTEP side ([`super::vtep`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use super::counters::{DropReason, Drops, Traffic};
use super::vtep::{Vtep, VtepSide};
use super::{
    FdbEntry, Isolation, PortKind, PortRules, PortSecurity, PortStats, Stats, SwitchConfig,
    VniStats,
};
use crate::fdb::{Destination, Fdb, FdbConfig, MacAddr};
use crate::io::VNET_HDR_LEN;
use crate::io::packet_socket::{PacketReceiver, PacketSocket};
use crate::io::tap::Tap;
use crate::packet::arp::{self, Arp, ArpPacket};
use crate::packet::ethernet::{self, EthernetFrame, ethertype};
use crate::packet::offload::{VirtioNetHdr, gso_type};

/// Largest frame a port read can return: a 64 KB GSO super-frame plus headers.
pub(crate) const RX_BUFFER: usize = 65_536 + 1_024;
/// Frames read from one port per wakeup before others get their turn.
pub(crate) const PORT_BUDGET: usize = 64;
/// Frames per `recvmmsg` on an AF_PACKET port.
const PACKET_BATCH: usize = 16;
/// Ethernet header with one VLAN tag: what a frame may add to the MTU.
const L2_OVERHEAD: usize = ethernet::VLAN_HEADER_LEN;

pub(crate) enum PortIo {
    Tap(Tap),
    Packet(PacketSocket),
    /// Unit tests: frames written are kept, nothing is read.
    #[cfg(test)]
    Capture {
        mtu: u32,
        mac: Option<MacAddr>,
        frames: std::sync::Mutex<Vec<Vec<u8>>>,
    },
}

impl PortIo {
    /// Reads one frame from `queue` (a TAP's; other ports have one).
    pub(crate) fn read(&self, queue: usize, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            PortIo::Tap(tap) => tap.read(queue, buffer),
            PortIo::Packet(socket) => socket.read(buffer),
            #[cfg(test)]
            PortIo::Capture { .. } => Ok(None),
        }
    }

    pub(crate) fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        match self {
            PortIo::Tap(tap) => tap.write(parts),
            PortIo::Packet(socket) => socket.write(parts),
            #[cfg(test)]
            PortIo::Capture { frames, .. } => {
                let frame = parts.concat();
                let length = frame.len();
                frames.lock().unwrap_or_else(|e| e.into_inner()).push(frame);
                Ok(length)
            }
        }
    }

    /// Before the port goes: a persistent TAP is let go, so it vanishes with its
    /// descriptors (one already gone needs nothing).
    pub(crate) fn release(&self) {
        if let PortIo::Tap(tap) = self {
            let _ = tap.release();
        }
    }

    /// The descriptor of each queue (one for all but a multi-queue TAP).
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        match self {
            PortIo::Tap(tap) => tap.queue_fds().collect(),
            PortIo::Packet(socket) => vec![socket.as_raw_fd()],
            #[cfg(test)]
            PortIo::Capture { .. } => vec![],
        }
    }

    fn kind(&self) -> PortKind {
        match self {
            PortIo::Tap(_) => PortKind::Tap,
            PortIo::Packet(_) => PortKind::Packet,
            #[cfg(test)]
            PortIo::Capture { .. } => PortKind::Tap,
        }
    }

    pub(super) fn mtu(&self) -> u32 {
        match self {
            PortIo::Tap(tap) => tap.mtu(),
            PortIo::Packet(socket) => socket.mtu(),
            #[cfg(test)]
            PortIo::Capture { mtu, .. } => *mtu,
        }
    }

    fn ifname(&self) -> &str {
        match self {
            PortIo::Tap(tap) => tap.ifname(),
            PortIo::Packet(socket) => socket.ifname(),
            #[cfg(test)]
            PortIo::Capture { .. } => "capture",
        }
    }

    fn mac(&self) -> Option<MacAddr> {
        match self {
            PortIo::Tap(tap) => Some(tap.mac()),
            PortIo::Packet(_) => None,
            #[cfg(test)]
            PortIo::Capture { mac, .. } => *mac,
        }
    }
}

pub(crate) struct Port {
    pub name: String,
    pub vni: u32,
    pub io: Arc<PortIo>,
    isolation: Isolation,
    /// What the port may send; `None`: anything.
    security: Option<PortSecurity>,
    pub(super) max_frame: usize,
    rx: Traffic,
    /// Frames read from each queue.
    queue_rx: Vec<u64>,
    tx: Traffic,
    drops: Drops,
    /// Read errors that did not remove the port.
    errors: u64,
}

#[derive(Default)]
pub(super) struct Vni {
    pub ports: Vec<u32>,
    pub peers: BTreeSet<IpAddr>,
    /// IPv4 → MAC for ARP suppression, and whether the control plane set it.
    pub neighbors: HashMap<Ipv4Addr, (MacAddr, bool)>,
    pub rx: Traffic,
    pub tx: Traffic,
    pub flooded: u64,
    arp_suppressed: u64,
    pub drops: Drops,
}

/// Where a drop is counted besides the switch total.
#[derive(Clone, Copy)]
pub(super) enum At {
    Port(u32),
    Vtep(usize),
    Nowhere,
}

/// A write to a local port that the worker does without holding the engine lock.
pub(crate) struct Deferred {
    pub to: u32,
    pub vni: u32,
    pub io: Arc<PortIo>,
}

/// Ports removed because their device failed, with the error.
pub(crate) struct RemovedPort {
    pub name: String,
    pub error: String,
}

pub(crate) struct Engine {
    pub config: SwitchConfig,
    pub fdb: Fdb,
    pub(super) ports: BTreeMap<u32, Port>,
    names: HashMap<String, u32>,
    next_port: u32,
    pub vteps: Vec<Vtep>,
    pub(super) vnis: BTreeMap<u32, Vni>,
    drops: Drops,
    removed: Vec<RemovedPort>,
    failed: Vec<(u32, io::Error)>,
    origin: Instant,
    /// `now()` read once per wakeup batch: learning needs no finer clock.
    pub(super) clock: u64,
    last_aging: u64,
    rx_buffer: Vec<u8>,
    packet_receiver: Option<PacketReceiver>,
    pub(super) vtep_side: VtepSide,
    /// Set while a worker reads a TAP outside the lock: a unicast write to a local
    /// port is handed back ([`Deferred`]) instead of done under the lock.
    defer_local: bool,
    deferred: Option<Deferred>,
}

/// Errors that mean the port's device is gone (or the descriptor unusable). Not `EIO`:
/// a TAP answers writes with it while it is down, as it is for a moment when moved into
/// another namespace (Docker moves the TAPs keelnet hands it); a TAP that is really gone
/// answers `EBADFD`.
fn device_gone(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENXIO | libc::ENODEV | libc::EPIPE)
    )
}

impl Engine {
    pub fn new(config: SwitchConfig) -> Engine {
        let fdb = Fdb::new(FdbConfig {
            max_age: config.fdb_max_age.as_nanos().min(u128::from(u64::MAX)) as u64,
            ..FdbConfig::default()
        });
        Engine {
            config,
            fdb,
            ports: BTreeMap::new(),
            names: HashMap::new(),
            next_port: 1,
            vteps: Vec::new(),
            vnis: BTreeMap::new(),
            drops: Drops::default(),
            removed: Vec::new(),
            failed: Vec::new(),
            origin: Instant::now(),
            clock: 0,
            last_aging: 0,
            rx_buffer: vec![0; RX_BUFFER],
            packet_receiver: Some(PacketReceiver::new(PACKET_BATCH, RX_BUFFER)),
            vtep_side: VtepSide::new(),
            defer_local: false,
            deferred: None,
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    // --- configuration --------------------------------------------------------------

    pub fn has_port(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Adds a port; returns its id (the epoll token).
    #[cfg(test)]
    pub fn add_port(&mut self, name: &str, vni: u32, io: PortIo) -> u32 {
        self.add_port_with(name, vni, io, PortRules::default())
    }

    /// Adds a port under `rules`; returns its id. A port with a MAC of its own (a TAP)
    /// holds it as a static entry: learning never moves it, and a VNI whose learning
    /// table is full still knows it.
    pub fn add_port_with(&mut self, name: &str, vni: u32, io: PortIo, rules: PortRules) -> u32 {
        let id = self.next_port;
        self.next_port += 1;
        let max_frame = io.mtu() as usize + L2_OVERHEAD;
        let queues = io.fds().len().max(1);
        let mac = io.mac();
        if let Some(mac) = mac {
            self.fdb.insert_static(vni, &mac, Destination::Port(id));
        }
        let security = rules
            .allowed_ips
            .zip(mac)
            .map(|(addresses, mac)| PortSecurity::new(mac, &addresses));
        self.ports.insert(
            id,
            Port {
                name: name.to_owned(),
                vni,
                io: Arc::new(io),
                isolation: rules.isolation,
                security,
                max_frame,
                rx: Traffic::default(),
                queue_rx: vec![0; queues],
                tx: Traffic::default(),
                drops: Drops::default(),
                errors: 0,
            },
        );
        self.names.insert(name.to_owned(), id);
        self.vnis.entry(vni).or_default().ports.push(id);
        id
    }

    /// Removes a port and everything learned on it; returns it (dropping it closes the
    /// descriptor and, for a TAP, removes the device).
    pub fn remove_port(&mut self, name: &str) -> Option<(u32, Port)> {
        let id = self.names.remove(name)?;
        let port = self.ports.remove(&id)?;
        if let Some(vni) = self.vnis.get_mut(&port.vni) {
            vni.ports.retain(|&other| other != id);
        }
        let doomed: Vec<(u32, MacAddr)> = self
            .fdb
            .entries()
            .filter(|(_, _, dest, _)| *dest == Destination::Port(id))
            .map(|(vni, mac, _, _)| (vni, mac))
            .collect();
        for (vni, mac) in doomed {
            self.fdb.remove(vni, &mac);
        }
        self.vtep_side.port_removed(id);
        Some((id, port))
    }

    /// Every descriptor of every port.
    pub fn port_fds(&self) -> Vec<RawFd> {
        self.ports.values().flat_map(|port| port.io.fds()).collect()
    }

    pub fn fdb_entries(&self, vni: u32) -> Vec<FdbEntry> {
        let mut entries: Vec<FdbEntry> = self
            .fdb
            .entries()
            .filter(|(entry_vni, _, _, _)| *entry_vni == vni)
            .map(|(_, mac, dest, is_static)| FdbEntry {
                mac,
                port: match dest {
                    Destination::Port(id) => self.ports.get(&id).map(|port| port.name.clone()),
                    Destination::Remote(_) => None,
                },
                remote: match dest {
                    Destination::Remote(ip) => Some(ip),
                    Destination::Port(_) => None,
                },
                is_static,
            })
            .collect();
        entries.sort_by_key(|entry| entry.mac);
        entries
    }

    pub fn stats(&self) -> Stats {
        Stats {
            ports: self
                .ports
                .values()
                .map(|port| PortStats {
                    name: port.name.clone(),
                    kind: port.io.kind(),
                    ifname: port.io.ifname().to_owned(),
                    mac: port.io.mac(),
                    vni: port.vni,
                    allowed_ips: port.security.as_ref().map(PortSecurity::addresses),
                    rx: port.rx,
                    queue_rx: port.queue_rx.clone(),
                    tx: port.tx,
                    drops: port.drops,
                    errors: port.errors,
                })
                .collect(),
            vnis: self
                .vnis
                .iter()
                .map(|(&vni, state)| VniStats {
                    vni,
                    ports: state
                        .ports
                        .iter()
                        .filter_map(|id| self.ports.get(id).map(|port| port.name.clone()))
                        .collect(),
                    peers: state.peers.iter().copied().collect(),
                    rx: state.rx,
                    tx: state.tx,
                    flooded: state.flooded,
                    arp_suppressed: state.arp_suppressed,
                    drops: state.drops,
                })
                .collect(),
            vteps: self.vteps.iter().map(Vtep::stats).collect(),
            drops: self.drops,
            removed_ports: self
                .removed
                .iter()
                .map(|removed| (removed.name.clone(), removed.error.clone()))
                .collect(),
            fdb: self.fdb.counters(),
            fdb_entries: self.fdb.len(),
            running: false,
        }
    }

    // --- events ---------------------------------------------------------------------

    pub(super) fn count_drop(&mut self, reason: DropReason, at: At, vni: Option<u32>) {
        self.drops.count(reason);
        match at {
            At::Port(id) => {
                if let Some(port) = self.ports.get_mut(&id) {
                    port.drops.count(reason);
                }
            }
            At::Vtep(index) => {
                if let Some(vtep) = self.vteps.get_mut(index) {
                    vtep.drops.count(reason);
                }
            }
            At::Nowhere => {}
        }
        if let Some(state) = vni.and_then(|vni| self.vnis.get_mut(&vni)) {
            state.drops.count(reason);
        }
    }

    /// Ages the FDB when due; called after every wakeup.
    pub fn tick(&mut self) {
        let now = self.now();
        let period = (self.fdb.config().max_age / 4).clamp(50_000_000, 1_000_000_000);
        if now.saturating_sub(self.last_aging) >= period {
            self.last_aging = now;
            self.fdb.age(now);
        }
    }

    /// Ports whose device failed since the last call, removed (their descriptors are
    /// returned to be taken off epoll and closed by the caller).
    pub fn reap_failed(&mut self) -> Vec<Port> {
        let failed = std::mem::take(&mut self.failed);
        let mut gone = Vec::new();
        for (id, error) in failed {
            let Some(name) = self.ports.get(&id).map(|port| port.name.clone()) else {
                continue;
            };
            if let Some((_, port)) = self.remove_port(&name) {
                self.removed.push(RemovedPort {
                    name,
                    error: error.to_string(),
                });
                gone.push(port);
            }
        }
        gone
    }

    fn port_failed(&mut self, id: u32, error: io::Error) {
        if !self.failed.iter().any(|(failed, _)| *failed == id) {
            self.failed.push((id, error));
        }
    }

    pub fn port_readable(&mut self, id: u32) {
        self.clock = self.now();
        if matches!(
            self.ports.get(&id).map(|port| &*port.io),
            Some(PortIo::Packet(_))
        ) {
            return self.packet_port_readable(id);
        }
        let mut buffer = std::mem::take(&mut self.rx_buffer);
        for _ in 0..PORT_BUDGET {
            let Some(port) = self.ports.get(&id) else {
                break;
            };
            match port.io.read(0, &mut buffer) {
                Ok(Some(length)) => self.on_local_frame(id, &buffer[..length]),
                Ok(None) => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.port_read_error(id, error);
                    break;
                }
            }
        }
        self.rx_buffer = buffer;
        self.flush_small();
    }

    /// AF_PACKET ports receive in batches (`recvmmsg`).
    fn packet_port_readable(&mut self, id: u32) {
        let Some(mut receiver) = self.packet_receiver.take() else {
            return;
        };
        for _ in 0..PORT_BUDGET / PACKET_BATCH {
            let (result, port_vlan) = match self.ports.get(&id).map(|port| &*port.io) {
                Some(PortIo::Packet(socket)) => (receiver.receive(socket), socket.vlan()),
                _ => break,
            };
            match result {
                Ok(0) => break,
                Ok(count) => {
                    for index in 0..count {
                        let (frame, truncated) = receiver.frame(index);
                        if receiver.vlan(index) != port_vlan {
                            // Another VLAN's traffic (or the untagged LAN's) on this wire.
                            continue;
                        }
                        if truncated {
                            let vni = self.ports.get(&id).map(|port| port.vni);
                            self.count_drop(DropReason::Truncated, At::Port(id), vni);
                        } else {
                            self.on_local_frame(id, frame);
                        }
                    }
                    if count < PACKET_BATCH {
                        // A short batch means the queue is empty (as for VTEPs).
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.port_read_error(id, error);
                    break;
                }
            }
        }
        self.packet_receiver = Some(receiver);
        self.flush_small();
    }

    /// The TAP of port `id`, for a worker to read without the lock (`None` for other
    /// port kinds, which are read under the lock in batches).
    pub(crate) fn tap_io(&mut self, id: u32) -> Option<Arc<PortIo>> {
        self.clock = self.now();
        let port = self.ports.get(&id)?;
        match &*port.io {
            PortIo::Packet(_) => None,
            _ => Some(Arc::clone(&port.io)),
        }
    }

    /// Forwards one frame read from `queue` outside the lock; a unicast to a local port
    /// comes back to be written outside the lock too.
    pub(crate) fn on_local_frame_deferred(
        &mut self,
        id: u32,
        queue: usize,
        data: &[u8],
    ) -> Option<Deferred> {
        self.defer_local = true;
        self.on_queue_frame(id, queue, data);
        self.defer_local = false;
        self.deferred.take()
    }

    /// Accounts for a [`Deferred`] write.
    pub(crate) fn deferred_done(
        &mut self,
        done: &Deferred,
        length: usize,
        result: io::Result<usize>,
    ) {
        match result {
            Ok(_) => {
                if let Some(port) = self.ports.get_mut(&done.to) {
                    port.tx.add(length);
                }
                if let Some(state) = self.vnis.get_mut(&done.vni) {
                    state.tx.add(length);
                }
            }
            Err(error) if device_gone(&error) => {
                self.port_failed(done.to, error);
                self.count_drop(DropReason::PortGone, At::Port(done.to), Some(done.vni));
            }
            Err(_) => self.count_drop(DropReason::TxError, At::Port(done.to), Some(done.vni)),
        }
    }

    /// A read error: the port is removed when its device is gone; anything else (a
    /// link going down under an AF_PACKET socket) is counted and the port kept.
    pub(crate) fn port_read_error(&mut self, id: u32, error: io::Error) {
        if device_gone(&error) {
            self.port_failed(id, error);
        } else if let Some(port) = self.ports.get_mut(&id) {
            port.errors += 1;
        }
    }

    pub fn port_error(&mut self, id: u32) {
        // Read to learn the error; a readable port with a pending error reports it.
        let mut probe = [0u8; 1];
        if let Some(port) = self.ports.get(&id) {
            match port.io.read(0, &mut probe) {
                Err(error) => self.port_read_error(id, error),
                Ok(_) => self.port_failed(id, io::Error::from_raw_os_error(libc::ENODEV)),
            }
        }
    }

    /// Whether a flooded frame for `destination` goes to port `to`: a guarded port's one
    /// MAC is a static entry, so unicast it does not find is never for it.
    pub(super) fn takes_flood(&self, to: u32, destination: &MacAddr) -> bool {
        ethernet::is_multicast(destination)
            || self
                .ports
                .get(&to)
                .is_some_and(|port| port.security.is_none())
    }

    fn isolation_of(&self, id: u32) -> Isolation {
        self.ports
            .get(&id)
            .map_or(Isolation::Open, |port| port.isolation)
    }

    /// A frame read from a port's only (or first) queue.
    pub(super) fn on_local_frame(&mut self, id: u32, data: &[u8]) {
        self.on_queue_frame(id, 0, data);
    }

    fn on_queue_frame(&mut self, id: u32, queue: usize, data: &[u8]) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        port.rx.add(data.len());
        if let Some(count) = port.queue_rx.get_mut(queue) {
            *count += 1;
        }
        let vni = port.vni;
        let max_frame = port.max_frame;
        let security = port.security.as_ref();
        if data.len() < VNET_HDR_LEN + ethernet::HEADER_LEN || data.len() >= RX_BUFFER {
            return self.count_drop(DropReason::Truncated, At::Port(id), Some(vni));
        }
        let (header_bytes, frame) = data.split_at(VNET_HDR_LEN);
        let Ok(header) = VirtioNetHdr::parse(header_bytes) else {
            return self.count_drop(DropReason::Malformed, At::Port(id), Some(vni));
        };
        if header.gso_type == gso_type::NONE && frame.len() > max_frame {
            return self.count_drop(DropReason::Oversized, At::Port(id), Some(vni));
        }
        let Ok(eth) = EthernetFrame::parse(frame) else {
            return self.count_drop(DropReason::Malformed, At::Port(id), Some(vni));
        };
        let source = eth.source();
        let destination = eth.destination();
        if ethernet::is_multicast(&source) || source == [0; 6] {
            return self.count_drop(DropReason::InvalidSource, At::Port(id), Some(vni));
        }
        if let Some(Err(reason)) = security.map(|security| security.check(&eth)) {
            return self.count_drop(reason, At::Port(id), Some(vni));
        }
        let isolation = self.isolation_of(id);
        // An open port (the wire) bringing back the source MAC of a local isolated port:
        // the outside switch reflected that port's frame (VEPA hairpin). Its MAC stays
        // where it lives; private ports never receive it.
        let reflected_from = match self.fdb.lookup(vni, &source) {
            Some(Destination::Port(owner))
                if owner != id
                    && isolation == Isolation::Open
                    && self.isolation_of(owner) != Isolation::Open =>
            {
                Some(owner)
            }
            _ => None,
        };
        match reflected_from {
            Some(owner) if self.isolation_of(owner) == Isolation::Private => {
                return self.count_drop(DropReason::Isolated, At::Port(id), Some(vni));
            }
            Some(_) => {}
            None => {
                self.fdb
                    .learn(vni, &source, Destination::Port(id), self.clock);
            }
        }
        if let Some(state) = self.vnis.get_mut(&vni) {
            state.rx.add(frame.len());
        }
        if eth.ethertype() == ethertype::ARP && eth.vlan().is_none() && self.arp(id, vni, &eth) {
            return;
        }
        if !ethernet::is_multicast(&destination) {
            match self.fdb.lookup(vni, &destination) {
                Some(Destination::Port(to)) if to == id => {
                    return self.count_drop(DropReason::Hairpin, At::Port(id), Some(vni));
                }
                Some(Destination::Port(to))
                    if isolation != Isolation::Open && self.isolation_of(to) != Isolation::Open =>
                {
                    // Isolated to isolated: only the open ports (the wire) may carry it,
                    // as if the destination were unknown.
                }
                Some(Destination::Port(to)) => {
                    let gso = header.gso_type != gso_type::NONE;
                    if self.defer_local
                        && let Some(port) = self.ports.get(&to)
                        && port.vni == vni
                        && (gso || frame.len() <= port.max_frame)
                    {
                        self.deferred = Some(Deferred {
                            to,
                            vni,
                            io: Arc::clone(&port.io),
                        });
                        return;
                    }
                    self.send_to_port(to, vni, header_bytes, frame, gso);
                    return;
                }
                Some(Destination::Remote(remote)) => {
                    self.send_to_remotes(id, vni, &header, frame, &[remote]);
                    return;
                }
                None => {}
            }
        }
        // Broadcast, multicast, unknown unicast: every other port of the VNI and every
        // peer VTEP (head-end replication).
        let Some(state) = self.vnis.get_mut(&vni) else {
            return;
        };
        state.flooded += 1;
        let candidates: Vec<u32> = state.ports.iter().copied().filter(|&to| to != id).collect();
        let peers: Vec<IpAddr> = state.peers.iter().copied().collect();
        let ports: Vec<u32> = candidates
            .into_iter()
            .filter(|&to| isolation == Isolation::Open || self.isolation_of(to) == Isolation::Open)
            .filter(|&to| Some(to) != reflected_from)
            .filter(|&to| self.takes_flood(to, &destination))
            .collect();
        for to in ports {
            self.send_to_port(
                to,
                vni,
                header_bytes,
                frame,
                header.gso_type != gso_type::NONE,
            );
        }
        if !peers.is_empty() {
            self.send_to_remotes(id, vni, &header, frame, &peers);
        }
    }

    /// ARP snooping and suppression on a local port. Returns true when the request was
    /// answered here (and must not be flooded).
    fn arp(&mut self, id: u32, vni: u32, eth: &EthernetFrame<'_>) -> bool {
        if !self.config.arp_suppression {
            return false;
        }
        let Ok(packet) = ArpPacket::parse(eth.payload()) else {
            return false;
        };
        let Some(state) = self.vnis.get_mut(&vni) else {
            return false;
        };
        let sender_ip = packet.sender_ip();
        let sender_mac = packet.sender_mac();
        if !sender_ip.is_unspecified() && !ethernet::is_multicast(&sender_mac) {
            let configured = state
                .neighbors
                .get(&sender_ip)
                .is_some_and(|(_, configured)| *configured);
            if !configured {
                state.neighbors.insert(sender_ip, (sender_mac, false));
            }
        }
        if packet.operation() != arp::OP_REQUEST {
            return false;
        }
        let target_ip = packet.target_ip();
        let Some(&(target_mac, _)) = state.neighbors.get(&target_ip) else {
            return false;
        };
        if target_mac == sender_mac || sender_ip == target_ip {
            // Gratuitous ARP or a duplicate-address probe: let the owner answer.
            return false;
        }
        let mut reply = [0u8; ethernet::HEADER_LEN + arp::PACKET_LEN];
        let built =
            ethernet::write_header(&mut reply, &sender_mac, &target_mac, None, ethertype::ARP)
                .and_then(|_| {
                    Arp {
                        operation: arp::OP_REPLY,
                        sender_mac: target_mac,
                        sender_ip: target_ip,
                        target_mac: sender_mac,
                        target_ip: sender_ip,
                    }
                    .write(&mut reply[ethernet::HEADER_LEN..])
                });
        if built.is_err() {
            return false;
        }
        state.arp_suppressed += 1;
        let header = [0u8; VNET_HDR_LEN];
        self.send_to_port(id, vni, &header, &reply, false);
        true
    }

    /// Writes a frame (with its virtio-net header) to a local port of `vni`.
    pub(super) fn send_to_port(
        &mut self,
        to: u32,
        vni: u32,
        header: &[u8],
        frame: &[u8],
        gso: bool,
    ) {
        let Some(port) = self.ports.get_mut(&to) else {
            return self.count_drop(DropReason::PortGone, At::Nowhere, Some(vni));
        };
        if port.vni != vni {
            // Cannot happen (entries are per VNI); never leak across networks.
            return self.count_drop(DropReason::UnknownVni, At::Port(to), Some(vni));
        }
        if !gso && frame.len() > port.max_frame {
            return self.count_drop(DropReason::Oversized, At::Port(to), Some(vni));
        }
        match port.io.write(&[header, frame]) {
            Ok(_) => {
                port.tx.add(frame.len());
                if let Some(state) = self.vnis.get_mut(&vni) {
                    state.tx.add(frame.len());
                }
            }
            Err(error) if device_gone(&error) => {
                self.port_failed(to, error);
                self.count_drop(DropReason::PortGone, At::Port(to), Some(vni));
            }
            Err(_) => self.count_drop(DropReason::TxError, At::Port(to), Some(vni)),
        }
    }
}

/// What the engine's tests on both sides share: capture ports and frames.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub const A: MacAddr = [2, 0, 0, 0, 0, 0xa];
    pub const B: MacAddr = [2, 0, 0, 0, 0, 0xb];
    pub const BROADCAST: MacAddr = [0xff; 6];

    /// A port that keeps what is written to it, without a MAC of its own (an uplink).
    pub fn capture(mtu: u32) -> PortIo {
        PortIo::Capture {
            mtu,
            mac: None,
            frames: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A port with its own MAC, as a TAP has.
    pub fn capture_tap(mac: MacAddr) -> PortIo {
        PortIo::Capture {
            mtu: 1500,
            mac: Some(mac),
            frames: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn written(engine: &Engine, name: &str) -> Vec<Vec<u8>> {
        let id = engine.names[name];
        match &*engine.ports[&id].io {
            PortIo::Capture { frames, .. } => frames.lock().unwrap().clone(),
            _ => unreachable!(),
        }
    }

    /// A virtio-net header (all zero) and an Ethernet frame of `size` bytes.
    pub fn local_frame(
        destination: MacAddr,
        source: MacAddr,
        ethertype: u16,
        size: usize,
    ) -> Vec<u8> {
        let mut data = vec![0u8; VNET_HDR_LEN + size];
        ethernet::write_header(
            &mut data[VNET_HDR_LEN..],
            &destination,
            &source,
            None,
            ethertype,
        )
        .unwrap();
        data
    }

    /// Ports "a" and "b" in VNI 1, "c" in VNI 2.
    pub fn engine(config: SwitchConfig) -> Engine {
        let mut engine = Engine::new(config);
        engine.add_port("a", 1, capture(1500));
        engine.add_port("b", 1, capture(1500));
        engine.add_port("c", 2, capture(1500));
        engine
    }

    pub fn port_id(engine: &Engine, name: &str) -> u32 {
        engine.names[name]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn floods_stay_in_their_vni_and_unicast_follows_learning() {
        let mut engine = engine(SwitchConfig::default());
        let a = engine.names["a"];
        let b = engine.names["b"];
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        assert_eq!(written(&engine, "b").len(), 1);
        assert!(written(&engine, "a").is_empty());
        assert!(
            written(&engine, "c").is_empty(),
            "VNI 2 saw VNI 1's broadcast"
        );
        // B answers A: unicast to a only, the virtio-net header passed through as is.
        let mut reply = local_frame(A, B, 0x88b5, 60);
        reply[1] = gso_type::TCPV4;
        engine.on_local_frame(b, &reply);
        assert_eq!(written(&engine, "a"), vec![reply]);
        assert_eq!(written(&engine, "b").len(), 1);
        assert_eq!(engine.fdb.lookup(1, &A), Some(Destination::Port(a)));
        assert_eq!(engine.fdb.lookup(1, &B), Some(Destination::Port(b)));
        assert_eq!(engine.fdb.lookup(2, &A), None);
        // A frame for a MAC behind the port it came from goes nowhere.
        engine.on_local_frame(a, &local_frame(A, A, 0x88b5, 60));
        assert_eq!(engine.drops.total(), 1);
    }

    /// An uplink ("wire") and two sandbox ports under `isolation`, all in VNI 1.
    fn isolated_engine(isolation: Isolation) -> (Engine, u32, u32, u32) {
        let mut engine = Engine::new(SwitchConfig::default());
        let rules = PortRules {
            isolation,
            allowed_ips: None,
        };
        let wire = engine.add_port("wire", 1, capture(1500));
        let a = engine.add_port_with("a", 1, capture(1500), rules.clone());
        let b = engine.add_port_with("b", 1, capture(1500), rules);
        // Both sandboxes have spoken once (their MACs are learned).
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 60));
        engine.on_local_frame(b, &local_frame(BROADCAST, B, 0x88b5, 60));
        (engine, wire, a, b)
    }

    #[test]
    fn isolated_ports_reach_only_the_wire() {
        for isolation in [Isolation::Private, Isolation::Vepa] {
            let (mut engine, wire, a, _) = isolated_engine(isolation);
            assert_eq!(
                written(&engine, "wire").len(),
                2,
                "{isolation:?}: broadcasts go out"
            );
            assert!(
                written(&engine, "a").is_empty(),
                "{isolation:?}: b's broadcast reached a"
            );
            assert!(
                written(&engine, "b").is_empty(),
                "{isolation:?}: a's broadcast reached b"
            );
            // A unicast to b leaves through the wire, not to b.
            let to_b = local_frame(B, A, 0x88b5, 60);
            engine.on_local_frame(a, &to_b);
            assert_eq!(written(&engine, "wire").last(), Some(&to_b));
            assert!(written(&engine, "b").is_empty());
            // The wire reaches both.
            let from_outside = local_frame(A, [2, 0, 0, 0, 0, 0xe], 0x88b5, 60);
            engine.on_local_frame(wire, &from_outside);
            assert_eq!(written(&engine, "a"), vec![from_outside]);
            assert_eq!(engine.fdb.lookup(1, &A), Some(Destination::Port(a)));
        }
    }

    #[test]
    fn reflected_frames_reach_vepa_ports_but_never_private_ones() {
        let (mut engine, wire, a, _) = isolated_engine(Isolation::Vepa);
        // The outside switch hairpins a's unicast and broadcast back.
        let to_b = local_frame(B, A, 0x88b5, 60);
        engine.on_local_frame(wire, &to_b);
        assert_eq!(written(&engine, "b"), vec![to_b.clone()]);
        let broadcast = local_frame(BROADCAST, A, 0x88b5, 60);
        engine.on_local_frame(wire, &broadcast);
        assert_eq!(written(&engine, "b"), vec![to_b.clone(), broadcast]);
        assert!(written(&engine, "a").is_empty(), "a got its own frame back");
        assert_eq!(
            engine.fdb.lookup(1, &A),
            Some(Destination::Port(a)),
            "a reflected frame moved a's MAC to the wire"
        );

        let (mut engine, wire, a, _) = isolated_engine(Isolation::Private);
        engine.on_local_frame(wire, &to_b);
        engine.on_local_frame(wire, &local_frame(BROADCAST, A, 0x88b5, 60));
        assert!(written(&engine, "b").is_empty());
        assert_eq!(engine.drops.get(DropReason::Isolated), 2);
        assert_eq!(engine.fdb.lookup(1, &A), Some(Destination::Port(a)));
    }

    #[test]
    fn bad_local_frames_are_counted_by_reason() {
        let mut engine = engine(SwitchConfig::default());
        let a = engine.names["a"];
        engine.on_local_frame(a, &[0u8; VNET_HDR_LEN + 5]);
        engine.on_local_frame(a, &local_frame(BROADCAST, BROADCAST, 0x88b5, 60));
        engine.on_local_frame(a, &local_frame(BROADCAST, A, 0x88b5, 1600));
        let stats = engine.stats();
        assert_eq!(stats.drops.get(DropReason::Truncated), 1);
        assert_eq!(stats.drops.get(DropReason::InvalidSource), 1);
        assert_eq!(stats.drops.get(DropReason::Oversized), 1);
        assert!(written(&engine, "b").is_empty());
    }

    #[test]
    fn arp_requests_for_known_addresses_are_answered_locally() {
        let mut engine = engine(SwitchConfig {
            arp_suppression: true,
            ..SwitchConfig::default()
        });
        let a = engine.names["a"];
        let remote_mac = [2, 0, 0, 0, 0, 0x99];
        engine.add_peer(
            1,
            "192.0.2.2".parse().unwrap(),
            Some(remote_mac),
            Some("198.51.100.9".parse().unwrap()),
        );
        let mut request = local_frame(BROADCAST, A, ethertype::ARP, 42);
        Arp {
            operation: arp::OP_REQUEST,
            sender_mac: A,
            sender_ip: "198.51.100.1".parse().unwrap(),
            target_mac: [0; 6],
            target_ip: "198.51.100.9".parse().unwrap(),
        }
        .write(&mut request[VNET_HDR_LEN + ethernet::HEADER_LEN..])
        .unwrap();
        engine.on_local_frame(a, &request);
        let replies = written(&engine, "a");
        assert_eq!(replies.len(), 1);
        let reply = &replies[0][VNET_HDR_LEN..];
        let arp = ArpPacket::parse(&reply[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(arp.operation(), arp::OP_REPLY);
        assert_eq!(arp.sender_mac(), remote_mac);
        assert_eq!(arp.target_mac(), A);
        assert!(
            written(&engine, "b").is_empty(),
            "a suppressed request is not flooded"
        );
        assert_eq!(engine.stats().vnis[0].arp_suppressed, 1);
    }

    const GATEWAY: MacAddr = [2, 0, 0, 0, 0, 1];

    /// A bridge network: the gateway TAP (open, unguarded) and guarded sandboxes a and b
    /// with 10.0.0.2 and 10.0.0.3, in VNI 0.
    fn guarded_engine() -> (Engine, u32, u32, u32) {
        let mut engine = Engine::new(SwitchConfig::default());
        let guarded = |address: &str| PortRules {
            isolation: Isolation::Open,
            allowed_ips: Some(vec![address.parse().unwrap()]),
        };
        let gateway = engine.add_port("gateway", 0, capture_tap(GATEWAY));
        let a = engine.add_port_with("a", 0, capture_tap(A), guarded("10.0.0.2"));
        let b = engine.add_port_with("b", 0, capture_tap(B), guarded("10.0.0.3"));
        (engine, gateway, a, b)
    }

    /// An IPv4/UDP frame with a virtio-net header.
    fn udp4(destination: MacAddr, source: MacAddr, from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
        let mut data = local_frame(destination, source, ethertype::IPV4, 14 + 28);
        let ip = &mut data[VNET_HDR_LEN + ethernet::HEADER_LEN..];
        ip[..12].copy_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        ip[12..16].copy_from_slice(&from);
        ip[16..20].copy_from_slice(&to);
        data
    }

    #[test]
    fn local_macs_are_static_from_the_start() {
        let (engine, gateway, a, _) = guarded_engine();
        assert_eq!(
            engine.fdb.lookup(0, &GATEWAY),
            Some(Destination::Port(gateway))
        );
        assert_eq!(engine.fdb.lookup(0, &A), Some(Destination::Port(a)));
        assert!(engine.fdb.is_static(0, &GATEWAY) && engine.fdb.is_static(0, &A));
    }

    #[test]
    fn a_guarded_port_can_neither_take_over_a_mac_nor_forge_an_address() {
        let (mut engine, gateway, a, b) = guarded_engine();
        // The gateway's MAC, then b's, as source: dropped, nothing moves.
        engine.on_local_frame(a, &udp4(BROADCAST, GATEWAY, [10, 0, 0, 1], [10, 0, 0, 3]));
        engine.on_local_frame(a, &udp4(B, B, [10, 0, 0, 3], [10, 0, 0, 3]));
        // Its own MAC with b's address: dropped too.
        engine.on_local_frame(a, &udp4(B, A, [10, 0, 0, 3], [10, 0, 0, 3]));
        assert!(written(&engine, "b").is_empty() && written(&engine, "gateway").is_empty());
        assert_eq!(
            engine.fdb.lookup(0, &GATEWAY),
            Some(Destination::Port(gateway))
        );
        assert_eq!(engine.fdb.lookup(0, &B), Some(Destination::Port(b)));
        let drops = engine
            .stats()
            .ports
            .into_iter()
            .find(|p| p.name == "a")
            .unwrap()
            .drops;
        assert_eq!(drops.get(DropReason::SpoofedMac), 2);
        assert_eq!(drops.get(DropReason::SpoofedIp), 1);
        // Its own traffic goes through; the gateway (unguarded) sends from any address.
        let own = udp4(B, A, [10, 0, 0, 2], [10, 0, 0, 3]);
        engine.on_local_frame(a, &own);
        assert_eq!(written(&engine, "b"), vec![own]);
        let routed = udp4(B, GATEWAY, [192, 0, 2, 2], [10, 0, 0, 3]);
        engine.on_local_frame(gateway, &routed);
        assert_eq!(written(&engine, "b").last(), Some(&routed));
        // Unicast to an unknown MAC floods to the gateway only: guarded ports have one
        // MAC, which is known.
        let before = written(&engine, "b").len();
        engine.on_local_frame(
            a,
            &udp4([2, 0, 0, 0, 0, 0x77], A, [10, 0, 0, 2], [10, 0, 0, 9]),
        );
        assert_eq!(written(&engine, "b").len(), before);
        assert_eq!(written(&engine, "gateway").len(), 1);
    }

    #[test]
    fn a_full_learning_table_leaves_local_ports_known() {
        let mut engine = Engine::new(SwitchConfig::default());
        let rules = PortRules::default();
        let noisy = engine.add_port_with("noisy", 0, capture_tap([2, 0, 0, 0, 0, 0xc]), rules);
        let a = engine.add_port("a", 0, capture_tap(A));
        for n in 0..65_537u32 {
            let b = n.to_be_bytes();
            let forged = [0x02, 0x99, b[0], b[1], b[2], b[3]];
            engine.on_local_frame(noisy, &local_frame(A, forged, 0x88b5, 60));
        }
        assert!(
            engine.fdb.counters().limit_drops > 0,
            "the table did not fill"
        );
        // A port added to the full table is known at once: unicast to it is not flooded.
        engine.add_port("late", 0, capture_tap(B));
        engine.on_local_frame(a, &local_frame(B, A, 0x88b5, 60));
        assert_eq!(written(&engine, "late").len(), 1);
        assert_eq!(written(&engine, "noisy").len(), 0);
    }
}
