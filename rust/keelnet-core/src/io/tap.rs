//! TAP devices with virtio-net headers and offloads, created in a host namespace and
//! handed to a sandbox namespace under the name the caller chose.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD(CSUM|TSO4|TSO6)` the sandbox's kernel hands us
//! TCP super-frames of up to 64 KB with a partial checksum, and accepts the same from us:
//! one read/write moves what would otherwise be ~45 frames. That, not faster code, is
//! what makes a userspace switch fast (see BENCHMARKS.md).
//!
//! The device lives as long as its descriptor: dropping a [`Tap`] removes the interface,
//! in whatever namespace it is. A persistent one ([`TapConfig::persist`], what keelnet
//! hands Docker) outlives it, down but kept with its name, addresses and routes, until a
//! later switch attaches to it again or [`Tap::release`] lets it go.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::sys::{self, IfReq, context};
use super::{VNET_HDR_LEN, netns};
use crate::fdb::MacAddr;
use crate::packet::vxlan::flow_hash;

/// Offload bits of `TUNSETOFFLOAD` (linux/if_tun.h).
pub mod offload {
    pub const CSUM: u32 = 0x01;
    pub const TSO4: u32 = 0x02;
    pub const TSO6: u32 = 0x04;
    pub const TSO_ECN: u32 = 0x08;
    pub const USO4: u32 = 0x20;
    pub const USO6: u32 = 0x40;
    /// Super-frames inside a UDP tunnel (kernel >= 6.17), with and without the outer
    /// UDP checksum; they need the 24-byte tunnel virtio-net header.
    pub const UDP_TUNNEL_GSO: u32 = 0x80;
    pub const UDP_TUNNEL_GSO_CSUM: u32 = 0x100;
    /// What the switch handles: checksum offload and TCP segmentation (both families,
    /// with ECN). UDP segmentation (USO) is left off: the VTEP path would have to split
    /// it in software for foreign peers, and it measured no better for TCP traffic.
    pub const DEFAULT: u32 = CSUM | TSO4 | TSO6 | TSO_ECN;
}

/// How to make a TAP port.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// The namespace the device is created in (the switch's host); `None`: the caller's.
    pub host_netns: Option<PathBuf>,
    /// The namespace it is moved into; `None`: it stays in the host namespace.
    pub sandbox_netns: Option<PathBuf>,
    /// Its name where it ends up (e.g. `eth0` in the sandbox).
    pub ifname: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// `TUNSETOFFLOAD` bits ([`offload`]).
    pub offloads: u32,
    /// Bytes of virtio-net header in front of each frame (`TUNSETVNETHDRSZ`).
    pub vnet_hdr_len: usize,
    /// Queues (`IFF_MULTI_QUEUE` when more than one): one descriptor each; the sandbox's
    /// kernel spreads its flows over them, so several workers can read one port.
    pub queues: usize,
    /// The device outlives the descriptors (`TUNSETPERSIST`); when a TAP named `ifname`
    /// already is where the device goes, it is attached to, not made anew.
    pub persist: bool,
}

/// Most queues a TAP port takes (the kernel allows 256).
pub const MAX_QUEUES: usize = 16;

impl TapConfig {
    pub fn new(ifname: &str) -> TapConfig {
        TapConfig {
            host_netns: None,
            sandbox_netns: None,
            ifname: ifname.to_owned(),
            mac: None,
            mtu: None,
            offloads: offload::DEFAULT,
            vnet_hdr_len: VNET_HDR_LEN,
            queues: 1,
            persist: false,
        }
    }
}

/// An open TAP device carrying frames with a virtio-net header in front, with one
/// descriptor per queue.
#[derive(Debug)]
pub struct Tap {
    queues: Vec<OwnedFd>,
    ifname: String,
    netns: Option<PathBuf>,
    mac: MacAddr,
    mtu: u32,
    offloads: u32,
    persist: bool,
}

const TUNGETIFF: libc::Ioctl = 0x800454d2u32 as libc::Ioctl;

