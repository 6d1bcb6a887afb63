"""Attacks from inside sandboxes against port security and icc, on both data planes:
forged source MACs (the gateway's, a neighbour's), forged addresses (a neighbour's,
another network's, a foreign one through masquerade), forged ARP replies, gratuitous
ARP, IPv6 neighbour advertisements, a flood of random source MACs, a VXLAN peer that
claims a local MAC, and a frame to the gateway's MAC meant for a neighbour on an icc=false
network. On overlay networks the same forgeries from a sandbox on one cluster host, and
VXLAN from a peer claiming a local MAC, on a kernel and a userspace host. Every attack is
checked by what arrives in the other namespaces (`spooflab`), by the forwarding tables and
by the drop counters."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from clusterlab import Cluster, Segment, keelnet_cli
from netlab import (
    HOST_ADDRESS6,
    HOST_UPLINK,
    OUTSIDE_ADDRESS,
    OUTSIDE_ADDRESS6,
    Lab,
    create_ns,
    run_in,
)
from nettools import ping, wait_until
from packetlab import netns
from pyroute2.netlink.rtnl.ndmsg import NUD_FAILED, NUD_INCOMPLETE
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from spooflab import (
    ATTACKS,
    OVERLAY_ATTACKS,
    OverlaySpoofLab,
    SpoofLab,
    capturing,
    flood,
    mac_text,
    nft_counters,
    random_macs,
    send_raw,
    send_udp,
    udp4,
)
from test_ipvlan_userspace import GATEWAY, RANGE, SUBNET

import keelnet
from keelnet import errors
from keelnet.dataplane import Switch
from keelnet.drivers import _port_security
from keelnet.kernel.namespaces import iproute, netns_path, write_sysctl

PLANES = ("kernel", "userspace")
NO_ICC = {"com.docker.network.bridge.enable_icc": "false"}
OPEN = {"port_security": "false"}
FLOOD_MACS = 65_536 + 64


def _neighbours(ns: str) -> dict[str, str]:
    """The namespace's neighbour cache: address -> MAC (resolved entries only)."""
    with iproute(netns_path(ns)) as ipr:
        return {
            str(entry.get_attr("NDA_DST")): str(entry.get_attr("NDA_LLADDR"))
            for entry in ipr.get_neighbours()
            if entry.get_attr("NDA_LLADDR") and not entry["state"] & (NUD_INCOMPLETE | NUD_FAILED)
        }


@pytest.mark.parametrize("dataplane", PLANES)
def test_forged_frames_reach_no_one(lab: Lab, host: keelnet.Host, dataplane: str) -> None:
    spoof = SpoofLab(lab, host, dataplane)
    assert host.inspect_network("spoof")["PortSecurity"] is True
    # Legitimate traffic of every kind works under port security, IPv6 (neighbour
    # discovery from link-local addresses) included.
    attacker = spoof.ns("attacker")
    victim_ep = spoof.endpoints["victim"]
    assert ping(attacker, spoof.ip("victim"), timeout=3)
    assert ping(attacker, str(victim_ep.ipv6), timeout=3)
    assert ping(attacker, spoof.gateway_ip6, timeout=3)
    assert ping(attacker, OUTSIDE_ADDRESS, timeout=3)
    fdb_before = spoof.fdb()

    outcomes = {kind: spoof.run(kind) for kind, attack in ATTACKS.items() if attack.icc}
    assert {kind: o.delivered for kind, o in outcomes.items()} == dict.fromkeys(outcomes, 0)

    # Nothing moved: the gateway's and every sandbox's MAC stay where they live, static.
    fdb = spoof.fdb()
    assert fdb[spoof.gateway_mac] == ("gateway", True)
    for role in ("attacker", "victim", "bystander"):
        assert fdb[spoof.mac(role)] == (role, True)
    assert fdb == fdb_before
    # The victim's caches still hold the gateway's MACs.
    victim_cache = _neighbours(spoof.ns("victim"))
    assert victim_cache.get(spoof.gateway_ip, spoof.gateway_mac) == spoof.gateway_mac
    assert victim_cache.get(spoof.gateway_ip6, spoof.gateway_mac) == spoof.gateway_mac
    assert spoof.mac("attacker") not in {victim_cache.get(spoof.ip("bystander"))}
    # Each forgery was dropped and counted under its reason.
    drops = spoof.drops()
    assert drops["spoofed_mac"] >= 2  # gateway's and neighbour's MAC
    assert drops["spoofed_ip"] >= 3  # a neighbour's, another network's, a foreign address
    assert drops["spoofed_arp"] >= 2
    assert drops["spoofed_nd"] >= 1


