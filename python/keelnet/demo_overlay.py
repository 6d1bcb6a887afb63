"""`keelnet demo` (overlay part): three hosts, one etcd, one overlay network across them.

Builds, in throwaway namespaces on a TEST-NET-1 underlay (192.0.2.0/24): a one-member
etcd, and three keelnet hosts that are members of it: host 1 runs the kernel data plane
(Docker's bridge + vxlan), hosts 2 and 3 keelnet's userspace switch. One overlay network
spans them; the demo checks reachability between every pair, by name across hosts, and
out through a host's kn-gwbridge, prints a table, and removes everything (etcd
included), also when interrupted. Nothing touches the machine's own interfaces; the
hosts' resolv.conf names no upstream, so no DNS query leaves the demo's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from keelnet.demo import Check, claim_prefix, ping, ping_by_name, print_checks, tcp_roundtrip
from keelnet.dns import NETNS_ETC
from keelnet.errors import StoreUnavailable
from keelnet.host import Host
from keelnet.kernel.namespaces import (
    NETNS_RUN_DIR,
    create_named,
    iproute,
    netns_path,
    remove_named,
)
from keelnet.store.etcd_client import EtcdClient

UNDERLAY = "192.0.2."
ETCD_NUMBER = 100
PLANES = {1: "kernel", 2: "userspace", 3: "userspace"}


def _namespace(name: str, *, claimed: bool = False) -> None:
    """A namespace with its loopback up (`claimed`: made already by `claim_prefix`)."""
    if not claimed:
        create_named(netns_path(name))
    with iproute(netns_path(name)) as ipr:
        ipr.link("set", index=1, state="up")


def _plug(switch: str, netns: str, number: int) -> None:
    """A veth from `netns` (eth0, 192.0.2.<number>/24) into the switch namespace's bridge."""
    with iproute(netns_path(switch)) as ipr:
        fd = os.open(netns_path(netns), os.O_RDONLY)
        try:
            ipr.link(
                "add", ifname=f"p{number}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd}
            )
        finally:
            os.close(fd)
        bridge = ipr.link_lookup(ifname="br0")[0]
        ipr.link("set", index=ipr.link_lookup(ifname=f"p{number}")[0], master=bridge, state="up")
    with iproute(netns_path(netns)) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=f"{UNDERLAY}{number}", prefixlen=24)
        ipr.link("set", index=index, state="up")


