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
from collections.abc import Callable
from typing import Any, Self

from keelnet import sandbox
from keelnet.kernel.namespaces import netns_path

PING_SCRIPT = textwrap.dedent(
    """
    import socket, struct, sys, time
    dst, timeout, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    v6 = ":" in dst
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(0.2)
    def csum(b):
        if len(b) % 2: b += b"\\0"
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF)
        return ~(t + (t >> 16)) & 0xFFFF
    ident = 0x4b4e
    payload = b"keelnet-ping"
    got = 0
    rtts = []
    deadline = time.time() + timeout
    for seq in range(1, count + 1):
        kind = 128 if v6 else 8
        hdr = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", kind, 0, 0 if v6 else csum(hdr + payload), ident, seq) + payload
        while time.time() < deadline:
            sent = time.perf_counter()
            s.sendto(pkt, (dst, 0))
            answered = False
            until = time.time() + 0.3
            while time.time() < until:
                try:
                    data = s.recv(4096)
                except (socket.timeout, TimeoutError):
                    break
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
                mine = icmp[4:8] == struct.pack("!HH", ident, seq) and payload in icmp
                if icmp[0] == (129 if v6 else 0) and mine:
                    rtts.append(time.perf_counter() - sent)
                    answered = True
                    break
            if answered:
                got += 1
                break
    print(got, " ".join("%.1f" % (r * 1e6) for r in rtts))
    sys.exit(0 if got == count else 1)
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


def ping(netns: str, address: str, timeout: float = 1.0, count: int = 1) -> bool:
    """`count` ICMP echoes from `netns` to `address`, each retried until `timeout` runs
    out; True when every one was answered with our payload."""
    result = sandbox.exec_in(
        netns_path(netns),
        _argv(PING_SCRIPT, address, str(timeout), str(count)),
        capture_output=True,
        timeout=timeout + 10,
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


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
