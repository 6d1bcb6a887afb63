"""The keelnet VTEP across test hosts: against the Linux kernel's bridge + vxlan (both
ways, IPv4 and IPv6 underlay), against another keelnet switch, and flooding to several
peers (head-end replication).

Hosts are namespaces on an underlay bridge (192.0.2.0/24, 2001:db8::/64); sandboxes
use 198.51.100.0/24 inside VNI 42. Everything is removed after each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dplab import (
    UNDERLAY_V4,
    UNDERLAY_V6,
    DpLab,
    EchoServer,
    address,
    dp_lab,
    echo_transfer,
    kernel_vxlan_host,
    mac_of,
    neighbour_mac,
    ping,
    sh,
)

from keelnet.dataplane import Switch

if os.geteuid() != 0:
    pytest.skip("data plane tests need root (namespaces, TAP devices)", allow_module_level=True)

VNI = 42
NET = "198.51.100.{}"


@pytest.fixture
def lab() -> Iterator[DpLab]:
    with dp_lab() as the_lab:
        yield the_lab


@pytest.mark.parametrize("tunnel_gso", [True, False], ids=["tunnel-gso", "segmented"])
@pytest.mark.parametrize("underlay", [UNDERLAY_V4, UNDERLAY_V6], ids=["ipv4", "ipv6"])
def test_keelnet_vtep_and_kernel_vxlan_reach_each_other(
    lab: DpLab, underlay: str, tunnel_gso: bool
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    s1, s2 = lab.sandbox("s1"), lab.sandbox("s2")
    mtu = 1450 if underlay == UNDERLAY_V4 else 1430  # 50 / 70 bytes of VXLAN overhead
    kernel_vxlan_host(
        h2,
        s2,
        vni=VNI,
        local=underlay.format(2),
        remotes=[underlay.format(1)],
        overlay_cidr=f"{NET.format(2)}/24",
        mtu=mtu,
    )
    with Switch(netns=h1, workers=2, tunnel_gso=tunnel_gso) as sw:
        sw.add_vtep(underlay.format(1))
        tunnel_device = sw.stats()["vteps"][0]["tunnel_device"]
        if tunnel_gso:
            # Super-frames leave whole through a TAP of the host: it exists, forwards.
            assert sw.stats()["vteps"][0]["tunnel_error"] is None
            family = "ipv4" if underlay == UNDERLAY_V4 else "ipv6"
            forwarding = "forwarding" if family == "ipv4" else "force_forwarding"
            assert (
                sh(
                    "sysctl", "-n", f"net.{family}.conf.{tunnel_device}.{forwarding}", netns=h1
                ).strip()
                == "1"
            )
        else:
            assert tunnel_device is None
        sw.add_tap("p1", vni=VNI, sandbox=s1, mtu=mtu)
        address(s1, "eth0", f"{NET.format(1)}/24")
        sw.add_peer(VNI, underlay.format(2))
        # ARP both ways: each side resolved the other's real MAC through the tunnel.
        assert ping(s1, NET.format(2), timeout=5)
        assert neighbour_mac(s1, NET.format(2)) == mac_of(s2, "eth0")
        sh("ip", "neigh", "flush", "all", netns=s2)
        assert ping(s2, NET.format(1), timeout=5)
        assert neighbour_mac(s2, NET.format(1)) == mac_of(s1, "eth0")
        # TCP, byte-exact, with each side as client (both directions carry 4 MB).
        with EchoServer(s2, NET.format(2)):
            assert echo_transfer(s1, NET.format(2), 4_000_000)
        with EchoServer(s1, NET.format(1)):
            assert echo_transfer(s2, NET.format(1), 4_000_000)
        # The kernel's MAC was learned behind its VTEP; the kernel learned ours.
        entries = {entry["mac"]: entry for entry in sw.fdb(VNI)}
        assert entries[mac_of(s2, "eth0")]["remote"] == underlay.format(2)
        kernel_fdb = sh("bridge", "fdb", "show", "dev", f"vx{VNI}", netns=h2)
        assert f"{mac_of(s1, 'eth0')} dst {underlay.format(1)}" in kernel_fdb
        stats = sw.stats()
        vtep = stats["vteps"][0]
        assert vtep["rx"]["bytes"] > 4_000_000 and vtep["tx"]["bytes"] > 4_000_000
        # The TCP transfers' super-frames took the tunnel TAP exactly when it is on.
        assert (vtep["tunnel_frames"] > 0) == tunnel_gso
        # Frames the kernel flooded before VNI 42 existed here may count as unknown_vni;
        # nothing else may be dropped.
        assert sum(stats["drops"].values()) == stats["drops"]["unknown_vni"]


def test_super_frames_leave_whole_under_a_loose_reverse_path_filter(lab: DpLab) -> None:
    """Many distributions set net.ipv4.conf.all.rp_filter=2: the tunnel TAP then holds
    the VTEP's address (host scope, no route) so that the check finds it."""
    h1 = lab.host(1)
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", netns=h1)
    routes_before = sh("ip", "route", "show", "table", "all", netns=h1)
    s1, s2, sw1, sw2 = _switch_pair(lab, h1)
    with sw1, sw2:
        device = sw1.stats()["vteps"][0]["tunnel_device"]
        assert device is not None
        shown = sh("ip", "-4", "-o", "addr", "show", "dev", device, netns=h1)
        assert f"inet {UNDERLAY_V4.format(1)}/32 scope host" in shown
        with EchoServer(s1, NET.format(1)):
            assert echo_transfer(s2, NET.format(1), 4_000_000)
        assert sw1.stats()["vteps"][0]["tunnel_frames"] > 0
    # The TAP and its address left no route behind.
    assert sh("ip", "route", "show", "table", "all", netns=h1) == routes_before


