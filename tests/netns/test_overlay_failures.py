"""Overlay networks when things fail: agents killed, etcd members lost, racing hosts,
underlay links cut, bad input. Each test checks the kernel's or the switch's real
tables and real packets."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from clusterlab import (
    PINGER,
    Agent,
    Cluster,
    Connector,
    cut_off,
    kernel_remote_macs,
    links_in,
    make_host_ns,
    overlay_ns,
    remote_macs,
)
from nettools import WatcherScript, ping, wait_until

from keelnet import Host
from keelnet.dns import resolv_conf_path
from keelnet.drivers.overlay import OverlayDriver, mac_for
from keelnet.errors import StoreUnavailable
from keelnet.kernel.namespaces import netns_path
from keelnet.model import Endpoint

pytestmark = pytest.mark.netns
LEASE_TTL = 3


def agent_ip(agent: Agent, network: str, sandbox: str) -> str:
    shown = agent.cli("network", "inspect", network)
    assert shown.returncode == 0, shown.stderr
    containers = json.loads(shown.stdout)[0]["Containers"].values()
    (entry,) = [c for c in containers if c["Name"] == sandbox]
    return str(entry["IPv4Address"].split("/")[0])


@pytest.mark.parametrize("plane", ["kernel", "userspace"])
def test_killed_agent_leaves_the_others_tables_and_comes_back(
    cluster: Cluster, tmp_path: Path, plane: str
) -> None:
    a = cluster.add_host(1, lease_ttl=LEASE_TTL)
    b = cluster.add_host(2, lease_ttl=LEASE_TTL, dataplane="userspace")
    third = f"{cluster.etcd.prefix}-h3"
    make_host_ns(third)
    cluster.etcd.segment.plug(third, 3)
    options = ("--dataplane", plane)
    agent = Agent(third, tmp_path / "h3", cluster.etcd.url, *options)
    try:
        ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
        app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
        ep2 = b.connect("ov1", app2)
        a.connect("ov1", app1)
        app3 = f"{cluster.etcd.prefix}-app3"
        for argv in (("sandbox", "create", app3), ("network", "connect", "ov1", app3)):
            done = agent.cli(*argv)
            assert done.returncode == 0, done.stderr
        ip3 = agent_ip(agent, "ov1", app3)
        # The CLI shows the network's scope, and the hosts taking part as Docker's Peers.
        listed = agent.cli("network", "ls", "--format", "json")
        rows = {(row["Name"], row["Scope"]) for row in map(json.loads, listed.stdout.splitlines())}
        assert rows == {("kn-gwbridge", "local"), ("ov1", "global")}
        shown = json.loads(agent.cli("network", "inspect", "ov1").stdout)[0]
        assert {(p["Name"], p["IP"]) for p in shown["Peers"]} == {
            (f"{cluster.etcd.prefix}-h{n}", f"192.0.2.{n}") for n in (1, 2, 3)
        }
        mac3 = mac_for(ip3)
        assert wait_until(lambda: ping(app1, ip3, timeout=0.5), timeout=10)
        assert ping(app2, ip3, timeout=2)

        def gone_everywhere() -> bool:
            return all(mac3 not in {mac for mac, _ in remote_macs(h, ov1)} for h in (a, b))

        assert not gone_everywhere()
        with WatcherScript(app1, PINGER, ep2.ip, "0.05") as flow:
            agent.kill()
            # Its lease runs out; both hosts drop its endpoint from their tables.
            assert wait_until(gone_everywhere, timeout=LEASE_TTL + 1, step=0.02)
            assert not ping(app1, ip3, timeout=0.5)
            agent = Agent(third, tmp_path / "h3", cluster.etcd.url, *options)
            # The restarted agent reconciles: its sandbox is reachable again.
            assert wait_until(lambda: ping(app1, ip3, timeout=0.5), timeout=15)
            assert ping(app3_ns := app3, ep2.ip, timeout=2), app3_ns
        # The flow between the two other hosts never stopped.
        assert flow.result["got"] > 0
        assert flow.result["max_gap"] < 1.0, flow.result
    finally:
        agent.stop()


def test_one_etcd_member_of_three_stopped_changes_nothing(cluster3: Cluster) -> None:
    a = cluster3.add_host(1, lease_ttl=LEASE_TTL)
    b = cluster3.add_host(2, lease_ttl=LEASE_TTL, dataplane="userspace")
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster3.sandbox(a, "app1"), cluster3.sandbox(b, "app2")
    a.connect("ov1", app1)
    ep2 = b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)
    with WatcherScript(app1, PINGER, ep2.ip, "0.05") as flow:
        for member in range(3):  # whichever member a host talks to or watches on
            cluster3.etcd.stop_member(member)
            box = cluster3.sandbox(b, f"late{member}")
            late = b.connect("ov1", box)
            assert wait_until(lambda: ping(app1, late.ip, timeout=0.5), timeout=10)  # noqa: B023
            cluster3.etcd.start_member(member)
            cluster3.etcd.wait_healthy()
        a.create_network("ov2", driver="overlay", subnet="10.0.10.0/24")
    assert flow.result["max_gap"] < 1.0, flow.result
    assert {n.name for n in b.networks()} >= {"ov1", "ov2"}


def test_etcd_gone_keeps_flows_refuses_fast_and_catches_up(cluster3: Cluster) -> None:
    a = cluster3.add_host(1, lease_ttl=LEASE_TTL)
    b = cluster3.add_host(2, lease_ttl=LEASE_TTL)
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster3.sandbox(a, "app1"), cluster3.sandbox(b, "app2")
    a.connect("ov1", app1)
    ep2 = b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)
    app3 = cluster3.sandbox(a, "app3")
    before = remote_macs(a, ov1)
    with WatcherScript(app1, PINGER, ep2.ip, "0.05") as flow:
        for member in range(3):
            cluster3.etcd.stop_member(member)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            a.connect("ov1", app3)
        assert time.monotonic() - started < 10  # refused at once, not after a hang
        with pytest.raises(StoreUnavailable):
            a.create_network("ov2", driver="overlay", subnet="10.0.10.0/24")
        # Nothing half-made: no interface in the sandbox, the tables as they were.
        assert links_in(app3) == ["lo"]
        assert remote_macs(a, ov1) == before
        time.sleep(LEASE_TTL + 1)  # longer than a lease: the data plane keeps its state
        assert remote_macs(a, ov1) == before
        for member in range(3):
            cluster3.etcd.start_member(member)
        cluster3.etcd.wait_healthy()
    assert flow.result["max_gap"] < 1.0, flow.result
    # Both hosts catch up by themselves: a new endpoint on b reaches a's tables.
    app4 = cluster3.sandbox(b, "app4")
    ep4 = b.connect("ov1", app4)
    assert wait_until(lambda: ping(app1, ep4.ip, timeout=0.5), timeout=15)
    ep3 = a.connect("ov1", app3)
    assert wait_until(lambda: ping(app4, ep3.ip, timeout=0.5), timeout=15)


def test_concurrent_connects_from_three_hosts_never_share_an_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Three host processes connect 30 sandboxes each into one network, all at once."""
    prefix, per_host = cluster.etcd.prefix, 30
    first = cluster.add_host(9)  # creates the network; takes no part in the race
    ov1 = first.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    hosts = [f"{prefix}-h{n}" for n in (1, 2, 3)]
    connectors = []
    try:
        for number, netns in enumerate(hosts, start=1):
            make_host_ns(netns)
            cluster.etcd.segment.plug(netns, number)
            connectors.append(Connector(netns, tmp_path / netns, cluster.etcd.url, "ov1", per_host))
        for connector in connectors:
            connector.go()
        results = [connector.result() for connector in connectors]
        made = [ep for result in results for ep in result["endpoints"]]  # type: ignore[attr-defined]
        assert len(made) == 3 * per_host
        assert len({ep["ip"] for ep in made}) == 3 * per_host  # no address handed out twice
        assert first.global_store is not None
        pool = first.global_store.address_pool(ov1.id, 4)
        assert pool is not None and pool.used == 3 * per_host  # exactly these, none leaked
        status = first.inspect_network("ov1")["Status"]["IPAM"]["Subnets"]["10.0.9.0/24"]
        assert status["IPsInUse"] == 3 * per_host + 3  # and network, gateway, broadcast
        # No endpoint lost: each host's kernel holds the 60 endpoints of the other two.
        for netns, result in zip(hosts, results, strict=True):
            others = {
                (mac_for(ep["ip"]), str(other["vtep"]))
                for other in results
                if other is not result
                for ep in other["endpoints"]  # type: ignore[attr-defined]
            }
            ns = overlay_ns(netns, ov1.id)
            assert wait_until(lambda: kernel_remote_macs(ns) == others, timeout=30), netns  # noqa: B023
        a, c = results[0]["endpoints"][0], results[2]["endpoints"][-1]  # type: ignore[index]
        assert ping(a["sandbox"], c["ip"], timeout=3)
    finally:
        for connector in connectors:
            connector.request_stop()
        for connector in connectors:
            connector.wait()


