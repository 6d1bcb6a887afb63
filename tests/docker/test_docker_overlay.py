"""keelnet's overlay through the plugin: a Docker container and a keelnet host, one network.

The plugin (dockerd's namespace) runs as a member of an etcd the test starts in a
namespace of its own (`overlaylab`). A second test host, a namespace of its own with a
keelnet Host on the same store, connects a sandbox to the Docker network by its keelnet
name; the two talk across VXLAN. Teardown removes it all, also on failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clusterlab import make_host_ns, overlay_ns, remote_macs
from dockerlab import DockerError, DockerLab, container_links, docker, kn_links, ping
from nettools import ping as ping_from
from nettools import wait_until
from overlaylab import PLUGIN_VTEP, etcd_beside_dockerd, why_no_underlay

from keelnet import Host
from keelnet.dns import NETNS_ETC
from keelnet.kernel.namespaces import netns_path


@dataclass
class Cluster:
    """Test host 2, a member of the plugin's cluster, and its sandbox."""

    other: Host
    sandbox: str


@pytest.fixture
def cluster(lab: DockerLab, tmp_path: Path) -> Iterator[Cluster]:
    reason = why_no_underlay()
    if reason is not None:
        pytest.skip(reason)
    prefix = lab.prefix
    with etcd_beside_dockerd(prefix, tmp_path) as etcd:
        try:
            lab.plugin.stop()
            lab.plugin.store = etcd.url
            lab.plugin.start()
            make_host_ns(f"{prefix}-h2")
            etcd.segment.plug(f"{prefix}-h2", 2)
            other = Host(netns=f"{prefix}-h2", state_dir=tmp_path / "h2", store=etcd.url)
            try:
                sandbox = other.create_sandbox(f"{prefix}-s2").name
                try:
                    yield Cluster(other, sandbox)
                finally:
                    # Host 2 leaves first (a network goes only without endpoints), then
                    # Docker's side, while the plugin is still the cluster's member.
                    with contextlib.suppress(Exception):
                        other.remove_sandbox(sandbox)
                    lab.cleanup()
            finally:
                other.close()
        finally:
            lab.plugin.stop()
            lab.plugin.store = None
            lab.plugin.start()


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

    # The plugin killed and started again: the container is served again (a userspace
    # plane attaches to the TAP that waited, set up as dockerd left it).
    lab.plugin.kill()
    lab.plugin.start()
    assert wait_until(lambda: ping(lab, box, remote.ip, count=1), timeout=30)
    assert wait_until(lambda: ping_from(cluster.sandbox, address, timeout=0.5), timeout=10)
    # Docker's own DNS serves its containers: the plugin, starting again, made keelnet's
    # DNS no resolv.conf for this one (nothing would ever remove it).
    sandbox_key = Path(str(lab.inspect("container", box)["NetworkSettings"]["SandboxKey"]))
    assert not (NETNS_ETC / sandbox_key.name).exists()

    # An address host 2 holds, asked for by hand: refused, saying whose it is, and
    # nothing is left of the attempt.
    with pytest.raises(DockerError) as refused:
        lab.run("dup", "--network", net, "--ip", remote.ip)
    assert f"already taken on network {name} by host {lab.prefix}-h2" in refused.value.stderr
    assert other.global_store is not None
    assert sorted(other.global_store.addresses(nid)) == [remote.ip, address]
    assert not [link for link in kn_links() if link.startswith("kn-c")]

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