@pytest.mark.parametrize("dataplane", PLANES)
def test_a_sandbox_with_random_link_locals_still_speaks_ipv6(
    lab: Lab, host: keelnet.Host, dataplane: str
) -> None:
    """Port security allows the EUI-64 link-local address; a namespace whose default is
    another kind (an adopted container's, say) gets that one on keelnet's interface."""
    host.create_network(
        "v6",
        subnet=["10.68.0.0/24", "2001:db8:68::/64"],
        ipv6=True,
        options={"dataplane": dataplane},
    )
    a, b = lab.name("a"), lab.name("b")
    for name in (a, b):
        host.create_sandbox(name)
        write_sysctl(netns_path(name), "net/ipv6/conf/default/addr_gen_mode", "3")
    ep_a, ep_b = host.connect("v6", a), host.connect("v6", b)
    with iproute(netns_path(a)) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        link_locals = [
            str(entry.get_attr("IFA_ADDRESS"))
            for entry in ipr.addr("dump", family=socket.AF_INET6, index=index)
            if str(entry.get_attr("IFA_ADDRESS")).startswith("fe80:")
        ]
    assert link_locals == [_port_security.link_local(ep_a.mac)]
    assert ping(a, str(ep_b.ipv6), timeout=3) and ping(a, "2001:db8:68::1", timeout=3)


@pytest.mark.parametrize("dataplane", PLANES)
def test_without_port_security_forgeries_pass_but_macs_stay(
    lab: Lab, host: keelnet.Host, dataplane: str
) -> None:
    """port_security=false (a sandbox that routes for others): forged addresses get through
    (which also shows the lab sees what arrives), yet local MACs never move."""
    spoof = SpoofLab(lab, host, dataplane, options=OPEN)
    assert host.inspect_network("spoof")["PortSecurity"] is False
    assert spoof.run("ip_neighbour").delivered == 1
    assert spoof.run("arp_reply").delivered == 1
    stolen = spoof.run("mac_gateway")
    fdb = spoof.fdb()
    assert fdb[spoof.gateway_mac] == ("gateway", True)
    assert fdb[spoof.mac("victim")] == ("victim", True)
    # The forged frame itself reached the victim, but nothing was stolen with it.
    assert stolen.delivered == 1


@pytest.mark.parametrize("dataplane", PLANES)
def test_icc_false_holds_through_the_gateway(lab: Lab, host: keelnet.Host, dataplane: str) -> None:
    spoof = SpoofLab(lab, host, dataplane, options=NO_ICC)
    assert spoof.run("icc_via_gateway", count=3).delivered == 0
    attacker = spoof.ns("attacker")
    assert not ping(attacker, spoof.ip("victim"))
    assert ping(attacker, spoof.gateway_ip)
    assert ping(attacker, OUTSIDE_ADDRESS)


