"""The test lab: namespace names, the underlay addresses, state snapshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from keelnet.kernel import nftables
from keelnet.kernel.namespaces import NETNS_RUN_DIR, iproute, netns_path

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
