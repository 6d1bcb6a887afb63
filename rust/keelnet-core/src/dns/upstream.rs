//! Exchanges with upstream servers: a connected UDP socket per forwarded query, or a
//! non-blocking TCP connection (client over TCP, or a truncated UDP answer), and how an
//! upstream's message is judged.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, ResponseCode};

use super::message;
use crate::io::socket_for;

pub(super) const IN: u32 = libc::EPOLLIN as u32;
pub(super) const OUT: u32 = libc::EPOLLOUT as u32;

pub(super) enum Link {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        connected: bool,
        output: Vec<u8>,
        input: Vec<u8>,
    },
}

/// What an upstream's message means for the forward waiting on it.
pub(super) enum Verdict {
    /// Not the answer to our query (another id or question): keep waiting.
    Stray,
    Answer,
    Truncated,
    /// SERVFAIL, REFUSED or unreadable: ask the next server (Docker's rule).
    NextServer,
}

pub(super) fn judge(query: &[u8], id: u16, reply: &[u8]) -> Verdict {
    if message::message_id(reply) != Some(id) {
        return Verdict::Stray;
    }
    let Ok(parsed) = Message::from_vec(reply) else {
        return Verdict::NextServer;
    };
    if parsed.message_type != MessageType::Response || !message::same_question(query, &parsed) {
        return Verdict::Stray;
    }
    if parsed.truncation {
        return Verdict::Truncated;
    }
    match parsed.response_code {
        ResponseCode::ServFail | ResponseCode::Refused => Verdict::NextServer,
        _ => Verdict::Answer,
    }
}

/// A socket to `address` carrying `query`: a connected UDP socket (sent), or a TCP
/// connection under way (sent once connected).
pub(super) fn open_link(address: SocketAddr, tcp: bool, query: &[u8]) -> io::Result<Link> {
    if !tcp {
        let local: SocketAddr = if address.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        socket.connect(address)?;
        socket.send(query)?;
        return Ok(Link::Udp(socket));
    }
    let mut output = Vec::with_capacity(query.len() + 2);
    push_frame(&mut output, query);
    Ok(Link::Tcp {
        stream: connect_nonblocking(address)?,
        connected: false,
        output,
        input: Vec::new(),
    })
}

pub(super) fn connect_nonblocking(address: SocketAddr) -> io::Result<TcpStream> {
    let fd = socket_for(&address, libc::SOCK_STREAM)?;
    let (storage, length) = crate::io::udp::to_sockaddr(&address);
    // SAFETY: storage holds a valid sockaddr of `length` bytes.
    let result = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            length,
        )
    };
    if result != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    Ok(TcpStream::from(fd))
}

/// Moves a TCP exchange with an upstream along; `Some` once the whole answer is in.
pub(super) fn tcp_exchange(
    stream: &mut TcpStream,
    connected: &mut bool,
    output: &mut Vec<u8>,
    input: &mut Vec<u8>,
    flags: u32,
    buffer: &mut [u8],
) -> io::Result<Option<Vec<u8>>> {
    if !*connected {
        if flags & (OUT | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) == 0 {
            return Ok(None);
        }
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        *connected = true;
    }
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                output.drain(..written);
            }
            Err(error) if is_transient(&error) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
    loop {
        match stream.read(buffer) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(length) => input.extend_from_slice(&buffer[..length]),
            Err(error) if is_transient(&error) => break,
            Err(error) => return Err(error),
        }
    }
    Ok(take_frame(input))
}

/// Takes one length-prefixed message off the front of a TCP stream's bytes.
pub(super) fn take_frame(input: &mut Vec<u8>) -> Option<Vec<u8>> {
    let length = usize::from(u16::from_be_bytes([*input.first()?, *input.get(1)?]));
    if input.len() < 2 + length {
        return None;
    }
    let frame = input[2..2 + length].to_vec();
    input.drain(..2 + length);
    Some(frame)
}

pub(super) fn push_frame(output: &mut Vec<u8>, message: &[u8]) {
    let length = u16::try_from(message.len()).unwrap_or(u16::MAX);
    output.extend_from_slice(&length.to_be_bytes());
    output.extend_from_slice(&message[..usize::from(length)]);
}

pub(super) fn link_fd(link: &Link) -> RawFd {
    match link {
        Link::Udp(socket) => socket.as_raw_fd(),
        Link::Tcp { stream, .. } => stream.as_raw_fd(),
    }
}

pub(super) fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A random message id for a forwarded query (off-path spoofing must guess it and the
/// source port).
pub(super) fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into the local array.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 2, 0) };
    if filled != 2 {
        let nanos = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
        return nanos as u16;
    }
    u16::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join() {
        let mut output = Vec::new();
        push_frame(&mut output, b"abc");
        push_frame(&mut output, b"");
        output.push(0);
        assert_eq!(take_frame(&mut output).as_deref(), Some(&b"abc"[..]));
        assert_eq!(take_frame(&mut output).as_deref(), Some(&b""[..]));
        assert_eq!(take_frame(&mut output), None);
        assert_eq!(output, vec![0]);
    }
}