@pytest.mark.parametrize("guarded", [True, False], ids=["port_security", "open"])
@pytest.mark.parametrize("dataplane", PLANES)
def test_a_mac_flood_leaves_new_sandboxes_known(
    lab: Lab, host: keelnet.Host, dataplane: str, guarded: bool
) -> None:
    """More random source MACs than a learning table holds (65 536): dropped under port
    security; without it they fill the switch's table (its limit) or swell the bridge's,
    yet a sandbox that joins afterwards is known at once (its MAC is static), so traffic
    to it is not flooded."""
    spoof = SpoofLab(lab, host, dataplane, options={} if guarded else OPEN)
    macs = random_macs(FLOOD_MACS)
    if guarded:
        with capturing([(spoof.ns("victim"), "eth0")]) as (at_victim,):
            flood(spoof, macs, b"kn-flood")
            send_udp(spoof.ns("attacker"), spoof.ip("victim"), b"kn-flood-control")
            assert at_victim.wait_for(b"kn-flood-control")
            assert at_victim.count(b"kn-flood") == 1  # the control only
        assert spoof.drops()["spoofed_mac"] >= 65_536
        assert not {mac_text(mac) for mac in macs} & spoof.fdb().keys()
    else:
        flood(spoof, macs, b"kn-flood")
        if dataplane == "userspace":
            stats = spoof.switch().stats()["fdb"]
            assert stats["limit_drops"] > 0 and stats["entries"] >= 65_536  # full
        else:
            assert spoof.fdb_size() >= 65_536
    late = spoof.connect("late")
    places = [(spoof.ns(role), "eth0") for role in ("late", "attacker", "bystander")]
    with capturing(places) as (at_late, at_attacker, at_bystander):
        send_udp(spoof.ns("victim"), str(late.ip), b"kn-to-late")
        assert at_late.wait_for(b"kn-to-late")
        assert at_attacker.count(b"kn-to-late") == at_bystander.count(b"kn-to-late") == 0


def test_a_vxlan_peer_cannot_claim_a_local_mac(
    lab: Lab, underlay: Segment, cluster_prefix: str
) -> None:
    """The userspace switch's VTEP: a peer whose frames carry a local sandbox's MAC does
    not move it, even on a switch that learns from its peers, nor does a peer's record
    (the overlay driver's switch learns nothing from peers: `OverlaySpoofLab.claim`)."""
    box = lab.name("vx")
    keelnet.sandbox.create(box)
    local_mac = "02:42:0a:63:00:02"
    here, peer_ns = f"{cluster_prefix}-a", f"{cluster_prefix}-b"
    for number, name in ((1, here), (2, peer_ns)):
        create_ns(name)
        underlay.plug(name, number)
    with Switch(netns=here) as switch:
        switch.add_vtep("192.0.2.1")
        switch.add_peer(42, "192.0.2.2")
        switch.add_tap("local", vni=42, sandbox=box, mac=local_mac, allowed_ips=["10.99.0.2"])
        inner = udp4(local_mac, "ff:ff:ff:ff:ff:ff", "10.99.0.2", "10.99.0.255", b"kn-claim")
        vxlan = bytes([0x08, 0, 0, 0, 0, 0, 42, 0]) + inner
        with netns(peer_ns):
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with peer:
            for _ in range(3):
                peer.sendto(vxlan, ("192.0.2.1", 4789))
        assert wait_until(lambda: switch.stats()["fdb"]["static_conflicts"] >= 3)
        entries = {entry["mac"]: entry for entry in switch.fdb(42)}
        assert entries[local_mac]["port"] == "local" and entries[local_mac]["static"]
        assert entries[local_mac]["remote"] is None
        # Nor does a peer's record naming that MAC (an address clash, or a peer that lies).
        switch.add_peer(42, "192.0.2.2", mac=local_mac, ip="10.99.0.9")
        (entry,) = [entry for entry in switch.fdb(42) if entry["mac"] == local_mac]
        assert (entry["port"], entry["static"], entry["remote"]) == ("local", True, None)