@contextlib.contextmanager
def _underlay_and_etcd(data_dir: Path) -> Iterator[tuple[str, str]]:
    """The switch, an etcd member in its own namespace; yields the demo's namespace
    prefix and the store URL."""
    etcd: subprocess.Popen[bytes] | None = None
    # Its own prefix stem: the network demo's cleanup never matches these namespaces.
    prefix = claim_prefix("kn-demo-ov", "sw")
    try:
        _namespace(f"{prefix}-sw", claimed=True)
        with iproute(netns_path(f"{prefix}-sw")) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname="br0")[0], state="up")
        member = f"{prefix}-etcd"
        _namespace(member)
        _plug(f"{prefix}-sw", member, ETCD_NUMBER)
        address = f"http://{UNDERLAY}{ETCD_NUMBER}"
        etcd = subprocess.Popen(
            [
                "ip", "netns", "exec", member, "etcd", "--name=demo", f"--data-dir={data_dir}",
                f"--listen-client-urls={address}:2379", f"--advertise-client-urls={address}:2379",
                f"--listen-peer-urls={address}:2380", "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"etcd://{UNDERLAY}{ETCD_NUMBER}:2379"
        client = EtcdClient(url, netns_path(member))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.range("/")
                break
            except StoreUnavailable:
                if time.monotonic() > deadline or etcd.poll() is not None:
                    raise
                time.sleep(0.1)
        client.close()
        yield prefix, url
    finally:
        if etcd is not None:
            etcd.kill()
            etcd.wait(timeout=10)
        for name in sorted(os.listdir(NETNS_RUN_DIR), reverse=True):
            if name.startswith(f"{prefix}-"):
                with contextlib.suppress(OSError):
                    remove_named(netns_path(name))
        for entry in NETNS_ETC.iterdir() if NETNS_ETC.is_dir() else ():
            if entry.name.startswith(f"{prefix}-"):
                shutil.rmtree(entry, ignore_errors=True)


def _build_and_check(
    prefix: str, url: str, state_dir: Path, hosts: dict[int, Host]
) -> tuple[list[Check], list[str]]:
    for number, plane in PLANES.items():
        netns = f"{prefix}-h{number}"
        _namespace(netns)
        _plug(f"{prefix}-sw", netns, number)
        # The host's resolv.conf (what keelnet's DNS forwards to): no server at all.
        (NETNS_ETC / netns).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / netns / "resolv.conf").write_text("# keelnet demo: no upstream\n")
        hosts[number] = Host(
            netns=netns, state_dir=state_dir / netns, store=url, name=f"host{number}",
            dataplane=plane,
        )  # fmt: skip
    network = hosts[1].create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    sandboxes, addresses = {}, {}
    for number, host in hosts.items():
        sandbox = host.create_sandbox(f"{prefix}-app{number}")
        sandboxes[number] = sandbox.name
        addresses[number] = str(host.connect("ov1", sandbox.name).ip)

    def reach(a: int, b: int) -> Callable[[], bool]:
        # The first ping waits for the peer to arrive in a's tables (a watch away).
        return lambda: any(ping(sandboxes[a], addresses[b]) for _ in range(10))

    checks: list[tuple[str, bool, Callable[[], bool]]] = [
        (f"overlay: app{a} ({PLANES[a]}) -> app{b} ({PLANES[b]})", True, reach(a, b))
        for a in PLANES
        for b in PLANES
        if a != b
    ]
    checks.append(
        (
            "overlay: app1 (host1) pings app3 (host3) by name",
            True,
            lambda: any(ping_by_name(netns_path(sandboxes[1]), sandboxes[3]) for _ in range(10)),
        )
    )
    checks.append(
        (
            "overlay: TCP app1 -> app2",
            True,
            lambda: tcp_roundtrip(
                sandboxes[2], ("0.0.0.0", 9000), sandboxes[1], (addresses[2], 9000)
            ),
        )
    )
    checks.append(
        (
            "overlay: app1 -> host 2's underlay address, out via kn-gwbridge (NAT)",
            True,
            lambda: ping(sandboxes[1], f"{UNDERLAY}2"),
        )
    )
    notes = [
        f"overlay ov1: VNI {network.options['com.docker.network.driver.overlay.vxlanid_list']}, "
        f"subnet 10.0.9.0/24, store {url}",
    ]
    shown = hosts[1].inspect_network("ov1")
    notes += [f"peer {p['Name']} at {p['IP']}" for p in shown["Peers"]]
    notes += [f"app{n} has {addresses[n]} on host{n} ({PLANES[n]})" for n in PLANES]
    notes.append(f"built in namespaces {prefix}-*, all removed at the end")
    return [Check(what, expected, probe()) for what, expected, probe in checks], notes


def run_overlay_demo() -> int:
    """Build, check, print, tear down. Returns 0 when every check came out as expected."""
    if os.geteuid() != 0:
        print("keelnet demo (overlay) needs root (it creates network namespaces)")
        return 1
    if shutil.which("etcd") is None:
        print("overlay part skipped: no etcd (scripts/system-deps demo installs Debian's)")
        return 0
    root = Path(tempfile.mkdtemp(prefix="keelnet-demo-overlay-"))
    hosts: dict[int, Host] = {}
    try:
        with _underlay_and_etcd(root / "etcd") as (prefix, url):
            try:
                results, notes = _build_and_check(prefix, url, root / "state", hosts)
            finally:
                for host in hosts.values():
                    for sandbox in host.sandboxes():
                        host.remove_sandbox(sandbox.name)
                if hosts:
                    with contextlib.suppress(Exception):
                        hosts[1].remove_network("ov1")
                for host in hosts.values():
                    for network in host.networks():
                        if network.scope == "local":
                            host.remove_network(network.name)
                    host.close()
    except KeyboardInterrupt:
        print("interrupted: everything removed")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return print_checks(results, notes)
