//! Small checked wrappers over the libc calls the ports share: interface ioctls, one
//! rtnetlink request (moving a link to another namespace), socket options and batched
//! receive.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::fdb::MacAddr;

/// `-1` → the thread's errno as an `io::Error`.
pub(crate) fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

pub(crate) fn check_size(result: isize) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// Adds `context: ` in front of an error's message, keeping its kind and errno.
pub(crate) fn context(error: io::Error, context: impl std::fmt::Display) -> io::Error {
    match error.raw_os_error() {
        // Keep the errno: callers (and Python) map it.
        Some(errno) => io::Error::new(
            error.kind(),
            OsErrorWithContext {
                errno,
                message: format!("{context}: {error}"),
            },
        ),
        None => io::Error::new(error.kind(), format!("{context}: {error}")),
    }
}

/// An OS error with a message; [`errno_of`] finds the errno again.
#[derive(Debug)]
pub struct OsErrorWithContext {
    pub errno: i32,
    pub message: String,
}

impl std::fmt::Display for OsErrorWithContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OsErrorWithContext {}

/// The errno of an error made by the OS directly or through [`context`].
pub fn errno_of(error: &io::Error) -> Option<i32> {
    error.raw_os_error().or_else(|| {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<OsErrorWithContext>())
            .map(|inner| inner.errno)
    })
}

/// `struct ifreq`: a name and a 24-byte union, handled as bytes.
#[repr(C)]
pub(crate) struct IfReq {
    pub name: [u8; libc::IFNAMSIZ],
    pub data: [u8; 24],
}

impl IfReq {
    pub fn new(name: &str) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name (1 to 15 bytes)"),
            ));
        }
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        request.name[..bytes.len()].copy_from_slice(bytes);
        Ok(request)
    }

    pub fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    pub fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    pub fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub fn set_short(&mut self, value: i16) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }
}

/// `ioctl(fd, request, &mut ifreq)`.
/// `request` as libc types its constant: glibc's `ioctl` takes an unsigned long, musl's an
/// int, and the constants do not all share that type on musl.
pub(crate) fn ioctl_ifreq<R: TryInto<libc::Ioctl>>(
    fd: RawFd,
    request: R,
    ifreq: &mut IfReq,
) -> io::Result<()> {
    let request = request
        .try_into()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: every request used here reads or writes at most a `struct ifreq`, which
    // `IfReq` matches in size and layout.
    check(unsafe { libc::ioctl(fd, request, ifreq as *mut IfReq) })?;
    Ok(())
}

/// A datagram socket for interface ioctls, in the calling thread's namespace.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The index of interface `name` in the calling thread's namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut request)
        .map_err(|error| context(error, format!("interface {name}")))?;
    Ok(request.int() as u32)
}

/// The MTU of interface `name` in the calling thread's namespace.
pub fn interface_mtu(name: &str) -> io::Result<u32> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request)
        .map_err(|error| context(error, format!("interface {name}")))?;
    Ok(request.int() as u32)
}

pub(crate) fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    request.set_int(mtu as i32);
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCSIFMTU, &mut request)
        .map_err(|error| context(error, format!("setting MTU {mtu} on {name}")))
}

pub(crate) fn set_mac(name: &str, mac: &MacAddr) -> io::Result<()> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    // struct sockaddr: family (ARPHRD_ETHER), then the address bytes.
    request.data[..2].copy_from_slice(&(libc::ARPHRD_ETHER).to_ne_bytes());
    request.data[2..8].copy_from_slice(mac);
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCSIFHWADDR, &mut request)
        .map_err(|error| context(error, format!("setting MAC on {name}")))
}

pub(crate) fn mac_of(name: &str) -> io::Result<MacAddr> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request)
        .map_err(|error| context(error, format!("interface {name}")))?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&request.data[2..8]);
    Ok(mac)
}

pub(crate) fn set_up(name: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut request = IfReq::new(name)?;
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request)
        .map_err(|error| context(error, format!("interface {name}")))?;
    request.set_short(request.short() | libc::IFF_UP as i16);
    ioctl_ifreq(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request)
        .map_err(|error| context(error, format!("bringing {name} up")))
}

