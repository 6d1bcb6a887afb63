//! ipvlan emulated in userspace, for kernels without the `ipvlan` module.
//!
//! One AF_PACKET socket on the parent interface and one TAP device per sandbox (a
//! "slave"). Every slave TAP carries the parent's MAC address, as kernel ipvlan slaves do,
//! so whatever a sandbox sends already leaves with the parent's MAC (the source is
//! rewritten anyway, so a sandbox cannot change that). Frames arriving on the parent for
//! the parent's MAC are handed to the slave that owns their destination IP (ARP: the
//! target IP); the owning sandbox answers ARP and NDP itself, with the parent's MAC.
//!
//! - **l2**: broadcast and multicast from a slave go to the wire and to every other
//!   slave; from the wire to every slave. Unicast to the parent's MAC between slaves is
//!   delivered by destination IP; any other unicast goes to the wire.
//! - **l3**: no broadcast or multicast in either direction. Slaves (which the caller
//!   marks `NOARP`) send every packet to the parent's MAC; packets for another slave's
//!   IP are delivered to it, all others are handed to the host's routing through a raw
//!   IP socket bound to the parent (what kernel ipvlan does with `ip_local_out`).
//!
//! A VLAN parent (`eth1.10`) is emulated too, in l2 mode: frames leave the base
//! interface with the 802.1Q tag, and only frames the kernel received with that tag
//! (reported in `PACKET_AUXDATA`, as it strips tags before packet taps) are taken in.
//!
//! One worker thread waits on an epoll set of the parent socket and every TAP; control
//! calls take the engine's mutex between batches. Malformed frames are dropped and
//! counted. Dropping an [`Ipvlan`] (or [`Ipvlan::close`]) closes every descriptor: the
//! TAP devices vanish.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::fdb::MacAddr;
use crate::io::packet_socket::{PacketSocket, receive_tagged, tag};
use crate::io::poller::Poller;
use crate::io::tap::{self, Tap, TapConfig};
use crate::io::{VNET_HDR_LEN, netns};
use crate::packet::arp::ArpPacket;
use crate::packet::ethernet::{self, EthernetFrame, ethertype};
use crate::packet::ipv4::Ipv4Packet;
use crate::packet::ipv6::Ipv6Packet;
use crate::packet::offload::{self, VirtioNetHdr, gso_type};
use crate::switch::{self, PortSecurity, Traffic};

