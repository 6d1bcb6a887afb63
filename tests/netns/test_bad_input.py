"""Bad input raises its specific error and leaves kernel and store exactly as before."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from netlab import HOST_UPLINK, Lab, kernel_state, store_state, wait_for_link_local

import keelnet
from keelnet import errors
from keelnet.kernel import iptables_compat, links

Action = Callable[[keelnet.Host, Lab], object]


def _prepare(host: keelnet.Host, lab: Lab) -> None:
    bridge = host.create_network("taken", subnet="10.80.0.0/24", ipv6=True).kernel_name
    host.create_sandbox(lab.name("s"))
    host.connect("taken", lab.name("s"), ip="10.80.0.10")
    host.create_sandbox(lab.name("free"))
    # The bridge's link-local address comes with its first port's carrier: the snapshots
    # compare a settled state.
    wait_for_link_local(lab.host, str(bridge))


CASES: list[tuple[str, type[Exception], Action]] = [
    ("duplicate name", errors.DuplicateNetwork, lambda h, lab: h.create_network("taken")),
    (
        "overlapping subnet",
        errors.OverlappingSubnet,
        lambda h, lab: h.create_network("o", subnet="10.80.0.128/25"),
    ),
    (
        "invalid subnet",
        errors.InvalidSubnet,
        lambda h, lab: h.create_network("o", subnet="10.81.0.1/24"),
    ),
    ("garbage subnet", errors.InvalidSubnet, lambda h, lab: h.create_network("o", subnet="nope")),
    (
        "gateway outside subnet",
        errors.GatewayOutsideSubnet,
        lambda h, lab: h.create_network("o", subnet="10.82.0.0/24", gateway="10.99.0.1"),
    ),
    ("unknown driver", errors.UnknownDriver, lambda h, lab: h.create_network("o", driver="zz")),
    (
        "unknown option",
        errors.InvalidOption,
        lambda h, lab: h.create_network("o", options={"com.example.nope": "1"}),
    ),
    (
        "bad option value",
        errors.InvalidOption,
        lambda h, lab: h.create_network("o", options={"com.docker.network.driver.mtu": "x"}),
    ),
    (
        "missing parent",
        errors.MissingParentInterface,
        lambda h, lab: h.create_network("o", driver="macvlan", options={"parent": "kn-nope"}),
    ),
    (
        "no parent at all",
        errors.MissingParentInterface,
        lambda h, lab: h.create_network("o", driver="macvlan"),
    ),
    (
        "address in use",
        errors.AddressInUse,
        lambda h, lab: h.connect("taken", lab.name("free"), ip="10.80.0.10"),
    ),
    (
        "gateway address in use",
        errors.AddressInUse,
        lambda h, lab: h.connect("taken", lab.name("free"), ip="10.80.0.1"),
    ),
    (
        "address out of range",
        errors.AddressOutOfRange,
        lambda h, lab: h.connect("taken", lab.name("free"), ip="10.99.0.5"),
    ),
    (
        "missing sandbox",
        errors.SandboxNotFound,
        lambda h, lab: h.connect("taken", lab.name("ghost")),
    ),
    ("missing network", errors.NetworkNotFound, lambda h, lab: h.connect("nope", lab.name("s"))),
    (
        "already connected",
        errors.DuplicateEndpoint,
        lambda h, lab: h.connect("taken", lab.name("s")),
    ),
    (
        "bad mac",
        errors.InvalidRequest,
        lambda h, lab: h.connect("taken", lab.name("free"), mac="zz"),
    ),
    (
        "port of unconnected sandbox",
        errors.EndpointNotFound,
        lambda h, lab: h.publish("taken", lab.name("free"), 8080, 80),
    ),
    (
        "bad port",
        errors.InvalidRequest,
        lambda h, lab: h.publish("taken", lab.name("s"), 70000, 80),
    ),
    (
        "network in use",
        errors.NetworkInUse,
        lambda h, lab: h.remove_network("taken"),
    ),
    (
        "macvlan on a VLAN parent without 8021q",
        errors.KernelFeatureMissing,
        lambda h, lab: h.create_network(
            "o",
            driver="macvlan",
            subnet="10.83.0.0/24",
            options={"parent": f"{HOST_UPLINK}.10", "dataplane": "kernel"},
        ),
    ),
    ("bad network name", errors.InvalidName, lambda h, lab: h.create_network("a b")),
    ("bad sandbox name", errors.InvalidName, lambda h, lab: h.create_sandbox("../x")),
    (
        "duplicate sandbox",
        errors.DuplicateSandbox,
        lambda h, lab: h.create_sandbox(lab.name("s")),
    ),
]


def test_kernel_state_is_settled_when_operations_return(lab: Lab, host: keelnet.Host) -> None:
    """Nothing keelnet made changes later on its own (e.g. addresses finishing DAD), so
    before/after comparisons in these tests compare like with like."""
    _prepare(host, lab)
    host.create_network("v4only", subnet="10.86.0.0/24")
    host.connect("v4only", lab.name("free"))
    settled = kernel_state(lab.host)
    time.sleep(2.5)  # longer than IPv6 duplicate address detection takes
    assert kernel_state(lab.host) == settled


@pytest.mark.parametrize(("case", "error", "action"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(
    lab: Lab, host: keelnet.Host, case: str, error: type[Exception], action: Action
) -> None:
    if case.startswith("macvlan on a VLAN") and links.kind_supported("vlan", host.netns_path):
        pytest.skip("this kernel has 8021q: VLAN parents work")
    _prepare(host, lab)
    kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(error) as raised:
        action(host, lab)
    assert str(raised.value)  # a message a user can read
    assert kernel_state(lab.host) == kernel_before
    assert store_state(lab.state_dir) == store_before


def test_kernel_feature_missing_names_module_and_alternative(lab: Lab, host: keelnet.Host) -> None:
    if links.kind_supported("vlan", host.netns_path):
        pytest.skip("this kernel has 8021q")
    with pytest.raises(errors.KernelFeatureMissing) as raised:
        host.create_network(
            "v", driver="macvlan", options={"parent": f"{HOST_UPLINK}.10", "dataplane": "kernel"}
        )
    assert raised.value.module == "8021q"
    assert "userspace" in raised.value.alternative


def test_failed_kernel_step_rolls_back_everything(
    lab: Lab, host: keelnet.Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the veth exists (in join) undoes the veth and the allocation."""
    _prepare(host, lab)
    kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)

    def broken_join(*args: object) -> None:
        raise errors.KernelError("injected failure")

    from keelnet.drivers.bridge import BridgeDriver

    monkeypatch.setattr(BridgeDriver, "join", broken_join)
    with pytest.raises(errors.KernelError):
        host.connect("taken", lab.name("free"))
    assert kernel_state(lab.host) == kernel_before
    assert store_state(lab.state_dir) == store_before
    monkeypatch.undo()
    assert host.connect("taken", lab.name("free")).ip == "10.80.0.2"


