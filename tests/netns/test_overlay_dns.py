"""Names across hosts: on an overlay network a sandbox finds the sandboxes of the other
hosts by name and alias, fed to its host's DNS server by the cluster watch.

Lookups go through the sandboxes' own tools (`getent`, busybox `nslookup` and `ping`,
Python's `getaddrinfo`) and raw queries to 127.0.0.11. The test hosts' resolv.conf
names no upstream server (clusterlab), so no query leaves the test's namespaces.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from clusterlab import Agent, Cluster, make_host_ns
from dnslab import addresses, ask
from nettools import wait_until

from keelnet import dns
from keelnet import sandbox as sandboxes
from keelnet.cluster import DEFAULT_LEASE_TTL
from keelnet.kernel.namespaces import iproute, netns_path

pytestmark = pytest.mark.netns

NXDOMAIN = 3
LEASE_TTL = DEFAULT_LEASE_TTL  # the agent's


def run(path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in the sandbox at `path` as `keelnet sandbox exec` runs it."""
    return sandboxes.exec_in(path, argv, capture_output=True, text=True, timeout=30)


def getent(path: str, *args: str) -> list[str]:
    result = run(path, "getent", *args)
    return result.stdout.split() if result.returncode == 0 else []


def unknown(path: str, name: str) -> bool:
    """Whether the resolver says NXDOMAIN for `name`, asked from the sandbox at `path`."""
    answer = ask(path, name)
    return answer is not None and answer.rcode == NXDOMAIN


def test_names_of_other_hosts_resolve_on_shared_overlay_networks_only(cluster: Cluster) -> None:
    a = cluster.add_host(1, dataplane="kernel")
    b = cluster.add_host(2, dataplane="userspace")
    c = cluster.add_host(3)
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    a.create_network("ov2", driver="overlay", subnet="10.0.10.0/24")
    app, both = cluster.sandbox(a, "app"), cluster.sandbox(a, "both")
    web, other = cluster.sandbox(b, "web"), cluster.sandbox(b, "other")
    api2 = cluster.sandbox(c, "api2")
    ip_app = a.connect("ov1", app).ip
    a.connect("ov1", both)
    a.connect("ov2", both)
    ip_web = b.connect("ov1", web, aliases=["api"]).ip
    ip_other = b.connect("ov2", other).ip
    ip_api2 = c.connect("ov1", api2, aliases=["api"]).ip
    assert ip_app and ip_web and ip_other and ip_api2
    at_app, at_both = a.sandbox(app).path, a.sandbox(both).path

    # The watch brings b's endpoint to a: its name answers, with the system's tools.
    assert wait_until(lambda: getent(at_app, "hosts", web)[:2] == [ip_web, web], timeout=10)
    lookup = run(at_app, "busybox", "nslookup", web)
    assert f"Address: {ip_web}" in lookup.stdout, lookup.stdout + lookup.stderr
    script = f"import socket; print(socket.getaddrinfo({web!r}, 80, socket.AF_INET)[0][4][0])"
    python = run(at_app, "python3", "-c", script)
    assert python.stdout.strip() == ip_web, python.stderr
    assert getent(at_app, "hosts", f"{web}.ov1")[:1] == [ip_web]
    # A ping by name crosses the overlay and gets its reply.
    ping = ("busybox", "ping", "-c1", "-W2", web)
    assert wait_until(lambda: run(at_app, *ping).returncode == 0, timeout=10)
    # An alias sandboxes on two other hosts share answers with both; reverse lookups
    # answer name.network; and the other way round b's sandbox finds a's.
    assert wait_until(lambda: sorted(addresses(ask(at_app, "api"))) == sorted([ip_web, ip_api2]))
    assert getent(at_app, "hosts", ip_web)[:2] == [ip_web, f"{web}.ov1"]
    assert wait_until(lambda: getent(b.sandbox(web).path, "hosts", app)[:1] == [ip_app])

    # Scoped: a name on ov2 is unknown to a sandbox only on ov1, and is seen by one on
    # both networks (with the local and the remote names of ov1).
    assert wait_until(lambda: getent(at_both, "hosts", other)[:1] == [ip_other])
    assert unknown(at_app, other)
    assert getent(at_both, "hosts", app)[:1] == [ip_app]
    assert getent(at_both, "hosts", web)[:1] == [ip_web]

    # A disconnect on b takes the name off a, and b's address off the shared alias.
    b.disconnect("ov1", web)
    assert wait_until(lambda: unknown(at_app, web), timeout=10)
    assert addresses(ask(at_app, "api")) == [ip_api2]


