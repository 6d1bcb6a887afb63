"""keelnet's plugin serving an overlay network, driven as dockerd drives it, no dockerd.

The plugin's Host is test host 1 (a member of the test's etcd); the test plays dockerd:
it sends the requests, moves the interface Join names into a "container" namespace as
eth0 and sets it up there. Test host 2 is a keelnet Host on the same store whose sandbox
talks to that container across VXLAN. (tests/docker has the same with the real dockerd.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from clusterlab import Cluster, EtcdCluster, kernel_remote_macs, make_host_ns, overlay_ns
from netlab import create_ns, run_in
from nettools import ping, wait_until
from pluginlab import post, served_plugin

from keelnet.kernel.namespaces import iproute, netns_path
from keelnet.model import HANDOVER_PREFIX

pytestmark = pytest.mark.netns

SUBNET = "10.99.7.0/24"


def create_network(socket: Path, network_id: str, dataplane: str) -> tuple[int, Any]:
    options = {"keelnet.driver": "overlay", "dataplane": dataplane}
    return post(
        socket,
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": options},
            "IPv4Data": [
                {"AddressSpace": "LocalDefault", "Pool": SUBNET, "Gateway": "10.99.7.1/24"}
            ],
            "IPv6Data": [],
        },
    )


def as_dockerd_does(host_netns: str, src_name: str, container: str, mac: str, cidr: str) -> None:
    """Move the plugin's interface into the container's namespace as eth0, then give it
    the endpoint's MAC and address and bring it up (libnetwork's part of a Join)."""
    with iproute(netns_path(host_netns)) as ipr:
        index = ipr.link_lookup(ifname=src_name)[0]
        fd = os.open(netns_path(container), os.O_RDONLY)
        try:
            ipr.link("set", index=index, net_ns_fd=fd, ifname="eth0")
        finally:
            os.close(fd)
    run_in(container, "ip", "link", "set", "eth0", "address", mac)
    run_in(container, "ip", "addr", "add", cidr, "dev", "eth0")
    run_in(container, "ip", "link", "set", "eth0", "up")


@pytest.mark.parametrize("dataplane", ["kernel", "userspace"])
def test_a_container_of_the_plugins_overlay_reaches_a_keelnet_host(
    cluster: Cluster, etcd: EtcdCluster, cluster_prefix: str, tmp_path: Path, dataplane: str
) -> None:
    plugin_host = f"{cluster_prefix}-h1"
    make_host_ns(plugin_host)
    etcd.segment.plug(plugin_host, 1)
    other = cluster.add_host(2)
    socket = tmp_path / "plugin.sock"
    network_id, endpoint_id = secrets.token_hex(32), secrets.token_hex(32)
    endpoint = {"NetworkID": network_id, "EndpointID": endpoint_id}
    container = f"{cluster_prefix}-c1"
    create_ns(container)
    with served_plugin(plugin_host, socket, tmp_path / "h1", store=etcd.url):
        assert create_network(socket, network_id, dataplane) == (200, {})
        assert create_network(socket, network_id, dataplane) == (200, {})  # a replay
        name = f"docker-{network_id[:12]}"
        network = other.network(name)  # the other hosts see it under that name
        assert network.scope == "global" and network.ipam[0].subnet == SUBNET
        app = cluster.sandbox(other, "app")
        remote = other.connect(name, app)
        assert remote.ip == "10.99.7.2"  # the gateway is Docker's, .1

        # dockerd's own IPAM may pick an address another host holds: refused, saying so
        taken = {"Address": "10.99.7.2/24", "MacAddress": ""}
        status, answer = post(
            socket, "NetworkDriver.CreateEndpoint", {**endpoint, "Interface": taken}
        )
        assert status == 500 and f"by host {cluster_prefix}-h2" in answer["Err"]
        assert "--ipam-driver keelnet" in answer["Err"]

        interface = {"Address": "10.99.7.3/24", "MacAddress": ""}
        status, answer = post(
            socket, "NetworkDriver.CreateEndpoint", {**endpoint, "Interface": interface}
        )
        assert status == 200
        mac = answer["Interface"]["MacAddress"]
        assert mac == "02:42:0a:63:07:03"  # derived from the address: peers need no ARP
        key = netns_path(container)
        status, joined = post(socket, "NetworkDriver.Join", {**endpoint, "SandboxKey": key})
        assert status == 200
        src_name = joined["InterfaceName"]["SrcName"]
        assert src_name == f"{HANDOVER_PREFIX}{endpoint_id[:11]}"
        assert "Gateway" not in joined and joined["DisableGatewayService"] is True
        as_dockerd_does(plugin_host, src_name, container, mac, "10.99.7.3/24")
        kind = run_in(container, "ip", "-d", "link", "show", "eth0")
        assert ("veth" if dataplane == "kernel" else "tun") in kind

        assert wait_until(lambda: ping(container, remote.ip, timeout=0.5), timeout=10)
        assert ping(app, "10.99.7.3")
        if dataplane == "kernel":  # the container's MAC sits behind host 1's VTEP there
            behind = kernel_remote_macs(overlay_ns(f"{cluster_prefix}-h2", network.id))
            assert (mac, "192.0.2.1") in behind
    # The plugin stops (a userspace plane with it: the container's TAP waits, persistent)
    # and starts again: the container is served again, still as dockerd set it up.
    with served_plugin(plugin_host, socket, tmp_path / "h1", store=etcd.url):
        assert wait_until(lambda: ping(container, remote.ip, timeout=0.5), timeout=10)
        assert ping(app, "10.99.7.3")
        assert "10.99.7.3/24" in run_in(container, "ip", "addr", "show", "eth0")
        assert post(socket, "NetworkDriver.Leave", endpoint) == (200, {})
        assert post(socket, "NetworkDriver.DeleteEndpoint", endpoint) == (200, {})
        assert "eth0" not in run_in(container, "ip", "link")
        assert not Path(netns_path(overlay_ns(plugin_host, network_id))).exists()
        other.disconnect(name, app)
        assert post(socket, "NetworkDriver.DeleteNetwork", {"NetworkID": network_id}) == (200, {})
        assert other.global_store is not None
        assert other.global_store.find_network(network_id) is None
    with iproute(netns_path(plugin_host)) as ipr:
        left = [str(link.get("ifname")) for link in ipr.link("dump")]
    assert not [name for name in left if name.startswith("kn-")]


def test_overlay_without_a_store_is_refused_saying_what_to_do(
    cluster_prefix: str, tmp_path: Path
) -> None:
    plugin_host = f"{cluster_prefix}-h1"
    make_host_ns(plugin_host)
    socket = tmp_path / "plugin.sock"
    with served_plugin(plugin_host, socket, tmp_path / "h1"):
        status, answer = create_network(socket, secrets.token_hex(32), "auto")
    assert status == 500
    assert "keelnet --store etcd://HOST:PORT plugin" in answer["Err"]
