"""Entering network namespaces: netlink sockets, sysctls and child processes inside one.

pyroute2's own ``IPRoute(netns=...)`` forks a helper per socket (~10 ms); connect latency
matters, so the calling thread briefly joins the namespace to open sockets there (netns
membership is per thread on Linux, and a socket stays in the namespace it was made in).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pyroute2 costs ~0.1 s to import: only where a socket is opened
    from pyroute2 import IPRoute

NETNS_RUN_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_NS_GET_NSTYPE = 0xB703  # linux/nsfs.h _IO(0xb7, 0x3)
_MS_BIND, _MS_REC, _MS_SHARED = 0x1000, 0x4000, 1 << 20
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

T = TypeVar("T")


def netns_path(name_or_path: str) -> str:
    """A named netns (`ip netns` style) or an explicit path such as /proc/PID/ns/net."""
    return name_or_path if "/" in name_or_path else str(NETNS_RUN_DIR / name_or_path)


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def is_netns(path: str) -> bool:
    """Whether `path` is a network namespace (not a mere file: a named namespace whose
    creation or removal was cut short leaves an empty file behind)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def create_named(path: str) -> None:
    """Create a network namespace and bind it at `path` (`ip netns add`), in this thread
    and this process: no helper process outlives a caller killed meanwhile. A kill
    midway leaves at most an empty file at `path`, which `remove_named` removes."""
    run_dir = os.path.dirname(path)
    os.makedirs(run_dir, exist_ok=True)
    _share_mounts(run_dir)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            raise _os_error("unshare(CLONE_NEWNET)")
        try:
            if _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None):
                raise _os_error(f"binding the new namespace at {path}")
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # cannot continue in the wrong netns
                raise SystemExit("keelnet: cannot return to own namespace")
    except BaseException:
        remove_named(path)
        raise
    finally:
        os.close(home)


def remove_named(path: str) -> None:
    """Unbind and remove a named namespace (or the empty file of a cut-short one)."""
    _libc.umount2(path.encode(), _MNT_DETACH)
    with suppress(FileNotFoundError):
        os.unlink(path)


def _share_mounts(run_dir: str) -> None:
    """Make `run_dir` a shared mount, so namespaces bound there are seen by every mount
    namespace (what `ip netns` does)."""
    encoded = run_dir.encode()
    if _libc.mount(b"", encoded, b"none", _MS_SHARED | _MS_REC, None) == 0:
        return
    if _libc.mount(encoded, encoded, b"none", _MS_BIND | _MS_REC, None) != 0:
        raise _os_error(f"bind-mounting {run_dir}")
    if _libc.mount(b"", encoded, b"none", _MS_SHARED | _MS_REC, None) != 0:
        raise _os_error(f"sharing {run_dir}")


def _os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def call_in_netns(path: str | None, func: Callable[[], T]) -> T:
    """Run `func` with the calling thread inside the namespace at `path` (None: as is).

    The thread switches in and straight back (netns membership is per thread, so other
    threads never notice); sockets and child processes made meanwhile belong to `path`.
    Switching costs microseconds where a helper thread costs milliseconds of GIL handoff.
    """
    if path is None:
        return func()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(path)
        try:
            return func()
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # cannot continue in the wrong netns
                err = ctypes.get_errno()
                raise SystemExit(f"keelnet: cannot return to own namespace: {os.strerror(err)}")
    finally:
        os.close(home)


@contextmanager
def iproute(path: str | None) -> Iterator[IPRoute]:
    """An IPRoute bound to the namespace at `path` (None: the caller's), closed on exit."""
    from pyroute2 import IPRoute

    if path is None:
        with IPRoute() as ipr:
            yield ipr
        return
    import socket  # here: reading a store's claim (every CLI command) opens no socket

    sock = call_in_netns(
        path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
    )
    fd = sock.detach()
    try:
        ipr = IPRoute(fileno=fd)  # takes the descriptor over (and closes it when done)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield ipr
    finally:
        # Not closed again here: by now its number may be another thread's file (the
        # cluster watch's thread opens sockets too).
        ipr.close()


def _sysctl_file(key: str) -> Path:
    """`net.ipv4.ip_forward`, or `net/ipv4/conf/br.0/route_localnet` where a component
    (an interface name) may hold dots."""
    return Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))


def write_sysctl(path: str | None, key: str, value: str) -> None:
    """Set a net.* sysctl of the namespace at `path` (/proc/sys/net is per namespace)."""
    target = _sysctl_file(key)

    def write() -> None:
        target.write_text(value)

    call_in_netns(path, write)


def bridges_skip_iptables(path: str | None) -> None:
    """Bridged frames in the namespace at `path` skip iptables. Where br_netfilter is
    loaded (Docker hosts that filter bridges) they pass its hooks by default, ~5 % of
    the CPU of a TCP stream through an overlay bridge (BENCHMARKS.md, issue 12); where
    it is not, there is nothing to turn off."""
    for table in ("iptables", "ip6tables", "arptables"):
        with suppress(FileNotFoundError):
            write_sysctl(path, f"net/bridge/bridge-nf-call-{table}", "0")


def read_sysctl(path: str | None, key: str) -> str:
    target = _sysctl_file(key)
    return call_in_netns(path, lambda: target.read_text().strip())
