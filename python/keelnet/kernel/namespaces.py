"""Entering network namespaces: netlink sockets, sysctls and child processes inside one.

pyroute2's own ``IPRoute(netns=...)`` forks a helper per socket (~10 ms); connect latency
matters, so sockets are opened from a short-lived thread that has joined the namespace
(netns membership is per thread on Linux).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
    """Run `func` on a thread inside the namespace at `path` (None: the caller's)."""
    if path is None:
        return func()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            setns(path)
            result.append(func())
        except BaseException as exc:  # handed back to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="keelnet-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@contextmanager
def iproute(path: str | None) -> Iterator[IPRoute]:
    """An IPRoute bound to the namespace at `path` (None: the caller's), closed on exit."""
    if path is None:
        with IPRoute() as ipr:
            yield ipr
        return
    sock = call_in_netns(
        path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
    )
    fd = sock.detach()
    ipr = IPRoute(fileno=fd)
    try:
        yield ipr
    finally:
        ipr.close()
        with suppress(OSError):  # pyroute2 does not own a socket it was handed
            os.close(fd)


def write_sysctl(path: str | None, key: str, value: str) -> None:
    """Set a net.* sysctl of the namespace at `path` (/proc/sys/net is per namespace)."""
    target = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        target.write_text(value)

    call_in_netns(path, write)


def read_sysctl(path: str | None, key: str) -> str:
    target = Path("/proc/sys") / key.replace(".", "/")
    return call_in_netns(path, lambda: target.read_text().strip())


def preexec_setns(path: str | None) -> Callable[[], None] | None:
    """A `preexec_fn` that moves a child process into the namespace before exec."""
    if path is None:
        return None

    def enter() -> None:
        setns(path)

    return enter
