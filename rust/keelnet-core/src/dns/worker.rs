//! The resolver's thread: every sandbox's sockets, TCP clients and upstream exchanges
//! in one epoll set, each under a token of a [`Slab`]; answers to a source that is busy
//! (taken out while its own event is handled) wait in an outbox.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;

use super::message::{self, Decision, Transport};
use super::resolver::{Command, Shared, Upstream, WAKE, lock};
use super::upstream::{
    IN, Link, OUT, Verdict, is_transient, judge, link_fd, open_link, push_frame, random_id,
    take_frame, tcp_exchange,
};
use crate::io::udp::from_sockaddr;
use crate::io::{RecvBatch, netns, send_batch};

/// Forwarded queries in flight at once; beyond, clients get REFUSED (Docker: 1024).
const MAX_FORWARDS: usize = 1024;
/// TCP clients at once, over all sandboxes; beyond, new connections are closed.
const MAX_TCP_CLIENTS: usize = 256;
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Datagrams one `recvmmsg` takes, and batches read from one socket before the others
/// get a turn.
const BATCH: usize = 32;
const ROUNDS: usize = 4;
/// Largest query over UDP the resolver reads (a longer datagram is no query).
const UDP_QUERY_MAX: usize = 4096;

/// A vector of values addressed by tokens that are never reused for another value
/// (a generation in the high half), so a late event or reply finds nothing.
struct Slab<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn insert(&mut self, value: T) -> u64 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.entries.push((0, None));
            self.entries.len() - 1
        });
        let entry = &mut self.entries[index];
        entry.0 = entry.0.wrapping_add(1);
        entry.1 = Some(value);
        self.len += 1;
        (u64::from(entry.0) << 32) | index as u64
    }

    fn slot(&mut self, token: u64) -> Option<&mut Option<T>> {
        let index = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let entry = self.entries.get_mut(index)?;
        (entry.0 == generation).then_some(&mut entry.1)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        self.slot(token)?.as_mut()
    }

    /// Takes the value out for a while; [`Slab::restore`] puts it back under its token.
    fn take(&mut self, token: u64) -> Option<T> {
        self.slot(token)?.take()
    }

    fn restore(&mut self, token: u64, value: T) {
        if let Some(slot) = self.slot(token) {
            *slot = Some(value);
        }
    }

    /// Frees a token whose value was taken.
    fn release(&mut self, token: u64) {
        if self.slot(token).is_some() {
            self.free.push((token & 0xffff_ffff) as usize);
            self.len -= 1;
        }
    }
}

/// Where a forwarded query's answer goes back to.
#[derive(Clone, Copy)]
enum Client {
    Udp { socket: u64, peer: SocketAddr },
    Tcp { connection: u64 },
}

struct Forward {
    client: Client,
    sandbox: Arc<str>,
    query: Vec<u8>,
    client_id: u16,
    id: u16,
    limit: u16,
    upstreams: Vec<Upstream>,
    current: usize,
    link: Option<Link>,
    deadline: Instant,
}

struct TcpClient {
    sandbox: Arc<str>,
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    writing: bool,
    active: Instant,
}

enum Source {
    Udp {
        sandbox: Arc<str>,
        socket: UdpSocket,
    },
    Listener {
        sandbox: Arc<str>,
        listener: TcpListener,
    },
    Client(TcpClient),
    Upstream(Box<Forward>),
}