/// ipvlan's modes (`ipvlan_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    L2,
    L3,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L2 => "l2",
            Mode::L3 => "l3",
        }
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than its headers, or cut short on receive.
    Truncated,
    /// Headers that do not parse.
    Malformed,
    /// Broadcast or multicast from a slave in l3 mode.
    Multicast,
    /// l2: unicast to the parent's MAC for an address no slave has (the parent host's
    /// own addresses cannot be reached from a userspace slave).
    NoSlave,
    /// l3: not IPv4/IPv6, or a super-frame (l3 slaves have offloads off).
    NotRoutable,
    /// The kernel refused a transmit.
    TxError,
    /// The slave's device vanished.
    PortGone,
    /// Port security ([`PortSecurity`]): another source MAC than the slaves' one.
    SpoofedMac,
    /// Port security: an IPv4 or IPv6 source the slave does not own.
    SpoofedIp,
    /// Port security: ARP whose sender is not the slave.
    SpoofedArp,
    /// Port security: neighbour discovery about another's address or MAC, or a router
    /// advertisement or redirect.
    SpoofedNd,
    /// Port security: a VLAN-tagged frame.
    Tagged,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::Multicast,
        DropReason::NoSlave,
        DropReason::NotRoutable,
        DropReason::TxError,
        DropReason::PortGone,
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
            DropReason::Multicast => "multicast",
            DropReason::NoSlave => "no_slave",
            DropReason::NotRoutable => "not_routable",
            DropReason::TxError => "tx_error",
            DropReason::PortGone => "port_gone",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::Tagged => "tagged",
        }
    }

    /// The switch's port security reasons, as counted here.
    fn of_port_security(reason: switch::DropReason) -> DropReason {
        match reason {
            switch::DropReason::SpoofedMac => DropReason::SpoofedMac,
            switch::DropReason::SpoofedIp => DropReason::SpoofedIp,
            switch::DropReason::SpoofedArp => DropReason::SpoofedArp,
            switch::DropReason::SpoofedNd => DropReason::SpoofedNd,
            switch::DropReason::Tagged => DropReason::Tagged,
            _ => DropReason::Malformed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlaveStats {
    pub name: String,
    pub ifname: String,
    pub addresses: Vec<IpAddr>,
    /// Frames the sandbox sent / frames delivered to it.
    pub rx: Traffic,
    pub tx: Traffic,
    /// The device failed (its namespace was deleted): the error.
    pub failed: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub parent: String,
    pub parent_mac: MacAddr,
    pub mode: Mode,
    pub vlan: Option<u16>,
    /// Frames read from the parent / sent on it (l3: handed to the host's routing).
    pub wire_rx: Traffic,
    pub wire_tx: Traffic,
    /// Frames from the wire for the parent's MAC that no slave owns (the host's own).
    pub for_host: u64,
    pub slaves: Vec<SlaveStats>,
    pub drops: Vec<(DropReason, u64)>,
    /// The parent's socket failed (the interface vanished): the error.
    pub parent_failed: Option<String>,
    pub running: bool,
}

struct Slave {
    name: String,
    tap: Tap,
    addresses: Vec<IpAddr>,
    /// What the slave may send (its addresses, the parent's MAC); `None`: anything.
    security: Option<PortSecurity>,
    rx: Traffic,
    tx: Traffic,
    failed: Option<String>,
}

/// Raw IP sockets in the host namespace, bound to the parent: l3 mode's way out.
struct Router {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

const RX_BUFFER: usize = VNET_HDR_LEN + 65_536 + 64;
/// Frames handled per ready descriptor before looking at the others (fairness).
const BUDGET: usize = 64;
const PARENT_TOKEN: u64 = u64::MAX - 1;
const WAKE_TOKEN: u64 = u64::MAX;

struct Engine {
    mode: Mode,
    /// The VLAN id frames carry on the wire, for a VLAN parent.
    vlan: Option<u16>,
    /// A tagged copy of a frame being sent (VLAN parents only).
    tagged: Vec<u8>,
    parent: PacketSocket,
    parent_mac: MacAddr,
    parent_failed: Option<String>,
    router: Option<Router>,
    slaves: BTreeMap<u32, Slave>,
    names: HashMap<String, u32>,
    owners: HashMap<IpAddr, u32>,
    next_id: u32,
    wire_rx: Traffic,
    wire_tx: Traffic,
    for_host: u64,
    drops: [u64; DropReason::ALL.len()],
    buffer: Vec<u8>,
}

/// What the parent's socket or a slave's TAP did on read.
enum Read {
    Frame(usize),
    Empty,
    Failed(io::Error),
}

fn read_from(result: io::Result<Option<usize>>) -> Read {
    match result {
        Ok(Some(length)) => Read::Frame(length),
        Ok(None) => Read::Empty,
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Read::Frame(0),
        Err(error) => Read::Failed(error),
    }
}

/// The destination address that decides which slave a frame belongs to.
fn owner_address(eth: &EthernetFrame<'_>) -> Result<Option<IpAddr>, ()> {
    match eth.ethertype() {
        ethertype::IPV4 => Ipv4Packet::parse(eth.payload())
            .map(|ip| Some(IpAddr::V4(ip.destination())))
            .map_err(|_| ()),
        ethertype::IPV6 => Ipv6Packet::parse(eth.payload())
            .map(|ip| Some(IpAddr::V6(ip.destination())))
            .map_err(|_| ()),
        ethertype::ARP => ArpPacket::parse(eth.payload())
            .map(|arp| Some(IpAddr::V4(arp.target_ip())))
            .map_err(|_| ()),
        _ => Ok(None),
    }
}

impl Engine {
    fn drop_frame(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    fn slave_failed(&mut self, id: u32, error: &io::Error) -> Option<RawFd> {
        let slave = self.slaves.get_mut(&id)?;
        if slave.failed.is_some() {
            return None;
        }
        slave.failed = Some(error.to_string());
        for address in &slave.addresses {
            self.owners.remove(address);
        }
        Some(slave.tap.as_raw_fd())
    }

    /// Reads what the parent has; returns true when its socket failed.
    fn parent_readable(&mut self) -> bool {
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut failed = false;
        for _ in 0..BUDGET {
            let mut vid = None;
            match read_from(receive_tagged(&self.parent, &mut buffer, &mut vid)) {
                Read::Frame(0) => continue,
                Read::Frame(length) => self.on_wire_frame(&mut buffer[..length], vid),
                Read::Empty => break,
                Read::Failed(error) => {
                    self.parent_failed = Some(error.to_string());
                    failed = true;
                    break;
                }
            }
        }
        self.buffer = buffer;
        failed
    }

    /// Reads what a slave sent; returns the descriptor to unwatch when its TAP failed.
    fn slave_readable(&mut self, id: u32) -> Option<RawFd> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut gone = None;
        for _ in 0..BUDGET {
            let Some(slave) = self.slaves.get(&id) else {
                break;
            };
            if slave.failed.is_some() {
                break;
            }
            match read_from(slave.tap.read(0, &mut buffer)) {
                Read::Frame(0) => continue,
                Read::Frame(length) => self.on_slave_frame(id, &mut buffer[..length]),
                Read::Empty => break,
                Read::Failed(error) => {
                    gone = self.slave_failed(id, &error);
                    break;
                }
            }
        }
        self.buffer = buffer;
        gone
    }

    /// A frame from the parent; `vid`: the VLAN tag the kernel took off it.
    fn on_wire_frame(&mut self, data: &mut [u8], vid: Option<u16>) {
        self.wire_rx.add(data.len());
        if data.len() < VNET_HDR_LEN + ethernet::HEADER_LEN || data.len() >= RX_BUFFER {
            return self.drop_frame(DropReason::Truncated);
        }
        let (header, frame) = data.split_at(VNET_HDR_LEN);
        let Ok(eth) = EthernetFrame::parse(frame) else {
            return self.drop_frame(DropReason::Malformed);
        };
        if eth.vlan().is_some() || vid != self.vlan {
            return; // another VLAN's traffic (or the untagged LAN's) on the same wire
        }
        let destination = eth.destination();
        if ethernet::is_multicast(&destination) {
            if self.mode == Mode::L2 {
                let targets: Vec<u32> = self.live_slaves().collect();
                for id in targets {
                    self.send_to_slave(id, header, frame);
                }
            }
            return;
        }
        if destination != self.parent_mac {
            return;
        }
        let Ok(address) = owner_address(&eth) else {
            return self.drop_frame(DropReason::Malformed);
        };
        match address.and_then(|address| self.owners.get(&address).copied()) {
            Some(id) => self.send_to_slave(id, header, frame),
            None => self.for_host += 1,
        }
    }

    fn live_slaves(&self) -> impl Iterator<Item = u32> + '_ {
        self.slaves
            .iter()
            .filter(|(_, slave)| slave.failed.is_none())
            .map(|(&id, _)| id)
    }

    fn on_slave_frame(&mut self, id: u32, data: &mut [u8]) {
        if let Some(slave) = self.slaves.get_mut(&id) {
            slave.rx.add(data.len());
        }
        if data.len() < VNET_HDR_LEN + ethernet::HEADER_LEN || data.len() >= RX_BUFFER {
            return self.drop_frame(DropReason::Truncated);
        }
        let (header, frame) = data.split_at_mut(VNET_HDR_LEN);
        let Ok(vnet) = VirtioNetHdr::parse(header) else {
            return self.drop_frame(DropReason::Malformed);
        };
        let (destination, owner) = {
            let Ok(eth) = EthernetFrame::parse(frame) else {
                return self.drop_frame(DropReason::Malformed);
            };
            let security = self
                .slaves
                .get(&id)
                .and_then(|slave| slave.security.as_ref());
            if let Some(Err(reason)) = security.map(|security| security.check(&eth)) {
                return self.drop_frame(DropReason::of_port_security(reason));
            }
            let destination = eth.destination();
            let owner = if ethernet::is_multicast(&destination) {
                None
            } else {
                match owner_address(&eth) {
                    Ok(address) => address.and_then(|address| self.owners.get(&address).copied()),
                    Err(()) => return self.drop_frame(DropReason::Malformed),
                }
            };
            (destination, owner)
        };
        // Every slave's traffic carries the parent's MAC, whatever the sandbox set.
        frame[6..12].copy_from_slice(&self.parent_mac);
        let header: &[u8] = header;
        match self.mode {
            Mode::L2 if ethernet::is_multicast(&destination) => {
                self.send_to_wire(header, frame);
                let others: Vec<u32> = self.live_slaves().filter(|&to| to != id).collect();
                for to in others {
                    self.send_to_slave(to, header, frame);
                }
            }
            Mode::L2 if destination == self.parent_mac => match owner {
                Some(to) => self.send_to_slave(to, header, frame),
                None => self.drop_frame(DropReason::NoSlave),
            },
            Mode::L2 => self.send_to_wire(header, frame),
            Mode::L3 if ethernet::is_multicast(&destination) => {
                self.drop_frame(DropReason::Multicast)
            }
            Mode::L3 => {
                frame[0..6].copy_from_slice(&self.parent_mac);
                match owner {
                    Some(to) => self.send_to_slave(to, header, frame),
                    None => self.route(&vnet, frame),
                }
            }
        }
    }

    fn send_to_wire(&mut self, header: &[u8], frame: &[u8]) {
        let sent = match self.vlan {
            None => self.parent.write(&[header, frame]),
            Some(vid) => match tag(&mut self.tagged, header, frame, vid) {
                Ok(()) => self.parent.write(&[&self.tagged]),
                Err(()) => return self.drop_frame(DropReason::Malformed),
            },
        };
        match sent {
            Ok(_) => self.wire_tx.add(frame.len()),
            Err(_) => self.drop_frame(DropReason::TxError),
        }
    }

    fn send_to_slave(&mut self, id: u32, header: &[u8], frame: &[u8]) {
        let Some(slave) = self.slaves.get_mut(&id) else {
            return self.drop_frame(DropReason::PortGone);
        };
        if slave.failed.is_some() {
            return self.drop_frame(DropReason::PortGone);
        }
        match slave.tap.write(&[header, frame]) {
            Ok(_) => slave.tx.add(frame.len()),
            Err(_) => self.drop_frame(DropReason::TxError),
        }
    }

    /// l3: hands the IP packet to the host's routing, out of the parent.
    fn route(&mut self, vnet: &VirtioNetHdr, frame: &mut [u8]) {
        if vnet.gso_type != gso_type::NONE || offload::complete_checksum(frame, vnet).is_err() {
            return self.drop_frame(DropReason::NotRoutable);
        }
        let Some(router) = &self.router else {
            return self.drop_frame(DropReason::NotRoutable);
        };
        let Ok(eth) = EthernetFrame::parse(frame) else {
            return self.drop_frame(DropReason::Malformed);
        };
        let payload = eth.payload();
        let sent = match eth.ethertype() {
            ethertype::IPV4 => match Ipv4Packet::parse(payload) {
                Ok(ip) => send_raw_v4(&router.v4, &payload[..ip.total_len()], ip.destination()),
                Err(_) => return self.drop_frame(DropReason::Malformed),
            },
            ethertype::IPV6 => match (Ipv6Packet::parse(payload), &router.v6) {
                (Ok(ip), Some(v6)) => {
                    let length = ipv6_total_len(payload);
                    send_raw_v6(v6, &payload[..length], ip.destination())
                }
                (Ok(_), None) => return self.drop_frame(DropReason::NotRoutable),
                (Err(_), _) => return self.drop_frame(DropReason::Malformed),
            },
            _ => return self.drop_frame(DropReason::NotRoutable),
        };
        match sent {
            Ok(_) => self.wire_tx.add(frame.len()),
            Err(_) => self.drop_frame(DropReason::TxError),
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            parent: self.parent.ifname().to_owned(),
            parent_mac: self.parent_mac,
            mode: self.mode,
            vlan: self.vlan,
            wire_rx: self.wire_rx,
            wire_tx: self.wire_tx,
            for_host: self.for_host,
            slaves: self
                .slaves
                .values()
                .map(|slave| SlaveStats {
                    name: slave.name.clone(),
                    ifname: slave.tap.ifname().to_owned(),
                    addresses: slave.addresses.clone(),
                    rx: slave.rx,
                    tx: slave.tx,
                    failed: slave.failed.clone(),
                })
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&reason| (reason, self.drops[reason as usize]))
                .collect(),
            parent_failed: self.parent_failed.clone(),
            running: false,
        }
    }
}

/// Length of an IPv6 packet (header + payload length), Ethernet padding excluded; the
/// caller parsed it, so the length field is within the bytes.
fn ipv6_total_len(packet: &[u8]) -> usize {
    crate::packet::ipv6::HEADER_LEN + usize::from(u16::from_be_bytes([packet[4], packet[5]]))
}

fn send_raw_v4(socket: &OwnedFd, packet: &[u8], to: std::net::Ipv4Addr) -> io::Result<usize> {
    // SAFETY: zeroed sockaddr_in is valid; completed below.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
    send_to(socket, packet, &address)
}

fn send_raw_v6(socket: &OwnedFd, packet: &[u8], to: std::net::Ipv6Addr) -> io::Result<usize> {
    // SAFETY: zeroed sockaddr_in6 is valid; completed below.
    let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    address.sin6_addr.s6_addr = to.octets();
    send_to(socket, packet, &address)
}

/// `sendto` without blocking; `address` is a `sockaddr_in` or `sockaddr_in6`.
fn send_to<A>(socket: &OwnedFd, packet: &[u8], address: &A) -> io::Result<usize> {
    // SAFETY: sending a live slice to a socket address of the stated size.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            (address as *const A).cast(),
            size_of::<A>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// A raw IP socket (`IPPROTO_RAW`: the header comes with the packet) bound to `ifname`,
/// opened on the calling thread (in the host namespace).
fn raw_socket(family: libc::c_int, ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right away.
    let fd = crate::io::check(unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    })?;
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the option value is the interface name of the stated length.
    crate::io::check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// The MAC address of `ifname` in the calling thread's namespace.
fn hardware_address(ifname: &str) -> io::Result<MacAddr> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not an interface name"),
        ));
    }
    // SAFETY: plain socket(2); owned right away.
    let fd = crate::io::check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fresh descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed ifreq is valid; the name is copied in below (NUL-terminated).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass.
    crate::io::check(unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFHWADDR as libc::Ioctl,
            &mut request,
        )
    })?;
    // SAFETY: after SIOCGIFHWADDR the union holds a sockaddr.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (octet, byte) in mac.iter_mut().zip(data.iter()) {
        *octet = *byte as u8;
    }
    Ok(mac)
}

