//! The VTEP's UDP socket: bound in the host namespace to the local underlay address,
//! with large buffers, UDP GSO on send (`UDP_SEGMENT`: one call carries up to 64
//! equal-sized datagrams) and UDP GRO on receive (one message holds a train of
//! datagrams from one peer, with their size in a control message).

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::netns;
use super::sys::{self, RecvBatch, check, check_size, context};

/// Most datagrams the kernel takes in one `UDP_SEGMENT` send (`UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes one GSO send may carry (the IPv4 length field bounds it).
pub const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffer per message: a full GRO train.
pub const RECEIVE_BUFFER: usize = 65_536;

/// A bound UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    local: SocketAddr,
    /// Cleared when the kernel refuses `UDP_SEGMENT` (e.g. `EIO` from a device without
    /// checksum offload); sends then go one datagram per call.
    gso: bool,
    gro: bool,
}

/// A received datagram train: `length` bytes in `buffer`, in datagrams of `segment`
/// bytes (the last may be shorter), from `source`.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub source: SocketAddr,
    pub length: usize,
    pub segment: usize,
    pub truncated: bool,
}

impl UdpSocket {
    /// Binds `local` in namespace `netns` (`None`: the caller's).
    pub fn bind(netns_path: Option<&Path>, local: SocketAddr) -> io::Result<UdpSocket> {
        netns::run_in(netns_path, move || {
            let fd = sys::socket_for(&local, libc::SOCK_DGRAM)?;
            let raw = fd.as_raw_fd();
            if local.is_ipv6() {
                sys::set_int_option(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            }
            sys::set_buffers(raw, 8 << 20);
            let gro = sys::set_int_option(raw, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
            let (storage, length) = to_sockaddr(&local);
            // SAFETY: storage holds a valid sockaddr of `length` bytes.
            check(unsafe {
                libc::bind(
                    raw,
                    (&storage as *const libc::sockaddr_storage).cast(),
                    length,
                )
            })
            .map_err(|error| context(error, format!("binding UDP {local}")))?;
            Ok(UdpSocket {
                fd,
                local,
                gso: true,
                gro,
            })
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Turns UDP GSO on or off for later sends (off: one datagram per call).
    pub fn set_gso(&mut self, enabled: bool) {
        self.gso = enabled;
    }

    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Sends `parts` (concatenated) to `destination` as datagrams of `segment` bytes
    /// (the last may be shorter) in one call when GSO works, else one call per datagram.
    /// `segment` = total length sends one datagram.
    pub fn send_segmented(
        &mut self,
        destination: &SocketAddr,
        parts: &[&[u8]],
        segment: usize,
    ) -> io::Result<()> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        if total <= segment || segment == 0 {
            return self.send_parts(destination, parts, None);
        }
        if self.gso {
            match self.send_parts(destination, parts, Some(segment as u16)) {
                Err(error) if error.raw_os_error() == Some(libc::EIO) => self.gso = false,
                other => return other,
            }
        }
        // Without GSO: gather each datagram and send it alone.
        let mut datagram = Vec::with_capacity(segment);
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = (segment - datagram.len()).min(rest.len());
                datagram.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if datagram.len() == segment {
                    self.send_parts(destination, &[&datagram], None)?;
                    datagram.clear();
                }
            }
        }
        if !datagram.is_empty() {
            self.send_parts(destination, &[&datagram], None)?;
        }
        Ok(())
    }

    fn send_parts(
        &self,
        destination: &SocketAddr,
        parts: &[&[u8]],
        segment: Option<u16>,
    ) -> io::Result<()> {
        let mut iovecs: Vec<libc::iovec> = parts
            .iter()
            .map(|part| libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            })
            .collect();
        let (mut storage, length) = to_sockaddr(destination);
        let mut control = [0u64; 4];
        // SAFETY: zeroed msghdr is valid; fields set below.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        message.msg_namelen = length;
        message.msg_iov = iovecs.as_mut_ptr();
        message.msg_iovlen = iovecs.len() as _; // int on musl, size_t on glibc
        if let Some(segment) = segment {
            message.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            message.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
            // SAFETY: the control buffer (32 bytes) holds one cmsg with a u16.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&message);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
        // SAFETY: message points at live iovecs, address and control buffer.
        check_size(unsafe { libc::sendmsg(self.fd.as_raw_fd(), &message, 0) })?;
        Ok(())
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Batched receive for a [`UdpSocket`]: up to `count` GRO trains per call.
pub struct UdpReceiver {
    batch: RecvBatch,
}

impl UdpReceiver {
    pub fn new(count: usize) -> UdpReceiver {
        UdpReceiver {
            batch: RecvBatch::new(count, RECEIVE_BUFFER),
        }
    }

    /// Receives what is waiting (without blocking); returns how many messages arrived.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.batch.receive(socket.as_raw_fd())
    }

    /// Message `index` of the last [`UdpReceiver::receive`] and its bytes.
    pub fn message(&self, index: usize) -> (Received, &[u8]) {
        let length = self.batch.lengths[index];
        let segment = self
            .batch
            .control_int(index, libc::SOL_UDP, libc::UDP_GRO)
            .filter(|&size| size > 0)
            .map_or(length, |size| size as usize);
        let received = Received {
            source: from_sockaddr(&self.batch.addresses[index]),
            length,
            segment,
            truncated: self.batch.truncated[index],
        };
        (received, &self.batch.buffers[index][..length])
    }
}

pub(crate) fn to_sockaddr(address: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we write one sockaddr_in(6) into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

pub(crate) fn from_sockaddr(storage: &libc::sockaddr_storage) -> SocketAddr {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so).
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            )
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // A v4-mapped source cannot occur (V6ONLY), but map it anyway.
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            SocketAddr::new(ip, u16::from_be(sin6.sin6_port))
        }
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_send_arrives_as_datagrams_or_a_gro_train_on_loopback() {
        let Ok(mut sender) = UdpSocket::bind(None, "127.0.0.1:0".parse().unwrap()) else {
            return;
        };
        let receiver_socket = UdpSocket::bind(None, "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = {
            // SAFETY: getsockname into a zeroed storage of the stated size.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut length = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            unsafe {
                libc::getsockname(
                    receiver_socket.as_raw_fd(),
                    (&mut storage as *mut libc::sockaddr_storage).cast(),
                    &mut length,
                )
            };
            from_sockaddr(&storage).port()
        };
        let destination: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        sender
            .send_segmented(&destination, &[&payload[..1000], &payload[1000..]], 1000)
            .unwrap();
        let mut receiver = UdpReceiver::new(8);
        let mut got = Vec::new();
        for _ in 0..100 {
            let count = receiver.receive(&receiver_socket).unwrap();
            for index in 0..count {
                let (info, bytes) = receiver.message(index);
                assert_eq!(info.segment.min(1000), 1000.min(info.length));
                got.extend_from_slice(bytes);
            }
            if got.len() >= payload.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, payload);
    }
}
