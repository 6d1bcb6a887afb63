"""Overlay networks across test hosts, with etcd as the shared store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from clusterlab import (
    Cluster,
    Segment,
    default_route,
    keelnet_cli,
    make_host_ns,
    overlay_ns,
    remote_macs,
    route_between,
)
from netlab import run_in
from nettools import TcpServer, ping, tcp_request, wait_until

from keelnet.drivers.overlay import OverlayPlane
from keelnet.store.etcd import VNI_OPTION

pytestmark = pytest.mark.netns


@pytest.mark.parametrize(
    "planes",
    [("kernel", "kernel"), ("userspace", "userspace"), ("kernel", "userspace")],
    ids=["kernel", "userspace", "kernel-userspace"],
)
def test_sandboxes_on_two_hosts_reach_each_other(cluster: Cluster, planes: tuple[str, str]) -> None:
    a = cluster.add_host(1, dataplane=planes[0])
    b = cluster.add_host(2, dataplane=planes[1])
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app_a, app_b = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    ep_a = a.connect("ov1", app_a)
    ep_b = b.connect("ov1", app_b)
    assert ep_a.mac == "02:42:0a:00:09:02"
    assert wait_until(lambda: ping(app_a, ep_b.ip, timeout=0.5), timeout=10)
    assert ping(app_b, ep_a.ip)


def test_a_kernel_part_removed_and_made_again_at_once(cluster: Cluster) -> None:
    """The last disconnect removes the host's part of the network; a connect right after
    builds it again, with the same VNI (the old vxlan device must not still hold it)."""
    a, b = cluster.add_host(1, dataplane="kernel"), cluster.add_host(2, dataplane="kernel")
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    ep2 = b.connect("ov1", app2)
    for _ in range(3):
        a.connect("ov1", app1)
        a.disconnect("ov1", app1)
    a.connect("ov1", app1)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)


@pytest.mark.skipif(
    not Path("/proc/sys/net/bridge").exists(), reason="br_netfilter is not loaded here"
)
def test_kernel_overlay_bridges_are_kept_out_of_iptables(cluster: Cluster) -> None:
    """Nothing filters in a network's namespace: its frames skip br_netfilter's hooks."""
    a = cluster.add_host(1, dataplane="kernel")
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    a.connect("ov1", cluster.sandbox(a, "app1"))
    for table in ("iptables", "ip6tables", "arptables"):
        key = f"net.bridge.bridge-nf-call-{table}"
        assert run_in(overlay_ns(str(a.netns), ov1.id), "sysctl", "-n", key).strip() == "0"


def test_vxlan_over_l3_two_subnets_joined_by_a_router(
    cluster: Cluster, cluster_prefix: str
) -> None:
    """Host 1 on 192.0.2.0/24 (with etcd), host 2 on 198.51.100.0/24, a router between."""
    far = Segment(cluster_prefix, "far", "198.51.100.")
    far.create()
    route_between(cluster_prefix, cluster.etcd.segment, far)
    a = cluster.add_host(1, dataplane="kernel")
    make_host_ns(f"{cluster_prefix}-h2")
    far.plug(f"{cluster_prefix}-h2", 2)
    default_route(f"{cluster_prefix}-h2", "198.51.100.254")
    for near in (f"{cluster_prefix}-h1", cluster.etcd.members[0].netns):
        default_route(near, "192.0.2.254")
    b = cluster.add_host(2, segment=far, dataplane="userspace")
    assert b.cluster is not None and b.cluster.vtep == "198.51.100.2"
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    ep1, ep2 = a.connect("ov1", app1), b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)
    assert ping(app2, ep1.ip)
    shown = a.inspect_network("ov1")
    assert {p["Name"]: p["IP"] for p in shown["Peers"]} == {
        f"{cluster_prefix}-h1": "192.0.2.1",
        f"{cluster_prefix}-h2": "198.51.100.2",
    }
    assert shown["Scope"] == "global"
    assert [c["Name"] for c in shown["Containers"].values()] == [app1]


def test_an_underlay_cut_and_restored_recovers_without_restarts(cluster: Cluster) -> None:
    a = cluster.add_host(1, lease_ttl=3)
    b = cluster.add_host(2, lease_ttl=3, dataplane="userspace")
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    ep1, ep2 = a.connect("ov1", app1), b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)
    uplink = str(b.netns)
    run_in(uplink, "ip", "link", "set", "eth0", "down")
    try:
        assert not ping(app1, ep2.ip, timeout=1)
        # Cut for longer than a lease: b leaves a's tables (its lease ran out).
        assert wait_until(lambda: not remote_macs(a, a.network("ov1")), timeout=10)
    finally:
        run_in(uplink, "ip", "link", "set", "eth0", "up")
    # Back: b's agent re-joins by itself and both directions work again.
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=20)
    assert ping(app2, ep1.ip, timeout=2)


def test_overlay_sandboxes_leave_through_the_hosts_gateway_bridge(cluster: Cluster) -> None:
    a, b = cluster.add_host(1), cluster.add_host(2)
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1 = cluster.sandbox(a, "app1")
    a.connect("ov1", app1)
    gw = a.network("kn-gwbridge")
    assert gw.scope == "local" and gw.options["com.docker.network.bridge.enable_icc"] == "false"
    (outside,) = a.endpoints("kn-gwbridge")
    assert (outside.sandbox, outside.ifname) == (app1, "eth1")
    # Out through NAT: b's host namespace sees a's underlay address, not the sandbox's.
    with TcpServer(str(b.netns), "192.0.2.2", 8080, "hello"):
        assert tcp_request(app1, "192.0.2.2", 8080, "hi") == "hello hi from 192.0.2.1"
    a.disconnect("ov1", app1)
    assert a.endpoints("kn-gwbridge") == []  # its last overlay endpoint took it along


def test_cli_users_get_the_agent_overlay_needs(cluster: Cluster, tmp_path: Path) -> None:
    """`keelnet --store ...` commands on a host start its agent (the cluster member) when
    an overlay network needs one, and its sandboxes reach the other hosts'."""
    prefix, url = cluster.etcd.prefix, cluster.etcd.url
    a = cluster.add_host(1)
    second = f"{prefix}-h2"
    make_host_ns(second)
    cluster.etcd.segment.plug(second, 2)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return keelnet_cli(second, tmp_path / "h2", url, *argv)

    try:
        made = cli("network", "create", "-d", "overlay", "--subnet", "10.0.9.0/24", "ov1")
        assert made.returncode == 0, made.stderr
        app2 = f"{prefix}-app2"
        assert cli("sandbox", "create", app2).returncode == 0
        joined = cli("network", "connect", "ov1", app2)
        assert joined.returncode == 0, joined.stderr
        assert "cluster membership" in made.stderr + joined.stderr  # why the agent started
        shown = json.loads(cli("network", "inspect", "ov1").stdout)[0]
        (entry,) = [c for c in shown["Containers"].values() if c["Name"] == app2]
        ip2 = entry["IPv4Address"].split("/")[0]
        app1 = cluster.sandbox(a, "app1")
        ep1 = a.connect("ov1", app1)
        assert wait_until(lambda: ping(app1, ip2, timeout=0.5), timeout=15)
        assert ping(app2, str(ep1.ip), timeout=2)
    finally:
        cli("agent", "stop")


