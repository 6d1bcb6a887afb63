"""`keelnet demo` (networks part): build hosts in throwaway namespaces and check them.

Builds an "outside" test host and a keelnet host joined by a veth underlay in
198.51.100.0/24 (TEST-NET-2), puts sandboxes on bridge, macvlan, ipvlan, host and none networks,
checks reachability and isolation with real packets, and name resolution through keelnet's
DNS server (the sandboxes ping each other by name), prints a table and removes everything,
also when interrupted. Nothing touches the machine's own interfaces, and the demo host's
resolv.conf names no upstream server, so no DNS query leaves the demo's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from keelnet import sandbox as netns_sandbox
from keelnet.dns import NETNS_ETC
from keelnet.host import Host
from keelnet.kernel.namespaces import (
    NETNS_RUN_DIR,
    call_in_netns,
    create_named,
    iproute,
    netns_path,
    remove_named,
)

UPLINK = "kn-demo-up"
HOST_IP, OUTSIDE_IP = "198.51.100.1", "198.51.100.2"
IPVLAN_SUBNET = "203.0.113.0/24"  # TEST-NET-3: ipvlan l3 sandboxes, routed by the host


@dataclass(frozen=True)
class Check:
    what: str
    expected: bool
    got: bool

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def ping(netns: str, address: str, timeout: float = 1.0) -> bool:
    """One ICMP echo from inside `netns`; True when the matching reply arrives."""
    sock = call_in_netns(
        netns_path(netns),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    )
    with sock:
        ident, payload = os.getpid() & 0xFFFF, b"keelnet-demo"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        words = struct.unpack(f"!{len(header + payload) // 2}H", header + payload)
        total = sum(words)
        total = (total >> 16) + (total & 0xFFFF)
        checksum = ~(total + (total >> 16)) & 0xFFFF
        try:
            sock.sendto(struct.pack("!BBHHH", 8, 0, checksum, ident, 1) + payload, (address, 0))
        except OSError:  # no route: as unreachable as it gets
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0x0F) * 4 :]
            if icmp[0] == 0 and icmp[4:6] == struct.pack("!H", ident) and payload in icmp:
                return True
        return False


def resolve(sandbox_path: str, name: str) -> str | None:
    """The IPv4 address of `name` as the sandbox's own C library finds it (through the
    resolv.conf keelnet wrote for it, as `keelnet sandbox exec` mounts it)."""
    result = netns_sandbox.exec_in(
        sandbox_path, ["getent", "ahostsv4", name], capture_output=True, timeout=10
    )
    words = result.stdout.decode().split()
    return words[0] if result.returncode == 0 and words else None


def ping_by_name(sandbox_path: str, name: str) -> bool:
    address = resolve(sandbox_path, name)
    return address is not None and ping(sandbox_path, address)


def tcp_roundtrip(
    server_ns: str, listen: tuple[str, int], client_ns: str, target: tuple[str, int]
) -> bool:
    """Listen in one namespace, connect from another, check the bytes that come back."""
    server = call_in_netns(netns_path(server_ns), lambda: socket.create_server(listen))
    with server:
        server.settimeout(2)
        client = call_in_netns(netns_path(client_ns), socket.socket)
        with client:
            client.settimeout(2)
            try:
                client.connect(target)
                peer, _ = server.accept()
                with peer:
                    client.sendall(b"hello")
                    peer.sendall(peer.recv(16)[::-1])
                return client.recv(16) == b"olleh"
            except OSError:
                return False


def claim_prefix(stem: str, first: str) -> str:
    """A fresh `<stem>-<random>` namespace prefix, held by creating its first namespace
    `<prefix>-<first>` exclusively: a demo running beside this one (another terminal, a
    test run) never gets the same prefix, so neither builds in nor removes the other's
    namespaces. The caller removes the namespace."""
    while True:
        prefix = f"{stem}-{secrets.token_hex(3)}"
        with contextlib.suppress(FileExistsError):
            create_named(netns_path(f"{prefix}-{first}"))
            return prefix


@contextlib.contextmanager
def _lab() -> Iterator[tuple[str, str, str]]:
    """The demo's prefix, its host namespace and the outside one; removed at the end."""
    prefix = claim_prefix("kn-demo", "host")
    host_ns, outside_ns = f"{prefix}-host", f"{prefix}-out"
    try:
        create_named(netns_path(outside_ns))
        for name in (host_ns, outside_ns):
            with iproute(netns_path(name)) as ipr:
                ipr.link("set", index=1, state="up")
        with iproute(netns_path(host_ns)) as ipr:
            fd = os.open(netns_path(outside_ns), os.O_RDONLY)
            try:
                ipr.link(
                    "add", ifname=UPLINK, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd}
                )
            finally:
                os.close(fd)
            index = ipr.link_lookup(ifname=UPLINK)[0]
            ipr.addr("add", index=index, address=HOST_IP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        with iproute(netns_path(outside_ns)) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=OUTSIDE_IP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        # The host's resolv.conf (what keelnet's DNS forwards to): no server at all.
        (NETNS_ETC / host_ns).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / host_ns / "resolv.conf").write_text("# keelnet demo: no upstream\n")
        yield prefix, host_ns, outside_ns
    finally:
        for name in sorted(os.listdir(NETNS_RUN_DIR), reverse=True):
            if name.startswith(f"{prefix}-"):
                with contextlib.suppress(OSError):
                    remove_named(netns_path(name))
        if NETNS_ETC.is_dir():
            for entry in NETNS_ETC.iterdir():
                if entry.name.startswith(f"{prefix}-"):
                    shutil.rmtree(entry, ignore_errors=True)