@pytest.mark.parametrize(
    ("driver", "dataplane"),
    [("macvlan", "userspace"), ("ipvlan", "userspace"), ("macvlan", "kernel")],
)
def test_macvlan_and_ipvlan_sandboxes_cannot_forge(
    lab: Lab, host: keelnet.Host, driver: str, dataplane: str
) -> None:
    """The sandboxes share the outside host's segment; the network's gateway is the host
    (192.0.2.1). Forged addresses, ARP and NA from a sandbox reach neither the outside
    nor (on the userspace switch) its neighbour; its own traffic, IPv6 from its
    link-local address included, does. The kernel's macvlan switches sandbox-to-sandbox
    frames itself, unseen by the host: there only the parent's egress is checked."""
    network = host.create_network(
        "low",
        driver=driver,
        subnet=[SUBNET, "2001:db8:1::/64"],
        gateway=[GATEWAY, HOST_ADDRESS6],
        ip_range=[RANGE, "2001:db8:1::100/120"],
        ipv6=True,
        options={"parent": HOST_UPLINK, "dataplane": dataplane},
    )
    assert host.inspect_network("low")["PortSecurity"] is True
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a, ep_b = host.connect("low", a), host.connect("low", b)
    assert ping(a, str(ep_b.ip)) and ping(a, OUTSIDE_ADDRESS6, timeout=3)
    outside_mac = _mac_of(lab.outside)
    arp = ARP(op=2, hwsrc=ep_a.mac, psrc=GATEWAY, hwdst=outside_mac, pdst=OUTSIDE_ADDRESS)
    na = ICMPv6ND_NA(tgt=str(ep_b.ipv6), O=1) / ICMPv6NDOptDstLLAddr(lladdr=ep_a.mac)
    na_packet = IPv6(src=str(ep_a.ipv6), dst="ff02::1", hlim=255) / na
    forged = {
        b"kn-ip": udp4(ep_a.mac, outside_mac, str(ep_b.ip), OUTSIDE_ADDRESS, b"kn-ip"),
        b"kn-mac": udp4("02:42:c0:00:02:fe", outside_mac, str(ep_a.ip), OUTSIDE_ADDRESS, b"kn-mac"),
        bytes(arp): bytes(Ether(src=ep_a.mac, dst=outside_mac) / arp),
        bytes(na_packet)[40:]: bytes(Ether(src=ep_a.mac, dst="33:33:00:00:00:01") / na_packet),
    }
    watched = [(lab.outside, "eth0")] + ([(b, "eth0")] if dataplane == "userspace" else [])
    with capturing(watched) as captures:
        send_raw(a, list(forged.values()))
        send_udp(a, OUTSIDE_ADDRESS, b"kn-low-control")
        assert captures[0].wait_for(b"kn-low-control")
        time.sleep(0.2)
        delivered = {sig: sum(c.count(sig) for c in captures) for sig in forged}
    expected = dict.fromkeys(forged, 0)
    if dataplane == "kernel":
        # The limit of a check on the parent: a MAC no endpoint has is not recognised
        # (the parent carries the host's and other devices' frames too).
        expected[b"kn-mac"] = 1
    assert delivered == expected
    plane = host._ctx.planes.get(network.id)
    if dataplane == "kernel":
        drops = nft_counters(lab.host, "netdev", f"keelnet-mv-{network.id[:12]}")
    elif driver == "macvlan":
        drops = plane.switch.stats()["ports"][ep_a.id]["drops"]  # type: ignore[union-attr]
    else:
        drops = plane.stats()["drops"]  # type: ignore[union-attr]
    assert drops["spoofed_ip"] >= 1 and drops["spoofed_arp"] >= 1 and drops["spoofed_nd"] >= 1
    assert drops["spoofed_mac"] >= (dataplane == "userspace")


def _mac_of(ns: str) -> str:
    with iproute(netns_path(ns)) as ipr:
        return str(ipr.link("get", ifname="eth0")[0].get_attr("IFLA_ADDRESS"))


def test_port_security_option_is_checked(lab: Lab, host: keelnet.Host) -> None:
    with pytest.raises(errors.InvalidOption, match="port_security"):
        host.create_network("bad", options={"port_security": "maybe"})
    host.create_network("plain")
    assert host.inspect_network("plain")["PortSecurity"] is True


