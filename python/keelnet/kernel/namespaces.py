"""Entering network namespaces: netlink sockets, sysctls and child processes inside one.

pyroute2's own ``IPRoute(netns=...)`` forks a helper per socket (~10 ms); connect latency
matters, so the calling thread briefly joins the namespace to open sockets there (netns
membership is per thread on Linux, and a socket stays in the namespace it was made in).
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

NETNS_RUN_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)

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
    """An IPRoute bound to the namespace at `path` (None: the caller's), closed on exit.

    pyroute2 is not safe to use from several threads at once; keelnet's background
    threads (the cluster watch) program the kernel through `rtnl.Rtnl` instead.
    """
    if path is None:
        with IPRoute() as ipr:
            yield ipr
        return
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
        # Not closed again here: by now its number may be another thread's file.
        ipr.close()


def write_sysctl(path: str | None, key: str, value: str) -> None:
    """Set a net.* sysctl of the namespace at `path` (/proc/sys/net is per namespace)."""
    target = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        target.write_text(value)

    call_in_netns(path, write)


def read_sysctl(path: str | None, key: str) -> str:
    target = Path("/proc/sys") / key.replace(".", "/")
    return call_in_netns(path, lambda: target.read_text().strip())
