"""Unit tests (no root) for the network layer: nft rendering, iptables plans, drivers, CLI."""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import EntryPoint

import pytest

from keelnet import drivers, errors
from keelnet.cli.port import parse_mapping
from keelnet.drivers.base import Driver, HostContext
from keelnet.kernel import iptables_compat, nftables, nftables_guard
from keelnet.model import Endpoint, Network, PortMapping
from keelnet.store import etcd

NET_ID = "ab" * 32


def _rules(**kwargs: object) -> nftables.BridgeRules:
    base: dict[str, object] = {"network_id": NET_ID, "bridge": "kn-br", "subnets": ("10.0.0.0/24",)}
    base.update(kwargs)
    return nftables.BridgeRules(**base)  # type: ignore[arg-type]


def test_no_networks_removes_keelnets_tables_only() -> None:
    script = nftables.render([])
    assert script.splitlines() == [
        "add table inet keelnet",
        "delete table inet keelnet",
        "add table inet keelnet-nat",
        "delete table inet keelnet-nat",
        "add table bridge keelnet",
        "delete table bridge keelnet",
    ]


def test_icc_off_drops_what_the_host_would_route_back_into_the_bridge() -> None:
    forward = [
        line
        for line in nftables.render([_rules(icc=False)]).splitlines()
        if line.startswith("add rule inet keelnet forward")
    ]
    assert 'add rule inet keelnet forward oifname "kn-br" iifname "kn-br" counter drop' in forward
    assert not any('iifname "kn-br" accept' in line for line in forward)
    # Before the rules that let replies and published ports in.
    within = forward.index(
        'add rule inet keelnet forward oifname "kn-br" iifname "kn-br" counter drop'
    )
    assert within < min(i for i, line in enumerate(forward) if "ct " in line)


def test_port_security_lets_only_own_subnets_out_of_the_bridge() -> None:
    script = nftables.render([_rules(port_security=True, subnets=("10.0.0.0/24", "fd00::/64"))])
    forward = [
        line for line in script.splitlines() if line.startswith("add rule inet keelnet forward")
    ]
    assert forward[:2] == [
        'add rule inet keelnet forward iifname "kn-br" ip saddr != { 10.0.0.0/24 } counter drop',
        'add rule inet keelnet forward iifname "kn-br" ip6 saddr != { fd00::/64 } counter drop',
    ]
    v4_only = nftables.render([_rules(port_security=True)])
    assert 'iifname "kn-br" meta nfproto ipv6 counter drop' in v4_only
    unguarded = nftables.render([_rules()])  # port_security=false: none
    assert not [line for line in unguarded.splitlines() if "forward" in line and "saddr" in line]


def test_guarded_ports_are_set_elements_the_rules_never_touch() -> None:
    port = nftables_guard.GuardedPort("kn-v1", "02:42:0a:00:00:02", ("10.0.0.2", "fe80::1"))
    script = nftables_guard.add_port(nftables_guard.BRIDGE, port)
    assert 'add element bridge keelnet port_mac { "kn-v1" . 02:42:0a:00:00:02 }' in script
    assert 'add element bridge keelnet port_ipv4 { "kn-v1" . 10.0.0.2 }' in script
    assert (
        'add element bridge keelnet port_nd_target { "kn-v1" . 0xfe800000000000000000000000000001 }'
        in script
    )
    removal = nftables_guard.remove_port(nftables_guard.BRIDGE, port).splitlines()
    assert removal.index('add element bridge keelnet guarded { "kn-v1" }') < removal.index(
        'delete element bridge keelnet guarded { "kn-v1" }'
    )  # idempotent: removing a port not guarded is fine
    rendered = nftables.render([_rules()])
    assert "flush table bridge keelnet" in rendered and "element" not in rendered
    assert "flush set" in nftables_guard.sync(nftables_guard.BRIDGE, [port])


def test_bridge_rules_isolate_masquerade_and_publish() -> None:
    port = PortMapping(NET_ID, "s", 8080, 80, "tcp", None, "10.0.0.2")
    lines = nftables.render([_rules(ports=(port,))]).splitlines()
    forward = [line for line in lines if line.startswith("add rule inet keelnet forward")]
    assert forward[-1].endswith('oifname "kn-br" counter drop')  # nothing else gets in
    assert any("ct status dnat accept" in line for line in forward)
    assert (
        'add rule inet keelnet-nat postrouting ip saddr 10.0.0.0/24 oifname != "kn-br" masquerade'
        in lines
    )
    assert (
        "add rule inet keelnet-nat published meta nfproto ipv4 tcp dport 8080 "
        "dnat ip to 10.0.0.2:80" in lines
    )
    assert "flush table inet keelnet" in lines  # chains kept, rules replaced


