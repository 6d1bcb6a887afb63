//! AF_PACKET sockets bound to an existing interface: a switch port on a veth, a macvlan
//! parent or any other link the kernel already has.
//!
//! `PACKET_VNET_HDR` puts the same virtio-net header in front of each frame as a TAP
//! port uses, so GSO super-frames and partial checksums cross intact in both directions
//! and the switch handles both port kinds alike. Receive is batched with `recvmmsg`.
//! The interface is put in promiscuous mode (a switch port must see every frame), and
//! our own transmissions are not looped back (`PACKET_IGNORE_OUTGOING`).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::sys::{self, RecvBatch, check, context};
use super::{VNET_HDR_LEN, netns};

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    mtu: u32,
}

impl PacketSocket {
    /// Opens a socket on `ifname` in namespace `netns` (`None`: the caller's).
    pub fn open(netns_path: Option<&Path>, ifname: &str) -> io::Result<PacketSocket> {
        let ifname = ifname.to_owned();
        netns::run_in(netns_path, move || {
            let ifindex = sys::interface_index(&ifname)?;
            let mtu = sys::interface_mtu(&ifname)?;
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); owned right away.
            let fd = check(unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::c_int::from(protocol),
                )
            })
            .map_err(|error| context(error, "AF_PACKET socket"))?;
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let raw = fd.as_raw_fd();
            sys::set_int_option(raw, libc::SOL_PACKET, PACKET_VNET_HDR, 1)
                .map_err(|error| context(error, "PACKET_VNET_HDR"))?;
            // Older kernels lack it; then our own frames come back and are dropped as
            // arriving on their own port.
            let _ = sys::set_int_option(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
            sys::set_buffers(raw, 4 << 20);
            // SAFETY: zeroed sockaddr_ll is valid; the fields below complete it.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = protocol;
            address.sll_ifindex = ifindex as i32;
            // SAFETY: the address is a valid sockaddr_ll of the stated size.
            check(unsafe {
                libc::bind(
                    raw,
                    (&address as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            })
            .map_err(|error| context(error, format!("binding to {ifname}")))?;
            // SAFETY: zeroed packet_mreq, completed below.
            let mut membership: libc::packet_mreq = unsafe { std::mem::zeroed() };
            membership.mr_ifindex = ifindex as i32;
            membership.mr_type = libc::PACKET_MR_PROMISC as u16;
            // SAFETY: the option value is a packet_mreq of the stated size.
            check(unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    (&membership as *const libc::packet_mreq).cast(),
                    size_of::<libc::packet_mreq>() as libc::socklen_t,
                )
            })
            .map_err(|error| context(error, format!("promiscuous mode on {ifname}")))?;
            Ok(PacketSocket {
                fd,
                ifname: ifname.clone(),
                ifindex,
                mtu,
            })
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Receives one frame (virtio-net header + Ethernet frame); `Ok(None)` when none
    /// waits.
    pub fn read(&self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        sys::read_nonblocking(self.fd.as_raw_fd(), buffer)
    }

    /// Sends one frame given in parts (virtio-net header first).
    pub fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        sys::write_vectored(self.fd.as_raw_fd(), parts)
    }

    /// Bytes of virtio-net header in front of each frame.
    pub fn header_len(&self) -> usize {
        VNET_HDR_LEN
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Batched receive for a [`PacketSocket`]: up to `count` frames per `recvmmsg`.
pub struct PacketReceiver {
    batch: RecvBatch,
}

impl PacketReceiver {
    /// `count` buffers of `size` bytes (a 64 KB GSO frame plus its header fits 65 KB).
    pub fn new(count: usize, size: usize) -> PacketReceiver {
        PacketReceiver {
            batch: RecvBatch::new(count, size),
        }
    }

    /// Receives what is waiting (without blocking); returns how many frames arrived.
    pub fn receive(&mut self, socket: &PacketSocket) -> io::Result<usize> {
        self.batch.receive(socket.as_raw_fd())
    }

    /// Frame `index` of the last receive (virtio-net header first) and whether it was
    /// cut short by the buffer.
    pub fn frame(&self, index: usize) -> (&[u8], bool) {
        let length = self.batch.lengths[index].min(self.batch.buffers[index].len());
        (
            &self.batch.buffers[index][..length],
            self.batch.truncated[index],
        )
    }
}
