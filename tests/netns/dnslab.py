"""DNS helpers for the namespace tests: an upstream dnsmasq in the lab's outside
namespace, and raw queries (built and read with scapy) sent from inside a sandbox."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from netlab import OUTSIDE_ADDRESS
from nettools import wait_until
from scapy.layers.dns import DNS, DNSQR, DNSRROPT

from keelnet.kernel.namespaces import call_in_netns, netns_path

RESOLVER = ("127.0.0.11", 53)
OUTSIDE_NAME, OUTSIDE_IP = "outside.example", "198.51.100.77"
#: A name with more addresses than fit in 512 bytes: dnsmasq sets TC over UDP.
BIG_NAME, BIG_COUNT = "big.example", 60


def big_addresses() -> list[str]:
    return [f"198.51.100.{i}" for i in range(100, 100 + BIG_COUNT)]


@dataclass
class Upstream:
    """A dnsmasq serving a hosts file on OUTSIDE_ADDRESS:53 (UDP and TCP)."""

    process: subprocess.Popen[bytes]
    log: Path

    def queries(self) -> list[str]:
        """dnsmasq's log lines for queries it received ("query[A] name from addr")."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "query[" in line]


@contextlib.contextmanager
def dnsmasq(netns: str, workdir: Path, listen: str = OUTSIDE_ADDRESS) -> Iterator[Upstream]:
    """dnsmasq on `listen`:53 inside the namespace `netns`, until the block ends."""
    hosts = workdir / "hosts"
    lines = [f"{OUTSIDE_IP} {OUTSIDE_NAME}"]
    lines += [f"{address} {BIG_NAME}" for address in big_addresses()]
    hosts.write_text("\n".join(lines) + "\n")
    log = workdir / "dnsmasq.log"
    argv = [
        "ip", "netns", "exec", netns, "dnsmasq",
        "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
        f"--listen-address={listen}",
        f"--addn-hosts={hosts}", "--log-queries", f"--log-facility={log}",
        "--pid-file=", "--user=root", "--cache-size=0",
        # Authoritative for example.: NXDOMAIN or no records, never REFUSED.
        "--local=/example/",
        # Answers over UDP stop at 512 bytes even when EDNS asks more, so a big answer
        # comes with TC and the resolver must ask again over TCP.
        "--edns-packet-max=512",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        up = wait_until(lambda: process.poll() is not None or _answers(netns, listen), 10)
        if process.poll() is not None or not up:
            raise RuntimeError(
                f"dnsmasq did not start: {process.stderr.read() if process.stderr else ''}"
            )
        yield Upstream(process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(netns: str, listen: str) -> bool:
    try:
        return ask(netns_path(netns), OUTSIDE_NAME, server=(listen, 53)) is not None
    except OSError:
        return False


def query_bytes(
    name: str, qtype: str = "A", *, ident: int = 0x4242, edns: int | None = None
) -> bytes:
    message = DNS(id=ident, rd=1, qd=[DNSQR(qname=name, qtype=qtype)])
    if edns is not None:
        message.ar = [DNSRROPT(rclass=edns, z=0)]
    return bytes(message)


def ask(
    netns: str,
    name: str,
    qtype: str = "A",
    *,
    tcp: bool = False,
    edns: int | None = None,
    server: tuple[str, int] = RESOLVER,
    timeout: float = 3.0,
) -> DNS | None:
    """One query from inside the namespace at `netns`; the parsed answer, or None when
    nothing came back in time."""
    payload = query_bytes(name, qtype, edns=edns)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    sock = call_in_netns(netns, lambda: socket.socket(socket.AF_INET, kind))
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(server)
            if tcp:
                sock.sendall(len(payload).to_bytes(2, "big") + payload)
                data = _read_frame(sock)
            else:
                sock.send(payload)
                data = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
    return DNS(data)


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = sock.recv(65535)
        if not chunk:
            raise ConnectionRefusedError("closed before a whole answer")
        data += chunk
    return data[2 : 2 + int.from_bytes(data[:2], "big")]


def addresses(answer: DNS | None) -> list[str]:
    """The A/AAAA addresses of an answer, in order."""
    if answer is None:
        return []
    return [str(rr.rdata) for rr in answer.an if rr.type in (1, 28)]