def test_internal_network_gets_no_nat_and_drops_outbound() -> None:
    port = PortMapping(NET_ID, "s", 8080, 80, "tcp", None, "10.0.0.2")
    script = nftables.render([_rules(internal=True, ports=(port,))])
    assert "masquerade" not in script and "dnat ip to" not in script
    assert 'add rule inet keelnet forward iifname "kn-br" counter drop' in script


def test_into_bridge_checks_come_before_out_of_bridge_checks() -> None:
    lines = nftables.render([_rules(internal=True), _rules(bridge="kn-b2")]).splitlines()
    forward = [line for line in lines if line.startswith("add rule inet keelnet forward")]
    first_iif = next(i for i, line in enumerate(forward) if " forward iifname" in line)
    assert all(" forward oifname" in line for line in forward[:first_iif])


def test_iptables_plan_only_where_forward_policy_drops() -> None:
    accepting = ["*filter", ":FORWARD ACCEPT [0:0]", "COMMIT"]
    assert iptables_compat._plan(accepting, ["kn-br"]) is None
    docker = ["*filter", ":FORWARD DROP [0:0]", ":DOCKER-USER - [0:0]", "COMMIT"]
    plan = iptables_compat._plan(docker, ["kn-br"])
    assert plan is not None
    assert "-I DOCKER-USER 1 -j KEELNET-FORWARD" in plan
    assert "-A KEELNET-FORWARD -i kn-br -j ACCEPT" in plan
    assert "-A KEELNET-FORWARD -o docker0 -j RETURN" in plan  # Docker's bridges stay Docker's
    after = iptables_compat._after(docker, ["kn-br"])
    cleanup = iptables_compat._plan(after, [])
    assert cleanup is not None
    assert "-D DOCKER-USER -j KEELNET-FORWARD" in cleanup and "-X KEELNET-FORWARD" in cleanup


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", (None, 8080, 80, "tcp")),
        ("127.0.0.1:53:53/udp", ("127.0.0.1", 53, 53, "udp")),
        ("80", (None, 0, 80, "tcp")),
    ],
)
def test_port_mapping_syntax(text: str, expected: tuple[object, ...]) -> None:
    assert parse_mapping(text) == expected


def test_bad_port_mapping() -> None:
    with pytest.raises(errors.InvalidRequest):
        parse_mapping("http:80")


class _ThirdParty(Driver):
    name = "thirdparty"

    def create_network(self, ctx: HostContext, network: Network) -> None: ...
    def delete_network(self, ctx: HostContext, network: Network) -> None: ...
    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None: ...
    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None: ...
    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None: ...
    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None: ...


def test_drivers_by_name_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(drivers.get_driver("bridge")).__name__ == "BridgeDriver"
    assert drivers.get_driver("null").name == "none"
    entry = EntryPoint("thirdparty", f"{__name__}:_ThirdParty", drivers.ENTRY_POINT_GROUP)
    monkeypatch.setattr(drivers, "entry_points", lambda group: [entry])
    assert isinstance(drivers.get_driver("thirdparty"), _ThirdParty)
    assert "thirdparty" in drivers.driver_names()
    with pytest.raises(errors.UnknownDriver):
        drivers.get_driver("nosuch")


def test_remote_endpoints_carry_their_names_and_old_records_still_read() -> None:
    endpoint = Endpoint("10.0.9.2", None, "02:42:0a:00:09:02", "eth0", None, id="e1")
    endpoint = dataclasses.replace(endpoint, network_id="n1", sandbox="web", aliases=("api",))
    record = etcd.endpoint_record(endpoint, "h2", "192.0.2.2", ready=True)
    found = etcd.remote_endpoint(record)
    assert found is not None and found[1] is True
    assert found[0].names == ("web", "api") and found[0].vtep == "192.0.2.2"
    # A record written before names were read (no sandbox, no aliases) still forwards.
    old = json.loads(record)
    del old["endpoint"]["sandbox"], old["endpoint"]["aliases"]
    found = etcd.remote_endpoint(json.dumps(old).encode())
    assert found is not None and found[0].names == () and found[0].ip == "10.0.9.2"
