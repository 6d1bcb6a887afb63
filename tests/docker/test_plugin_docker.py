"""keelnet as Docker's network and IPAM plugin, driven by this machine's dockerd.

Every test checks what the kernel holds (links, addresses, nftables rules), what arrives
(pings, files compared byte for byte) and what keelnet's store says, besides what docker
answers. Traffic stays between the test's containers and the host's own keelnet bridges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerlab import DockerError, DockerLab, container_links, kn_links, ping, read_records
from pyroute2 import IPRoute

from keelnet.plugin.protocol import PORT_MAP
from keelnet.store import Store

SERVE = "dd if=/dev/urandom of=/www/blob bs=1024 count=3072 2>/dev/null && httpd -f -p 8080 -h /www"


def store_of(state_dir: Path) -> Store:
    return Store(state_dir)


def network_id(lab: DockerLab, network: str) -> str:
    return str(lab.inspect("network", network)["Id"])


def endpoint_id(lab: DockerLab, container: str, network: str) -> str:
    return lab.address(container, network, "EndpointID")


def fetch(lab: DockerLab, client: str, url: str, timeout: float = 30) -> str:
    """The sha256 of what `client` gets from `url` (retried while the server starts)."""
    deadline = time.monotonic() + timeout
    get = f"rm -f /tmp/got; timeout 10 wget -q -O /tmp/got {url} && sha256sum /tmp/got"
    while True:
        out = lab.exec(client, "sh", "-c", get, check=False)
        if out and len(out.split()[0]) == 64:
            return out.split()[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{client} got nothing from {url}")
        time.sleep(0.3)


def blob_digest(lab: DockerLab, server: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        out = lab.exec(server, "sha256sum", "/www/blob", check=False)
        if out and len(out.split()[0]) == 64:
            return out.split()[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{server} made no /www/blob")
        time.sleep(0.2)


def host_link(name: str) -> dict[str, object] | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.link("get", index=found[0])[0]
        addresses = [
            f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=found[0])
        ]
        return {
            "kind": link.get(("linkinfo", "kind")),
            "master": link.get("master"),
            "addresses": addresses,
            "index": found[0],
        }


def nft_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout


def test_two_containers_ping_and_copy_a_file_byte_exactly(lab: DockerLab, state_dir: Path) -> None:
    net = lab.network("web", "--subnet", "10.213.1.0/24")
    nid = network_id(lab, net)
    bridge = host_link(f"kn-{nid[:12]}")
    assert bridge is not None and bridge["kind"] == "bridge"
    assert "10.213.1.1/24" in bridge["addresses"]  # type: ignore[operator]

    server = lab.run("srv", "--network", net, command=["sh", "-c", SERVE])
    client = lab.run("cli", "--network", net)
    server_ip = lab.address(server, net)
    assert ipaddress.ip_address(server_ip) in ipaddress.ip_network("10.213.1.0/24")
    for container in (server, client):
        veth = host_link(f"kn-v{endpoint_id(lab, container, net)[:11]}")
        assert veth is not None and veth["master"] == bridge["index"], container
    assert "default via 10.213.1.1 dev eth0" in lab.exec(client, "ip", "route")
    assert f"inet {lab.address(client, net)}/24" in lab.exec(client, "ip", "addr", "show", "eth0")

    assert ping(lab, client, server_ip)
    assert fetch(lab, client, f"http://{server_ip}:8080/blob") == blob_digest(lab, server)
    # Names are Docker's to serve (its DNS server in each container), not keelnet's.
    assert fetch(lab, client, f"http://{server}:8080/blob") == blob_digest(lab, server)
    assert "nameserver 127.0.0.11" in lab.exec(client, "cat", "/etc/resolv.conf")

    store = store_of(state_dir)
    try:
        network = store.find_network(nid)
        assert network is not None and network.name == f"docker-{nid[:12]}"
        joined = {e.id: e for e in store.endpoints(network_id=nid)}
        for container in (server, client):
            endpoint = joined[endpoint_id(lab, container, net)]
            assert endpoint.sandbox and endpoint.ip == lab.address(container, net)
            assert not (Path("/etc/netns") / endpoint.sandbox).exists()
    finally:
        store.close()


def test_connect_and_disconnect_a_running_container(lab: DockerLab, state_dir: Path) -> None:
    net = lab.network("cd", "--subnet", "10.213.2.0/24")
    first = lab.network("cd0", "--subnet", "10.213.22.0/24")
    peer = lab.run("peer", "--network", net)
    box = lab.run("box", "--network", first)
    lab.docker("network", "connect", "--ip", "10.213.2.40", net, box)
    assert lab.address(box, net) == "10.213.2.40"
    veth = f"kn-v{endpoint_id(lab, box, net)[:11]}"
    assert host_link(veth) is not None
    assert "inet 10.213.2.40/24" in lab.exec(box, "ip", "addr", "show", "eth1")
    assert ping(lab, peer, "10.213.2.40")

    lab.docker("network", "disconnect", net, box)
    assert "10.213.2.40" not in lab.exec(box, "ip", "addr")
    assert "eth0" in lab.exec(box, "ip", "addr")  # the other network stays
    assert host_link(veth) is None
    assert not ping(lab, peer, "10.213.2.40", count=1)
    store = store_of(state_dir)
    try:
        endpoints = store.endpoints(network_id=network_id(lab, net))
        assert [e.ip for e in endpoints] == [lab.address(peer, net)]
    finally:
        store.close()


def test_rm_f_and_network_rm_leave_nothing(lab: DockerLab, state_dir: Path) -> None:
    bridge_name = f"{lab.plugin.name}-br"
    net = lab.network(
        "rm", "--subnet", "10.213.3.0/24", "-o", f"com.docker.network.bridge.name={bridge_name}"
    )
    nid = network_id(lab, net)
    assert host_link(bridge_name) is not None  # the -o option reached keelnet's driver
    box = lab.run("box", "--network", net)
    veth = f"kn-v{endpoint_id(lab, box, net)[:11]}"
    assert host_link(veth) is not None

    lab.docker("rm", "-f", box)
    assert host_link(veth) is None
    store = store_of(state_dir)
    try:
        assert store.endpoints(network_id=nid) == []
        assert [s for s in store.sandboxes() if s.transient] == []
        lab.docker("network", "rm", net)
        assert host_link(bridge_name) is None
        assert store.find_network(nid) is None
        assert bridge_name not in nft_ruleset()
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_get(url: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_published_port_reaches_the_container(lab: DockerLab) -> None:
    net = lab.network("pub", "--subnet", "10.213.4.0/24")
    other = lab.network("pub2", "--subnet", "10.213.14.0/24")
    port = _free_port()
    page = "echo published-by-keelnet > /www/index.html && httpd -f -p 8080 -h /www"
    server = lab.run("srv", "--network", net, "-p", f"{port}:8080", command=["sh", "-c", page])
    server_ip = lab.address(server, net)
    assert f"dnat ip to {server_ip}:8080" in nft_ruleset()
    # The plugin tells dockerd the mapping as libnetwork's bridge driver does (in what
    # EndpointOperInfo answers); dockerd takes it only from its own drivers (a Go type
    # assertion on []types.PortBinding in getEndpointPortMapInfo, 20.10 to today's moby),
    # so `docker port` and docker ps's PORTS show none.
    binding = {"Proto": 6, "IP": server_ip, "Port": 8080, "HostIP": "0.0.0.0"}
    binding |= {"HostPort": port, "HostPortEnd": port}
    told = [
        entry["answer"]["Value"].get(PORT_MAP)
        for entry in read_records(lab.plugin.record)
        if entry["method"] == "NetworkDriver.EndpointOperInfo"
        and entry["request"]["EndpointID"] == endpoint_id(lab, server, net)
    ]
    assert [binding] in told
    # dockerd 20.10 shows nothing; one that took a plugin's mapping must show this one.
    assert lab.docker("port", server) in ("", f"8080/tcp -> 0.0.0.0:{port}")
    # From the host itself (loopback), as `curl localhost:PORT` does...
    assert _http_get(f"http://127.0.0.1:{port}/index.html") == b"published-by-keelnet\n"
    # ...and from a container of another keelnet network, through its gateway address.
    client = lab.run("cli", "--network", other)
    get = f"timeout 10 wget -q -O /tmp/page http://10.213.14.1:{port}/ && cat /tmp/page"
    assert lab.exec(client, "sh", "-c", get) == "published-by-keelnet"
    assert not ping(lab, client, server_ip, count=1)  # only the published port, not the rest

    lab.docker("rm", "-f", server)
    assert f"dnat ip to {server_ip}:8080" not in nft_ruleset()


def test_fixed_address_and_keelnets_mac(lab: DockerLab) -> None:
    net = lab.network("ip", "--subnet", "10.213.5.0/24")
    box = lab.run("box", "--network", net, "--ip", "10.213.5.77")
    shown = lab.exec(box, "ip", "addr", "show", "eth0")
    assert "inet 10.213.5.77/24" in shown
    # The MAC keelnet answered CreateEndpoint with is the one dockerd reports and sets.
    mac = lab.address(box, net, "MacAddress")
    assert mac and f"link/ether {mac}" in shown
    with pytest.raises(DockerError, match=re.escape("10.213.5.77")):
        lab.run("dup", "--network", net, "--ip", "10.213.5.77")


def test_internal_network_reaches_nothing_outside(lab: DockerLab) -> None:
    inside = lab.network("int", "--internal", "--subnet", "10.213.6.0/24")
    outside = lab.network("ext", "--subnet", "10.213.16.0/24")
    a = lab.run("a", "--network", inside)
    b = lab.run("b", "--network", inside)
    c = lab.run("c", "--network", outside)
    assert "default" not in lab.exec(a, "ip", "route")
    assert ping(lab, a, lab.address(b, inside))
    assert not ping(lab, c, lab.address(a, inside), count=1)
    bridge = f"kn-{network_id(lab, inside)[:12]}"
    assert f'iifname "{bridge}" counter' in nft_ruleset()  # what leaves it is dropped


def test_two_keelnet_networks_are_isolated(lab: DockerLab) -> None:
    first = lab.network("iso1", "--subnet", "10.213.7.0/24")
    second = lab.network("iso2", "--subnet", "10.213.8.0/24")
    a = lab.run("a", "--network", first)
    a2 = lab.run("a2", "--network", first)
    b = lab.run("b", "--network", second)
    assert ping(lab, a, lab.address(a2, first))  # the control: a's network works
    assert ping(lab, a, "10.213.7.1")
    assert not ping(lab, a, lab.address(b, second), count=1)
    assert not ping(lab, b, lab.address(a, first), count=1)


def test_ipv6(lab: DockerLab) -> None:
    net = lab.network(
        "v6", "--ipv6", "--subnet", "10.213.9.0/24", "--subnet", "fd42:6b6e:7409::/64"
    )
    server = lab.run("srv", "--network", net, command=["sh", "-c", SERVE])
    client = lab.run("cli", "--network", net)
    server6 = lab.address(server, net, "GlobalIPv6Address")
    assert ipaddress.ip_address(server6) in ipaddress.ip_network("fd42:6b6e:7409::/64")
    assert "default via fd42:6b6e:7409::1" in lab.exec(client, "ip", "-6", "route")
    assert ping(lab, client, server6)
    assert fetch(lab, client, f"http://[{server6}]:8080/blob") == blob_digest(lab, server)


def test_userspace_data_plane(lab: DockerLab) -> None:
    net = lab.network("us", "-o", "dataplane=userspace", "--subnet", "10.213.10.0/24")
    gateway = host_link(f"kn-{network_id(lab, net)[:12]}")
    assert gateway is not None and gateway["kind"] == "tun"  # keelnet's switch, not a bridge
    server = lab.run("srv", "--network", net, command=["sh", "-c", SERVE])
    client = lab.run("cli", "--network", net)
    server_ip = lab.address(server, net)
    # The container's eth0 is the TAP keelnet handed dockerd.
    assert container_links(lab, client)["eth0"] == "tun"
    assert ping(lab, client, server_ip)
    assert fetch(lab, client, f"http://{server_ip}:8080/blob") == blob_digest(lab, server)


@contextlib.contextmanager
def veth_parent(name: str) -> Iterator[str]:
    """A veth pair of the root namespace, both ends up, as a macvlan/ipvlan parent: the
    containers' traffic stays on it."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}p"})
        try:
            for end in (name, f"{name}p"):
                ipr.link("set", index=ipr.link_lookup(ifname=end)[0], state="up")
            yield name
        finally:
            with contextlib.suppress(Exception):
                ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


