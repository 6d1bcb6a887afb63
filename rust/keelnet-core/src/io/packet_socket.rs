//! AF_PACKET sockets bound to an existing interface: a switch port on a veth, a macvlan
//! parent or any other link the kernel already has.
//!
//! `PACKET_VNET_HDR` puts the same virtio-net header in front of each frame as a TAP
//! port uses, so GSO super-frames and partial checksums cross intact in both directions
//! and the switch handles both port kinds alike. Receive is batched with `recvmmsg`.
//! The interface is put in promiscuous mode (a switch port must see every frame), and
//! our own transmissions are not looped back (`PACKET_IGNORE_OUTGOING`).
//!
//! A socket opened with a VLAN id stands for the VLAN device `eth1.<id>` where the kernel
//! has no 8021q module: it tags what it sends, and takes in only frames of that VLAN
//! (the kernel strips the tag before packet taps and reports it in `PACKET_AUXDATA`).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::sys::{self, RecvBatch, check, context};
use super::{VNET_HDR_LEN, netns};
use crate::packet::ethernet::{self, ethertype};
use crate::packet::offload::{self, VirtioNetHdr, gso_type};

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    mtu: u32,
    /// The VLAN this socket tags and accepts (`None`: the untagged LAN).
    vlan: Option<u16>,
}

/// Frames read at most per [`PacketSocket::read`] call while skipping other VLANs'.
const VLAN_SKIP_BUDGET: usize = 64;

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
                vlan: None,
            })
        })
        .and_then(|socket| {
            // Every socket learns each frame's VLAN: an untagged port must not take in
            // tagged frames the kernel stripped before handing them over.
            enable_auxdata(&socket)?;
            Ok(socket)
        })
    }

    /// Opens a socket on `ifname` that carries VLAN `vlan` (1-4094) only.
    pub fn open_vlan(
        netns_path: Option<&Path>,
        ifname: &str,
        vlan: u16,
    ) -> io::Result<PacketSocket> {
        if !(1..=4094).contains(&vlan) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VLAN {vlan}: ids are 1-4094"),
            ));
        }
        let mut socket = PacketSocket::open(netns_path, ifname)?;
        socket.vlan = Some(vlan);
        Ok(socket)
    }

    pub fn vlan(&self) -> Option<u16> {
        self.vlan
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
    /// On a VLAN socket, other VLANs' frames (and untagged ones) are skipped; after
    /// [`VLAN_SKIP_BUDGET`] of them it returns `Ok(None)` (the socket stays readable).
    pub fn read(&self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(vlan) = self.vlan else {
            return sys::read_nonblocking(self.fd.as_raw_fd(), buffer);
        };
        for _ in 0..VLAN_SKIP_BUDGET {
            let mut vid = None;
            let Some(length) = receive_tagged(self, buffer, &mut vid)? else {
                return Ok(None);
            };
            let inner_tagged = length >= VNET_HDR_LEN + ethernet::HEADER_LEN
                && buffer[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ethertype::VLAN.to_be_bytes();
            if vid == Some(vlan) && !inner_tagged {
                return Ok(Some(length));
            }
        }
        Ok(None)
    }

    /// Sends one frame given in parts (virtio-net header first); a VLAN socket tags it.
    pub fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        let Some(vlan) = self.vlan else {
            return sys::write_vectored(self.fd.as_raw_fd(), parts);
        };
        let data = parts.concat();
        if data.len() < VNET_HDR_LEN + ethernet::HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too short",
            ));
        }
        let (header, frame) = data.split_at(VNET_HDR_LEN);
        let mut tagged = Vec::with_capacity(data.len() + 4);
        tag(&mut tagged, header, frame, vlan)
            .map_err(|()| io::Error::new(io::ErrorKind::InvalidInput, "bad virtio-net header"))?;
        sys::write_vectored(self.fd.as_raw_fd(), &[&tagged])
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

    /// The VLAN id frame `index` carried on the wire (`None`: untagged).
    pub fn vlan(&self, index: usize) -> Option<u16> {
        auxdata_vlan(self.batch.header(index))
    }
}

