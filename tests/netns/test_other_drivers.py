"""macvlan, ipvlan, host and none drivers."""

from __future__ import annotations

import socket

import pytest
from netlab import (
    HOST_ADDRESS6,
    HOST_UPLINK,
    OUTSIDE_ADDRESS,
    OUTSIDE_ADDRESS6,
    Lab,
    kernel_state,
    store_state,
)
from nettools import TcpServer, ping, tcp_request

import keelnet
from keelnet import errors
from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute, netns_path

# The underlay is 192.0.2.0/24: .1 is the host, .2 the outside host; sandboxes take .128/25.
SUBNET, GATEWAY, RANGE = "192.0.2.0/24", "192.0.2.1", "192.0.2.128/25"


def _links(netns: str) -> dict[str, str]:
    with iproute(netns_path(netns)) as ipr:
        return {
            str(link.get("ifname")): str(link.get(("linkinfo", "kind")) or "")
            for link in ipr.link("dump")
        }


def test_macvlan_bridge_mode_reaches_peers_and_outside(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "mv",
        driver="macvlan",
        subnet=SUBNET,
        gateway=GATEWAY,
        ip_range=RANGE,
        options={"parent": HOST_UPLINK},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("mv", a)
    ep_b = host.connect("mv", b)
    assert (ep_a.ip, ep_b.ip) == ("192.0.2.128", "192.0.2.129")
    assert _links(a)["eth0"] == "macvlan"
    assert ping(a, str(ep_b.ip))
    # On the wire as itself: the outside host sees the sandbox's own address (no NAT).
    with TcpServer(lab.outside, "0.0.0.0", 7100, "out"):
        assert tcp_request(a, OUTSIDE_ADDRESS, 7100, "m") == f"out m from {ep_a.ip}"
    host.disconnect("mv", a)
    assert "eth0" not in _links(a)


@pytest.mark.parametrize("driver", ["macvlan", "ipvlan"])
def test_ipv6_only_networks_on_a_parent(lab: Lab, host: keelnet.Host, driver: str) -> None:
    """`--ipv6 --ipv4=false` on the underlay's IPv6 subnet: no IPv4 address in the sandbox,
    the outside host reached as the sandbox itself (ipvlan: the userspace plane where the
    kernel has no ipvlan)."""
    host.create_network(
        "six",
        driver=driver,
        ipv4=False,
        ipv6=True,
        subnet="2001:db8:1::/64",
        gateway=HOST_ADDRESS6,
        ip_range="2001:db8:1::80/121",
        options={"parent": HOST_UPLINK},
    )
    assert host.inspect_network("six")["EnableIPv4"] is False
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a, ep_b = host.connect("six", a), host.connect("six", b)
    assert (ep_a.ip, ep_a.ipv6, ep_b.ipv6) == (None, "2001:db8:1::80", "2001:db8:1::81")
    with iproute(netns_path(a)) as ipr:
        assert not ipr.get_addr(family=socket.AF_INET, label="eth0")
    assert ping(a, "2001:db8:1::81")
    with TcpServer(lab.outside, "::", 7101, "out"):
        reply = tcp_request(a, OUTSIDE_ADDRESS6, 7101, "m")
    assert reply == "out m from 2001:db8:1::80"


@pytest.mark.parametrize("mode", ["private", "vepa"])
def test_macvlan_private_and_vepa_keep_sandboxes_apart(
    lab: Lab, host: keelnet.Host, mode: str
) -> None:
    """private drops traffic between sandboxes; vepa hands even local traffic to the
    parent's link and the outside peer does not reflect it (no hairpin switch). Either
    way the sandboxes do not see each other but do see the outside host."""
    host.create_network(
        mode,
        driver="macvlan",
        subnet=SUBNET,
        gateway=GATEWAY,
        ip_range=RANGE,
        options={"parent": HOST_UPLINK, "macvlan_mode": mode},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    host.connect(mode, a)
    ep_b = host.connect(mode, b)
    assert not ping(a, str(ep_b.ip))
    assert ping(a, OUTSIDE_ADDRESS)


def test_macvlan_passthru_takes_one_endpoint(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "pt",
        driver="macvlan",
        subnet=SUBNET,
        gateway=GATEWAY,
        ip_range=RANGE,
        options={"parent": HOST_UPLINK, "macvlan_mode": "passthru"},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    host.connect("pt", a)
    assert ping(a, OUTSIDE_ADDRESS)
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.Conflict):
        host.connect("pt", b)
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before
    assert _links(b) == {"lo": ""}


def test_macvlan_bad_mode_is_refused(lab: Lab, host: keelnet.Host) -> None:
    with pytest.raises(errors.InvalidOption):
        host.create_network(
            "x", driver="macvlan", options={"parent": HOST_UPLINK, "macvlan_mode": "l9"}
        )


def test_ipvlan_without_kernel_module_says_what_to_use(lab: Lab, host: keelnet.Host) -> None:
    if links.kind_supported("ipvlan", host.netns_path):
        pytest.skip("this kernel has ipvlan")
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.KernelFeatureMissing) as raised:
        host.create_network(
            "iv", driver="ipvlan", options={"parent": HOST_UPLINK, "dataplane": "kernel"}
        )
    assert raised.value.module == "ipvlan"
    assert "dataplane=userspace" in str(raised.value)
    with pytest.raises(errors.InvalidOption):
        host.create_network(
            "iv", driver="ipvlan", options={"parent": HOST_UPLINK, "ipvlan_mode": "l9"}
        )
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before
    # auto falls back to the userspace emulation (tested in test_ipvlan_userspace.py).
    network = host.create_network("iv", driver="ipvlan", options={"parent": HOST_UPLINK})
    assert network.dataplane == "userspace"
    assert host.inspect_network("iv")["DataPlane"] == "userspace"


def test_none_network_leaves_loopback_only(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("none", driver="none")
    s = lab.name("s")
    host.create_sandbox(s)
    ep = host.connect("none", s)
    assert ep.ip is None and ep.ifname == ""
    assert _links(s) == {"lo": ""}
    with pytest.raises(errors.DuplicateNetwork):  # one none network per host, like Docker
        host.create_network("none2", driver="none")


def test_host_network_shares_the_host_namespace(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("host", driver="host")
    shared = lab.name("shared")
    host.adopt_sandbox(shared, netns_path(lab.host))
    ep = host.connect("host", shared)
    assert ep.ip is None
    with TcpServer(lab.host, "0.0.0.0", 7200, "host"):
        assert tcp_request(lab.outside, "192.0.2.1", 7200, "h").startswith("host h")
    own = lab.name("own")
    host.create_sandbox(own)
    with pytest.raises(errors.InvalidRequest):
        host.connect("host", own)
    host.remove_sandbox(shared)  # adopted: the host namespace itself stays
    assert _links(lab.host)[HOST_UPLINK] == "veth"