@pytest.mark.parametrize("driver", ["macvlan", "ipvlan"])
def test_macvlan_and_ipvlan(lab: DockerLab, driver: str) -> None:
    """On a parent of the host (a veth pair here, so traffic stays on it). This kernel has
    no ipvlan module: keelnet's emulation serves ipvlan (the containers' eth0 is a TAP
    carrying the parent's MAC)."""
    with veth_parent(f"{lab.plugin.name}-p") as parent:
        net = lab.network(
            driver,
            "-o",
            f"keelnet.driver={driver}",
            "-o",
            f"parent={parent}",
            "--subnet",
            "10.213.11.0/24",
        )
        a = lab.run("a", "--network", net)
        b = lab.run("b", "--network", net)
        kind = container_links(lab, a)["eth0"]
        if driver == "macvlan":
            assert kind == "macvlan"
        else:
            assert kind in ("ipvlan", "tun")
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=parent)[0]
                parent_mac = ipr.link("get", index=index)[0].get("address")
            assert f"link/ether {parent_mac}" in lab.exec(a, "ip", "addr", "show", "eth0")
        assert ping(lab, a, lab.address(b, net))
        lab.cleanup()
        assert not any(name.startswith("kn-c") for name in kn_links())


def _routed_subnets() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    with IPRoute() as ipr:
        return [
            ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
            for route in ipr.route("dump")
            if route["dst_len"] and route.get("dst")
        ]


