"""Shared pieces of the packet interop tests: two throwaway namespaces `kn-vxa-*` and
`kn-vxb-*` joined by a veth underlay (192.0.2.0/24 and 2001:db8::/64), entering a
namespace from the test thread, and ethtool settings without an ethtool binary.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pathlib
import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
ETHTOOL_STSO = 0x1F
UNDERLAY = {
    4: ("192.0.2.1", "192.0.2.2", 24),
    6: ("2001:db8::1", "2001:db8::2", 64),
}


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block in namespace `name` (this thread only), sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def mac_of(namespace: str, device: str) -> str:
    out = ip("-n", namespace, "-o", "link", "show", device)
    return out.split("link/ether ")[1].split()[0]


def ethtool_set(device: str, command: int, value: int) -> None:
    """An ETHTOOL_S* command with one u32 value on `device` (this machine has no ethtool)."""
    buffer = ctypes.create_string_buffer(struct.pack("II", command, value))
    request = struct.pack("16sP", device.encode(), ctypes.addressof(buffer))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCETHTOOL, request)


@dataclass
class Underlay:
    a: str
    b: str
    dev_a: str
    dev_b: str


@pytest.fixture(name="underlay")
def underlay_fixture() -> Iterator[Underlay]:
    """The two namespaces, removed afterwards whatever happens (import this into a test
    module to use `underlay`)."""
    tag = secrets.token_hex(3)
    lab = Underlay(a=f"kn-vxa-{tag}", b=f"kn-vxb-{tag}", dev_a="kn-ua", dev_b="kn-ub")
    made: list[str] = []
    try:
        for name in (lab.a, lab.b):
            ip("netns", "add", name)
            made.append(name)
        ip("-n", lab.a, "link", "add", lab.dev_a, "type", "veth", "peer", "name", lab.dev_b)
        ip("-n", lab.a, "link", "set", lab.dev_b, "netns", lab.b)
        for name, dev, index in ((lab.a, lab.dev_a, 0), (lab.b, lab.dev_b, 1)):
            for family in (4, 6):
                address, prefix = UNDERLAY[family][index], UNDERLAY[family][2]
                ip("-n", name, "addr", "add", f"{address}/{prefix}", "dev", dev, "nodad")
            ip("-n", name, "link", "set", dev, "up")
            ip("-n", name, "link", "set", "lo", "up")
            # veth hands frames over with checksums still partial; a capture would see
            # unfinished checksums. Make the kernel finish them in software.
            with netns(name):
                ethtool_set(dev, ETHTOOL_STXCSUM, 0)
        yield lab
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


SEEDS = pathlib.Path(__file__).resolve().parents[2] / "rust" / "fuzz" / "seeds"


def save_fuzz_seed(target: str, name: str, data: bytes) -> None:
    """With KEELNET_WRITE_FUZZ_SEEDS=1, keep a kernel-made frame as a fuzz seed."""
    if os.environ.get("KEELNET_WRITE_FUZZ_SEEDS") == "1":
        (SEEDS / target).mkdir(parents=True, exist_ok=True)
        (SEEDS / target / name).write_bytes(data)
