"""The test lab: namespace names, the underlay addresses, state snapshots."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from keelnet.kernel import links, nftables
from keelnet.kernel.namespaces import (
    NETNS_RUN_DIR,
    iproute,
    netns_path,
    read_sysctl,
    write_sysctl,
)

HOST_UPLINK = "kn-up0"
HOST_ADDRESS = "192.0.2.1"
OUTSIDE_ADDRESS = "192.0.2.2"
NETNS_ETC = Path("/etc/netns")
HOST_ADDRESS6 = "2001:db8:1::1"  # documentation prefix, never routed
OUTSIDE_ADDRESS6 = "2001:db8:1::2"
DOCKER_RULES = [
    "-P FORWARD DROP",
    "-N DOCKER-USER",
    "-N DOCKER-FORWARD",
    "-A DOCKER-USER -j RETURN",
    "-A FORWARD -j DOCKER-USER",
    "-A FORWARD -j DOCKER-FORWARD",
    "-A DOCKER-FORWARD -o docker0 -j DROP",
]


@dataclass
class Lab:
    """The namespaces of one test: `host` runs keelnet, `outside` stands for the world."""

    prefix: str
    host: str
    outside: str
    state_dir: Path

    def name(self, suffix: str) -> str:
        """A sandbox name that the lab's cleanup removes whatever happens."""
        return f"{self.prefix}-{suffix}"


def run_in(netns: str, *argv: str, check: bool = True) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{argv}: {result.stderr}")
    return result.stdout


def create_ns(name: str) -> None:
    pyroute2_netns.create(name)
    with iproute(netns_path(name)) as ipr:
        ipr.link("set", index=1, state="up")


def build(lab: Lab) -> None:
    """The lab's namespaces: the host and the outside joined by a veth underlay, the host
    with Docker's iptables (FORWARD policy DROP, DOCKER-USER) and a resolv.conf naming
    the outside. `remove_prefix` undoes it."""
    create_ns(lab.host)
    create_ns(lab.outside)
    with iproute(netns_path(lab.host)) as ipr:
        fd = os.open(netns_path(lab.outside), os.O_RDONLY)
        try:
            ipr.link(
                "add", ifname=HOST_UPLINK, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd}
            )
        finally:
            os.close(fd)
        index = ipr.link_lookup(ifname=HOST_UPLINK)[0]
        # No DAD: its end would add routes a second later, in the middle of a test.
        write_sysctl(netns_path(lab.host), f"net/ipv6/conf/{HOST_UPLINK}/accept_dad", "0")
        ipr.addr("add", index=index, address=HOST_ADDRESS, prefixlen=24)
        links.add_address(ipr, index, HOST_ADDRESS6, 64)
        ipr.link("set", index=index, state="up")
    with iproute(netns_path(lab.outside)) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=OUTSIDE_ADDRESS, prefixlen=24)
        links.add_address(ipr, index, OUTSIDE_ADDRESS6, 64)
        ipr.link("set", index=index, state="up")
    wait_for_link_local(lab.host, HOST_UPLINK)
    for tool in ("iptables", "ip6tables"):  # Docker drops IPv6 forwarding too
        for rule in DOCKER_RULES:
            run_in(lab.host, tool, "-w", *rule.split())
    # The host's resolv.conf names only the outside namespace: no DNS query of a test
    # ever goes to the machine's resolvers (test_dns.py runs a server there).
    own = NETNS_ETC / lab.host
    own.mkdir(parents=True, exist_ok=True)
    (own / "resolv.conf").write_text(f"nameserver {OUTSIDE_ADDRESS}\n")


RTN_LOCAL, RTN_ANYCAST = 2, 4


def wait_for_link_local(netns: str, ifname: str, timeout: float = 20) -> None:
    """Wait until `ifname` has its IPv6 link-local address and the kernel's routes for
    each of its addresses. The link-local address comes with the link's carrier, which
    the kernel's link watcher may report a second late; the local (and, when the link
    forwards, anycast) routes come after their address, from a workqueue that waits for
    the machine-wide rtnl lock. A state snapshot taken in between differs from later ones."""
    path = netns_path(netns)
    forwarding = f"net/ipv6/conf/{ifname}/forwarding"
    deadline = time.monotonic() + timeout
    with iproute(path) as ipr:
        index = links.link_index(ipr, ifname)
        while True:
            addresses = [
                ipaddress.ip_interface(f"{a.get('address')}/{a['prefixlen']}")
                for a in ipr.addr("dump", index=index, family=socket.AF_INET6)
            ]
            wanted = {(RTN_LOCAL, str(address.ip)) for address in addresses}
            if read_sysctl(path, forwarding) == "1":
                wanted |= {(RTN_ANYCAST, str(address.network[0])) for address in addresses}
            routes = {
                (int(route["type"]), str(route.get("dst")))
                for route in ipr.route("dump", family=socket.AF_INET6)
                if route.get("oif") == index
            }
            if any(address.is_link_local for address in addresses) and wanted <= routes:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{ifname} in {netns}: IPv6 not settled after {timeout} s")
            time.sleep(0.02)


def remove_prefix(prefix: str) -> None:
    for name in sorted(os.listdir(NETNS_RUN_DIR), reverse=True):
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                pyroute2_netns.remove(name)
    # resolv.conf files of the lab's host and sandboxes (`ip netns exec` mounts them).
    if NETNS_ETC.is_dir():
        for entry in NETNS_ETC.iterdir():
            if entry.name.startswith(prefix):
                shutil.rmtree(entry, ignore_errors=True)


# --- state snapshots: "exactly as before" --------------------------------------------------


def kernel_state(netns: str) -> dict[str, Any]:
    """Links, addresses, routes and the nftables ruleset of a namespace."""
    with iproute(netns_path(netns)) as ipr:
        link_rows = sorted(
            (
                str(link.get("ifname")),
                str(link.get(("linkinfo", "kind")) or ""),
                str(link.get("ifalias") or ""),
                int(link.get("master") or 0),
                str(link.get("address") or ""),
            )
            for link in ipr.link("dump")
        )
        addresses = sorted(
            (int(a["index"]), str(a.get("address")), int(a["prefixlen"])) for a in ipr.addr("dump")
        )
        routes = sorted(
            (
                int(r["family"]),
                str(r.get("dst")),
                int(r["dst_len"]),
                int(r.get("oif") or 0),
                int(r["table"]),
            )
            for r in ipr.route("dump")
        )
    return {
        "links": link_rows,
        "addresses": addresses,
        "routes": routes,
        "nft": nftables.list_ruleset(netns_path(netns)),
        "iptables": run_in(netns, "iptables", "-w", "-S"),
    }


def store_state(state_dir: Path) -> list[str]:
    db = sqlite3.connect(state_dir / "keelnet.db")
    try:
        return list(db.iterdump())
    finally:
        db.close()