pub(crate) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Socket buffers of `bytes`, past `rmem_max`/`wmem_max` where allowed (CAP_NET_ADMIN).
pub(crate) fn set_buffers(fd: RawFd, bytes: libc::c_int) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            // Best effort: without privilege the kernel caps the plain option.
            let _ = set_int_option(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

// --- rtnetlink: move a link into another namespace under a new name ------------------

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

fn push_attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = 4 + value.len();
    message.extend_from_slice(&(length as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(message.len().next_multiple_of(4), 0);
}

/// `ip link set dev <ifindex> netns <fd> name <name>`: one RTM_NEWLINK request, sent
/// from the calling thread's namespace (where the link is now). Renaming in the same
/// request avoids a clash with a same-named link in either namespace.
pub(crate) fn move_link(ifindex: u32, netns_fd: RawFd, new_name: &str) -> io::Result<()> {
    let mut message = vec![0u8; NLMSG_HDR_LEN + IFINFOMSG_LEN];
    // ifinfomsg: family, pad, type, index, flags, change.
    message[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    push_attribute(
        &mut message,
        libc::IFLA_NET_NS_FD,
        &(netns_fd as u32).to_ne_bytes(),
    );
    let mut name = new_name.as_bytes().to_vec();
    name.push(0);
    push_attribute(&mut message, libc::IFLA_IFNAME, &name);
    rtnetlink_request(message, libc::RTM_NEWLINK, 0)
}

/// `ip addr add <address>/32 dev <ifindex> scope host noprefixroute`: the address
/// without any route of its own.
pub(crate) fn add_host_address(ifindex: u32, address: Ipv4Addr) -> io::Result<()> {
    let mut message = vec![0u8; NLMSG_HDR_LEN + IFADDRMSG_LEN];
    // ifaddrmsg: family, prefix length, flags, scope, index.
    message[NLMSG_HDR_LEN] = libc::AF_INET as u8;
    message[NLMSG_HDR_LEN + 1] = 32;
    message[NLMSG_HDR_LEN + 3] = libc::RT_SCOPE_HOST;
    message[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    push_attribute(&mut message, libc::IFA_LOCAL, &address.octets());
    push_attribute(&mut message, libc::IFA_ADDRESS, &address.octets());
    push_attribute(
        &mut message,
        libc::IFA_FLAGS,
        &libc::IFA_F_NOPREFIXROUTE.to_ne_bytes(),
    );
    rtnetlink_request(
        message,
        libc::RTM_NEWADDR,
        libc::NLM_F_CREATE | libc::NLM_F_EXCL,
    )
}

/// Sends one rtnetlink request (`message`: header room, then the body) from the calling
/// thread's namespace and waits for its acknowledgement.
fn rtnetlink_request(mut message: Vec<u8>, kind: u16, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain socket(2); owned right away.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: fresh descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr: length, type, flags, seq, pid.
    let length = message.len() as u32;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message[4..6].copy_from_slice(&kind.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: sockaddr_nl zeroed is the kernel as destination.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: buffer and address are valid for the lengths given.
    check_size(unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    let mut reply = [0u8; 1024];
    // SAFETY: reading into a local buffer of the given length.
    let received = check_size(unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    })?;
    // NLMSG_ERROR carries a negative errno, or 0 for the ACK.
    if received >= NLMSG_HDR_LEN + 4
        && u16::from_ne_bytes([reply[4], reply[5]]) == libc::NLMSG_ERROR as u16
    {
        let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(-errno));
        }
        return Ok(());
    }
    Err(io::Error::other("unexpected rtnetlink reply"))
}

// --- batched receive ------------------------------------------------------------------

/// Buffers for `recvmmsg`: `count` messages of up to `size` bytes, with room for the
/// source address and a small control message each.
pub(crate) struct RecvBatch {
    pub buffers: Vec<Vec<u8>>,
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
    pub addresses: Vec<libc::sockaddr_storage>,
    pub controls: Vec<[u64; 8]>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside iovecs/headers point into this struct's own buffers and
// are rebuilt before every use, so moving the batch between threads is sound.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(count: usize, size: usize) -> RecvBatch {
        RecvBatch {
            buffers: (0..count).map(|_| vec![0u8; size]).collect(),
            lengths: vec![0; count],
            truncated: vec![false; count],
            // SAFETY: all-zero sockaddr_storage/iovec/mmsghdr are valid values.
            addresses: vec![unsafe { std::mem::zeroed() }; count],
            controls: vec![[0; 8]; count],
            iovecs: vec![unsafe { std::mem::zeroed() }; count],
            headers: vec![unsafe { std::mem::zeroed() }; count],
        }
    }

    /// Receives up to the batch size without blocking; returns how many arrived (0 when
    /// none were waiting).
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let count = self.buffers.len();
        for index in 0..count {
            self.iovecs[index] = libc::iovec {
                iov_base: self.buffers[index].as_mut_ptr().cast(),
                iov_len: self.buffers[index].len(),
            };
            let header = &mut self.headers[index].msg_hdr;
            header.msg_name = (&mut self.addresses[index] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[index];
            header.msg_iovlen = 1;
            header.msg_control = self.controls[index].as_mut_ptr().cast();
            header.msg_controllen = size_of::<[u64; 8]>() as _; // socklen_t on musl, size_t on glibc
            header.msg_flags = 0;
            self.headers[index].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the lengths it states.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT as _, // unsigned on musl
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(error);
        }
        let received = received as usize;
        for index in 0..received {
            self.lengths[index] = self.headers[index].msg_len as usize;
            self.truncated[index] = self.headers[index].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(received)
    }

    /// The header of message `index` of the last receive (its control messages).
    pub fn header(&self, index: usize) -> &libc::msghdr {
        &self.headers[index].msg_hdr
    }

    /// The first control message of `level`/`kind` of message `index`, as a u16 or i32.
    pub fn control_int(&self, index: usize, level: libc::c_int, kind: libc::c_int) -> Option<i32> {
        let header = &self.headers[index].msg_hdr;
        // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == level && (*cmsg).cmsg_type == kind {
                    let data = libc::CMSG_DATA(cmsg);
                    let length =
                        ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    return Some(if length >= 4 {
                        std::ptr::read_unaligned(data.cast::<i32>())
                    } else {
                        i32::from(std::ptr::read_unaligned(data.cast::<u16>()))
                    });
                }
                cmsg = libc::CMSG_NXTHDR(header, cmsg);
            }
        }
        None
    }
}

