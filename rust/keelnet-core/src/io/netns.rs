//! Network namespaces: run code with a thread's network namespace switched.
//!
//! A socket or TAP device belongs to the namespace its creating thread was in, and keeps
//! it for life. So descriptors are made on a short-lived thread that entered the target
//! namespace (`setns(2)` affects only the calling thread), and can then be used from any
//! thread of the process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where `ip netns` (and pyroute2) mount named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// The path of a namespace given by name (`kn-h1` → `/var/run/netns/kn-h1`) or by path
/// (anything containing a `/`, such as `/proc/1234/ns/net`).
pub fn resolve(spec: &str) -> io::Result<PathBuf> {
    if spec.is_empty() || spec == "." || spec == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{spec:?} is not a network namespace name"),
        ));
    }
    if spec.contains('/') {
        Ok(PathBuf::from(spec))
    } else {
        Ok(Path::new(NETNS_RUN_DIR).join(spec))
    }
}

/// Opens a namespace file (to pass its descriptor to `setns` or `IFLA_NET_NS_FD`).
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|error| {
        super::sys::context(error, format!("network namespace {}", path.display()))
    })
}

/// Moves the calling thread into `namespace` (only this thread changes).
pub fn enter(namespace: &File) -> io::Result<()> {
    // SAFETY: setns on a valid descriptor only changes this thread's namespace.
    let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `work` inside the namespace at `path` (on a scoped thread that enters it), or on
/// the calling thread when `path` is `None`. The calling thread's namespace never changes.
pub fn run_in<T, F>(path: Option<&Path>, work: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let Some(path) = path else {
        return work();
    };
    let namespace = open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&namespace)?;
                drop(namespace);
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread in network namespace panicked")))
    })
}

/// Spawns a named thread that runs `work` inside the namespace at `path` (or the
/// caller's when `None`). The thread's result is `Err` only if it could not enter the
/// namespace.
pub fn spawn_in<T, F>(
    path: Option<&Path>,
    name: &str,
    work: F,
) -> io::Result<std::thread::JoinHandle<io::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let namespace = path.map(open).transpose()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(namespace) = namespace {
                enter(&namespace)?;
            }
            Ok(work())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_under_the_run_dir_and_paths_stay() {
        assert_eq!(
            resolve("kn-h1").unwrap(),
            PathBuf::from("/var/run/netns/kn-h1")
        );
        assert_eq!(
            resolve("/proc/1/ns/net").unwrap(),
            PathBuf::from("/proc/1/ns/net")
        );
        assert!(resolve("").is_err());
        assert!(resolve("..").is_err());
    }

    #[test]
    fn run_in_none_runs_here() {
        let here = std::thread::current().id();
        let there = run_in(None, || Ok(std::thread::current().id())).unwrap();
        assert_eq!(here, there);
    }

    #[test]
    fn missing_namespace_is_an_error_with_the_path() {
        let error = run_in(Some(Path::new("/var/run/netns/kn-does-not-exist")), || {
            Ok(())
        })
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains("kn-does-not-exist"));
    }
}