def test_keelnet_ipam(lab: DockerLab, state_dir: Path) -> None:
    plugin = lab.plugin.name
    net = lab.network(
        "ipam",
        "--ipam-driver",
        plugin,
        "--subnet",
        "10.213.12.0/24",
        "--ip-range",
        "10.213.12.128/25",
        "--gateway",
        "10.213.12.1",
        "--aux-address",
        "router=10.213.12.130",
    )
    a = lab.run("a", "--network", net)
    b = lab.run("b", "--network", net)
    for container in (a, b):
        address = ipaddress.ip_address(lab.address(container, net))
        assert address in ipaddress.ip_network("10.213.12.128/25")
        assert str(address) != "10.213.12.130"
    assert ping(lab, a, lab.address(b, net))
    routed_before = _routed_subnets()
    dynamic = lab.network("ipam2", "--ipam-driver", plugin, "--ipv6")
    configs = lab.inspect("network", dynamic)["IPAM"]["Config"]
    subnet, subnet6 = (ipaddress.ip_network(c["Subnet"]) for c in configs)
    assert not [r for r in routed_before if r.version == 4 and r.overlaps(subnet)]
    assert subnet6.prefixlen == 64 and subnet6.is_private  # a /64 of keelnet's ULA /48
    c = lab.run("c", "--network", dynamic)
    d = lab.run("d", "--network", dynamic)
    address6 = lab.address(d, dynamic, "GlobalIPv6Address")
    assert ipaddress.ip_address(address6) in subnet6
    assert ping(lab, c, address6)
    store = store_of(state_dir)
    try:
        pools = {p.subnet: p for p in store.ipam_pools()}
        assert pools["10.213.12.0/24"].sub_pool == "10.213.12.128/25"
        assert str(subnet) in pools
        lab.cleanup()
        assert store.ipam_pools() == []
    finally:
        store.close()