def _switch_pair(lab: DpLab, h1: str) -> tuple[str, str, Switch, Switch]:
    """Keelnet switches, not started, on host `h1` (set up by the caller) and a new host
    2, with a sandbox each on VNI 42."""
    h2 = lab.host(2)
    s1, s2 = lab.sandbox("s1"), lab.sandbox("s2")
    switches = Switch(netns=h1), Switch(netns=h2)
    try:
        for sw, n, peer, sandbox in ((switches[0], 1, 2, s1), (switches[1], 2, 1, s2)):
            sw.add_vtep(UNDERLAY_V4.format(n))
            sw.add_tap("p", vni=VNI, sandbox=sandbox, mtu=1450)
            address(sandbox, "eth0", f"{NET.format(n)}/24")
            sw.add_peer(VNI, UNDERLAY_V4.format(peer))
    except BaseException:
        for sw in switches:
            sw.close()
        raise
    return s1, s2, *switches


def test_beside_docker_the_tunnel_taps_are_let_through(lab: DpLab) -> None:
    h1 = lab.host(1)
    # What Docker does to a host: FORWARD policy DROP, user rules in DOCKER-USER.
    for rule in (["-N", "DOCKER-USER"], ["-A", "FORWARD", "-j", "DOCKER-USER"]):
        sh("iptables", *rule, netns=h1)
    sh("iptables", "-P", "FORWARD", "DROP", netns=h1)
    s1, s2, sw1, sw2 = _switch_pair(lab, h1)
    with sw1, sw2:
        assert sw1.stats()["vteps"][0]["tunnel_device"] is not None
        rules = sh("iptables-save", "-t", "filter", netns=h1)
        assert "-A DOCKER-USER -j KEELNET-VTEP" in rules
        assert "-A KEELNET-VTEP -i kn-vtep+ -j ACCEPT" in rules
        with EchoServer(s2, NET.format(2)):
            assert echo_transfer(s1, NET.format(2), 4_000_000)
        assert sw1.stats()["vteps"][0]["tunnel_frames"] > 0
    rules = sh("iptables-save", "-t", "filter", netns=h1)
    assert "KEELNET-VTEP" not in rules
    assert ":FORWARD DROP" in rules and "-A FORWARD -j DOCKER-USER" in rules


