"""bridge driver on the kernel data plane: reachability, isolation, NAT, ports, options."""

from __future__ import annotations

import ipaddress

import pytest
from netlab import HOST_ADDRESS, HOST_ADDRESS6, OUTSIDE_ADDRESS, OUTSIDE_ADDRESS6, Lab, run_in
from nettools import TcpServer, ping, tcp_request

import keelnet
from keelnet.kernel.namespaces import iproute, netns_path


def _link(netns: str, ifname: str) -> dict[str, object]:
    with iproute(netns_path(netns)) as ipr:
        found = ipr.link("get", ifname=ifname)[0]
        return {
            "mtu": found.get("mtu"),
            "master": found.get("master"),
            "alias": found.get("ifalias"),
            "kind": found.get(("linkinfo", "kind")),
        }


def test_two_sandboxes_reach_each_other_over_ipv4_and_ipv6(lab: Lab, host: keelnet.Host) -> None:
    net = host.create_network("front", ipv6=True)
    a, b = lab.name("a"), lab.name("b")
    sandbox_a = host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("front", a)
    ep_b = host.connect("front", b)

    v4 = net.ipam_for(4)
    assert v4 is not None and ep_a.ip is not None and ep_b.ip is not None
    assert ipaddress.ip_address(ep_a.ip) in ipaddress.ip_network(v4.subnet)
    assert ep_a.ip != ep_b.ip and ep_a.gateway == v4.gateway
    assert ep_a.ipv6 is not None and ep_b.ipv6 is not None
    assert _link(lab.host, f"kn-{net.id[:12]}")["kind"] == "bridge"
    assert ping(a, ep_b.ip) and ping(b, ep_a.ip)
    assert ping(a, ep_b.ipv6, timeout=3)
    with TcpServer(b, "0.0.0.0", 8080, "hello-from-b"):
        assert tcp_request(a, ep_b.ip, 8080, "ping") == f"hello-from-b ping from {ep_a.ip}"
    with TcpServer(b, "::", 8081, "v6-from-b"):
        assert tcp_request(a, ep_b.ipv6, 8081, "x") == f"v6-from-b x from {ep_a.ipv6}"
    inspect = host.inspect_network("front")
    assert inspect["DataPlane"] == "kernel"
    # Keyed by the sandbox's id, as Docker keys it by the container's.
    assert inspect["Containers"][sandbox_a.id]["Name"] == a
    assert inspect["Containers"][sandbox_a.id]["IPv4Address"] == f"{ep_a.ip}/{v4.prefix_length}"