def test_bad_input_shows_keelnets_message_and_leaves_nothing(
    lab: DockerLab, state_dir: Path
) -> None:
    links = kn_links()
    cases = [
        (["-o", "no.such.option=1"], "does not know option(s) no.such.option"),
        (["-o", "keelnet.driver=nosuch"], "keelnet serves Docker with the drivers"),
        (["-o", "com.docker.network.driver.mtu=12"], "is not an MTU"),
        (["--subnet", "10.213.13.128/25"], "one subnet per address family"),
    ]
    for number, (options, message) in enumerate(cases):
        name = f"bad{number}"
        with pytest.raises(DockerError) as refused:
            lab.network(name, "--subnet", "10.213.13.0/25", *options)
        assert "keelnet" in refused.value.stderr and message in refused.value.stderr
        assert lab.docker("network", "ls", "-q", "--filter", f"name={lab.prefix}-{name}") == ""
    assert kn_links() == links
    store = store_of(state_dir)
    try:
        assert [n for n in store.networks() if n.name.startswith("docker-")] == []
    finally:
        store.close()


def test_plugin_killed_and_restarted(lab: DockerLab) -> None:
    kernel = lab.network("k", "--subnet", "10.213.15.0/24")
    user = lab.network("u", "-o", "dataplane=userspace", "--subnet", "10.213.17.0/24")
    a = lab.run("a", "--network", kernel)
    b = lab.run("b", "--network", kernel)
    c = lab.run("c", "--network", user)
    d = lab.run("d", "--network", user)
    address_c = lab.address(c, user)
    lab.plugin.kill()
    # The kernel's data plane needs no plugin: the containers keep talking.
    assert ping(lab, a, lab.address(b, kernel))
    # The userspace plane died with it, but the container keeps its TAP as dockerd set it
    # up (persistent: named eth0, its address, its routes), waiting without carrier.
    assert container_links(lab, c)["eth0"] == "tun"
    assert f"inet {address_c}/24" in lab.exec(c, "ip", "addr", "show", "eth0")
    assert "NO-CARRIER" in lab.exec(c, "ip", "link", "show", "eth0")
    lab.plugin.start()
    assert ping(lab, a, lab.address(b, kernel))
    assert ping(lab, d, address_c)  # the restarted plane attached to the same TAPs
    assert "default via 10.213.17.1 dev eth0" in lab.exec(c, "ip", "route")
    # The restarted store serves no DNS into Docker's containers (Docker's server does):
    # nothing listens on 127.0.0.11:53 there (Docker's listens on a port of its own).
    for container in (a, c):
        assert "0B00007F:0035" not in lab.exec(container, "cat", "/proc/net/udp")
        key = lab.inspect("container", container)["NetworkSettings"]["SandboxKey"]
        assert not (Path("/etc/netns") / Path(key).name).exists()  # nor its resolv.conf
    # Later requests succeed: a new container, then teardown through the new process.
    e = lab.run("e", "--network", kernel)
    assert ping(lab, e, lab.address(a, kernel))
    lab.cleanup()
    assert not [name for name in kn_links() if name.startswith("kn-c")]


