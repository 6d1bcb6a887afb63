//! The userspace switch: TAP ports, AF_PACKET ports and VXLAN tunnel endpoints joined by
//! per-VNI MAC learning ([`crate::fdb`]).
//!
//! A [`Switch`] is a handle. Ports are opened on the calling thread (in the switch's
//! host namespace, so errors come back to the caller), then handed to the engine. While
//! running, each worker thread waits on the epoll set of its share of the ports and VTEPs
//! and forwards in batches, holding the engine's mutex only while it processes what woke
//! it; control calls take the same mutex between batches. Stopping joins the threads;
//! dropping the switch (or [`Switch::close`]) closes every descriptor, which removes the
//! TAP devices.

mod counters;
mod engine;
mod partial;
mod port_security;
mod vtep;

pub use counters::{DropReason, Drops, Traffic};
pub use port_security::PortSecurity;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::{Engine, PortIo};
use vtep::TunnelPath;

use crate::fdb::{FdbCounters, MacAddr};
use crate::io::packet_socket::PacketSocket;
use crate::io::poller::{Poller, SpinPolicy};
use crate::io::tap::{Tap, TapConfig};
use crate::io::tunnel_tap::TunnelTap;
use crate::io::udp::UdpSocket;
use crate::packet::vxlan::MAX_VNI;

/// Switch-wide settings.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The host namespace ports and VTEPs are opened in; `None`: the caller's.
    pub netns: Option<PathBuf>,
    /// Learn inner source MACs of decapsulated frames as behind their VTEP (as the
    /// Linux vxlan device does by default). Static entries always win.
    pub learn_remote: bool,
    /// Accept VXLAN from VTEPs that are not configured peers of the VNI, and add them to
    /// its flood list. Off: such packets are dropped as `unknown_peer`.
    pub learn_peers: bool,
    /// Answer ARP requests from local ports for known IPv4 → MAC bindings instead of
    /// flooding them (bindings from [`Switch::add_peer`] and snooped local ARP).
    pub arp_suppression: bool,
    /// Learned MACs not seen for this long are forgotten.
    pub fdb_max_age: Duration,
    /// Coalesce decapsulated TCP segments into super-frames before writing to a port.
    pub coalesce: bool,
    /// Send each super-frame's segments with one UDP GSO call (off: one call each).
    pub udp_gso: bool,
    /// Hand super-frames to the host's stack whole, as UDP-tunnel GSO packets, through
    /// a TAP per VTEP ([`TunnelTap`]), where the kernel allows it; segment them here
    /// otherwise (and when off).
    pub tunnel_gso: bool,
    /// Most a worker polls for the next packet before it sleeps, when packets come back
    /// and forth within that time (request/response: each poll that finds one saves a
    /// thread wakeup); adaptive, yields the CPU to other tasks ([`SpinPolicy`]).
    /// Zero: always sleep in `epoll_wait` at once.
    pub busy_poll: Duration,
    /// Worker threads; ports and VTEPs are dealt to them round-robin, in the order added.
    pub workers: usize,
}

/// Default [`SwitchConfig::busy_poll`]: covers the gap between a request leaving and its
/// reply arriving across two hosts, and between a reply and the next request of a
/// sandbox that answers at once (BENCHMARKS.md, issue 4).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            netns: None,
            learn_remote: true,
            learn_peers: false,
            arp_suppression: false,
            fdb_max_age: Duration::from_secs(300),
            coalesce: true,
            udp_gso: true,
            tunnel_gso: true,
            busy_poll: DEFAULT_BUSY_POLL,
            workers: 1,
        }
    }
}

/// Which ports a port's frames may reach: the per-port rules of Linux bridge port
/// isolation and of macvlan's private and VEPA modes. Open ports (the uplink, a gateway)
/// reach every port; a non-open port reaches only open ports, so frames between two of
/// them leave through the open ports (the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    #[default]
    Open,
    /// VEPA: frames the outside switch reflects back (hairpin) are delivered.
    Vepa,
    /// Never reached by another non-open port, not even through the wire.
    Private,
}

impl Isolation {
    pub fn parse(text: &str) -> Option<Isolation> {
        match text {
            "open" => Some(Isolation::Open),
            "vepa" => Some(Isolation::Vepa),
            "private" => Some(Isolation::Private),
            _ => None,
        }
    }
}

/// How a TAP port forwards and what it may send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRules {
    pub isolation: Isolation,
    /// Port security ([`PortSecurity`]): `Some(addresses)`: the port sends only from its
    /// own MAC and these addresses; `None`: anything (a sandbox that bridges or routes
    /// for others).
    pub allowed_ips: Option<Vec<IpAddr>>,
}