/// `frame` with an 802.1Q tag after the MACs, into `out` behind its virtio-net header;
/// offsets in the header move by the 4 tag bytes.
pub(crate) fn tag(out: &mut Vec<u8>, header: &[u8], frame: &[u8], vid: u16) -> Result<(), ()> {
    let mut vnet = VirtioNetHdr::parse(header).map_err(|_| ())?;
    if vnet.flags & offload::F_NEEDS_CSUM != 0 {
        vnet.csum_start = vnet.csum_start.checked_add(4).ok_or(())?;
    }
    if vnet.gso_type != gso_type::NONE {
        vnet.hdr_len = vnet.hdr_len.checked_add(4).ok_or(())?;
    }
    out.clear();
    out.resize(VNET_HDR_LEN, 0);
    vnet.write(out).map_err(|_| ())?;
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&ethertype::VLAN.to_be_bytes());
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    Ok(())
}

/// `PACKET_AUXDATA` (linux/if_packet.h) and its `tp_status` bit for a valid VLAN tag.
pub(crate) const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy)]
struct AuxData {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    net: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

/// Reads one frame from the parent like [`PacketSocket::read`], and the VLAN id the
/// kernel took off it into `vid` (the socket has `PACKET_AUXDATA` on).
pub(crate) fn receive_tagged(
    socket: &PacketSocket,
    buffer: &mut [u8],
    vid: &mut Option<u16>,
) -> io::Result<Option<usize>> {
    let mut control = [0u64; 8];
    let mut iovec = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: a zeroed msghdr is valid; it points at the iovec and control buffer above.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iovec;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of::<[u64; 8]>() as _; // socklen_t on musl, size_t on glibc
    // SAFETY: recvmsg into buffers that outlive the call, of the stated sizes.
    let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_DONTWAIT) };
    if received < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(error);
    }
    *vid = auxdata_vlan(&message);
    Ok(Some(received as usize))
}

/// The VLAN id the kernel took off a received frame, from its `PACKET_AUXDATA`.
fn auxdata_vlan(message: &libc::msghdr) -> Option<u16> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(message);
        while !cmsg.is_null() {
            let length = (*cmsg).cmsg_len as usize;
            if (*cmsg).cmsg_level == libc::SOL_PACKET
                && (*cmsg).cmsg_type == PACKET_AUXDATA
                && length >= libc::CMSG_LEN(size_of::<AuxData>() as u32) as usize
            {
                let aux = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<AuxData>());
                if aux.status & TP_STATUS_VLAN_VALID != 0 {
                    return Some(aux.vlan_tci & 0x0fff);
                }
            }
            cmsg = libc::CMSG_NXTHDR(message, cmsg);
        }
    }
    None
}

/// Asks the kernel to report the VLAN tag it took off each frame (`PACKET_AUXDATA`).
pub(crate) fn enable_auxdata(socket: &PacketSocket) -> io::Result<()> {
    sys::set_int_option(socket.as_raw_fd(), libc::SOL_PACKET, PACKET_AUXDATA, 1)
        .map_err(|error| context(error, "PACKET_AUXDATA"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ethernet::EthernetFrame;

    #[test]
    fn tagging_inserts_the_tag_and_moves_the_offsets() {
        let mut frame = [0u8; 60];
        ethernet::write_header(&mut frame, &[2; 6], &[4; 6], None, ethertype::IPV4).unwrap();
        let vnet = VirtioNetHdr {
            flags: offload::F_NEEDS_CSUM,
            gso_type: gso_type::TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut header = [0u8; VNET_HDR_LEN];
        vnet.write(&mut header).unwrap();
        let mut out = Vec::new();
        tag(&mut out, &header, &frame, 10).unwrap();
        let moved = VirtioNetHdr::parse(&out).unwrap();
        assert_eq!((moved.csum_start, moved.hdr_len), (38, 58));
        let tagged = EthernetFrame::parse(&out[VNET_HDR_LEN..]).unwrap();
        assert_eq!(tagged.vlan().map(|t| t.vid), Some(10));
        assert_eq!(tagged.ethertype(), ethertype::IPV4);
        assert_eq!(tagged.payload(), &frame[14..]);
        assert_eq!(tag(&mut out, &header[..4], &frame, 10), Err(()));
    }
}
