"""Fixtures for the root-only namespace tests.

Every test gets a throwaway "host" namespace `kn-t-<random>` with its own state directory,
and an "outside" namespace joined to it by a veth underlay in 192.0.2.0/24 (TEST-NET-1).
The host namespace mirrors Docker's iptables: FORWARD policy DROP, a DOCKER-USER chain.
Nothing touches the machine's own interfaces. Everything is removed after the test, also
on failure: namespaces are deleted by their per-test prefix.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns as pyroute2_netns

import keelnet
from keelnet.kernel import nftables
from keelnet.kernel.namespaces import NETNS_RUN_DIR, iproute, netns_path

if os.geteuid() != 0:
    pytest.skip(
        "netns tests need root (network namespaces, veth, nftables)", allow_module_level=True
    )

HOST_UPLINK = "kn-up0"
HOST_ADDRESS = "192.0.2.1"
OUTSIDE_ADDRESS = "192.0.2.2"
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


def _create_ns(name: str) -> None:
    pyroute2_netns.create(name)
    with iproute(netns_path(name)) as ipr:
        ipr.link("set", index=1, state="up")


def _remove_prefix(prefix: str) -> None:
    for name in sorted(os.listdir(NETNS_RUN_DIR), reverse=True):
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                pyroute2_netns.remove(name)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    prefix = f"kn-t-{secrets.token_hex(3)}"
    the_lab = Lab(prefix, f"{prefix}-host", f"{prefix}-out", tmp_path / "state")
    try:
        _create_ns(the_lab.host)
        _create_ns(the_lab.outside)
        with iproute(netns_path(the_lab.host)) as ipr:
            fd = os.open(netns_path(the_lab.outside), os.O_RDONLY)
            try:
                ipr.link(
                    "add", ifname=HOST_UPLINK, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd}
                )
            finally:
                os.close(fd)
            index = ipr.link_lookup(ifname=HOST_UPLINK)[0]
            ipr.addr("add", index=index, address=HOST_ADDRESS, prefixlen=24)
            ipr.link("set", index=index, state="up")
        with iproute(netns_path(the_lab.outside)) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=OUTSIDE_ADDRESS, prefixlen=24)
            ipr.link("set", index=index, state="up")
        for rule in DOCKER_RULES:
            run_in(the_lab.host, "iptables", "-w", *rule.split())
        yield the_lab
    finally:
        _remove_prefix(prefix)


@pytest.fixture
def host(lab: Lab) -> Iterator[keelnet.Host]:
    the_host = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    try:
        yield the_host
    finally:
        try:
            for sandbox in the_host.sandboxes():
                the_host.remove_sandbox(sandbox.name)
            for network in the_host.networks():
                the_host.remove_network(network.name)
        finally:
            the_host.close()


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