# --- overlay networks -------------------------------------------------------------------


def _overlay_lab(
    cluster: Cluster, dataplane: str, options: dict[str, str] | None = None
) -> OverlaySpoofLab:
    """The attacker's host on `dataplane`, the victim's on the other one."""
    other = "userspace" if dataplane == "kernel" else "kernel"
    hosts = (cluster.add_host(1, dataplane=dataplane), cluster.add_host(2, dataplane=other))
    return OverlaySpoofLab(cluster, hosts, options=options or {})


@pytest.mark.parametrize("dataplane", PLANES)
def test_overlay_forgeries_reach_no_one_on_either_host(cluster: Cluster, dataplane: str) -> None:
    """A sandbox on a `dataplane` host forges MACs (the gateway's, a remote and a local
    neighbour's), an address and ARP: nothing reaches the other host's sandboxes nor its
    neighbour, nothing moves in either host's table, and a peer's VTEP cannot claim a
    local MAC on either plane."""
    spoof = _overlay_lab(cluster, dataplane)
    assert spoof.hosts[0].inspect_network(spoof.network)["PortSecurity"] is True
    tables = [spoof.fdb(host) for host in spoof.hosts]

    outcomes = {kind: spoof.run(kind) for kind in OVERLAY_ATTACKS}
    assert {kind: o.delivered for kind, o in outcomes.items()} == dict.fromkeys(outcomes, 0)
    assert spoof.claim().delivered == 0

    assert [spoof.fdb(host) for host in spoof.hosts] == tables
    for role in ("attacker", "neighbour", "victim", "bystander"):
        assert tables[0 if role in ("attacker", "neighbour") else 1][spoof.mac(role)] == (
            role,
            True,
        )
    drops = spoof.drops()
    assert drops["spoofed_mac"] >= 3  # the gateway's, the victim's and the neighbour's MAC
    assert drops["spoofed_ip"] >= 1
    assert drops["spoofed_arp"] >= 2


@pytest.mark.parametrize("dataplane", PLANES)
def test_overlay_without_port_security_forgeries_pass_but_macs_stay(
    cluster: Cluster, dataplane: str
) -> None:
    spoof = _overlay_lab(cluster, dataplane, options=OPEN)
    first = spoof.hosts[0]
    assert first.inspect_network(spoof.network)["PortSecurity"] is False
    if dataplane == "kernel":
        assert "bridge keelnet" not in run_in(spoof.overlay_ns(first), "nft", "list", "tables")
    assert spoof.run("ip_neighbour").delivered == 1
    # Forged frames from a local or a remote neighbour's MAC arrive, but nothing sent to
    # that neighbour goes to the attacker: every endpoint's MAC is static.
    assert spoof.run("mac_local").delivered == 1
    assert spoof.run("mac_neighbour").delivered == 1
    assert spoof.claim().delivered == 0
    assert spoof.fdb(first)[spoof.mac("neighbour")] == ("neighbour", True)


def test_overlay_guard_follows_endpoints_and_teardown_is_idempotent(cluster: Cluster) -> None:
    """Kernel plane: the guard lives in the network's namespace and holds exactly its
    sandboxes' ports. The namespace made again after the last sandbox left (the VNI is
    free at once) has its own guard; removing endpoints of a namespace that is already
    gone asks nothing of it and fails nowhere."""
    host = cluster.add_host(1, dataplane="kernel")
    net = host.create_network("ov1", driver="overlay", subnet="10.0.9.0/24")
    apps = [cluster.sandbox(host, f"app{i}") for i in (1, 2)]
    ports = {app: f'"kn-v{host.connect("ov1", app).id[:11]}"' for app in apps}
    assert host.netns is not None
    namespace = f"{host.netns}-ov-{net.id[:10]}"

    def guarded() -> set[str]:
        listing = run_in(namespace, "nft", "list", "set", "bridge", "keelnet", "guarded")
        return {app for app, port in ports.items() if port in listing}

    assert guarded() == set(apps)
    host.disconnect("ov1", apps[0])
    assert guarded() == {apps[1]}
    host.disconnect("ov1", apps[1])  # the last one here: the namespace goes
    assert not Path(netns_path(namespace)).exists()
    ports[apps[0]] = f'"kn-v{host.connect("ov1", apps[0]).id[:11]}"'
    assert guarded() == {apps[0]}
    run_in(host.netns, "ip", "netns", "delete", namespace)  # gone under keelnet's feet
    host.disconnect("ov1", apps[0])
    host.remove_network("ov1")
    assert "ov1" not in {network.name for network in host.networks()}