def test_super_frames_are_segmented_under_a_strict_reverse_path_filter(lab: DpLab) -> None:
    h1 = lab.host(1)
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", netns=h1)
    s1, s2, sw1, sw2 = _switch_pair(lab, h1)
    with sw1, sw2:
        vtep1 = sw1.stats()["vteps"][0]
        assert vtep1["tunnel_device"] is None
        assert "rp_filter is 1" in vtep1["tunnel_error"]
        # No tunnel TAP was left behind in the host.
        assert "kn-vtep" not in sh("ip", "-o", "link", "show", netns=h1)
        assert sw2.stats()["vteps"][0]["tunnel_device"] is not None
        with EchoServer(s2, NET.format(2)):
            assert echo_transfer(s1, NET.format(2), 4_000_000)
        assert sw1.stats()["vteps"][0]["tunnel_frames"] == 0
        assert sw2.stats()["vteps"][0]["tunnel_frames"] > 0


def test_two_keelnet_switches_with_static_peers(lab: DpLab) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    s1, s2 = lab.sandbox("s1"), lab.sandbox("s2")
    mac1, mac2 = "02:42:c6:33:64:01", "02:42:c6:33:64:02"
    with Switch(netns=h1, learn_remote=False) as sw1, Switch(netns=h2, learn_remote=False) as sw2:
        sw1.add_vtep(UNDERLAY_V4.format(1))
        sw2.add_vtep(UNDERLAY_V4.format(2))
        sw1.add_tap("p1", vni=VNI, sandbox=s1, mac=mac1, mtu=1450)
        sw2.add_tap("p2", vni=VNI, sandbox=s2, mac=mac2, mtu=1450)
        address(s1, "eth0", f"{NET.format(1)}/24")
        address(s2, "eth0", f"{NET.format(2)}/24")
        sw1.add_peer(VNI, UNDERLAY_V4.format(2), mac=mac2, ip=NET.format(2))
        sw2.add_peer(VNI, UNDERLAY_V4.format(1), mac=mac1, ip=NET.format(1))
        assert ping(s1, NET.format(2), timeout=5)
        with EchoServer(s2, NET.format(2)):
            assert echo_transfer(s1, NET.format(2), 8_000_000)
        remote_entries = [entry for entry in sw1.fdb(VNI) if entry["remote"]]
        assert remote_entries == [
            {"mac": mac2, "port": None, "remote": UNDERLAY_V4.format(2), "static": True}
        ]
        # Removing the static entry leaves the peer (flooding still reaches it).
        sw1.remove_peer(VNI, UNDERLAY_V4.format(2), mac=mac2)
        assert not [entry for entry in sw1.fdb(VNI) if entry["remote"]]
        assert sw1.stats()["vnis"][VNI]["peers"] == [UNDERLAY_V4.format(2)]
        sw1.remove_peer(VNI, UNDERLAY_V4.format(2))
        assert sw1.stats()["vnis"][VNI]["peers"] == []
        sh("ip", "neigh", "flush", "all", netns=s1)
        assert not ping(s1, NET.format(2), timeout=1)