def test_a_connect_that_died_midway_is_undone_by_the_next_start(cluster: Cluster) -> None:
    """What a process killed inside connect leaves (its address reserved in etcd, the
    network's namespace and a veth made) is released and removed when the host starts."""
    a = cluster.add_host(1, lease_ttl=LEASE_TTL)
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    box = cluster.sandbox(a, "app1")
    assert a.global_store is not None and a.cluster is not None
    # The first steps of a connect, by hand, then the process "dies" (closes, no undo).
    placeholder = Endpoint(None, None, "", "eth0", None, id="e" * 64, sandbox=box)
    addresses = a.global_store.reserve_endpoint(ov1, placeholder, None, a.cluster.vtep)
    endpoint = dataclasses.replace(
        placeholder, ip=addresses[4], mac=mac_for(addresses[4]), network_id=ov1.id
    )
    OverlayDriver().create_endpoint(a._ctx, ov1, endpoint, a.sandbox(box).path)
    assert Path(netns_path(overlay_ns(str(a.netns), ov1.id))).exists()
    pool = a.global_store.address_pool(ov1.id, 4)
    assert pool is not None and pool.used == 1
    state_dir = a.state_dir
    a.close()
    del cluster.hosts[str(a.netns)]
    again = Host(netns=a.netns, state_dir=state_dir, store=cluster.etcd.url)
    cluster.hosts[str(a.netns)] = again
    assert again.global_store is not None
    pool = again.global_store.address_pool(ov1.id, 4)
    assert pool is not None and pool.used == 0
    assert again.endpoints("ov1") == []
    assert not Path(netns_path(overlay_ns(str(a.netns), ov1.id))).exists()
    assert links_in(box) == ["lo"]
    # And the host works: a real connect now gets the address back.
    assert again.connect("ov1", box).ip == addresses[4]