@pytest.mark.parametrize("dataplane", PLANES)
def test_a_forged_peer_record_takes_no_local_address(
    cluster: Cluster, dataplane: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Records written straight into etcd (as anyone with access to the store can) as
    the other host's, claiming a local sandbox's IP or its MAC, are ignored with a
    warning: the sandboxes beside it still resolve its address to its MAC and reach it.
    One that claimed an address before a local sandbox took it goes when it does."""
    spoof = _overlay_lab(cluster, dataplane)
    here = spoof.hosts[0]
    assert here.cluster is not None and here.netns is not None
    with caplog.at_level(logging.WARNING, logger="keelnet.cluster"):
        assert spoof.record_claims().delivered == 0
        ignored = [r.getMessage() for r in caplog.records if "ignoring endpoint" in r.getMessage()]
    assert len(ignored) == 2 and "IP" in ignored[0] and "MAC" in ignored[1]
    assert spoof.fdb(here)[spoof.mac("neighbour")] == ("neighbour", True)

    early = "10.0.66.202"
    key = spoof.forge_record(early, "02:42:de:ad:be:02")
    forged = key.rpartition("/")[2]
    assert forged in {peer.id for peer in here.cluster.peers(spoof.network_id)}
    spoof.endpoints["late"] = here.connect(spoof.network, cluster.sandbox(here, "late"), ip=early)
    assert forged not in {peer.id for peer in here.cluster.peers(spoof.network_id)}
    assert spoof.reaches("attacker", "late")
    if dataplane == "kernel":  # no proxy-ARP entry for a local address on the vxlan device
        vxlan = f"kn-vx{spoof.vni:06x}"
        table = run_in(spoof.overlay_ns(here), "ip", "neigh", "show", "dev", vxlan).split()
        assert spoof.ip("neighbour") not in table and early not in table
    assert here.global_store is not None
    here.global_store.client.delete(key)


def test_reconcile_restores_a_flushed_overlay_guard(cluster: Cluster, tmp_path: Path) -> None:
    """The overlay namespace's ruleset flushed by hand: forgeries pass until `keelnet
    system reconcile` (a process that is no cluster member) or `Host.reconcile()` loads
    the guard again, holding exactly the host's sandboxes' ports."""
    spoof = _overlay_lab(cluster, "kernel")
    here = spoof.hosts[0]
    assert here.netns is not None
    namespace = spoof.overlay_ns(here)
    for reconcile in ("cli", "host"):
        run_in(namespace, "nft", "flush", "ruleset")
        assert spoof.run("ip_neighbour").delivered == 1  # the guard is really gone
        if reconcile == "cli":
            state_dir = cluster.root / "h1"
            done = keelnet_cli(here.netns, state_dir, cluster.etcd.url, "system", "reconcile")
            assert done.returncode == 0, done.stderr
        else:
            here.reconcile()
        outcomes = {kind: spoof.run(kind) for kind in OVERLAY_ATTACKS}
        assert {kind: o.delivered for kind, o in outcomes.items()} == dict.fromkeys(outcomes, 0)
        listing = run_in(namespace, "nft", "list", "set", "bridge", "keelnet", "guarded")
        for role in ("attacker", "neighbour"):
            assert f'"kn-v{spoof.endpoints[role].id[:11]}"' in listing
