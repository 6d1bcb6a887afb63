"""bridge networks on the userspace data plane: keelnet's switch, a TAP per sandbox and a
host-side TAP holding the gateway, with the kernel bridge's NAT and firewall rules."""

from __future__ import annotations

import pytest
from netlab import HOST_ADDRESS, OUTSIDE_ADDRESS, Lab, kernel_state, store_state
from nettools import TcpServer, ping, tcp_request
from test_ipvlan_userspace import _link, _open_fds

import keelnet
from keelnet import errors

USERSPACE = {"dataplane": "userspace"}


def test_sandboxes_reach_each_other_the_outside_and_published_ports(
    lab: Lab, host: keelnet.Host
) -> None:
    fds = _open_fds()
    network = host.create_network("ub", subnet="10.77.0.0/24", options=USERSPACE)
    assert host.inspect_network("ub")["DataPlane"] == "userspace"
    assert network.kernel_name is not None
    gateway = _link(lab.host, network.kernel_name)
    assert gateway is not None and gateway["kind"] == "tun"
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("ub", a)
    ep_b = host.connect("ub", b, mac="02:42:0a:4d:00:99")
    assert _link(b, "eth0") == {"mac": "02:42:0a:4d:00:99", "noarp": False, "kind": "tun"}
    assert ping(a, str(ep_b.ip))
    assert ping(b, str(ep_a.ip))
    assert ping(a, "10.77.0.1")
    with TcpServer(lab.outside, "0.0.0.0", 7400, "out"):
        # Masqueraded: the outside host sees the keelnet host's address.
        assert tcp_request(a, OUTSIDE_ADDRESS, 7400, "m") == f"out m from {HOST_ADDRESS}"
    host.publish("ub", b, 8088, 80)
    with TcpServer(b, "0.0.0.0", 80, "web"):
        assert tcp_request(lab.outside, HOST_ADDRESS, 8088, "get") == (
            f"web get from {OUTSIDE_ADDRESS}"
        )
    host.remove_sandbox(a)
    host.remove_sandbox(b)
    host.remove_network("ub")
    host.remove_network("ub")
    assert _link(lab.host, network.kernel_name) is None
    assert _open_fds() == fds


def test_icc_false_isolates_sandboxes_but_not_the_gateway(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "ub",
        subnet="198.51.100.0/24",
        options={**USERSPACE, "com.docker.network.bridge.enable_icc": "false"},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("ub", a)
    ep_b = host.connect("ub", b)
    assert not ping(a, str(ep_b.ip))
    assert not ping(b, str(ep_a.ip))
    with TcpServer(b, "0.0.0.0", 7401, "b"):
        assert tcp_request(a, str(ep_b.ip), 7401, "x", timeout=1.0) == ""
    assert ping(a, "198.51.100.1")  # the gateway is still reachable
    assert ping(b, "198.51.100.1")
    with TcpServer(lab.outside, "0.0.0.0", 7402, "out"):  # and so is the outside
        assert tcp_request(a, OUTSIDE_ADDRESS, 7402, "m") == f"out m from {HOST_ADDRESS}"
        assert tcp_request(b, OUTSIDE_ADDRESS, 7402, "n") == f"out n from {HOST_ADDRESS}"


def test_a_bad_icc_value_leaves_nothing(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir), _open_fds()
    with pytest.raises(errors.InvalidOption):
        host.create_network(
            "ub", options={**USERSPACE, "com.docker.network.bridge.enable_icc": "maybe"}
        )
    assert (kernel_state(lab.host), store_state(lab.state_dir), _open_fds()) == before


def test_a_restarted_host_brings_the_userspace_bridge_back(lab: Lab) -> None:
    first = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    a = lab.name("a")
    try:
        network = first.create_network("ub", subnet="10.77.1.0/24", options=USERSPACE)
        first.create_sandbox(a)
        ep = first.connect("ub", a)
        assert ping(a, "10.77.1.1")
    finally:
        first.close()
    assert network.kernel_name is not None
    assert _link(lab.host, network.kernel_name) is None  # died with its process
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as second:
        try:
            assert second.endpoints("ub")[0].ip == ep.ip
            assert _link(a, "eth0") is not None
            assert ping(a, "10.77.1.1")
            assert ping(a, OUTSIDE_ADDRESS)
        finally:
            second.remove_sandbox(a)
            second.remove_network("ub")