impl Tap {
    /// Creates the device in `config.host_netns`, sets MAC and MTU, moves it into
    /// `config.sandbox_netns` under `config.ifname` and brings it up there.
    pub fn create(config: &TapConfig) -> io::Result<Tap> {
        // Validate the final name before anything is made.
        IfReq::new(&config.ifname)?;
        if !(1..=MAX_QUEUES).contains(&config.queues) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a TAP port takes 1 to {MAX_QUEUES} queues, not {}",
                    config.queues
                ),
            ));
        }
        let home = config
            .sandbox_netns
            .clone()
            .or_else(|| config.host_netns.clone());
        if config.persist
            && netns::run_in(home.as_deref(), || sys::interface_index(&config.ifname)).is_ok()
        {
            return Tap::attach(config, home);
        }
        let staged_name = if config.sandbox_netns.is_some() {
            // A kernel-numbered temporary name: the final one may be taken in the host.
            "kn-tap%d".to_owned()
        } else {
            config.ifname.clone()
        };
        let (queues, mtu, mac, name) =
            netns::run_in(config.host_netns.as_deref(), || -> io::Result<_> {
                let multi_queue = config.queues > 1;
                let (fd, name) = open_tap(
                    &staged_name,
                    config.offloads,
                    config.vnet_hdr_len,
                    multi_queue,
                )?;
                if config.persist {
                    set_persist(&fd, true)?;
                }
                let mut queues = vec![fd];
                // Further queues attach by name, here, before the device moves.
                while queues.len() < config.queues {
                    let (fd, _) = open_tap(&name, config.offloads, config.vnet_hdr_len, true)?;
                    queues.push(fd);
                }
                if let Some(mac) = &config.mac {
                    sys::set_mac(&name, mac)?;
                }
                if let Some(mtu) = config.mtu {
                    sys::set_mtu(&name, mtu)?;
                }
                let mtu = sys::interface_mtu(&name)?;
                let mac = sys::mac_of(&name)?;
                if let Some(sandbox) = &config.sandbox_netns {
                    let index = sys::interface_index(&name)?;
                    let target = netns::open(sandbox)?;
                    sys::move_link(index, target.as_raw_fd(), &config.ifname).map_err(|error| {
                        context(
                            error,
                            format!("moving TAP into {} as {}", sandbox.display(), config.ifname),
                        )
                    })?;
                } else {
                    sys::set_up(&name)?;
                }
                Ok((queues, mtu, mac, name))
            })?;
        let tap = Tap {
            queues,
            // The kernel's name when a `%d` template stayed in the host namespace.
            ifname: if config.sandbox_netns.is_some() {
                config.ifname.clone()
            } else {
                name
            },
            netns: config
                .sandbox_netns
                .clone()
                .or_else(|| config.host_netns.clone()),
            mac,
            mtu,
            offloads: config.offloads,
            persist: config.persist,
        };
        if config.sandbox_netns.is_some() {
            let ifname = tap.ifname.clone();
            netns::run_in(tap.netns.as_deref(), move || sys::set_up(&ifname))?;
        }
        Ok(tap)
    }

    /// Attaches to the persistent TAP `config.ifname` of `home` as it is (up or down,
    /// with its addresses): a switch taking over the TAP an earlier one left.
    fn attach(config: &TapConfig, home: Option<PathBuf>) -> io::Result<Tap> {
        let (queues, mtu, mac) = netns::run_in(home.as_deref(), || -> io::Result<_> {
            let multi_queue = config.queues > 1;
            let mut queues = Vec::with_capacity(config.queues);
            while queues.len() < config.queues {
                let (fd, _) = open_tap(
                    &config.ifname,
                    config.offloads,
                    config.vnet_hdr_len,
                    multi_queue,
                )
                .map_err(|error| context(error, format!("attaching to TAP {}", config.ifname)))?;
                queues.push(fd);
            }
            Ok((
                queues,
                sys::interface_mtu(&config.ifname)?,
                sys::mac_of(&config.ifname)?,
            ))
        })?;
        Ok(Tap {
            queues,
            ifname: config.ifname.clone(),
            netns: home,
            mac,
            mtu,
            offloads: config.offloads,
            persist: true,
        })
    }

    /// Lets a persistent TAP go: the device vanishes with the descriptors (when the
    /// port is removed, not when the switch merely stops). Nothing to do for others.
    pub fn release(&self) -> io::Result<()> {
        if self.persist {
            set_persist(&self.queues[0], false)?;
        }
        Ok(())
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace the device is in.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// The descriptor of each queue.
    pub fn queue_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.queues.iter().map(AsRawFd::as_raw_fd)
    }

    /// Reads one frame (virtio-net header + Ethernet frame) from `queue`; `Ok(None)`
    /// when none waits (or there is no such queue).
    pub fn read(&self, queue: usize, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        match self.queues.get(queue) {
            Some(fd) => sys::read_nonblocking(fd.as_raw_fd(), buffer),
            None => Ok(None),
        }
    }

    /// Writes one frame given in parts (virtio-net header, then the Ethernet frame). A
    /// multi-queue TAP takes each flow on one queue, chosen by its hash: the kernel sends
    /// the flow's packets back out on the queue it came in on (tun's automq), so each
    /// flow stays with one queue, and so with one worker, both ways.
    pub fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        let queue = match (self.queues.len(), parts.get(1)) {
            (1, _) | (_, None) => 0,
            (count, Some(frame)) => (flow_hash(frame) % count as u64) as usize,
        };
        sys::write_vectored(self.queues[queue].as_raw_fd(), parts)
    }
}

impl AsRawFd for Tap {
    /// The first queue's descriptor.
    fn as_raw_fd(&self) -> RawFd {
        self.queues[0].as_raw_fd()
    }
}

fn set_persist(fd: &OwnedFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes the flag as the argument value itself.
    sys::check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    })
    .map(drop)
    .map_err(|error| context(error, "TUNSETPERSIST"))
}

/// Opens `/dev/net/tun` as TAP `name` (a `%d` template is numbered by the kernel) with
/// virtio-net headers of `header_len` bytes and `offloads`, as one queue of a
/// multi-queue device or not; returns the descriptor and the actual name.
fn open_tap(
    name: &str,
    offloads: u32,
    header_len: usize,
    multi_queue: bool,
) -> io::Result<(OwnedFd, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|error| context(error, "/dev/net/tun"))?;
    let fd: OwnedFd = file.into();
    let mut request = IfReq::new(name)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    request.set_short(flags as i16);
    sys::ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut request)
        .map_err(|error| context(error, format!("creating TAP {name}")))?;
    let header_len = header_len as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    sys::check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) })
        .map_err(|error| context(error, "TUNSETVNETHDRSZ"))?;
    // SAFETY: TUNSETOFFLOAD takes the flags as the argument value itself.
    sys::check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads),
        )
    })
    .map_err(|error| context(error, format!("TUNSETOFFLOAD {offloads:#x}")))?;
    let mut actual = IfReq::new("x")?;
    sys::ioctl_ifreq(fd.as_raw_fd(), TUNGETIFF, &mut actual)?;
    Ok((fd, actual.name()))
}