/// What kind of device a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Tap,
    Packet,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Packet => "packet",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PortStats {
    pub name: String,
    pub kind: PortKind,
    /// The device's name (in the sandbox for a TAP port).
    pub ifname: String,
    pub mac: Option<MacAddr>,
    pub vni: u32,
    /// The addresses the port may send from, when port security guards it.
    pub allowed_ips: Option<Vec<IpAddr>>,
    /// Frames read from the port.
    pub rx: Traffic,
    /// Frames read from each of its queues (one for all but a multi-queue TAP).
    pub queue_rx: Vec<u64>,
    /// Frames written to the port.
    pub tx: Traffic,
    pub drops: Drops,
    /// Read errors that did not remove the port (e.g. its link went down).
    pub errors: u64,
}

#[derive(Debug, Clone)]
pub struct VniStats {
    pub vni: u32,
    pub ports: Vec<String>,
    pub peers: Vec<IpAddr>,
    /// Frames entering the VNI (from local ports and decapsulated).
    pub rx: Traffic,
    /// Frames delivered to local ports or sent to remote VTEPs.
    pub tx: Traffic,
    pub flooded: u64,
    pub arp_suppressed: u64,
    pub drops: Drops,
}

#[derive(Debug, Clone)]
pub struct VtepStats {
    pub local: SocketAddr,
    /// VXLAN datagrams received / sent.
    pub rx: Traffic,
    pub tx: Traffic,
    pub drops: Drops,
    /// Socket errors (ICMP reports, failed sends).
    pub errors: u64,
    /// UDP GSO still in use (it is turned off when the kernel refuses it).
    pub gso: bool,
    pub gro: bool,
    /// The TAP super-frames to peers leave through whole (UDP-tunnel GSO).
    pub tunnel_device: Option<String>,
    /// Why super-frames are segmented in userspace instead.
    pub tunnel_error: Option<String>,
    /// Super-frames sent whole through the tunnel TAP.
    pub tunnel_frames: u64,
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub ports: Vec<PortStats>,
    pub vnis: Vec<VniStats>,
    pub vteps: Vec<VtepStats>,
    /// Every drop of the switch, by reason.
    pub drops: Drops,
    /// Ports removed because their device failed: name and error.
    pub removed_ports: Vec<(String, String)>,
    pub fdb: FdbCounters,
    pub fdb_entries: usize,
    pub running: bool,
}

/// One forwarding entry of a VNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: MacAddr,
    /// The local port's name, for a local MAC.
    pub port: Option<String>,
    /// The VTEP's underlay address, for a remote MAC.
    pub remote: Option<IpAddr>,
    pub is_static: bool,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn check_vni(vni: u32) -> io::Result<()> {
    if vni > MAX_VNI {
        return Err(invalid(format!("VNI {vni} does not fit in 24 bits")));
    }
    Ok(())
}

/// Epoll tokens: ports use their id (< 2^32) with the queue above `QUEUE_SHIFT`, VTEPs
/// `VTEP_TOKEN | index`.
const VTEP_TOKEN: u64 = 1 << 32;
const QUEUE_SHIFT: u32 = 40;

fn port_token(id: u32, queue: usize) -> u64 {
    u64::from(id) | (queue as u64) << QUEUE_SHIFT
}
const WAKE_TOKEN: u64 = u64::MAX;

struct Shared {
    engine: Mutex<Engine>,
    stop: AtomicBool,
    /// One epoll set per worker. Each port and VTEP belongs to one worker, like the
    /// queues of a multi-queue NIC to their interrupts: level-triggered, no re-arming,
    /// no two workers woken for one event, one port never drained by two at once.
    pollers: Vec<Poller>,
    /// Round-robin assignment of descriptors to workers.
    next_poller: AtomicUsize,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic in the worker must not make the switch unusable for stats/cleanup.
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives `fd` to the next worker.
    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let index = self.next_poller.fetch_add(1, Ordering::Relaxed) % self.pollers.len();
        self.pollers[index].add(fd, token, (libc::EPOLLIN | libc::EPOLLERR) as u32)
    }

    fn unwatch(&self, fd: RawFd) {
        // Only the owner's set holds it; the others answer ENOENT, which is ignored.
        for poller in &self.pollers {
            poller.remove(fd);
        }
    }
}