def test_failing_last_step_restores_nftables(
    lab: Lab, host: keelnet.Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The iptables step fails after nftables already took the new network's rules."""
    _prepare(host, lab)
    kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)

    def broken_sync(*args: object, **kwargs: object) -> None:
        raise errors.KernelError("injected iptables failure")

    monkeypatch.setattr(iptables_compat.DockerCompat, "sync", broken_sync)
    with pytest.raises(errors.KernelError):
        host.create_network("late", subnet="10.84.0.0/24")
    assert kernel_state(lab.host) == kernel_before
    assert store_state(lab.state_dir) == store_before


def test_publishing_on_macvlan_is_refused(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "mv", driver="macvlan", subnet="10.85.0.0/24", options={"parent": HOST_UPLINK}
    )
    s = lab.name("m")
    host.create_sandbox(s)
    host.connect("mv", s)
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.InvalidOption):
        host.publish("mv", s, 8080, 80)
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before


def test_teardown_is_idempotent(lab: Lab, host: keelnet.Host) -> None:
    _prepare(host, lab)
    host.disconnect("taken", lab.name("s"))
    host.disconnect("taken", lab.name("s"))
    host.remove_sandbox(lab.name("s"))
    host.remove_sandbox(lab.name("s"))
    host.remove_sandbox(lab.name("free"))
    host.remove_network("taken")
    host.remove_network("taken")
    assert host.networks() == [] and host.sandboxes() == []
    assert "keelnet" not in kernel_state(lab.host)["nft"]