def test_a_vni_leaves_the_shared_switch_with_its_network(cluster: Cluster) -> None:
    """A userspace host runs one switch for all its overlay networks. A network whose last
    sandbox there leaves takes its VNI's peers along at once, so the next network given
    that VNI (pinned here, right after the removal) inherits none of them."""
    a = cluster.add_host(1, dataplane="userspace")
    b = cluster.add_host(2, dataplane="userspace")
    keep = a.create_network("keep", driver="overlay", subnet="10.0.8.0/24")
    pinned = {VNI_OPTION: "5000"}
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24", options=pinned)
    a.connect("keep", cluster.sandbox(a, "keeper"))  # keeps a's switch running
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    a.connect("ov1", app1)
    ep2 = b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, str(ep2.ip), timeout=0.5), timeout=10)
    plane = a._ctx.planes.get(keep.id)
    assert isinstance(plane, OverlayPlane)
    switch = plane.switch
    assert switch.stats()["vnis"][5000]["peers"] == ["192.0.2.2"]

    a.disconnect("ov1", app1)
    assert switch.stats()["vnis"].get(5000, {}).get("peers", []) == []
    assert switch.fdb(5000) == []
    b.disconnect("ov1", app2)
    a.remove_network("ov1")
    a.create_network("ov2", driver="overlay", subnet="10.0.7.0/24", options=pinned)
    ep1 = a.connect("ov2", app1)
    assert [entry["mac"] for entry in switch.fdb(5000)] == [ep1.mac]