def _build_and_check(host: Host, prefix: str, outside: str) -> tuple[list[Check], list[str]]:
    def sb(name: str) -> str:
        return f"{prefix}-{name}"

    def ns(name: str) -> str:  # the sandbox's namespace path (adopted ones have no name)
        return host.sandbox(sb(name)).path

    host.create_network("front", subnet="10.201.1.0/24")
    host.create_network("back", subnet="10.201.2.0/24")
    host.create_network(
        "lan",
        driver="macvlan",
        subnet="198.51.100.0/24",
        gateway=HOST_IP,
        ip_range="198.51.100.128/25",
        options={"parent": UPLINK},
    )
    host.create_network("host", driver="host")
    host.create_network("none", driver="none")
    for name in ("web", "api", "db", "lan1", "lan2", "lonely"):
        host.create_sandbox(sb(name))
    host.adopt_sandbox(sb("on-host"), netns_path(str(host.netns)))
    # Aliases give the sandboxes short names on their networks, as `docker run --name`.
    web = host.connect("front", sb("web"), aliases=["web"])
    api = host.connect("front", sb("api"), aliases=["api"])
    db = host.connect("back", sb("db"), aliases=["db"])
    lan2 = host.connect("lan", sb("lan2"), aliases=["lan2"])
    host.connect("lan", sb("lan1"), aliases=["lan1"])
    host.connect("none", sb("lonely"))
    host.connect("host", sb("on-host"))
    host.publish("front", sb("web"), 8080, 80)
    # ipvlan l3 on the same uplink (kernel ipvlan where there is one, else the userspace
    # emulation): its own subnet, which the outside host routes via the keelnet host.
    host.create_network(
        "iv", driver="ipvlan", subnet=IPVLAN_SUBNET, options={"parent": UPLINK, "ipvlan_mode": "l3"}
    )
    host.create_sandbox(sb("iv1"))
    iv1 = host.connect("iv", sb("iv1"))
    with iproute(netns_path(outside)) as ipr:
        network_address, length = IPVLAN_SUBNET.split("/")
        ipr.route("add", dst=network_address, dst_len=int(length), gateway=HOST_IP)
    notes = [f"{n.name}: {n.driver}, data plane {n.dataplane}" for n in host.networks()]

    checks: list[tuple[str, bool, Callable[[], bool]]] = [
        ("dns: web pings api by name", True, lambda: ping_by_name(ns("web"), "api")),
        ("dns: api pings web by name", True, lambda: ping_by_name(ns("api"), "web")),
        ("dns: web -> db by name, other network", False, lambda: ping_by_name(ns("web"), "db")),
        ("dns: lan1 pings lan2 by name (macvlan)", True, lambda: ping_by_name(ns("lan1"), "lan2")),
        ("bridge: web -> api, same network", True, lambda: ping(ns("web"), str(api.ip))),
        ("bridge: web -> db, other network (isolated)", False, lambda: ping(ns("web"), str(db.ip))),
        ("bridge: web -> outside host (masquerade)", True, lambda: ping(ns("web"), OUTSIDE_IP)),
        (
            "bridge: TCP web -> api",
            True,
            lambda: tcp_roundtrip(ns("api"), ("0.0.0.0", 9000), ns("web"), (str(api.ip), 9000)),
        ),
        (
            "published 8080 -> web:80 from outside",
            True,
            lambda: tcp_roundtrip(ns("web"), ("0.0.0.0", 80), outside, (HOST_IP, 8080)),
        ),
        ("macvlan: lan1 -> lan2", True, lambda: ping(ns("lan1"), str(lan2.ip))),
        ("macvlan: lan1 -> outside host", True, lambda: ping(ns("lan1"), OUTSIDE_IP)),
        ("host network: sandbox -> outside host", True, lambda: ping(ns("on-host"), OUTSIDE_IP)),
        ("none: lonely -> outside host", False, lambda: ping(ns("lonely"), OUTSIDE_IP)),
        ("ipvlan l3: outside host -> iv1", True, lambda: ping(outside, str(iv1.ip))),
        (
            "ipvlan l3: TCP iv1 -> outside host",
            True,
            lambda: tcp_roundtrip(outside, ("0.0.0.0", 9001), ns("iv1"), (OUTSIDE_IP, 9001)),
        ),
    ]
    notes.append(f"web has {web.ip}, api {api.ip}, db {db.ip}, lan2 {lan2.ip}, iv1 {iv1.ip}")
    notes.append(f"built in namespaces {prefix}-*, all removed at the end")
    return [Check(what, expected, probe()) for what, expected, probe in checks], notes


def run_network_demo() -> int:
    """Build, check, print, tear down. Returns 0 when every check came out as expected."""
    if os.geteuid() != 0:
        print("keelnet demo needs root (it creates network namespaces)")
        return 1
    state_dir = tempfile.mkdtemp(prefix="keelnet-demo-")
    try:
        with _lab() as (prefix, host_ns, outside_ns), Host(host_ns, state_dir) as host:
            try:
                results, notes = _build_and_check(host, prefix, outside_ns)
            finally:
                for sandbox in host.sandboxes():
                    host.remove_sandbox(sandbox.name)
                for network in host.networks():
                    host.remove_network(network.name)
    except KeyboardInterrupt:
        print("interrupted: everything removed")
        return 130
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return print_checks(results, notes)


def print_checks(results: list[Check], notes: list[str]) -> int:
    """The checks as a table, then the notes; 0 when every check came out as expected."""
    width = max(len(c.what) for c in results)
    print(f"{'check':<{width}}  expected  got    ")
    for check in results:
        expected = "reach" if check.expected else "blocked"
        got = "reach" if check.got else "blocked"
        print(f"{check.what:<{width}}  {expected:<8}  {got:<7}{'' if check.ok else '  <-- WRONG'}")
    for note in notes:
        print(f"  {note}")
    return 0 if all(c.ok for c in results) else 1