/// A userspace switch (see the module documentation).
pub struct Switch {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> io::Result<Switch> {
        if let Some(path) = &config.netns {
            // Fail now, not at the first port, when the namespace does not exist.
            crate::io::netns::open(path)?;
        }
        let pollers = (0..config.workers.max(1))
            .map(|_| Poller::new(WAKE_TOKEN))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            engine: Mutex::new(Engine::new(config)),
            stop: AtomicBool::new(false),
            pollers,
            next_poller: AtomicUsize::new(0),
        });
        Ok(Switch {
            shared,
            workers: Vec::new(),
        })
    }

    pub fn config(&self) -> SwitchConfig {
        self.shared.engine().config.clone()
    }

    fn reserve_name(&self, name: &str) -> io::Result<()> {
        if name.is_empty() {
            return Err(invalid("a port needs a name".to_owned()));
        }
        if self.shared.engine().has_port(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("port {name:?} exists"),
            ));
        }
        Ok(())
    }

    fn attach(&self, name: &str, vni: u32, io: PortIo, rules: PortRules) -> io::Result<()> {
        let fds = io.fds();
        let mut engine = self.shared.engine();
        if engine.has_port(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("port {name:?} exists"),
            ));
        }
        let id = engine.add_port_with(name, vni, io, rules);
        for (queue, &fd) in fds.iter().enumerate() {
            if let Err(error) = self.shared.watch(fd, port_token(id, queue)) {
                for &fd in &fds {
                    self.shared.unwatch(fd);
                }
                engine.remove_port(name);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Adds a TAP port in `vni` under `rules`. Its MAC is a static entry of the VNI:
    /// never learned elsewhere, never moved. `config.host_netns` is taken from the switch.
    pub fn add_tap(
        &self,
        name: &str,
        vni: u32,
        mut config: TapConfig,
        rules: PortRules,
    ) -> io::Result<()> {
        check_vni(vni)?;
        self.reserve_name(name)?;
        config.host_netns = self.shared.engine().config.netns.clone();
        let tap = Tap::create(&config)?;
        self.attach(name, vni, PortIo::Tap(tap), rules)
    }

    /// Adds an AF_PACKET port on the existing interface `ifname` of the host namespace;
    /// the port is named after the interface. With `vlan`, the port is that 802.1Q VLAN
    /// on the interface (tagged in userspace, like a VLAN device `ifname.<vlan>`).
    pub fn add_packet_port(&self, ifname: &str, vni: u32, vlan: Option<u16>) -> io::Result<()> {
        check_vni(vni)?;
        self.reserve_name(ifname)?;
        let netns = self.shared.engine().config.netns.clone();
        let socket = match vlan {
            None => PacketSocket::open(netns.as_deref(), ifname)?,
            Some(vid) => PacketSocket::open_vlan(netns.as_deref(), ifname, vid)?,
        };
        self.attach(ifname, vni, PortIo::Packet(socket), PortRules::default())
    }

    /// Adds a VXLAN tunnel endpoint on `local` (one per address family is used for
    /// sending: the first of the peer's family). With [`SwitchConfig::tunnel_gso`],
    /// super-frames leave through a tunnel TAP when the kernel allows it.
    /// `tunnel_refused`: why the caller knows the host would not forward them (its
    /// firewall could not be opened for them); they are segmented here then.
    pub fn add_vtep(&self, local: SocketAddr, tunnel_refused: Option<String>) -> io::Result<()> {
        let config = self.shared.engine().config.clone();
        let netns = config.netns.as_deref();
        let mut socket = UdpSocket::bind(netns, local)?;
        socket.set_gso(config.udp_gso);
        let tunnel = if !config.tunnel_gso {
            Ok(None)
        } else if let Some(reason) = tunnel_refused {
            Err(reason)
        } else if local.ip().is_unspecified() {
            Err("a VTEP on a wildcard address has no source address for the tunnel TAP".into())
        } else {
            TunnelTap::create(netns, local.ip())
                .map(|tap| Some(TunnelPath::new(tap)))
                .map_err(|error| error.to_string())
        };
        let fd = socket.as_raw_fd();
        let mut engine = self.shared.engine();
        let index = engine.add_vtep(socket, tunnel);
        self.shared.watch(fd, VTEP_TOKEN | index as u64)
    }

    /// Adds `remote` to `vni`'s flood list; with `mac`, a static entry for it behind
    /// `remote`; with `ip` too, an ARP suppression binding.
    pub fn add_peer(
        &self,
        vni: u32,
        remote: IpAddr,
        mac: Option<MacAddr>,
        ip: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        check_vni(vni)?;
        if remote.is_unspecified() || remote.is_multicast() {
            return Err(invalid(format!("{remote} is not a unicast VTEP address")));
        }
        if let Some(mac) = &mac
            && (crate::packet::ethernet::is_multicast(mac) || *mac == [0; 6])
        {
            return Err(invalid("a peer MAC must be unicast".to_owned()));
        }
        if ip.is_some() && mac.is_none() {
            return Err(invalid("an IP binding needs the MAC it maps to".to_owned()));
        }
        self.shared.engine().add_peer(vni, remote, mac, ip);
        Ok(())
    }

    pub fn remove_peer(&self, vni: u32, remote: IpAddr, mac: Option<MacAddr>) -> io::Result<()> {
        if self.shared.engine().remove_peer(vni, remote, mac) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no peer {remote} in VNI {vni}"),
            ))
        }
    }

    /// Removes a port; its descriptor is closed (a TAP device disappears).
    pub fn remove_port(&self, name: &str) -> io::Result<()> {
        let removed = self.shared.engine().remove_port(name);
        match removed {
            Some((_, port)) => {
                for fd in port.io.fds() {
                    self.shared.unwatch(fd);
                }
                port.io.release();
                drop(port);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no port {name:?}"),
            )),
        }
    }

    pub fn is_running(&self) -> bool {
        !self.workers.is_empty()
    }

    /// Starts the worker threads (no-op when running).
    pub fn start(&mut self) -> io::Result<()> {
        if !self.workers.is_empty() {
            return Ok(());
        }
        self.shared.stop.store(false, Ordering::SeqCst);
        let busy_poll = self.shared.engine().config.busy_poll;
        for (index, poller) in self.shared.pollers.iter().enumerate() {
            poller.clear_wake();
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("keelnet-switch-{index}"))
                .spawn(move || run(&shared, index, busy_poll));
            match spawned {
                Ok(handle) => self.workers.push(handle),
                Err(error) => {
                    self.stop();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Stops and joins the workers; ports stay open (start resumes).
    pub fn stop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for poller in &self.shared.pollers {
            poller.wake();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }

    /// Stops and removes every port and VTEP, closing all their descriptors.
    pub fn close(&mut self) {
        self.stop();
        let mut engine = self.shared.engine();
        for fd in engine.port_fds() {
            self.shared.unwatch(fd);
        }
        let names: Vec<String> = engine
            .stats()
            .ports
            .into_iter()
            .map(|port| port.name)
            .collect();
        for name in names {
            engine.remove_port(&name);
        }
        for vtep in engine.vteps.drain(..) {
            self.shared.unwatch(vtep.socket.as_raw_fd());
        }
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.engine().stats();
        stats.running = !self.workers.is_empty();
        stats
    }

    /// The forwarding entries of `vni`, sorted by MAC.
    pub fn fdb(&self, vni: u32) -> Vec<FdbEntry> {
        self.shared.engine().fdb_entries(vni)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.close();
    }
}

/// Worker `index`: wait on its epoll set, then handle every ready descriptor.
fn run(shared: &Shared, index: usize, busy_poll: Duration) {
    const EVENTS: usize = 16;
    let poller = &shared.pollers[index];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut buffer = vec![0u8; engine::RX_BUFFER];
    let mut spin = SpinPolicy::new(busy_poll);
    while !shared.stop.load(Ordering::SeqCst) {
        let ready = match poller.wait_spinning(&mut events, 100, &mut spin) {
            Ok(ready) => ready,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for event in &events[..ready] {
            let token = event.u64;
            if token == WAKE_TOKEN {
                // Only `stop` writes it.
                continue;
            }
            if token & VTEP_TOKEN != 0 {
                shared
                    .engine()
                    .vtep_readable((token & 0xffff_ffff) as usize);
                continue;
            }
            let id = token as u32;
            let queue = (token >> QUEUE_SHIFT) as usize;
            if event.events & libc::EPOLLIN as u32 == 0 {
                shared.engine().port_error(id);
                continue;
            }
            let tap = shared.engine().tap_io(id);
            match tap {
                Some(io) => tap_readable(shared, id, queue, &io, &mut buffer),
                None => shared.engine().port_readable(id),
            }
        }
        let mut engine = shared.engine();
        for port in engine.reap_failed() {
            for fd in port.io.fds() {
                shared.unwatch(fd);
            }
        }
        engine.tick();
    }
}

/// Drains a TAP port: reads and local unicast writes (the expensive part: the receiving
/// sandbox's stack runs inside the write) happen without the engine lock, so workers
/// on different ports run in parallel; the forwarding decision takes the lock.
fn tap_readable(shared: &Shared, id: u32, queue: usize, tap: &PortIo, buffer: &mut [u8]) {
    for _ in 0..engine::PORT_BUDGET {
        match tap.read(queue, buffer) {
            Ok(Some(length)) => {
                let data = &buffer[..length];
                let deferred = shared.engine().on_local_frame_deferred(id, queue, data);
                if let (Some(write), true) = (deferred, length >= crate::io::VNET_HDR_LEN) {
                    let (header, frame) = data.split_at(crate::io::VNET_HDR_LEN);
                    let result = write.io.write(&[header, frame]);
                    shared.engine().deferred_done(&write, frame.len(), result);
                }
            }
            Ok(None) => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                shared.engine().port_read_error(id, error);
                break;
            }
        }
    }
    shared.engine().flush_small();
}
