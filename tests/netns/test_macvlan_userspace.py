"""macvlan on the userspace data plane (keelnet's switch on the parent): bridge, private
and vepa modes.

Same lab as the ipvlan tests: the parent's segment is 192.0.2.0/24, the outside host .2,
sandboxes in 192.0.2.128/25. Unlike ipvlan, every sandbox leaves with its own MAC.
"""

from __future__ import annotations

import pytest
from netlab import HOST_UPLINK, OUTSIDE_ADDRESS, Lab, kernel_state, run_in, store_state
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


def test_passthru_is_refused(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir), _open_fds()
    with pytest.raises(errors.InvalidOption, match="passthru needs the kernel"):
        host.create_network(
            "mv", driver="macvlan", options={**USERSPACE, "macvlan_mode": "passthru"}
        )
    with pytest.raises(errors.MissingParentInterface):
        host.create_network("mv", driver="macvlan", options={**USERSPACE, "parent": "kn-nope0"})
    assert (kernel_state(lab.host), store_state(lab.state_dir), _open_fds()) == before


def _outside_switch(lab: Lab, *, hairpin: bool) -> None:
    """Turns the outside host into an external switch: its eth0 (the parent's wire)
    becomes a port of a Linux bridge holding the outside address; with `hairpin`, the
    bridge sends frames back out of the port they came in on (what VEPA relies on)."""
    run_in(lab.outside, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0")
    run_in(lab.outside, "ip", "addr", "del", f"{OUTSIDE_ADDRESS}/24", "dev", "eth0")
    run_in(lab.outside, "ip", "link", "set", "eth0", "master", "br0")
    run_in(lab.outside, "ip", "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "br0")
    run_in(lab.outside, "ip", "link", "set", "br0", "up")
    hairpin_mode = "on" if hairpin else "off"
    run_in(lab.outside, "bridge", "link", "set", "dev", "eth0", "hairpin", hairpin_mode)


def _two_sandboxes(lab: Lab, host: keelnet.Host, mode: str) -> tuple[str, str, str]:
    """A macvlan network in `mode` with sandboxes a and b; returns their names and b's IP."""
    host.create_network(
        "mv",
        driver="macvlan",
        subnet=SUBNET,
        gateway=GATEWAY,
        ip_range=RANGE,
        options={**USERSPACE, "macvlan_mode": mode},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    host.connect("mv", a)
    ep_b = host.connect("mv", b)
    return a, b, str(ep_b.ip)


@pytest.mark.parametrize("hairpin", [True, False])
def test_private_sandboxes_never_reach_each_other(
    lab: Lab, host: keelnet.Host, hairpin: bool
) -> None:
    _outside_switch(lab, hairpin=hairpin)
    a, b, b_ip = _two_sandboxes(lab, host, "private")
    assert ping(a, OUTSIDE_ADDRESS)
    assert ping(b, OUTSIDE_ADDRESS)
    with Sniffer(lab.outside) as sniffer:
        assert not ping(a, b_ip)
    # With hairpin the outside switch did send a's ARP requests back: keelnet dropped them.
    reflected = [f for f in sniffer.frames if f["outgoing"] and f.get("op") == 1]
    assert bool(reflected) == hairpin
    with TcpServer(lab.outside, "0.0.0.0", 7302, "out"):
        assert tcp_request(a, OUTSIDE_ADDRESS, 7302, "p").startswith("out p from ")


def test_vepa_sandboxes_reach_each_other_through_the_outside_switch(
    lab: Lab, host: keelnet.Host
) -> None:
    _outside_switch(lab, hairpin=True)
    a, b, b_ip = _two_sandboxes(lab, host, "vepa")
    with Sniffer(lab.outside) as sniffer:
        assert ping(a, b_ip)
    # The echo went out on the wire and came back (hairpin), not across the switch.
    to_b = [f for f in sniffer.frames if f.get("ip_dst") == b_ip]
    assert any(not f["outgoing"] for f in to_b) and any(f["outgoing"] for f in to_b)
    with TcpServer(b, "0.0.0.0", 7303, "mv-b"):
        assert tcp_request(a, b_ip, 7303, "v").startswith("mv-b v from ")
    assert ping(a, OUTSIDE_ADDRESS)


def test_vepa_sandboxes_do_not_reach_each_other_without_hairpin(
    lab: Lab, host: keelnet.Host
) -> None:
    _outside_switch(lab, hairpin=False)
    a, b, b_ip = _two_sandboxes(lab, host, "vepa")
    with Sniffer(lab.outside) as sniffer:
        assert not ping(a, b_ip)
    assert not [f for f in sniffer.frames if f.get("ip_dst") == b_ip and f["outgoing"]]
    assert ping(a, OUTSIDE_ADDRESS)
    assert ping(b, OUTSIDE_ADDRESS)


def test_auto_keeps_the_kernel_macvlan_where_it_exists(lab: Lab, host: keelnet.Host) -> None:
    network = host.create_network("mv", driver="macvlan", options={"parent": HOST_UPLINK})
    assert network.dataplane == "kernel"