struct Shared {
    engine: Mutex<Engine>,
    stop: AtomicBool,
    poller: Poller,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic in the worker must not make stats and cleanup impossible.
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.poller
            .add(fd, token, (libc::EPOLLIN | libc::EPOLLERR) as u32)
    }
}

/// How to open an emulated ipvlan.
/// How a slave is made beyond its name, place and addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlaveOptions {
    /// Its MTU (the parent's when None).
    pub mtu: Option<u32>,
    /// Send only from the parent's MAC and the slave's addresses ([`PortSecurity`]).
    pub port_security: bool,
    /// Keep the TAP when its queue closes ([`TapConfig::persist`]).
    pub persist: bool,
}

#[derive(Debug, Clone)]
pub struct IpvlanConfig {
    /// The host namespace the parent is in; `None`: the caller's.
    pub netns: Option<PathBuf>,
    pub parent: String,
    pub mode: Mode,
    /// Tag frames with this VLAN id on the wire (a parent like `eth1.10`: `parent` is
    /// `eth1`). l2 mode only.
    pub vlan: Option<u16>,
}

/// An emulated ipvlan on one parent (see the module documentation).
pub struct Ipvlan {
    netns: Option<PathBuf>,
    mode: Mode,
    parent_mtu: u32,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Ipvlan {
    /// Opens the parent's socket (and, in l3 mode, the raw sockets to route with).
    pub fn open(config: IpvlanConfig) -> io::Result<Ipvlan> {
        if let Some(vid) = config.vlan
            && (!(1..=4094).contains(&vid) || config.mode != Mode::L2)
        {
            return Err(invalid(format!(
                "VLAN {vid}: ids are 1-4094, and only l2 mode tags in userspace"
            )));
        }
        let parent = PacketSocket::open(config.netns.as_deref(), &config.parent)?;
        crate::io::packet_socket::enable_auxdata(&parent)?;
        let ifname = config.parent.clone();
        let mode = config.mode;
        let (parent_mac, router) = netns::run_in(config.netns.as_deref(), move || {
            let mac = hardware_address(&ifname)?;
            let router = match mode {
                Mode::L2 => None,
                Mode::L3 => Some(Router {
                    v4: raw_socket(libc::AF_INET, &ifname)?,
                    // A host without IPv6 routes IPv4 only.
                    v6: raw_socket(libc::AF_INET6, &ifname).ok(),
                }),
            };
            Ok((mac, router))
        })?;
        let parent_fd = parent.as_raw_fd();
        let parent_mtu = parent.mtu();
        let shared = Arc::new(Shared {
            engine: Mutex::new(Engine {
                mode,
                vlan: config.vlan,
                tagged: Vec::new(),
                parent,
                parent_mac,
                parent_failed: None,
                router,
                slaves: BTreeMap::new(),
                names: HashMap::new(),
                owners: HashMap::new(),
                next_id: 1,
                wire_rx: Traffic::default(),
                wire_tx: Traffic::default(),
                for_host: 0,
                drops: [0; DropReason::ALL.len()],
                buffer: vec![0; RX_BUFFER],
            }),
            stop: AtomicBool::new(false),
            poller: Poller::new(WAKE_TOKEN)?,
        });
        shared.watch(parent_fd, PARENT_TOKEN)?;
        Ok(Ipvlan {
            netns: config.netns,
            mode,
            parent_mtu,
            shared,
            worker: None,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn parent_mac(&self) -> MacAddr {
        self.shared.engine().parent_mac
    }

    /// Adds a slave: a TAP with the parent's MAC, made in the host namespace and moved
    /// into `sandbox` (if any) as `ifname`, owning `addresses`.
    pub fn add_slave(
        &self,
        name: &str,
        sandbox: Option<PathBuf>,
        ifname: &str,
        addresses: &[IpAddr],
        options: SlaveOptions,
    ) -> io::Result<()> {
        let SlaveOptions {
            mtu,
            port_security,
            persist,
        } = options;
        if name.is_empty() {
            return Err(invalid("a slave needs a name".to_owned()));
        }
        {
            let engine = self.shared.engine();
            if engine.names.contains_key(name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("slave {name:?} exists"),
                ));
            }
            if let Some(taken) = addresses.iter().find(|a| engine.owners.contains_key(a)) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{taken} belongs to another slave"),
                ));
            }
        }
        if let Some(bad) = addresses
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err(invalid(format!("{bad} cannot be a slave's address")));
        }
        let mut config = TapConfig::new(ifname);
        config.host_netns = self.netns.clone();
        config.sandbox_netns = sandbox;
        config.persist = persist;
        config.mac = Some(self.parent_mac());
        config.mtu = Some(mtu.unwrap_or(self.parent_mtu));
        // l3 routes every packet through raw sockets: whole, checksummed packets only.
        config.offloads = match self.mode {
            Mode::L2 => tap::offload::DEFAULT,
            Mode::L3 => 0,
        };
        let tap = Tap::create(&config)?;
        let fd = tap.as_raw_fd();
        let mut engine = self.shared.engine();
        if engine.names.contains_key(name)
            || addresses.iter().any(|a| engine.owners.contains_key(a))
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("slave {name:?} or one of its addresses was added meanwhile"),
            ));
        }
        let id = engine.next_id;
        engine.next_id += 1;
        self.shared.watch(fd, u64::from(id))?;
        engine.names.insert(name.to_owned(), id);
        let security = port_security.then(|| PortSecurity::new(engine.parent_mac, addresses));
        for address in addresses {
            engine.owners.insert(*address, id);
        }
        engine.slaves.insert(
            id,
            Slave {
                name: name.to_owned(),
                tap,
                addresses: addresses.to_vec(),
                security,
                rx: Traffic::default(),
                tx: Traffic::default(),
                failed: None,
            },
        );
        Ok(())
    }

    /// Removes a slave; its TAP device vanishes. Removing an unknown name is an error
    /// of kind `NotFound`.
    pub fn remove_slave(&self, name: &str) -> io::Result<()> {
        let mut engine = self.shared.engine();
        let Some(id) = engine.names.remove(name) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no slave {name:?}"),
            ));
        };
        if let Some(slave) = engine.slaves.remove(&id) {
            for address in &slave.addresses {
                if engine.owners.get(address) == Some(&id) {
                    engine.owners.remove(address);
                }
            }
            self.shared.poller.remove(slave.tap.as_raw_fd());
            let _ = slave.tap.release(); // a persistent TAP goes with the slave
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }

    /// Starts the worker thread (no-op when running).
    pub fn start(&mut self) -> io::Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        self.shared.stop.store(false, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("keelnet-ipvlan".to_owned())
            .spawn(move || run(&shared))?;
        self.worker = Some(handle);
        Ok(())
    }

    /// Stops and joins the worker; slaves stay (start resumes).
    pub fn stop(&mut self) {
        if let Some(handle) = self.worker.take() {
            self.shared.stop.store(true, Ordering::SeqCst);
            self.shared.poller.wake();
            let _ = handle.join();
        }
    }

    /// Stops and removes every slave (their TAP devices vanish).
    pub fn close(&mut self) {
        self.stop();
        let names: Vec<String> = self.shared.engine().names.keys().cloned().collect();
        for name in names {
            let _ = self.remove_slave(&name);
        }
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.engine().stats();
        stats.running = self.worker.is_some();
        stats
    }
}