def test_networks_are_isolated_from_each_other(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("red", subnet="10.10.1.0/24")
    host.create_network("blue", subnet="10.10.2.0/24")
    r, b = lab.name("r"), lab.name("b")
    host.create_sandbox(r)
    host.create_sandbox(b)
    ep_r = host.connect("red", r)
    ep_b = host.connect("blue", b)
    assert ep_r.ip == "10.10.1.2" and ep_b.ip == "10.10.2.2"
    assert ping(r, "10.10.1.1")  # own gateway works
    assert not ping(r, ep_b.ip) and not ping(b, ep_r.ip)
    with TcpServer(b, "0.0.0.0", 9000, "secret"):
        assert tcp_request(r, ep_b.ip, 9000, "x", timeout=1) == ""
    # Connected to both, a sandbox reaches both (isolation is between networks, not hosts).
    host.connect("blue", r)
    assert ping(r, ep_b.ip)


def test_outbound_masquerade_reaches_outside_host(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("out", subnet="10.20.0.0/24")
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("out", s)
    assert ping(s, OUTSIDE_ADDRESS)
    with TcpServer(lab.outside, "0.0.0.0", 7000, "world"):
        # The outside host sees the host's address, not the sandbox's: masquerade.
        assert tcp_request(s, OUTSIDE_ADDRESS, 7000, "hi") == f"world hi from {HOST_ADDRESS}"


def test_ipv6_outbound_masquerade_reaches_outside_host(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("out6", subnet="10.22.0.0/24", ipv6=True)
    s = lab.name("s")
    host.create_sandbox(s)
    ep = host.connect("out6", s)
    assert ep.ipv6 is not None
    assert ping(s, OUTSIDE_ADDRESS6, timeout=3)
    with TcpServer(lab.outside, "::", 7002, "world6"):
        assert tcp_request(s, OUTSIDE_ADDRESS6, 7002, "hi") == f"world6 hi from {HOST_ADDRESS6}"


def test_masquerade_disabled_keeps_sandbox_source(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "plain",
        subnet="10.21.0.0/24",
        options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
    )
    s = lab.name("s")
    host.create_sandbox(s)
    ep = host.connect("plain", s)
    run_in(lab.outside, "ip", "route", "add", "10.21.0.0/24", "via", HOST_ADDRESS)
    with TcpServer(lab.outside, "0.0.0.0", 7001, "world"):
        assert tcp_request(s, OUTSIDE_ADDRESS, 7001, "hi") == f"world hi from {ep.ip}"


def test_published_port_from_outside_and_from_host(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("web", subnet="10.30.0.0/24")
    s = lab.name("s")
    host.create_sandbox(s)
    ep = host.connect("web", s)
    host.publish("web", s, 8080, 80)
    with TcpServer(s, "0.0.0.0", 80, "web"):
        assert tcp_request(lab.outside, HOST_ADDRESS, 8080, "GET") == (
            f"web GET from {OUTSIDE_ADDRESS}"
        )
        # From the host itself: its own address and loopback (route_localnet + masquerade).
        assert tcp_request(lab.host, HOST_ADDRESS, 8080, "a").startswith("web a from ")
        assert tcp_request(lab.host, "127.0.0.1", 8080, "b").startswith("web b from ")
        # Unpublished container ports stay closed to the outside, even routed directly.
        run_in(lab.outside, "ip", "route", "add", "10.30.0.0/24", "via", HOST_ADDRESS)
        assert tcp_request(lab.outside, str(ep.ip), 80, "direct", timeout=1) == ""
        host.unpublish("web", s, 8080)
        assert tcp_request(lab.outside, HOST_ADDRESS, 8080, "GET", timeout=1) == ""
    host.unpublish("web", s, 8080)  # idempotent


def test_published_port_over_ipv6(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("web6", subnet="10.32.0.0/24", ipv6=True)
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("web6", s)
    host.publish("web6", s, 8443, 443)
    with TcpServer(s, "::", 443, "six"):  # a dual-stack listener answers both
        assert tcp_request(lab.outside, HOST_ADDRESS6, 8443, "v6") == (
            f"six v6 from {OUTSIDE_ADDRESS6}"
        )
        assert tcp_request(lab.outside, HOST_ADDRESS, 8443, "v4") == (
            f"six v4 from ::ffff:{OUTSIDE_ADDRESS}"
        )
    host.unpublish("web6", s, 8443)
    host.publish("web6", s, 8444, 443, host_ip=HOST_ADDRESS6)
    with TcpServer(s, "::", 443, "six"):
        assert tcp_request(lab.outside, HOST_ADDRESS6, 8444, "only6").startswith("six only6")
        assert tcp_request(lab.outside, HOST_ADDRESS, 8444, "not4", timeout=1) == ""


def test_ephemeral_host_port(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("eph", subnet="10.31.0.0/24")
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("eph", s)
    low = int(run_in(lab.host, "cat", "/proc/sys/net/ipv4/ip_local_port_range").split()[0])
    first = host.publish("eph", s, 0, 80)
    second = host.publish("eph", s, 0, 81)
    assert (first.host_port, second.host_port) == (low, low + 1)
    with TcpServer(s, "0.0.0.0", 81, "eph"):
        reply = tcp_request(lab.outside, HOST_ADDRESS, second.host_port, "e")
        assert reply == f"eph e from {OUTSIDE_ADDRESS}"


def test_internal_network_has_no_outside_access(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("vault", subnet="10.40.0.0/24", internal=True)
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("vault", a)
    ep_b = host.connect("vault", b)
    assert ep_a.gateway is None
    assert ping(a, str(ep_b.ip))
    assert not ping(a, OUTSIDE_ADDRESS)
    with iproute(netns_path(a)) as ipr:
        assert not [r for r in ipr.route("dump", family=2) if r["dst_len"] == 0]
    with pytest.raises(keelnet.errors.InvalidOption):
        host.publish("vault", a, 8080, 80)


def test_icc_disabled_blocks_sandbox_to_sandbox(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "noicc",
        subnet="10.50.0.0/24",
        options={"com.docker.network.bridge.enable_icc": "false"},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    host.connect("noicc", a)
    ep_b = host.connect("noicc", b)
    assert not ping(a, str(ep_b.ip))
    assert ping(a, "10.50.0.1")  # the gateway is still reachable
    assert ping(a, OUTSIDE_ADDRESS)  # and so is the outside


def test_mtu_and_bridge_name_options(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "tuned",
        subnet="10.60.0.0/24",
        options={
            "com.docker.network.driver.mtu": "1400",
            "com.docker.network.bridge.name": "kn-tuned",
        },
    )
    s = lab.name("s")
    host.create_sandbox(s)
    ep = host.connect("tuned", s)
    assert _link(lab.host, "kn-tuned")["mtu"] == 1400
    assert _link(s, ep.ifname)["mtu"] == 1400
    assert _link(lab.host, str(ep.host_ifname))["mtu"] == 1400


def test_subnets_carved_from_default_pools_skip_used_ones(lab: Lab, host: keelnet.Host) -> None:
    first = host.create_network("one")
    second = host.create_network("two")
    assert [c.subnet for c in first.ipam] == ["172.17.0.0/16"]
    assert [c.subnet for c in second.ipam] == ["172.18.0.0/16"]
    host.remove_network("one")
    assert [c.subnet for c in host.create_network("three").ipam] == ["172.17.0.0/16"]


def test_docker_rules_untouched_and_keelnet_jump_removed(lab: Lab, host: keelnet.Host) -> None:
    def docker_rules() -> list[str]:
        rules = run_in(lab.host, "iptables", "-w", "-S").splitlines()
        return [r for r in rules if "KEELNET" not in r]

    before = docker_rules()
    host.create_network("co", subnet="10.70.0.0/24")
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("co", s)
    # The FORWARD policy is DROP here, as on a Docker host; keelnet's traffic still flows.
    assert "-P FORWARD DROP" in before
    assert ping(s, OUTSIDE_ADDRESS)
    assert docker_rules() == before
    host.remove_sandbox(s)
    host.remove_network("co")
    assert run_in(lab.host, "iptables", "-w", "-S") == "\n".join(before) + "\n"


def test_keelnet_traffic_needs_its_iptables_jump_under_a_drop_policy(
    lab: Lab, host: keelnet.Host
) -> None:
    host.create_network("jump", subnet="10.71.0.0/24")
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("jump", s)
    assert ping(s, OUTSIDE_ADDRESS)
    # Without keelnet's jump, Docker's DROP policy wins over keelnet's nftables accept...
    run_in(lab.host, "iptables", "-w", "-D", "DOCKER-USER", "-j", "KEELNET-FORWARD")
    assert not ping(s, OUTSIDE_ADDRESS)
    # ...and reconcile puts it back.
    host.reconcile()
    assert ping(s, OUTSIDE_ADDRESS)
