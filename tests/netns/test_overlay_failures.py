"""Overlay networks when things fail: agents killed, etcd members lost, racing hosts,
underlay links cut, bad input. Each test checks the kernel's or the switch's real
tables and real packets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clusterlab import PINGER, Agent, Cluster, make_host_ns, remote_macs
from nettools import WatcherScript, ping, wait_until

from keelnet.drivers.overlay import mac_for

pytestmark = pytest.mark.netns
LEASE_TTL = 3


def agent_ip(agent: Agent, network: str, sandbox: str) -> str:
    shown = agent.cli("network", "inspect", network)
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)[0]["Containers"][sandbox]["IPv4Address"].split("/")[0])


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
        a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
        app1, app2 = cluster.sandbox(a, "app1"), cluster.sandbox(b, "app2")
        ep2 = b.connect("ov1", app2)
        a.connect("ov1", app1)
        app3 = f"{cluster.etcd.prefix}-app3"
        for argv in (("sandbox", "create", app3), ("network", "connect", "ov1", app3)):
            done = agent.cli(*argv)
            assert done.returncode == 0, done.stderr
        ip3 = agent_ip(agent, "ov1", app3)
        mac3 = mac_for(ip3)
        assert wait_until(lambda: ping(app1, ip3, timeout=0.5), timeout=10)
        assert ping(app2, ip3, timeout=2)

        def gone_everywhere() -> bool:
            return all(mac3 not in {mac for mac, _ in remote_macs(h, "ov1")} for h in (a, b))

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
