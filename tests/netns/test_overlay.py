"""Overlay networks across test hosts, with etcd as the shared store."""

from __future__ import annotations

import pytest
from clusterlab import Cluster
from nettools import ping, wait_until

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
