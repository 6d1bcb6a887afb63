"""macvlan bridge mode on the userspace data plane (keelnet's switch on the parent).

Same lab as the ipvlan tests: the parent's segment is 192.0.2.0/24, the outside host .2,
sandboxes in 192.0.2.128/25. Unlike ipvlan, every sandbox leaves with its own MAC.
"""

from __future__ import annotations

import pytest
from netlab import HOST_UPLINK, OUTSIDE_ADDRESS, Lab, kernel_state, store_state
from nettools import TcpServer, ping, tcp_request
from test_ipvlan_userspace import GATEWAY, RANGE, SUBNET, Sniffer, _link, _neighbour, _open_fds

import keelnet
from keelnet import errors

USERSPACE = {"parent": HOST_UPLINK, "dataplane": "userspace"}


def test_bridge_mode_sandboxes_use_their_own_macs(lab: Lab, host: keelnet.Host) -> None:
    fds = _open_fds()
    host.create_network(
        "mv", driver="macvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE, options=USERSPACE
    )
    assert host.inspect_network("mv")["DataPlane"] == "userspace"
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("mv", a, mac="02:42:c0:00:02:80")
    ep_b = host.connect("mv", b)
    assert _link(a, "eth0") == {"mac": "02:42:c0:00:02:80", "noarp": False, "kind": "tun"}
    assert ping(a, str(ep_b.ip))
    with Sniffer(lab.outside) as sniffer, TcpServer(a, "0.0.0.0", 7300, "mv-a"):
        assert tcp_request(lab.outside, str(ep_a.ip), 7300, "q") == (
            f"mv-a q from {OUTSIDE_ADDRESS}"
        )
    from_a = [f for f in sniffer.arriving() if f.get("ip_src") == ep_a.ip]
    assert from_a and {f["src"] for f in from_a} == {ep_a.mac}
    assert _neighbour(lab.outside, str(ep_a.ip)) == ep_a.mac
    with TcpServer(lab.outside, "0.0.0.0", 7301, "out"):
        assert tcp_request(b, OUTSIDE_ADDRESS, 7301, "m") == f"out m from {ep_b.ip}"
    host.disconnect("mv", a)
    host.disconnect("mv", a)
    assert _link(a, "eth0") is None
    with pytest.raises(errors.NetworkInUse):  # b is still on it
        host.remove_network("mv")
    host.disconnect("mv", b)
    host.remove_network("mv")
    host.remove_network("mv")
    assert _open_fds() == fds  # the switch, its AF_PACKET port and the TAPs are closed


def test_modes_other_than_bridge_are_refused(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir), _open_fds()
    for mode in ("private", "vepa", "passthru"):
        with pytest.raises(errors.InvalidOption):
            host.create_network("mv", driver="macvlan", options={**USERSPACE, "macvlan_mode": mode})
    with pytest.raises(errors.MissingParentInterface):
        host.create_network("mv", driver="macvlan", options={**USERSPACE, "parent": "kn-nope0"})
    assert (kernel_state(lab.host), store_state(lab.state_dir), _open_fds()) == before


def test_auto_keeps_the_kernel_macvlan_where_it_exists(lab: Lab, host: keelnet.Host) -> None:
    network = host.create_network("mv", driver="macvlan", options={"parent": HOST_UPLINK})
    assert network.dataplane == "kernel"
