"""Test hosts for the userspace data plane: namespaces joined by an underlay bridge.

A `DpLab` makes throwaway namespaces named `kn-dp<random>-…`: an underlay namespace with
a bridge, "hosts" (each with a veth `ul0` on that bridge, 192.0.2.N/24 and
2001:db8::N/64), and sandboxes. Everything is removed by prefix on exit, also on
failure. Tools run inside namespaces with `ip netns exec` and check the bytes that
arrive, not only exit codes. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nettools
from netlab import wait_for_link_local

from keelnet.kernel.namespaces import bridges_skip_iptables, netns_path

NETNS_DIR = Path("/var/run/netns")
UNDERLAY_V4 = "192.0.2.{}"
UNDERLAY_V6 = "2001:db8::{}"


def sh(*argv: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (inside `netns` when given) and return its stdout."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {result.stderr.strip()}")
    return result.stdout


def ping(netns: str, address: str, timeout: float = 3.0, count: int = 1) -> bool:
    """`nettools.ping` with more time by default: the first echo across an overlay waits
    for ARP through the switch."""
    return nettools.ping(netns, address, timeout, count)


_ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(30)
        try:
            while True:
                b = c.recv(1 << 16)
                if not b: break
                c.sendall(b)
        except OSError:
            pass
        c.close()
    """
)

_ECHO_CLIENT = textwrap.dedent(
    """
    import hashlib, os, socket, sys, threading
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = os.urandom(size)
    s = socket.create_connection((host, port), timeout=float(sys.argv[4]))
    def send():
        s.sendall(data); s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send); t.start()
    got = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b: break
        got += b
    t.join()
    print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), len(got))
    """
)