struct SandboxSockets {
    udp: u64,
    listener: u64,
    netns: File,
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    /// The namespace this thread lives in, to come back to after opening a socket in
    /// a sandbox's.
    home: File,
    sources: Slab<Source>,
    sandboxes: HashMap<Arc<str>, SandboxSockets>,
    /// (deadline, token) of forwards and TCP clients; deadlines are pushed in order.
    deadlines: VecDeque<(Instant, u64)>,
    forwards: usize,
    clients: usize,
    /// Answers waiting for [`Worker::send_outbox`].
    outbox: Vec<(Client, Vec<u8>)>,
    batch: RecvBatch,
    buffer: Vec<u8>,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>) -> io::Result<Worker> {
        Ok(Worker {
            shared,
            home: File::open("/proc/thread-self/ns/net")?,
            sources: Slab::new(),
            sandboxes: HashMap::new(),
            deadlines: VecDeque::new(),
            forwards: 0,
            clients: 0,
            outbox: Vec::new(),
            batch: RecvBatch::new(BATCH, UDP_QUERY_MAX),
            buffer: vec![0; 65_536],
        })
    }

    pub(super) fn run(mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = match self.deadlines.front() {
                Some((deadline, _)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            let ready = match self.shared.poller.wait(&mut events, timeout) {
                Ok(ready) => ready,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => 0,
                Err(error) => return Err(error),
            };
            for event in &events[..ready] {
                let (token, flags) = (event.u64, event.events);
                if token == WAKE {
                    self.shared.poller.clear_wake();
                    self.commands()?;
                } else {
                    self.handle(token, flags)?;
                }
            }
            self.expire(Instant::now())?;
        }
        Ok(())
    }

    fn commands(&mut self) -> io::Result<()> {
        let commands = std::mem::take(&mut *lock(&self.shared.inbox));
        for command in commands {
            match command {
                Command::Listen {
                    sandbox,
                    netns,
                    udp,
                    tcp,
                } => {
                    self.close_sandbox(&sandbox);
                    let (udp_fd, tcp_fd) = (udp.as_raw_fd(), tcp.as_raw_fd());
                    let udp = self.sources.insert(Source::Udp {
                        sandbox: sandbox.clone(),
                        socket: udp,
                    });
                    let listener = self.sources.insert(Source::Listener {
                        sandbox: sandbox.clone(),
                        listener: tcp,
                    });
                    self.shared.poller.add(udp_fd, udp, IN)?;
                    self.shared.poller.add(tcp_fd, listener, IN)?;
                    self.sandboxes.insert(
                        sandbox,
                        SandboxSockets {
                            udp,
                            listener,
                            netns,
                        },
                    );
                }
                Command::Close(sandbox) => self.close_sandbox(&sandbox),
            }
        }
        Ok(())
    }

    fn close_sandbox(&mut self, sandbox: &str) {
        if let Some(sockets) = self.sandboxes.remove(sandbox) {
            for token in [sockets.udp, sockets.listener] {
                self.drop_source(token);
            }
        }
    }

    fn drop_source(&mut self, token: u64) {
        let Some(source) = self.sources.take(token) else {
            return;
        };
        self.sources.release(token);
        self.shared.poller.remove(source_fd(&source));
        match source {
            Source::Client(_) => self.clients -= 1,
            Source::Upstream(_) => self.forwards -= 1,
            _ => {}
        }
    }

    fn handle(&mut self, token: u64, flags: u32) -> io::Result<()> {
        let Some(source) = self.sources.take(token) else {
            return Ok(());
        };
        let keep = match source {
            Source::Udp { sandbox, socket } => {
                self.serve_udp(token, &sandbox, &socket)?;
                Some(Source::Udp { sandbox, socket })
            }
            Source::Listener { sandbox, listener } => {
                self.accept(&sandbox, &listener)?;
                Some(Source::Listener { sandbox, listener })
            }
            Source::Client(client) => self.serve_tcp(token, client)?.map(Source::Client),
            Source::Upstream(forward) => self
                .upstream_ready(token, forward, flags)?
                .map(Source::Upstream),
        };
        match keep {
            Some(source) => self.sources.restore(token, source),
            None => {
                // Gone: the descriptor closes with the value, which epoll forgets.
                self.sources.release(token);
            }
        }
        self.send_outbox()
    }

    /// Answers what waits on a sandbox's UDP socket, a `recvmmsg` batch at a time with
    /// the answers of each batch sent by one `sendmmsg`.
    fn serve_udp(&mut self, token: u64, sandbox: &Arc<str>, socket: &UdpSocket) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        for _ in 0..ROUNDS {
            let received = self.batch.receive(fd)?;
            let mut replies: Vec<(usize, Vec<u8>)> = Vec::with_capacity(received);
            let mut forwards = Vec::new();
            {
                let table = self
                    .shared
                    .table
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                for index in 0..received {
                    let query = &self.batch.buffers[index][..self.batch.lengths[index]];
                    if self.batch.truncated[index] {
                        self.shared.stats.ignored.fetch_add(1, Ordering::Relaxed);
                        continue; // longer than any query a resolver sends over UDP
                    }
                    match message::decide(&table, sandbox, query, Transport::Udp) {
                        Decision::Reply(reply) => replies.push((index, reply)),
                        Decision::Forward { limit } => forwards.push((index, limit)),
                        Decision::Ignore => {
                            self.shared.stats.ignored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            self.shared
                .stats
                .answered
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
            let messages: Vec<_> = replies
                .iter()
                .map(|(index, reply)| {
                    let header = self.batch.header(*index);
                    (
                        &reply[..],
                        &self.batch.addresses[*index],
                        header.msg_namelen,
                    )
                })
                .collect();
            // Answers that do not fit the socket now are dropped, as UDP would.
            let _ = send_batch(fd, &messages);
            for (index, limit) in forwards {
                let query = self.batch.buffers[index][..self.batch.lengths[index]].to_vec();
                let peer = from_sockaddr(&self.batch.addresses[index]);
                let client = Client::Udp {
                    socket: token,
                    peer,
                };
                self.forward(client, sandbox.clone(), query, limit)?;
            }
            if received < self.batch.buffers.len() {
                break;
            }
        }
        Ok(())
    }

    fn accept(&mut self, sandbox: &Arc<str>, listener: &TcpListener) -> io::Result<()> {
        for _ in 0..BATCH {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if is_transient(&error) => return Ok(()),
                Err(_) => return Ok(()), // e.g. ECONNABORTED, EMFILE: the client retries
            };
            if self.clients >= MAX_TCP_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: closed
            }
            let fd = stream.as_raw_fd();
            let now = Instant::now();
            let token = self.sources.insert(Source::Client(TcpClient {
                sandbox: sandbox.clone(),
                stream,
                input: Vec::new(),
                output: Vec::new(),
                writing: false,
                active: now,
            }));
            self.clients += 1;
            self.shared.poller.add(fd, token, IN)?;
            self.deadlines.push_back((now + TCP_IDLE, token));
        }
        Ok(())
    }

    /// Reads a TCP client's queries and writes what is owed to it; `None`: closed.
    fn serve_tcp(&mut self, token: u64, mut client: TcpClient) -> io::Result<Option<TcpClient>> {
        client.active = Instant::now();
        loop {
            match client.stream.read(&mut self.buffer) {
                Ok(0) => return Ok(self.close_client(client)),
                Ok(length) => client.input.extend_from_slice(&self.buffer[..length]),
                Err(error) if is_transient(&error) => break,
                Err(_) => return Ok(self.close_client(client)),
            }
            if client.input.len() > 2 * usize::from(message::TCP_MAX) {
                break; // let the queries already read be answered first
            }
        }
        while let Some(query) = take_frame(&mut client.input) {
            let decision = {
                let table = self
                    .shared
                    .table
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                message::decide(&table, &client.sandbox, &query, Transport::Tcp)
            };
            match decision {
                Decision::Reply(reply) => {
                    self.shared.stats.answered.fetch_add(1, Ordering::Relaxed);
                    push_frame(&mut client.output, &reply);
                }
                Decision::Forward { limit } => {
                    let to = Client::Tcp { connection: token };
                    self.forward(to, client.sandbox.clone(), query, limit)?;
                }
                Decision::Ignore => {
                    // A stream that carries garbage cannot be trusted to be framed.
                    self.shared.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.close_client(client));
                }
            }
        }
        self.flush(token, client)
    }

    fn close_client(&mut self, client: TcpClient) -> Option<TcpClient> {
        self.shared.poller.remove(client.stream.as_raw_fd());
        self.clients -= 1;
        None
    }

    /// Writes what it can of a client's output and watches for room for the rest.
    fn flush(&mut self, token: u64, mut client: TcpClient) -> io::Result<Option<TcpClient>> {
        while !client.output.is_empty() {
            match client.stream.write(&client.output) {
                Ok(0) => return Ok(self.close_client(client)),
                Ok(written) => {
                    client.output.drain(..written);
                }
                Err(error) if is_transient(&error) => break,
                Err(_) => return Ok(self.close_client(client)),
            }
        }
        let writing = !client.output.is_empty();
        if writing != client.writing {
            let events = if writing { IN | OUT } else { IN };
            self.shared
                .poller
                .modify(client.stream.as_raw_fd(), token, events)?;
            client.writing = writing;
        }
        Ok(Some(client))
    }

    /// Queues an answer for where a query came from: the source it goes out through
    /// may be taken out of the slab while its own event is handled.
    fn deliver(&mut self, client: Client, reply: Vec<u8>) {
        self.outbox.push((client, reply));
    }

    /// Sends the queued answers, to those still there.
    fn send_outbox(&mut self) -> io::Result<()> {
        for (client, reply) in std::mem::take(&mut self.outbox) {
            match client {
                Client::Udp { socket, peer } => {
                    if let Some(Source::Udp { socket, .. }) = self.sources.get_mut(socket) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
                Client::Tcp { connection } => {
                    if let Some(Source::Client(mut tcp)) = self.sources.take(connection) {
                        push_frame(&mut tcp.output, &reply);
                        match self.flush(connection, tcp)? {
                            Some(tcp) => self.sources.restore(connection, Source::Client(tcp)),
                            None => self.sources.release(connection),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn upstreams_for(&self, sandbox: &str) -> Vec<Upstream> {
        let host_forwarding = self
            .shared
            .host_forwarding
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sandbox)
            .copied()
            .unwrap_or(false);
        let upstreams = self
            .shared
            .upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        upstreams
            .iter()
            .filter(|u| host_forwarding || !u.from_host)
            .copied()
            .collect()
    }

    fn forward(
        &mut self,
        client: Client,
        sandbox: Arc<str>,
        query: Vec<u8>,
        limit: u16,
    ) -> io::Result<()> {
        let upstreams = self.upstreams_for(&sandbox);
        let code = if upstreams.is_empty() {
            Some(ResponseCode::ServFail)
        } else if self.forwards >= MAX_FORWARDS {
            Some(ResponseCode::Refused)
        } else {
            None
        };
        if let Some(code) = code {
            self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = message::error_reply(&query, code) {
                self.deliver(client, reply);
            }
            return Ok(());
        }
        let Some(client_id) = message::message_id(&query) else {
            return Ok(());
        };
        self.shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let via_tcp = matches!(client, Client::Tcp { .. });
        let forward = Box::new(Forward {
            client,
            sandbox,
            query,
            client_id,
            id: 0,
            limit,
            upstreams,
            current: 0,
            link: None,
            deadline: Instant::now(),
        });
        self.forwards += 1;
        self.attempt(forward, 0, via_tcp)
    }

    /// Asks upstream `index` (or gives up with SERVFAIL past the last one).
    fn attempt(&mut self, mut forward: Box<Forward>, index: usize, tcp: bool) -> io::Result<()> {
        let mut index = index;
        loop {
            let Some(upstream) = forward.upstreams.get(index).copied() else {
                self.forwards -= 1;
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = message::error_reply(&forward.query, ResponseCode::ServFail) {
                    self.deliver(forward.client, reply);
                }
                return Ok(());
            };
            forward.current = index;
            forward.id = random_id();
            let mut query = forward.query.clone();
            query[..2].copy_from_slice(&forward.id.to_be_bytes());
            let netns = (!upstream.from_host)
                .then(|| self.sandboxes.get(&forward.sandbox).map(|s| &s.netns))
                .flatten();
            if !upstream.from_host && netns.is_none() {
                index += 1; // the sandbox is gone: its namespace cannot be entered
                continue;
            }
            let opened = self.in_namespace(netns, || open_link(upstream.address, tcp, &query))?;
            let Ok(link) = opened else {
                index += 1;
                continue;
            };
            let fd = link_fd(&link);
            let events = if tcp { IN | OUT } else { IN };
            forward.link = Some(link);
            forward.deadline = Instant::now() + self.shared.timeout;
            let deadline = forward.deadline;
            let token = self.sources.insert(Source::Upstream(forward));
            self.shared.poller.add(fd, token, events)?;
            self.deadlines.push_back((deadline, token));
            return Ok(());
        }
    }

    /// Runs `work` in `netns` (then comes back), or here when `None`. Failing to come
    /// back would leave this thread serving from the wrong namespace: that ends it.
    fn in_namespace<T>(
        &self,
        netns: Option<&File>,
        work: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<io::Result<T>> {
        let Some(netns) = netns else {
            return Ok(work());
        };
        if let Err(error) = netns::enter(netns) {
            return Ok(Err(error));
        }
        let result = work();
        netns::enter(&self.home)?;
        Ok(result)
    }

    fn upstream_ready(
        &mut self,
        token: u64,
        mut forward: Box<Forward>,
        flags: u32,
    ) -> io::Result<Option<Box<Forward>>> {
        let reply = match forward.link.as_mut().expect("a waiting forward has a link") {
            Link::Udp(socket) => match socket.recv(&mut self.buffer) {
                Ok(length) => Some(self.buffer[..length].to_vec()),
                Err(error) if is_transient(&error) => return Ok(Some(forward)),
                Err(_) => None, // e.g. ECONNREFUSED: nothing listens there
            },
            Link::Tcp {
                stream,
                connected,
                output,
                input,
            } => match tcp_exchange(stream, connected, output, input, flags, &mut self.buffer) {
                Ok(Some(reply)) => Some(reply),
                Ok(None) => {
                    if *connected && output.is_empty() {
                        // Sent: wait for the answer only (a writable socket would wake
                        // this level-triggered loop again and again).
                        self.shared.poller.modify(stream.as_raw_fd(), token, IN)?;
                    }
                    return Ok(Some(forward));
                }
                Err(_) => None,
            },
        };
        let verdict = reply.as_deref().map_or(Verdict::NextServer, |reply| {
            judge(&forward.query, forward.id, reply)
        });
        let via_tcp = matches!(forward.link, Some(Link::Tcp { .. }));
        match verdict {
            Verdict::Stray => return Ok(Some(forward)),
            Verdict::Answer => {
                let reply = reply.unwrap_or_default();
                if let Some(fitted) = message::fit_reply(&reply, forward.client_id, forward.limit) {
                    self.forwards -= 1;
                    self.drop_link(&forward);
                    self.deliver(forward.client, fitted);
                    return Ok(None);
                }
                self.drop_link(&forward);
                let next = forward.current + 1;
                self.attempt(forward, next, via_tcp)?;
            }
            Verdict::Truncated if !via_tcp => {
                self.drop_link(&forward);
                let current = forward.current;
                self.attempt(forward, current, true)?;
            }
            Verdict::Truncated | Verdict::NextServer => {
                self.drop_link(&forward);
                let next = forward.current + 1;
                let tcp = matches!(forward.client, Client::Tcp { .. });
                self.attempt(forward, next, tcp)?;
            }
        }
        Ok(None)
    }

    fn drop_link(&self, forward: &Forward) {
        if let Some(link) = &forward.link {
            self.shared.poller.remove(link_fd(link));
        }
    }

    /// Moves on from forwards whose server is silent and closes idle TCP clients.
    fn expire(&mut self, now: Instant) -> io::Result<()> {
        while let Some(&(deadline, token)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            match self.sources.take(token) {
                Some(Source::Upstream(forward)) if forward.deadline <= now => {
                    self.sources.release(token);
                    self.drop_link(&forward);
                    let next = forward.current + 1;
                    let tcp = matches!(forward.client, Client::Tcp { .. });
                    self.attempt(forward, next, tcp)?;
                }
                Some(Source::Client(client)) if client.active + TCP_IDLE <= now => {
                    self.sources.release(token);
                    self.close_client(client);
                }
                Some(Source::Client(client)) => {
                    self.deadlines.push_back((client.active + TCP_IDLE, token));
                    self.sources.restore(token, Source::Client(client));
                }
                Some(other) => self.sources.restore(token, other),
                None => {}
            }
        }
        self.send_outbox()
    }
}

fn source_fd(source: &Source) -> RawFd {
    match source {
        Source::Udp { socket, .. } => socket.as_raw_fd(),
        Source::Listener { listener, .. } => listener.as_raw_fd(),
        Source::Client(client) => client.stream.as_raw_fd(),
        Source::Upstream(forward) => forward.link.as_ref().map_or(-1, link_fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_tokens_are_not_reused_for_new_values() {
        let mut slab = Slab::new();
        let first = slab.insert(1);
        assert!(slab.take(first).is_some());
        slab.release(first);
        let second = slab.insert(2);
        assert_ne!(first, second);
        assert!(slab.get_mut(first).is_none());
        assert_eq!(slab.get_mut(second), Some(&mut 2));
        assert_eq!(slab.len, 1);
    }
}