impl Drop for Ipvlan {
    fn drop(&mut self) {
        self.close();
    }
}

/// The worker: wait, then handle every ready descriptor under the engine lock.
fn run(shared: &Shared) {
    const EVENTS: usize = 64;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    while !shared.stop.load(Ordering::SeqCst) {
        let ready = match shared.poller.wait(&mut events, 100) {
            Ok(ready) => ready,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut engine = shared.engine();
        for event in &events[..ready] {
            match event.u64 {
                WAKE_TOKEN => shared.poller.clear_wake(),
                PARENT_TOKEN => {
                    if engine.parent_readable() {
                        // A vanished parent must not spin the worker.
                        shared.poller.remove(engine.parent.as_raw_fd());
                    }
                }
                token => {
                    if let Some(fd) = engine.slave_readable(token as u32) {
                        shared.poller.remove(fd);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::arp::{Arp, OP_REQUEST};

    #[test]
    fn owner_address_reads_ipv4_destination_and_arp_target() {
        let mut frame = [0u8; 64];
        let length =
            ethernet::write_header(&mut frame, &[0xff; 6], &[2; 6], None, ethertype::ARP).unwrap();
        Arp {
            operation: OP_REQUEST,
            sender_mac: [2; 6],
            sender_ip: "192.0.2.2".parse().unwrap(),
            target_mac: [0; 6],
            target_ip: "192.0.2.130".parse().unwrap(),
        }
        .write(&mut frame[length..])
        .unwrap();
        let eth = EthernetFrame::parse(&frame).unwrap();
        assert_eq!(
            owner_address(&eth),
            Ok(Some("192.0.2.130".parse().unwrap()))
        );
        frame[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(
            owner_address(&EthernetFrame::parse(&frame).unwrap()),
            Err(())
        );
        frame[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP: nobody's
        assert_eq!(
            owner_address(&EthernetFrame::parse(&frame).unwrap()),
            Ok(None)
        );
    }

    #[test]
    fn drop_reasons_have_distinct_names() {
        let names: std::collections::HashSet<&str> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn missing_parent_is_not_found() {
        let error = Ipvlan::open(IpvlanConfig {
            netns: None,
            parent: "kn-no-such0".to_owned(),
            mode: Mode::L2,
            vlan: None,
        });
        assert!(error.is_err());
    }
}
