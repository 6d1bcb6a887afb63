"""keelnet's overlay through the plugin: a Docker container and a keelnet host, one network.

The plugin (dockerd's namespace, the root one) runs as a member of an etcd the test
starts in a namespace of its own, on an underlay segment (203.0.113.0/24, TEST-NET-3)
that the root namespace joins by one veth leg. A second test host, a namespace of its
own with a keelnet Host on the same store, connects a sandbox to the Docker network by
its keelnet name; the two talk across VXLAN. Teardown removes it all, also on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clusterlab import EtcdCluster, Segment, make_host_ns, overlay_ns, remote_macs
from dockerlab import DockerError, DockerLab, container_links, docker, kn_links, ping
from netlab import remove_prefix
from nettools import ping as ping_from
from nettools import wait_until
from pyroute2 import IPRoute

from keelnet import Host
from keelnet.kernel.namespaces import iproute, netns_path, write_sysctl

UNDERLAY = "203.0.113."
PLUGIN_VTEP = f"{UNDERLAY}1"


@dataclass
class Cluster:
    """The etcd, the plugin as a member of it, and test host 2 with a sandbox."""

    etcd: EtcdCluster
    other: Host
    sandbox: str


def _routed(network: str) -> bool:
    ours = ipaddress.ip_network(network)
    with IPRoute() as ipr:
        for route in ipr.route("dump", family=2):
            if route["dst_len"] and ipaddress.ip_network(
                f"{route.get('dst')}/{route['dst_len']}", strict=False
            ).overlaps(ours):
                return True
    return False


@contextlib.contextmanager
def root_leg(segment: Segment, ifname: str) -> Iterator[None]:
    """A veth from the underlay's bridge into the root namespace, as `ifname` with the
    plugin host's underlay address: the way to etcd and the other host's VTEP."""
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with iproute(netns_path(segment.netns)) as ipr:
            port = f"{ifname[-4:]}p"
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": fd})
            bridge = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=bridge, state="up")
    finally:
        os.close(fd)
    try:
        write_sysctl(None, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=index, address=PLUGIN_VTEP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        yield
    finally:
        with IPRoute() as ipr, contextlib.suppress(Exception):
            ipr.link("del", index=ipr.link_lookup(ifname=ifname)[0])


@pytest.fixture
def cluster(lab: DockerLab, tmp_path: Path) -> Iterator[Cluster]:
    if _routed(f"{UNDERLAY}0/24"):
        pytest.skip(f"this machine routes {UNDERLAY}0/24, the overlay test's underlay")
    prefix = lab.prefix
    segment = Segment(prefix, "sw", UNDERLAY)
    etcd = EtcdCluster(prefix, segment, tmp_path / "etcd")
    other: Host | None = None
    try:
        segment.create()
        etcd.start()
        with root_leg(segment, f"{prefix}u"):
            lab.plugin.stop()
            lab.plugin.store = etcd.url
            lab.plugin.start()
            make_host_ns(f"{prefix}-h2")
            segment.plug(f"{prefix}-h2", 2)
            other = Host(netns=f"{prefix}-h2", state_dir=tmp_path / "h2", store=etcd.url)
            sandbox = other.create_sandbox(f"{prefix}-s2").name
            try:
                yield Cluster(etcd, other, sandbox)
            finally:
                # Host 2 leaves first (a network is removed only without endpoints), then
                # Docker's side goes while the plugin is still the cluster's member.
                with contextlib.suppress(Exception):
                    other.remove_sandbox(sandbox)
                lab.cleanup()
    finally:
        if other is not None:
            other.close()
        lab.plugin.stop()
        lab.plugin.store = None
        lab.plugin.start()
        etcd.stop()
        remove_prefix(f"{prefix}-")


@pytest.mark.parametrize("dataplane", ["kernel", "userspace"])
def test_a_container_on_the_overlay_pings_a_keelnet_host(
    lab: DockerLab, cluster: Cluster, dataplane: str
) -> None:
    plugin = lab.plugin.name
    net = lab.network(
        "ov",
        "-o",
        "keelnet.driver=overlay",
        "-o",
        f"dataplane={dataplane}",
        "--ipam-driver",
        plugin,
        "--subnet",
        "10.213.30.0/24",
    )
    nid = str(lab.inspect("network", net)["Id"])
    name = f"docker-{nid[:12]}"
    other = cluster.other
    # Host 2 takes the first free address in the cluster store...
    remote = other.connect(name, cluster.sandbox)
    assert remote.ip == "10.213.30.2"
    # ...so keelnet's IPAM gives the container the next one.
    box = lab.run("a", "--network", net)
    address = lab.address(box, net)
    assert address == "10.213.30.3"
    mac = lab.address(box, net, "MacAddress")
    assert mac == "02:42:0a:d5:1e:03"
    assert container_links(lab, box)["eth0"] == ("veth" if dataplane == "kernel" else "tun")
    routes = lab.exec(box, "ip", "route")
    assert "default" not in routes  # the overlay only: no docker_gwbridge beside it
    assert "docker_gwbridge" not in lab.docker("network", "ls", "--format", "{{.Name}}")

    assert ping(lab, box, remote.ip)
    assert wait_until(lambda: ping_from(cluster.sandbox, address, timeout=0.5), timeout=10)
    if dataplane == "kernel":  # the plugin's host part: a bridge and vxlan in kn-ov-<id>
        assert Path(netns_path(overlay_ns("kn", nid))).exists()
    # Host 2 sends to the container's MAC through the plugin host's VTEP.
    assert (mac, PLUGIN_VTEP) in remote_macs(other, other.network(name))

    # An address host 2 holds, asked for by hand: refused, saying whose it is.
    with pytest.raises(DockerError) as refused:
        lab.run("dup", "--network", net, "--ip", remote.ip)
    assert f"already taken on network {name} by host {lab.prefix}-h2" in refused.value.stderr
    assert other.global_store is not None
    assert [e.ip for e in other.global_store.endpoints()] == [remote.ip]

    lab.docker("rm", "-f", box)
    other.disconnect(name, cluster.sandbox)
    lab.docker("network", "rm", net)
    assert other.global_store is not None and other.global_store.find_network(nid) is None
    assert not Path(netns_path(overlay_ns("kn", nid))).exists()
    assert not [link for link in kn_links() if link.startswith("kn-c")]


def test_overlay_without_a_store_is_refused_saying_what_to_do(lab: DockerLab) -> None:
    with pytest.raises(DockerError) as refused:
        lab.network("ovx", "-o", "keelnet.driver=overlay", "--subnet", "10.213.31.0/24")
    assert "keelnet --store etcd://HOST:PORT plugin" in refused.value.stderr
    assert docker("network", "ls", "-q", "--filter", f"name={lab.prefix}-ovx") == ""