def test_names_of_a_killed_agent_go_with_its_lease(cluster: Cluster, tmp_path: Path) -> None:
    """A CLI user's host: its agent serves names too; SIGKILLed, its names leave the
    other hosts' resolvers as its lease runs out."""
    a = cluster.add_host(1, lease_ttl=LEASE_TTL)
    second = f"{cluster.etcd.prefix}-h2"
    make_host_ns(second)
    cluster.etcd.segment.plug(second, 2)
    agent = Agent(second, tmp_path / "h2", cluster.etcd.url)
    try:
        a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
        app = cluster.sandbox(a, "app")
        ip_app = a.connect("ov1", app).ip
        far = f"{cluster.etcd.prefix}-far"
        connect = ("network", "connect", "--alias", "db", "ov1", far)
        for argv in (("sandbox", "create", far), connect):
            done = agent.cli(*argv)
            assert done.returncode == 0, done.stderr
        at_app, at_far = a.sandbox(app).path, netns_path(far)
        assert wait_until(lambda: len(addresses(ask(at_app, far))) == 1, timeout=10)
        assert addresses(ask(at_app, "db")) == addresses(ask(at_app, far))
        assert getent(at_far, "hosts", app)[:1] == [ip_app]  # served by the agent
        agent.kill()
        gone = lambda: unknown(at_app, far) and unknown(at_app, "db")  # noqa: E731
        assert wait_until(gone, timeout=LEASE_TTL + 1, step=0.05)
    finally:
        agent.stop()


@pytest.mark.parametrize("reopened", [False, True], ids=["same-host", "reopened-host"])
def test_bridge_connect_and_disconnect_need_no_etcd(cluster: Cluster, reopened: bool) -> None:
    """A sandbox on an overlay network joins and leaves a bridge network while etcd is
    down: the host knows its own overlay endpoints without asking (those it connected,
    or, opened again, those its cluster watch listed at start), and the names on the
    bridge network come and go as they should (the overlay's stay)."""
    a = cluster.add_host(1)
    a.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    a.create_network("br", subnet="10.0.20.0/24")
    app, web = cluster.sandbox(a, "app"), cluster.sandbox(a, "web")
    ip_overlay = a.connect("ov1", app).ip
    ip_web = a.connect("br", web).ip
    at_app, at_web = a.sandbox(app).path, a.sandbox(web).path
    if reopened:
        a.close()
        a = cluster.add_host(1)
    cluster.etcd.stop_member(0)
    try:
        endpoint = a.connect("br", app, aliases=["db"])
        # Its interfaces of ov1 and kn-gwbridge stay; the bridge's comes as a third.
        assert endpoint.ifname == "eth2"
        with iproute(at_app) as ipr:
            assert sorted(str(link.get("ifname")) for link in ipr.link("dump")) == [
                "eth0",
                "eth1",
                "eth2",
                "lo",
            ]
        # The bridge's sandbox finds app by name and alias, app finds it, and app still
        # finds its own overlay name.
        assert getent(at_web, "hosts", app)[:1] == [endpoint.ip]
        assert addresses(ask(at_web, "db")) == [endpoint.ip]
        assert getent(at_app, "hosts", web)[:1] == [ip_web]
        assert getent(at_app, "hosts", f"{app}.ov1")[:1] == [ip_overlay]

        a.disconnect("br", app)
        assert unknown(at_web, app) and unknown(at_web, "db")
        assert unknown(at_app, web)
        assert getent(at_app, "hosts", app)[:1] == [ip_overlay]  # still served: ov1
        assert dns.resolv_conf_path(app).exists()
        assert [e.ip for e in a.endpoints("br")] == [ip_web]
    finally:
        cluster.etcd.start_member(0)
        cluster.etcd.wait_healthy()