class EchoServer:
    """A TCP echo server in a namespace."""

    def __init__(self, netns: str, host: str, port: int = 5001) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _ECHO_SERVER, host, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            self.stop()
            raise RuntimeError(f"echo server in {netns} did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def echo_transfer(netns: str, host: str, size: int, port: int = 5001, timeout: float = 20) -> bool:
    """Send `size` random bytes to the echo server at `host` and check that exactly the
    same bytes come back (both directions byte-exact)."""
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            _ECHO_CLIENT,
            host,
            str(port),
            str(size),
            str(timeout),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    if result.returncode != 0:
        return False
    sent, received, length = result.stdout.split()
    return sent == received and int(length) == size


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DpLab:
    """Namespaces of one test; `close()` removes every namespace with the prefix."""

    def __init__(self) -> None:
        self.prefix = f"kn-dp{secrets.token_hex(3)}"
        self.underlay = f"{self.prefix}-ul"
        self.hosts: list[str] = []
        self._create(self.underlay)
        sh("ip", "link", "add", "br0", "type", "bridge", netns=self.underlay)
        sh("ip", "link", "set", "br0", "up", netns=self.underlay)

    def _create(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", netns=name)
        sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", netns=name)
        # The kernel references' bridges (and the underlay's) skip iptables, as keelnet's
        # own do: where br_netfilter is loaded (Docker loads it) every bridged frame
        # would otherwise pay its hooks, a cost keelnet's VTEP and TAPs never pay.
        bridges_skip_iptables(netns_path(name))

    def host(self, number: int) -> str:
        """Host `number`: a namespace with `ul0` = 192.0.2.N/24, 2001:db8::N/64."""
        name = f"{self.prefix}-h{number}"
        self._create(name)
        peer = f"ul-h{number}"
        sh(
            "ip",
            "link",
            "add",
            "ul0",
            "netns",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            netns=self.underlay,
        )
        sh("ip", "link", "set", peer, "master", "br0", "up", netns=self.underlay)
        sh("ip", "addr", "add", f"{UNDERLAY_V4.format(number)}/24", "dev", "ul0", netns=name)
        sh(
            "ip",
            "addr",
            "add",
            f"{UNDERLAY_V6.format(number)}/64",
            "dev",
            "ul0",
            "nodad",
            netns=name,
        )
        sh("ip", "link", "set", "ul0", "up", netns=name)
        # Its IPv6 link-local address and routes come late: a test's before/after
        # comparison must not see them arrive.
        wait_for_link_local(name, "ul0")
        self.hosts.append(name)
        return name

    def sandbox(self, suffix: str, *, ipv6: bool = False) -> str:
        """A sandbox namespace; IPv6 off unless asked (no router solicitations or MLD
        reports that would refresh MACs or count as floods behind a test's back)."""
        name = f"{self.prefix}-{suffix}"
        self._create(name)
        if not ipv6:
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", netns=name)
            sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", netns=name)
        return name

    def close(self) -> None:
        for name in sorted(os.listdir(NETNS_DIR), reverse=True):
            if name.startswith(self.prefix):
                with contextlib.suppress(Exception):
                    sh("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def dp_lab() -> Iterator[DpLab]:
    lab = DpLab()
    try:
        yield lab
    finally:
        lab.close()


def address(netns: str, ifname: str, cidr: str) -> None:
    """Put `cidr` on `ifname` in `netns` (no DAD for IPv6) and bring it up."""
    extra = ["nodad"] if ":" in cidr else []
    sh("ip", "addr", "add", cidr, "dev", ifname, *extra, netns=netns)
    sh("ip", "link", "set", ifname, "up", netns=netns)


def mac_of(netns: str, ifname: str) -> str:
    return sh("cat", f"/sys/class/net/{ifname}/address", netns=netns).strip()


def neighbour_mac(netns: str, ip: str) -> str | None:
    """The MAC `netns` resolved `ip` to (ARP/ND), if any."""
    words = sh("ip", "neigh", "show", ip, netns=netns).split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def send_udp(netns: str, source: str, destination: str, port: int, payloads: list[bytes]) -> None:
    """Send raw UDP payloads from `source` (bound) to `destination`:`port` in `netns`."""
    script = (
        "import socket, sys\n"
        "src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "fam = socket.AF_INET6 if ':' in dst else socket.AF_INET\n"
        "s = socket.socket(fam, socket.SOCK_DGRAM)\n"
        "s.bind((src, 0))\n"
        "for hexed in sys.argv[4:]:\n"
        "    s.sendto(bytes.fromhex(hexed), (dst, port))\n"
    )
    argv = [sys.executable, "-c", script, source, destination, str(port)]
    sh(*argv, *(payload.hex() for payload in payloads), netns=netns)


def kernel_vxlan_host(
    host: str,
    sandbox: str,
    *,
    vni: int,
    local: str,
    remotes: list[str],
    overlay_cidr: str,
    mtu: int = 1450,
) -> None:
    """Docker-overlay style on `host`: bridge `br<vni>` + vxlan `vx<vni>` (port 4789,
    flooding to `remotes`) + a veth into `sandbox` as eth0 with `overlay_cidr`."""
    vx, br = f"vx{vni}", f"br{vni}"
    sh(
        "ip",
        "link",
        "add",
        vx,
        "type",
        "vxlan",
        "id",
        str(vni),
        "local",
        local,
        "dstport",
        "4789",
        "dev",
        "ul0",
        netns=host,
    )
    for remote in remotes:
        sh("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", remote, netns=host)
    # No multicast snooping: with it the bridge joins the snoopers' group 224.0.0.106 and
    # sends IGMP reports for it into the tunnel, up to a second after it comes up, which
    # the switch counts as floods or drops behind the tests' backs.
    sh("ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0", netns=host)
    # No IPv6 on the overlay's host-side links: their router solicitations and MLD
    # reports would be flooded into the tunnel behind the tests' backs.
    for link in (vx, br):
        sh("sysctl", "-qw", f"net.ipv6.conf.{link}.disable_ipv6=1", netns=host)
    sh("ip", "link", "set", vx, "master", br, "mtu", str(mtu), "up", netns=host)
    sh("ip", "link", "set", br, "up", netns=host)
    sh(
        "ip",
        "link",
        "add",
        "vs0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        sandbox,
        netns=host,
    )
    sh("sysctl", "-qw", "net.ipv6.conf.vs0.disable_ipv6=1", netns=host)
    sh("ip", "link", "set", "vs0", "master", br, "mtu", str(mtu), "up", netns=host)
    sh("ip", "link", "set", "eth0", "mtu", str(mtu), netns=sandbox)
    address(sandbox, "eth0", overlay_cidr)
