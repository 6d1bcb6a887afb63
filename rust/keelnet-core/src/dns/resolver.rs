//! The resolver's handle: one thread ([`super::worker`]) serving every attached
//! sandbox's `127.0.0.11:53` (UDP and TCP) through one epoll set, answering local names
//! from the [`NameTable`] and forwarding the rest to upstream servers without blocking.
//!
//! Sockets in a sandbox are opened by a short-lived thread that entered its namespace
//! ([`netns::run_in`]); they keep that namespace for life, so one thread in the host
//! namespace serves them all. Upstream rules follow Docker's (moby
//! `resolvconf.TransformForIntNS`, `Resolver.forwardExtDNS`): servers from the host's
//! `resolv.conf` are reached from the host namespace (so `127.0.0.53` works) and only
//! for sandboxes with external access; servers given explicitly are reached from the
//! sandbox's namespace, by this thread entering it for the `socket(2)` call and coming
//! back. Each forwarded query gets its own socket (a fresh source port) and a random id;
//! a truncated UDP answer is asked again over TCP; SERVFAIL, REFUSED or silence moves
//! on to the next server; when none answers the client gets SERVFAIL.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::table::NameTable;
use super::worker::Worker;
use crate::io::{context, netns, poller::Poller};

/// Where the resolver listens inside each sandbox (Docker's address).
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);
/// How long one upstream server gets to answer (Docker waits 4 s; a stub resolver
/// retries after 5 s, so two servers fit in one of its tries).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The poller token of the resolver's wake-up eventfd.
pub(super) const WAKE: u64 = u64::MAX;

/// An upstream DNS server and the namespace it is reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub address: SocketAddr,
    /// From the host's namespace (a server of the host's `resolv.conf`); otherwise
    /// from the asking sandbox's.
    pub from_host: bool,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Answered from the name table (including NXDOMAIN).
    pub answered: AtomicU64,
    /// Sent to an upstream server.
    pub forwarded: AtomicU64,
    /// Garbage, responses and queries the resolver does not take: no answer.
    pub ignored: AtomicU64,
    /// Forwarded queries no upstream answered (the client got SERVFAIL or REFUSED).
    pub failed: AtomicU64,
}

pub(super) enum Command {
    Listen {
        sandbox: Arc<str>,
        netns: File,
        udp: UdpSocket,
        tcp: TcpListener,
    },
    Close(Arc<str>),
}

pub(super) struct Shared {
    pub(super) table: RwLock<NameTable>,
    pub(super) upstreams: RwLock<Vec<Upstream>>,
    /// Sandboxes that may use `from_host` upstreams (Docker: those with external access).
    pub(super) host_forwarding: RwLock<HashMap<Arc<str>, bool>>,
    pub(super) inbox: Mutex<Vec<Command>>,
    pub(super) poller: Poller,
    pub(super) stop: AtomicBool,
    pub(super) stats: Stats,
    pub(super) timeout: Duration,
}

/// The embedded DNS resolver of one host (see the module documentation).
pub struct Resolver {
    shared: Arc<Shared>,
    /// Sandboxes with sockets open (owned by the worker).
    listening: Mutex<HashMap<Arc<str>, PathBuf>>,
    worker: Option<JoinHandle<io::Result<io::Result<()>>>>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resolver {
    /// Starts the resolver thread in the host namespace `host_netns` (`None`: the
    /// caller's), where `from_host` upstreams are reached.
    pub fn start(host_netns: Option<&Path>, timeout: Duration) -> io::Result<Resolver> {
        let shared = Arc::new(Shared {
            table: RwLock::new(NameTable::new()),
            upstreams: RwLock::new(Vec::new()),
            host_forwarding: RwLock::new(HashMap::new()),
            inbox: Mutex::new(Vec::new()),
            poller: Poller::new(WAKE)?,
            stop: AtomicBool::new(false),
            stats: Stats::default(),
            timeout,
        });
        let worker_shared = shared.clone();
        let worker = netns::spawn_in(host_netns, "keelnet-dns", move || {
            Worker::new(worker_shared)?.run()
        })?;
        Ok(Resolver {
            shared,
            listening: Mutex::new(HashMap::new()),
            worker: Some(worker),
        })
    }

    /// The name table, for changes; queries see them as soon as the guard drops.
    pub fn names(&self) -> RwLockWriteGuard<'_, NameTable> {
        self.shared
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the upstream servers, in the order they are tried.
    pub fn set_upstreams(&self, upstreams: Vec<Upstream>) {
        *self
            .shared
            .upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner) = upstreams;
    }

    /// Serves `sandbox` (its namespace at `netns_path`) with the names of `networks`,
    /// in that order. The first call opens `127.0.0.11:53` there; later calls only
    /// change what it sees.
    pub fn attach(
        &self,
        sandbox: &str,
        netns_path: &Path,
        networks: &[&str],
        host_forwarding: bool,
    ) -> io::Result<()> {
        let mut listening = lock(&self.listening);
        let previous = listening.get(sandbox);
        if previous.is_some_and(|path| path != netns_path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("sandbox {sandbox} is already served in another namespace"),
            ));
        }
        self.names().set_sandbox(sandbox, networks)?;
        let key: Arc<str> = Arc::from(sandbox);
        self.shared
            .host_forwarding
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), host_forwarding);
        if previous.is_some() {
            return Ok(());
        }
        let opened = open_listeners(netns_path);
        let (netns, udp, tcp) = match opened {
            Ok(sockets) => sockets,
            Err(error) => {
                self.forget(sandbox);
                return Err(error);
            }
        };
        listening.insert(key.clone(), netns_path.to_path_buf());
        self.send(Command::Listen {
            sandbox: key,
            netns,
            udp,
            tcp,
        });
        Ok(())
    }

    /// Stops serving `sandbox`: its names view goes at once, its sockets close soon
    /// after. A sandbox not served is fine.
    pub fn detach(&self, sandbox: &str) {
        let mut listening = lock(&self.listening);
        self.forget(sandbox);
        if let Some((key, _)) = listening.remove_entry(sandbox) {
            self.send(Command::Close(key));
        }
    }

    fn forget(&self, sandbox: &str) {
        self.names().remove_sandbox(sandbox);
        self.shared
            .host_forwarding
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sandbox);
    }

    /// Sandboxes served now.
    pub fn sandboxes(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.listening)
            .keys()
            .map(|k| k.to_string())
            .collect();
        names.sort();
        names
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn is_running(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    fn send(&self, command: Command) {
        lock(&self.shared.inbox).push(command);
        self.shared.poller.wake();
    }

    /// Stops the thread and closes every socket; returns the thread's error, if any.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::Release);
        self.shared.poller.wake();
        lock(&self.listening).clear();
        match worker.join() {
            Ok(result) => result.and_then(|inner| inner),
            Err(_) => Err(io::Error::other("DNS resolver thread panicked")),
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Opens `127.0.0.11:53` over UDP and TCP inside the namespace at `path`.
fn open_listeners(path: &Path) -> io::Result<(File, UdpSocket, TcpListener)> {
    let netns = netns::open(path)?;
    let (udp, tcp) = netns::run_in(Some(path), || {
        // The errno stays (EADDRINUSE tells another server holds the address).
        let context = |error: io::Error, what: &str| {
            context(error, format!("{what} {LISTEN} in {}", path.display()))
        };
        let udp = UdpSocket::bind(LISTEN).map_err(|e| context(e, "binding UDP"))?;
        let tcp = TcpListener::bind(LISTEN).map_err(|e| context(e, "listening on TCP"))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })?;
    Ok((netns, udp, tcp))
}
