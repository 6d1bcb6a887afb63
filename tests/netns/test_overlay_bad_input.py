"""Bad input to overlay networks: a specific error, and nothing half-made in etcd or in
any host's kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from clusterlab import (
    Cluster,
    Connector,
    EtcdCluster,
    Segment,
    keelnet_cli,
    links_in,
    make_host_ns,
    overlay_ns,
)
from netlab import kernel_state
from nettools import ping, wait_until

from keelnet import Host
from keelnet.errors import (
    Conflict,
    InvalidOption,
    InvalidRequest,
    NetworkInUse,
    OverlappingSubnet,
    StoreUnavailable,
)
from keelnet.kernel.namespaces import NETNS_RUN_DIR
from keelnet.store.etcd import VNI_OPTION
from keelnet.store.etcd_client import Txn

pytestmark = pytest.mark.netns
LEASE_TTL = 3


def etcd_keys(etcd: EtcdCluster) -> list[str]:
    listed = etcd.etcdctl("get", "--prefix", "--keys-only", "/keelnet/")
    return sorted(line for line in listed.splitlines() if line)


def test_vni_taken_overlap_and_bad_options_are_refused_and_leave_nothing(
    cluster: Cluster,
) -> None:
    a, b = cluster.add_host(1), cluster.add_host(2)
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24", options={VNI_OPTION: "5000"})
    keys, kernels = etcd_keys(cluster.etcd), [kernel_state(str(h.netns)) for h in (a, b)]
    with pytest.raises(Conflict, match="VNI 5000 is already used by network ov1"):
        b.create_network(
            "ov2", driver="overlay", subnet="10.0.10.0/24", options={VNI_OPTION: "5000"}
        )
    with pytest.raises(OverlappingSubnet, match=r"10\.0\.9\.0/25 overlaps with 10\.0\.9\.0/24"):
        b.create_network("ov2", driver="overlay", subnet="10.0.9.0/25")
    # A local network may not take an overlay's subnet either, on any member host.
    with pytest.raises(OverlappingSubnet):
        b.create_network("br", driver="bridge", subnet="10.0.9.128/25")
    for options, message in (
        ({VNI_OPTION: "abc"}, "is not a VNI"),
        ({VNI_OPTION: "5001,5002"}, "one VNI per subnet"),
        ({"vxlan_port": "80"}, "not a UDP port in 1024-49151"),
        ({"dataplane": "dpdk"}, "invalid dataplane"),
        ({"com.docker.network.driver.mtu": "100"}, "underlay MTU"),
        ({"port_security": "maybe"}, "port_security: 'maybe' is not a boolean"),
    ):
        with pytest.raises(InvalidOption, match=message):
            b.create_network("ov2", driver="overlay", subnet="10.0.10.0/24", options=options)
    with pytest.raises(InvalidRequest, match="IPv4-only"):
        b.create_network("ov2", driver="overlay", ipv6=True)
    with pytest.raises(Conflict, match="already exists"):
        b.create_network("ov1", driver="overlay", subnet="10.0.11.0/24")
    assert etcd_keys(cluster.etcd) == keys
    assert [kernel_state(str(h.netns)) for h in (a, b)] == kernels


def test_removing_a_network_another_host_uses_is_refused_naming_it(cluster: Cluster) -> None:
    a, b = cluster.add_host(1), cluster.add_host(2)
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
    ep1 = a.connect("ov1", app1)
    b.connect("ov1", app2)
    keys = etcd_keys(cluster.etcd)
    with pytest.raises(NetworkInUse, match=rf"host\(s\) {a.netns} \(up\), {b.netns} \(up\)"):
        a.remove_network("ov1")
    a.disconnect("ov1", app1)
    with pytest.raises(NetworkInUse, match=rf"on host\(s\) {b.netns} \(up\): disconnect"):
        a.remove_network("ov1")
    assert wait_until(lambda: ping(app2, "10.0.9.1", timeout=0.5), timeout=5)  # b's part works
    assert len(etcd_keys(cluster.etcd)) == len(keys) - 1  # only a's endpoint went
    b.disconnect("ov1", app2)
    a.remove_network("ov1")
    assert [k for k in etcd_keys(cluster.etcd) if not k.startswith("/keelnet/hosts/")] == []
    # Every host's part of it is gone too (the last sandbox's disconnect took it).
    for host in (a, b):
        assert not [n for n in kernel_state(str(host.netns))["links"] if "kn-vx" in n[0]]
    assert ep1.ip  # the test used a real endpoint


def test_a_dead_hosts_endpoints_are_stale_and_go_with_the_network(
    cluster: Cluster, tmp_path: Path
) -> None:
    a = cluster.add_host(1, lease_ttl=LEASE_TTL)
    ov1 = a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    app1 = cluster.sandbox(a, "app1")
    a.connect("ov1", app1)
    dead = f"{cluster.etcd.prefix}-h2"
    make_host_ns(dead)
    cluster.etcd.segment.plug(dead, 2)
    victim = Connector(dead, tmp_path / "h2", cluster.etcd.url, "ov1", 2)
    try:
        victim.go()
        made = victim.result()["endpoints"]
        boxes = [(str(ep["sandbox"]), str(ep["ifname"])) for ep in made]  # type: ignore[attr-defined]
        assert all(ifname in links_in(box) for box, ifname in boxes)
        a.disconnect("ov1", app1)
        with pytest.raises(NetworkInUse, match=rf"on host\(s\) {dead} \(up\): disconnect"):
            a.remove_network("ov1")
        store = a.global_store
        assert store is not None
        host_key = f"/keelnet/hosts/{dead}"
        record = store.client.get(host_key)
        assert record is not None
        victim.process.kill()  # SIGKILL: its lease holds for up to LEASE_TTL more
        victim.process.wait(timeout=10)
        assert wait_until(lambda: host_key not in etcd_keys(cluster.etcd), 10)
        # It comes back while the removal is under way, just before the transaction that
        # deletes the network: its endpoints stay its own (none released, no address free
        # to be handed out twice), and so does the network.
        before = {key: store.client.get(key) for key in etcd_keys(cluster.etcd)}
        commit = store.client.txn

        def back_before_commit(txn: Txn) -> bool:
            if f"/keelnet/networks/{ov1.id}" in txn.deletes:
                store.client.put(host_key, record.value)
            return commit(txn)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store.client, "txn", back_before_commit)
            with pytest.raises(NetworkInUse, match=rf"on host\(s\) {dead} \(up\)"):
                a.remove_network("ov1")
        store.client.delete(host_key)
        assert {key: store.client.get(key) for key in etcd_keys(cluster.etcd)} == before
        a.remove_network("ov1")  # its two endpoints are stale: they go with the network
        assert [k for k in etcd_keys(cluster.etcd) if not k.startswith("/keelnet/hosts/")] == []
        # The dead host comes back: its reconcile removes its part of the network.
        assert overlay_ns(dead, ov1.id) in os.listdir(NETNS_RUN_DIR)
        with Host(netns=dead, state_dir=tmp_path / "h2", store=cluster.etcd.url) as back:
            assert back.networks() == [back.network("kn-gwbridge")]
            assert overlay_ns(dead, ov1.id) not in os.listdir(NETNS_RUN_DIR)
            # Their interfaces go with that namespace (the kernel frees it a moment later).
            assert wait_until(
                lambda: all(ifname not in links_in(box) for box, ifname in boxes), timeout=10
            )
            for box, _ in boxes:
                back.remove_sandbox(box)
    finally:
        victim.stop()


def test_a_store_that_is_not_there_is_refused_at_once(underlay: Segment, tmp_path: object) -> None:
    netns = f"{underlay.prefix}-h1"
    make_host_ns(netns)
    underlay.plug(netns, 1)
    before = kernel_state(netns)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"unreachable \(tried 192\.0\.2\.200:2379"):
        Host(netns=netns, state_dir=f"{tmp_path}/h1", store="etcd://192.0.2.200:2379")
    assert time.monotonic() - started < 15  # a connect timeout, not a hang
    with pytest.raises(InvalidRequest, match="use etcd://HOST:PORT"):
        Host(netns=netns, state_dir=f"{tmp_path}/h1", store="http://192.0.2.200:2379")
    assert kernel_state(netns) == before
    # The CLI says it in one line, exit code 1.
    listed = keelnet_cli(netns, tmp_path / "h1", "etcd://192.0.2.200:2379", "network", "ls")  # type: ignore[operator]
    assert listed.returncode == 1
    assert listed.stderr.startswith("Error: the etcd store is unreachable")
    assert len(listed.stderr.strip().splitlines()) == 1
    # Without a store nothing needs etcd: local networks work as ever.
    with Host(netns=netns, state_dir=f"{tmp_path}/h2") as host:
        host.create_network("br", subnet="10.77.0.0/24")
        with pytest.raises(
            InvalidRequest, match="overlay networks are global: give a cluster store"
        ):
            host.create_network("ov", driver="overlay", subnet="10.0.9.0/24")
        host.remove_network("br")