def test_network_keelnet_does_not_know_gets_a_clear_error(lab: DockerLab, state_dir: Path) -> None:
    net = lab.network("lost", "--subnet", "10.213.18.0/24")
    name = f"docker-{network_id(lab, net)[:12]}"
    # keelnet forgets the network behind dockerd's back (as a lost state directory would).
    command = [sys.executable, "-m", "keelnet.cli", "--state-dir", str(state_dir)]
    removed = subprocess.run([*command, "network", "rm", name], capture_output=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(DockerError) as refused:
        lab.run("box", "--network", net)
    assert "is not known to keelnet" in refused.value.stderr
    assert "docker network rm" in refused.value.stderr  # what to do about it
    lab.docker("network", "rm", net)  # teardown of what keelnet does not know works


def test_keelnet_commands_are_served_by_the_plugin(lab: DockerLab, state_dir: Path) -> None:
    net = lab.network("cli", "--subnet", "10.213.19.0/24")
    box = lab.run("box", "--network", net)
    name = f"docker-{network_id(lab, net)[:12]}"
    command = [sys.executable, "-m", "keelnet.cli", "--state-dir", str(state_dir)]
    listed = subprocess.run(
        [*command, "network", "inspect", name], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    inspected = json.loads(listed.stdout)[0]
    assert inspected["IPAM"]["Driver"] == "external"  # dockerd's IPAM gave the addresses
    (container,) = inspected["Containers"].values()
    assert container["IPv4Address"] == f"{lab.address(box, net)}/24"
    # The plugin's process answered (its agent socket), not a second Host of the store.
    assert (state_dir / "agent.sock").is_socket()
    # Its store cannot take the plugin it serves for a remote driver (it would wait for
    # itself): a clear refusal, at once.
    itself = subprocess.run(
        [*command, "network", "create", "-d", lab.plugin.name, "--subnet", "10.213.23.0/24", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert itself.returncode == 1 and "keelnet's own, served by this process" in itself.stderr
    # Nor its own IPAM driver (same wait): its own IPAM is "default".
    own_ipam = subprocess.run(
        [*command, "network", "create", "--ipam-driver", lab.plugin.name, "y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert own_ipam.returncode == 1 and '--ipam-driver "default"' in own_ipam.stderr
