"""Unit tests (no root) for the network layer: nft rendering, iptables plans, drivers, CLI."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from keelnet import drivers, errors
from keelnet.cli.port import parse_mapping
from keelnet.drivers.base import Driver, HostContext
from keelnet.kernel import iptables_compat, nftables
from keelnet.model import Endpoint, Network, PortMapping

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
    ]


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
