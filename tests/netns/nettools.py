"""Tiny ping and TCP tools run inside namespaces (this machine has no ping, nc or socat).

Each tool is a Python one-shot run with the test interpreter inside a namespace, so the
bytes that arrive are checked, not only exit codes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any, Self

from keelnet import sandbox
from keelnet.kernel.namespaces import netns_path

_PING = textwrap.dedent(
    """
    import socket, struct, sys, time
    dst = sys.argv[1]
    v6 = ":" in dst
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    s.settimeout(float(sys.argv[2]))
    ident = 0x6b6e
    def checksum(b):
        if len(b) % 2: b += b"\\0"
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF)
        return ~(t + (t >> 16)) & 0xFFFF
    kind = 128 if v6 else 8
    payload = b"keelnet-ping"
    hdr = struct.pack("!BBHHH", kind, 0, 0, ident, 1)
    pkt = struct.pack("!BBHHH", kind, 0, 0 if v6 else checksum(hdr + payload), ident, 1) + payload
    s.sendto(pkt, (dst, 0))
    deadline = time.time() + float(sys.argv[2])
    while time.time() < deadline:
        try:
            data, addr = s.recvfrom(2048)
        except (socket.timeout, TimeoutError):
            break
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        reply = icmp[0] == (129 if v6 else 0) and icmp[4:6] == struct.pack("!H", ident)
        if reply and payload in icmp:
            sys.exit(0)
    sys.exit(1)
    """
)

_SERVER = textwrap.dedent(
    """
    import socket, sys
    host, port, reply = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(16)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        data = c.recv(1024)
        c.sendall(reply + b" " + data + b" from " + peer[0].encode())
        c.close()
    """
)

_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.create_connection((host, port), timeout=float(sys.argv[4]))
    s.sendall(message)
    chunks = []
    while True:
        b = s.recv(1024)
        if not b: break
        chunks.append(b)
    sys.stdout.write(b"".join(chunks).decode())
    """
)


def _argv(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def ping(netns: str, address: str, timeout: float = 1.0) -> bool:
    """One ICMP echo from `netns` to `address`; True when the matching reply came back."""
    result = sandbox.exec_in(
        netns_path(netns), _argv(_PING, address, str(timeout)), capture_output=True, timeout=10
    )
    return result.returncode == 0


class TcpServer:
    """A TCP server in a namespace answering `<reply> <request> from <peer ip>`."""

    def __init__(self, netns: str, host: str, port: int, reply: str) -> None:
        self.process = sandbox.popen_in(
            netns_path(netns),
            _argv(_SERVER, host, str(port), reply),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"TCP server in {netns} did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WatcherScript:
    """A Python script run in a namespace while a `with` block runs. It prints "ready"
    once it listens, and a JSON result, kept in `result`, when stdin says "stop"."""

    def __init__(self, netns: str, script: str, *args: str) -> None:
        self.netns = netns
        self.argv = _argv(script, *args)
        self.result: Any = None

    def __enter__(self) -> Self:
        self.process = sandbox.popen_in(
            netns_path(self.netns),
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            self.process.kill()
            self.process.wait(timeout=5)
            raise RuntimeError(f"{type(self).__name__} in {self.netns} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            out, _ = self.process.communicate(input=b"stop", timeout=25)
            self.result = json.loads(out.decode() or "null")
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=5)


def tcp_request(netns: str | None, host: str, port: int, message: str, timeout: float = 2.0) -> str:
    """Connect from `netns` (None: this process's) and return the reply, '' on failure."""
    argv = _argv(_CLIENT, host, str(port), message, str(timeout))
    if netns is None:
        result = subprocess.run(argv, capture_output=True, timeout=10)
    else:
        result = sandbox.exec_in(netns_path(netns), argv, capture_output=True, timeout=10)
    return result.stdout.decode() if result.returncode == 0 else ""


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll `predicate` (bounded) until it holds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
