"""The etcd client keelnet's store uses, against real etcd clusters in namespaces."""

from __future__ import annotations

import time

import pytest
from clusterlab import EtcdCluster, Segment, make_host_ns

from keelnet.errors import InvalidRequest, StoreUnavailable
from keelnet.kernel.namespaces import netns_path
from keelnet.store.etcd_client import Compare, EtcdClient, Txn, WatchEnded, WatchEvent, parse_url

pytestmark = pytest.mark.netns


def client_on(underlay: Segment, cluster: EtcdCluster, number: int = 1) -> EtcdClient:
    host = f"{underlay.prefix}-h{number}"
    make_host_ns(host)
    underlay.plug(host, number)
    return EtcdClient(cluster.url, netns_path(host))


def test_urls_are_parsed_or_refused() -> None:
    assert parse_url("etcd://192.0.2.1:2379,192.0.2.2") == [
        ("192.0.2.1", 2379),
        ("192.0.2.2", 2379),
    ]
    assert parse_url("etcd://[2001:db8::1]:2400") == [("2001:db8::1", 2400)]
    for bad in ("http://192.0.2.1:2379", "etcd://", "etcd://a:99999", "192.0.2.1"):
        with pytest.raises(InvalidRequest, match="etcd"):
            parse_url(bad)


def test_compare_and_swap_and_prefix_guard(underlay: Segment, etcd: EtcdCluster) -> None:
    client = client_on(underlay, etcd)
    client.put("/t/a", b"1")
    first = client.get("/t/a")
    assert first is not None and first.value == b"1"
    assert client.txn(Txn([Compare("/t/a", first.mod_revision)], [("/t/a", b"2", 0)], []))
    # The same compare again is stale: nothing is written.
    assert not client.txn(Txn([Compare("/t/a", first.mod_revision)], [("/t/a", b"3", 0)], []))
    found, revision = client.range("/t/", prefix=True)
    assert [(kv.key, kv.value) for kv in found] == [("/t/a", b"2")]
    guard = Compare("/t/", prefix=True, below=revision + 1)
    assert client.txn(Txn([guard], [("/t/b", b"x", 0)], []))
    assert not client.txn(Txn([guard], [("/t/c", b"x", 0)], []))  # /t/b changed the prefix
    assert client.get("/t/c") is None


def test_watch_sees_events_member_loss_and_compaction(
    underlay: Segment, etcd3: EtcdCluster
) -> None:
    client = client_on(underlay, etcd3)
    _, revision = client.range("/w/", prefix=True)
    watch = client.watch("/w/", revision + 1)
    try:
        client.put("/w/x", b"1")
        client.delete("/w/x")
        put, deleted = watch.events.get(timeout=10), watch.events.get(timeout=10)
        assert isinstance(put, WatchEvent) and (put.kind, put.key, put.value) == (
            "put",
            "/w/x",
            b"1",
        )
        assert isinstance(deleted, WatchEvent) and deleted.kind == "delete"
        # The member serving the watch dies: the watch says so; the others still answer.
        watched = next(i for i, m in enumerate(etcd3.members) if m.address == watch.member[0])
        etcd3.stop_member(watched)
        assert watch.events.get(timeout=10) == WatchEnded(compacted=False)
        client.put("/w/y", b"2")
    finally:
        watch.cancel()
    etcd3.etcdctl("compact", str(deleted.revision + 1))
    assert client.compacted_since(revision + 1)
    again = client.watch("/w/", revision + 1)
    try:
        assert again.events.get(timeout=10) == WatchEnded(compacted=True)
    finally:
        again.cancel()


def test_one_member_down_changes_nothing_all_down_fails_fast(
    underlay: Segment, etcd3: EtcdCluster
) -> None:
    client = client_on(underlay, etcd3)
    etcd3.stop_member(0)
    client.put("/m/a", b"1")
    assert client.get("/m/a") is not None
    etcd3.stop_member(1)
    etcd3.stop_member(2)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"unreachable.*192\.0\.2\.10"):
        client.put("/m/b", b"2")
    assert time.monotonic() - start < 10  # refused connections: no hang