/// A new non-blocking, close-on-exec socket of `kind` (`SOCK_DGRAM`, `SOCK_STREAM`) for
/// the family of `address`.
pub(crate) fn socket_for(address: &std::net::SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let family = if address.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); owned right away.
    let fd =
        check(unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends each `(payload, address, address length)` as its own datagram with one
/// `sendmmsg(2)`, without blocking; returns how many went (the rest: socket full).
pub(crate) fn send_batch(
    fd: RawFd,
    messages: &[(&[u8], &libc::sockaddr_storage, libc::socklen_t)],
) -> io::Result<usize> {
    if messages.is_empty() {
        return Ok(0);
    }
    let mut iovecs: Vec<libc::iovec> = messages
        .iter()
        .map(|(payload, _, _)| libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = messages
        .iter()
        .zip(iovecs.iter_mut())
        .map(|((_, address, length), iovec)| {
            // SAFETY: an all-zero mmsghdr is valid; the pointers set below outlive the call.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = (*address as *const libc::sockaddr_storage)
                .cast_mut()
                .cast();
            header.msg_hdr.msg_namelen = *length;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: every header points at a live payload and address of the stated lengths.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(error);
    }
    Ok(sent as usize)
}

/// Non-blocking `read(2)`: `Ok(None)` when nothing is waiting.
pub(crate) fn read_nonblocking(fd: RawFd, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reading into a buffer of the stated length.
    let result = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(error);
    }
    Ok(Some(result as usize))
}

/// `writev(2)` of `parts`.
pub(crate) fn write_vectored(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let iovecs: [libc::iovec; 4] = std::array::from_fn(|index| match parts.get(index) {
        Some(part) => libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        },
        None => libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
    });
    let count = parts.len().min(4);
    // SAFETY: the iovecs point at live slices for the duration of the call.
    check_size(unsafe { libc::writev(fd, iovecs.as_ptr(), count as libc::c_int) })
}