def test_a_watch_that_resumes_after_compaction_lists_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch resumes from the last revision it saw; when etcd compacted that away
    meanwhile, it lists once more and programs what it missed."""
    a, b = cluster.add_host(1, lease_ttl=LEASE_TTL), cluster.add_host(2, lease_ttl=LEASE_TTL)
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    a.connect("ov1", cluster.sandbox(a, "app1"))
    assert a.cluster is not None and a.cluster.relists == 1
    client = a.cluster.store.client
    watch = client.watch

    def refused(prefix: str, start_revision: int) -> object:
        raise StoreUnavailable("watch refused by the test")

    monkeypatch.setattr(client, "watch", refused)
    a.cluster._cancel_watch()  # its stream ends; it cannot watch again for now
    ep2 = b.connect("ov1", cluster.sandbox(b, "app2"))
    assert (mac_for(str(ep2.ip)), "192.0.2.2") not in remote_macs(a, ov1)  # a missed it
    _, revision = client.range("/keelnet/", prefix=True)
    cluster.etcd.etcdctl("compact", str(revision))
    assert wait_until(lambda: a.cluster is not None and a.cluster.relists == 2, timeout=10)
    assert (mac_for(str(ep2.ip)), "192.0.2.2") in remote_macs(a, ov1)
    monkeypatch.setattr(client, "watch", watch)
    ep3 = b.connect("ov1", cluster.sandbox(b, "app3"))  # watched again from there
    assert wait_until(lambda: (mac_for(str(ep3.ip)), "192.0.2.2") in remote_macs(a, ov1), 10)


@pytest.mark.parametrize(
    ("plane", "compacted"),
    [("kernel", False), ("userspace", True)],
    ids=["kernel-watch-resumed", "userspace-listed-again"],
)
def test_a_network_removed_while_a_host_was_cut_off_goes_from_it_when_it_is_back(
    cluster: Cluster, plane: str, compacted: bool
) -> None:
    """Host b, cut off from etcd for longer than its lease, has its endpoint on ov1
    released as stale when a removes ov1. Back (its process never stopped), b joins the
    cluster again and takes down its part of ov1 by itself, as a disconnect would; a new
    ov1 works there. `compacted`: etcd compacted what b missed, so b lists again."""
    a = cluster.add_host(1, lease_ttl=LEASE_TTL)
    b = cluster.add_host(2, lease_ttl=LEASE_TTL, dataplane=plane)
    assert a.global_store is not None and b.cluster is not None
    b_name = str(b.netns)
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    a.connect("ov1", app1)
    ep2 = b.connect("ov1", app2)
    assert wait_until(lambda: ping(app1, ep2.ip, timeout=0.5), timeout=10)

    def b_holds_ov1() -> bool:
        if plane == "userspace":
            return b.data_plane_running(ov1)
        return Path(netns_path(overlay_ns(b_name, ov1.id))).exists()

    def live_hosts() -> set[str]:
        assert a.global_store is not None
        return {peer.name for peer in a.global_store.peers()}

    assert b_holds_ov1() and "eth0" in links_in(app2) and resolv_conf_path(app2).exists()
    lease = b.cluster.lease
    with cut_off(b_name):
        assert wait_until(lambda: b_name not in live_hosts(), timeout=LEASE_TTL + 5)
        a.disconnect("ov1", app1)
        a.remove_network("ov1")  # b's endpoint is stale: released with the network
        if compacted:
            _, revision = a.global_store.client.range("/keelnet/", prefix=True)
            cluster.etcd.etcdctl("compact", str(revision))
        assert b_holds_ov1()  # b cannot know yet
    # Back: b is a member again (a new lease, its host record) and lets go of ov1.
    assert wait_until(lambda: b_name in live_hosts(), timeout=15)
    assert wait_until(lambda: b.cluster is not None and b.cluster.networks_gone, timeout=15)
    assert b.cluster.networks_gone == ["ov1"]  # taken down: checked below
    assert not b_holds_ov1() and links_in(app2) == ["lo"]
    assert b.cluster.lease != lease
    assert b.endpoints() == []  # its kn-gwbridge endpoint went too: no way out left
    assert not resolv_conf_path(app2).exists()  # no network with DNS names left
    assert "ov1" not in {network.name for network in b.networks()}
    # A new network of that name (most likely the same VNI) works on b.
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    ep1 = a.connect("ov1", app1)
    ep2 = b.connect("ov1", app2)
    assert wait_until(lambda: ping(app2, ep1.ip, timeout=0.5), timeout=10)
    assert ping(app1, ep2.ip, timeout=2)