def test_floods_reach_every_peer_and_unknown_peers_are_refused(lab: DpLab) -> None:
    h1, h2, h3 = lab.host(1), lab.host(2), lab.host(3)
    s1, s2, s3 = lab.sandbox("s1"), lab.sandbox("s2"), lab.sandbox("s3")
    for number, (host, sandbox) in ((2, (h2, s2)), (3, (h3, s3))):
        kernel_vxlan_host(
            host,
            sandbox,
            vni=VNI,
            local=UNDERLAY_V4.format(number),
            remotes=[UNDERLAY_V4.format(1)],
            overlay_cidr=f"{NET.format(number)}/24",
        )
    with Switch(netns=h1) as sw:
        sw.add_vtep(UNDERLAY_V4.format(1))
        sw.add_tap("p1", vni=VNI, sandbox=s1, mtu=1450)
        address(s1, "eth0", f"{NET.format(1)}/24")
        sw.add_peer(VNI, UNDERLAY_V4.format(2))
        assert ping(s1, NET.format(2), timeout=5)
        # h3 is not a peer yet: s1's ARP requests never reach it, and its own (s3 asks
        # for s1) are dropped before they reach s1.
        assert not ping(s1, NET.format(3), timeout=1)
        assert sw.stats()["drops"]["unknown_peer"] == 0
        assert not ping(s3, NET.format(1), timeout=1)
        # Its kernel would go on asking for s1 for seconds, into the checks below.
        sh("ip", "neigh", "flush", "all", netns=s3)
        assert sw.stats()["drops"]["unknown_peer"] > 0
        assert neighbour_mac(s1, NET.format(3)) is None  # s1 never heard s3 ask
        sw.add_peer(VNI, UNDERLAY_V4.format(3))
        before = sw.stats()
        sh("ip", "neigh", "flush", "all", netns=s1)
        # One broadcast ARP from s1 is replicated to both peers, whose kernels deliver it.
        assert ping(s1, NET.format(3), timeout=5)
        assert ping(s1, NET.format(2), timeout=5)
        after = sw.stats()
        assert after["vnis"][VNI]["flooded"] >= before["vnis"][VNI]["flooded"] + 2
        assert sorted(after["vnis"][VNI]["peers"]) == [UNDERLAY_V4.format(2), UNDERLAY_V4.format(3)]
        for sandbox in (s2, s3):
            assert neighbour_mac(sandbox, NET.format(1)) == mac_of(s1, "eth0")
        # The peers' kernels only tunnel to h1, which never relays VTEP to VTEP (split
        # horizon): s2's ARP for s3 reaches s1 and goes no further. It is the only frame
        # in flight: the neighbours are pinned, and pings through s1 come back behind any
        # probe sent before that.
        for sandbox in (s1, s2, s3):
            _pin_neighbours(sandbox)
        for sandbox in (s2, s3):
            assert ping(sandbox, NET.format(1), timeout=5)
        sent = sw.stats()["vteps"][0]["tx"]["packets"]
        delivered = sw.stats()["ports"]["p1"]["tx"]["packets"]
        assert not ping(s2, NET.format(3), timeout=1)
        assert sw.stats()["vteps"][0]["tx"]["packets"] == sent
        assert sw.stats()["ports"]["p1"]["tx"]["packets"] > delivered


def _pin_neighbours(netns: str) -> None:
    """Makes the resolved neighbours of `netns` permanent: the kernel would otherwise
    confirm an entry in use with an ARP probe seconds later, into a count of frames."""
    for line in sh("ip", "neigh", "show", netns=netns).splitlines():
        words = line.split()
        if "lladdr" in words:
            mac, device = words[words.index("lladdr") + 1], words[words.index("dev") + 1]
            pinned = ["lladdr", mac, "dev", device, "nud", "permanent"]
            sh("ip", "neigh", "replace", words[0], *pinned, netns=netns)


def test_peer_learning_accepts_an_unconfigured_vtep(lab: DpLab) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    s1, s2 = lab.sandbox("s1"), lab.sandbox("s2")
    # s2 must stay silent until it pings: an IPv6 router solicitation or MLD report of its
    # eth0 coming up would reach h1 first (and make h2 a peer) on a slow machine.
    for scope in ("all", "default"):
        sh("sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1", netns=s2)
    kernel_vxlan_host(
        h2,
        s2,
        vni=VNI,
        local=UNDERLAY_V4.format(2),
        remotes=[UNDERLAY_V4.format(1)],
        overlay_cidr=f"{NET.format(2)}/24",
    )
    with Switch(netns=h1, learn_peers=True) as sw:
        sw.add_vtep(UNDERLAY_V4.format(1))
        sw.add_tap("p1", vni=VNI, sandbox=s1, mtu=1450)
        address(s1, "eth0", f"{NET.format(1)}/24")
        assert sw.stats()["vnis"][VNI]["peers"] == []
        # h2 is nobody's configured peer: its first broadcast makes it one.
        assert ping(s2, NET.format(1), timeout=5)
        assert sw.stats()["vnis"][VNI]["peers"] == [UNDERLAY_V4.format(2)]
        assert sw.stats()["drops"]["unknown_peer"] == 0
        assert ping(s1, NET.format(2), timeout=5)
