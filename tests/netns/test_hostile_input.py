"""Hostile input through the Python API: every one ends in its specific KeelnetError and
leaves the kernel (links, addresses, routes, nftables, iptables; the host namespace and a
sandbox) and the store (its dump, no journal entry) exactly as they were.

The table holds what an attacker or a careless caller hands keelnet: names with a newline
or a NUL, quotes and wildcards in interface names, special-purpose subnets, subnets too
small or holding the host's own address, gateways of the wrong family, bools for ports,
MACs already in use, files that are not namespaces, wrong types everywhere.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netlab import HOST_ADDRESS, HOST_UPLINK, Lab, kernel_state, store_state

import keelnet
from keelnet import errors
from keelnet.kernel.namespaces import iproute, netns_path

Action = Callable[[keelnet.Host, Lab], object]
E = errors
BRIDGE_NAME = "com.docker.network.bridge.name"
MTU = "com.docker.network.driver.mtu"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"


def _net(name: Any = "hostile", **kwargs: Any) -> Action:
    return lambda h, lab: h.create_network(name, **kwargs)


def _bridge_named(name: str) -> Action:
    return _net(subnet="10.40.0.0/24", options={BRIDGE_NAME: name})


def _connect(network: Any = "taken", sandbox: str | None = None, **kwargs: Any) -> Action:
    return lambda h, lab: h.connect(network, sandbox or lab.name("free"), **kwargs)


def _publish(*args: Any, **kwargs: Any) -> Action:
    return lambda h, lab: h.publish("taken", lab.name("s"), *args, **kwargs)


def _mac_of(lab: Lab, netns: str, ifname: str) -> str:
    with iproute(netns_path(netns)) as ipr:
        return str(ipr.link("get", ifname=ifname)[0].get("address"))


def _taken_bridge(h: keelnet.Host) -> str:
    return str(h.network("taken").kernel_name)


CASES: list[tuple[str, type[Exception], Action]] = [
    # --- network names ------------------------------------------------------------------
    *[
        (f"network name {name!r}", E.InvalidName, _net(name=name))
        for name in [
            "",
            "a b",
            "net\n",
            "\nnet",
            "net\r",
            "net\0x",
            "../etc",
            "a/b",
            "-net",
            ".",
            "x" * 65,
            "nét",
            "net;rm",
            'n"q',
            123,
            None,
            ["net"],
        ]
    ],
    ("duplicate network", E.DuplicateNetwork, _net(name="taken")),
    # --- drivers and flags ----------------------------------------------------------------
    ("unknown driver", E.UnknownDriver, _net(driver="zz")),
    ("empty driver", E.UnknownDriver, _net(driver="")),
    ("driver of the wrong type", E.InvalidRequest, _net(driver=["bridge"])),
    ("ipv6 as a string", E.InvalidRequest, _net(ipv6="yes")),
    ("internal as a number", E.InvalidRequest, _net(internal=1)),
    ("options not a mapping", E.InvalidRequest, _net(options="mtu=1400")),
    ("option value a list", E.InvalidRequest, _net(options={MTU: [1400]})),
    ("labels not a mapping", E.InvalidRequest, _net(labels=["a=b"])),
    ("unknown option", E.InvalidOption, _net(options={"com.example.nope": "1"})),
    ("unknown dataplane", E.InvalidOption, _net(options={"dataplane": "quantum"})),
    ("mtu not a number", E.InvalidOption, _net(options={MTU: "x"})),
    ("mtu too small", E.InvalidOption, _net(options={MTU: "10"})),
    ("mtu too large", E.InvalidOption, _net(options={MTU: "70000"})),
    ("mtu negative", E.InvalidOption, _net(options={MTU: "-1500"})),
    ("masquerade not a boolean", E.InvalidOption, _net(options={MASQUERADE: "maybe"})),
    (
        "icc not a boolean",
        E.InvalidOption,
        _net(options={"com.docker.network.bridge.enable_icc": "2"}),
    ),
    # --- bridge names: what reaches the kernel and nftables -------------------------------
    *[
        (f"bridge name {name!r}", E.InvalidOption, _bridge_named(name))
        for name in [
            "",
            'br"0',
            'x" accept',
            "br 0",
            "br\n",
            "br\t0",
            "br/0",
            "br:0",
            "br*",
            "br+",
            "br%d",
            "-br",
            ".",
            "..",
            "b" * 16,
            "brü",
            "br\\0",
            "br\0",
        ]
    ],
    ("bridge name in use", E.Conflict, _bridge_named(HOST_UPLINK)),
    (
        "bridge name of another network",
        E.Conflict,
        lambda h, lab: _bridge_named(_taken_bridge(h))(h, lab),
    ),
    # --- subnets ---------------------------------------------------------------------------
    *[
        (f"subnet {subnet}", E.InvalidSubnet, _net(subnet=subnet))
        for subnet in [
            "nope",
            "10.41.0.1/24",
            "10.41.0.0/33",
            "10.41.0.0/-1",
            "10.41.0.0/24\n",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "224.0.0.0/4",
            "239.1.0.0/16",
            "0.0.0.0/8",
            "0.0.0.0/0",
            "240.0.0.0/4",
            "255.255.255.255/32",
            "10.41.0.0/31",
            "10.41.0.4/32",
            "",
        ]
    ],
    *[
        (f"IPv6 subnet {subnet}", E.InvalidSubnet, _net(subnet=subnet, ipv6=True))
        for subnet in [
            "fe80::/64",
            "ff00::/8",
            "ff02::/16",
            "::1/128",
            "::/0",
            "::ffff:0:0/96",
            "fd00:41::/127",
            "fd00:41::1/128",
            "fd00:41::1/64",
        ]
    ],
    ("IPv6 subnet without IPv6", E.InvalidSubnet, _net(subnet="fd00:42::/64")),
    ("two IPv4 subnets", E.InvalidSubnet, _net(subnet=["10.43.0.0/24", "10.44.0.0/24"])),
    ("subnet of the wrong type", E.InvalidRequest, _net(subnet=10)),
    ("subnet list of numbers", E.InvalidRequest, _net(subnet=[10, 11])),
    ("overlapping subnet", E.OverlappingSubnet, _net(subnet="10.80.0.128/25")),
    ("subnet holding the uplink address", E.OverlappingSubnet, _net(subnet="192.0.2.0/24")),
    ("subnet holding it, larger", E.OverlappingSubnet, _net(subnet="192.0.0.0/16")),
    (
        "subnet holding the uplink IPv6 address",
        E.OverlappingSubnet,
        _net(subnet=["10.45.0.0/24", "2001:db8:1::/64"], ipv6=True),
    ),
    # --- gateways, ranges, auxiliary addresses ----------------------------------------------
    ("gateway outside", E.GatewayOutsideSubnet, _net(subnet="10.46.0.0/24", gateway="10.99.0.1")),
    ("gateway garbage", E.InvalidAddress, _net(subnet="10.46.0.0/24", gateway="nope")),
    (
        "gateway with a newline",
        E.InvalidAddress,
        _net(subnet="10.46.0.0/24", gateway="10.46.0.1\n"),
    ),
    (
        "IPv6 gateway on an IPv4-only network",
        E.InvalidSubnet,
        _net(subnet="10.46.0.0/24", gateway="fd00:46::1"),
    ),
    (
        "two IPv4 gateways",
        E.InvalidSubnet,
        _net(subnet="10.46.0.0/24", gateway=["10.46.0.1", "10.46.0.2"]),
    ),
    (
        "gateway the network address",
        E.AddressInUse,
        _net(subnet="10.46.0.0/24", gateway="10.46.0.0"),
    ),
    (
        "gateway the broadcast address",
        E.AddressInUse,
        _net(subnet="10.46.0.0/24", gateway="10.46.0.255"),
    ),
    ("ip range outside", E.InvalidSubnet, _net(subnet="10.47.0.0/24", ip_range="10.48.0.0/25")),
    ("ip range garbage", E.InvalidAddress, _net(subnet="10.47.0.0/24", ip_range="x/25")),
    (
        "IPv6 ip range on an IPv4-only network",
        E.InvalidSubnet,
        _net(subnet="10.47.0.0/24", ip_range="fd00::/120"),
    ),
    (
        "aux address outside",
        E.AddressOutOfRange,
        _net(subnet="10.47.0.0/24", aux_addresses={"a": "10.49.0.1"}),
    ),
    (
        "aux address garbage",
        E.InvalidAddress,
        _net(subnet="10.47.0.0/24", aux_addresses={"a": "x"}),
    ),
    (
        "aux address the network address",
        E.AddressInUse,
        _net(subnet="10.47.0.0/24", aux_addresses={"a": "10.47.0.0"}),
    ),
    ("IPAM on the none driver", E.InvalidRequest, _net(driver="none", subnet="10.50.0.0/24")),
    # --- macvlan parents ---------------------------------------------------------------------
    (
        "missing parent",
        E.MissingParentInterface,
        _net(driver="macvlan", options={"parent": "kn-nope"}),
    ),
    ("no parent", E.MissingParentInterface, _net(driver="macvlan")),
    ("parent lo", E.InvalidOption, _net(driver="macvlan", options={"parent": "lo"})),
    ("parent with a quote", E.InvalidOption, _net(driver="macvlan", options={"parent": 'eth0" x'})),
    (
        "parent with a newline",
        E.InvalidOption,
        _net(driver="macvlan", options={"parent": "eth0\n"}),
    ),
    (
        "parent VLAN 0",
        E.InvalidOption,
        _net(driver="macvlan", options={"parent": f"{HOST_UPLINK}.0"}),
    ),
    (
        "parent VLAN 5000",
        E.InvalidOption,
        _net(driver="macvlan", options={"parent": f"{HOST_UPLINK}.5000"}),
    ),
    (
        "macvlan mode unknown",
        E.InvalidOption,
        _net(driver="macvlan", options={"parent": HOST_UPLINK, "macvlan_mode": "hub"}),
    ),
    # --- sandboxes ---------------------------------------------------------------------------
    *[
        (f"sandbox name {name!r}", E.InvalidName, lambda h, lab, name=name: h.create_sandbox(name))
        for name in ["", "s\n", "../x", "a b", "s\0", 7, "x" * 65]
    ],
    ("duplicate sandbox", E.DuplicateSandbox, lambda h, lab: h.create_sandbox(lab.name("s"))),
    (
        "sandbox over a foreign namespace",
        E.DuplicateSandbox,
        lambda h, lab: h.create_sandbox(lab.outside),
    ),
    (
        "adopt a regular file",
        E.InvalidRequest,
        lambda h, lab: h.adopt_sandbox("f", str(lab.state_dir / "keelnet.db")),
    ),
    (
        "adopt a directory",
        E.InvalidRequest,
        lambda h, lab: h.adopt_sandbox("d", str(lab.state_dir)),
    ),
    ("adopt /dev/null", E.InvalidRequest, lambda h, lab: h.adopt_sandbox("n", "/dev/null")),
    (
        "adopt a missing path",
        E.SandboxNotFound,
        lambda h, lab: h.adopt_sandbox("m", "/run/netns/kn-none-such"),
    ),
    ("adopt a missing pid", E.SandboxNotFound, lambda h, lab: h.adopt_sandbox("p", 2**22 + 7)),
    (
        "adopt a path with a NUL",
        E.InvalidRequest,
        lambda h, lab: h.adopt_sandbox("z", "/run/netns/a\0b"),
    ),
    ("adopt a bool", E.InvalidRequest, lambda h, lab: h.adopt_sandbox("b", True)),
    ("adopt under a bad name", E.InvalidName, lambda h, lab: h.adopt_sandbox("b\n", lab.outside)),
    (
        "adopt under a taken name",
        E.DuplicateSandbox,
        lambda h, lab: h.adopt_sandbox(lab.name("s"), lab.outside),
    ),
    # --- connect ---------------------------------------------------------------------------
    ("connect to a missing network", E.NetworkNotFound, _connect(network="nope")),
    ("connect a missing sandbox", E.SandboxNotFound, _connect(sandbox="kn-ghost")),
    ("connect a network of the wrong type", E.InvalidRequest, _connect(network=["taken"])),
    ("connect twice", E.DuplicateEndpoint, lambda h, lab: h.connect("taken", lab.name("s"))),
    ("address garbage", E.InvalidAddress, _connect(ip="nope")),
    ("address as a number", E.InvalidAddress, _connect(ip=5)),
    ("address with a newline", E.InvalidAddress, _connect(ip="10.80.0.20\n")),
    ("address in use", E.AddressInUse, _connect(ip="10.80.0.10")),
    ("address of the gateway", E.AddressInUse, _connect(ip="10.80.0.1")),
    ("network address", E.AddressInUse, _connect(ip="10.80.0.0")),
    ("broadcast address", E.AddressInUse, _connect(ip="10.80.0.255")),
    ("address out of range", E.AddressOutOfRange, _connect(ip="10.99.0.5")),
    ("MAC garbage", E.InvalidRequest, _connect(mac="zz")),
    ("MAC with a newline", E.InvalidRequest, _connect(mac="02:00:00:00:00:01\n")),
    ("MAC multicast", E.InvalidRequest, _connect(mac="01:00:5e:00:00:01")),
    ("MAC broadcast", E.InvalidRequest, _connect(mac="ff:ff:ff:ff:ff:ff")),
    ("MAC zero", E.InvalidRequest, _connect(mac="00:00:00:00:00:00")),
    (
        "MAC of another endpoint",
        E.Conflict,
        lambda h, lab: _connect(mac=h.endpoints("taken")[0].mac)(h, lab),
    ),
    (
        "MAC of the bridge",
        E.Conflict,
        lambda h, lab: _connect(mac=_mac_of(lab, lab.host, _taken_bridge(h)))(h, lab),
    ),
    (
        "MAC of the bridge, upper case",
        E.Conflict,
        lambda h, lab: _connect(mac=_mac_of(lab, lab.host, _taken_bridge(h)).upper())(h, lab),
    ),
    ("aliases as a string", E.InvalidRequest, _connect(aliases="web")),
    ("alias with a newline", E.InvalidRequest, _connect(aliases=["web\n"])),
    ("alias with a space", E.InvalidRequest, _connect(aliases=["a b"])),
    # --- publish ---------------------------------------------------------------------------
    ("host port True", E.InvalidRequest, _publish(True, 80)),
    ("host port False", E.InvalidRequest, _publish(False, 80)),
    ("host port too large", E.InvalidRequest, _publish(70000, 80)),
    ("host port negative", E.InvalidRequest, _publish(-1, 80)),
    ("host port a string", E.InvalidRequest, _publish("8080", 80)),
    ("host port a float", E.InvalidRequest, _publish(8080.0, 80)),
    ("container port True", E.InvalidRequest, _publish(8080, True)),
    ("container port 0", E.InvalidRequest, _publish(8080, 0)),
    ("protocol icmp", E.InvalidRequest, _publish(8080, 80, "icmp")),
    ("protocol with a newline", E.InvalidRequest, _publish(8080, 80, "tcp\n")),
    ("host IP garbage", E.InvalidAddress, _publish(8080, 80, host_ip="nope")),
    ("host IP with a newline", E.InvalidAddress, _publish(8080, 80, host_ip=f"{HOST_ADDRESS}\n")),
    (
        "port of an unconnected sandbox",
        E.EndpointNotFound,
        lambda h, lab: h.publish("taken", lab.name("free"), 8080, 80),
    ),
    ("port in use", E.PortInUse, _publish(9090, 80)),
    (
        "port on a missing network",
        E.NetworkNotFound,
        lambda h, lab: h.publish("nope", lab.name("s"), 8080, 80),
    ),
    # --- removal of what is in use ---------------------------------------------------------
    ("remove a network in use", E.NetworkInUse, lambda h, lab: h.remove_network("taken")),
    # --- opening a Host --------------------------------------------------------------------
    (
        "host namespace missing",
        E.NotFound,
        lambda h, lab: keelnet.Host(netns="kn-none-such", state_dir=lab.state_dir),
    ),
    (
        "host namespace a regular file",
        E.InvalidRequest,
        lambda h, lab: keelnet.Host(
            netns=str(lab.state_dir / "keelnet.db"), state_dir=lab.state_dir
        ),
    ),
    (
        "host namespace with a newline",
        E.InvalidName,
        lambda h, lab: keelnet.Host(netns=f"{lab.host}\n", state_dir=lab.state_dir),
    ),
    (
        "host namespace with a NUL",
        E.InvalidRequest,
        lambda h, lab: keelnet.Host(netns="/run/netns/a\0b", state_dir=lab.state_dir),
    ),
    (
        "state dir with a NUL",
        E.InvalidRequest,
        lambda h, lab: keelnet.Host(netns=lab.host, state_dir="/tmp/kn\0state"),
    ),
    (
        "state dir a regular file",
        E.StateDirError,
        lambda h, lab: keelnet.Host(netns=lab.host, state_dir=lab.state_dir / "keelnet.db"),
    ),
    (
        "state dir under a regular file",
        E.StateDirError,
        lambda h, lab: keelnet.Host(netns=lab.host, state_dir=lab.state_dir / "keelnet.db" / "x"),
    ),
    (
        "another store in this namespace",
        E.NamespaceClaimed,
        lambda h, lab: keelnet.Host(netns=lab.host, state_dir=Path(str(lab.state_dir) + "-other")),
    ),
]


def _prepare(host: keelnet.Host, lab: Lab) -> None:
    host.create_network("taken", subnet="10.80.0.0/24", ipv6=True)
    host.create_sandbox(lab.name("s"))
    host.connect("taken", lab.name("s"), ip="10.80.0.10")
    host.publish("taken", lab.name("s"), 9090, 80)
    host.create_sandbox(lab.name("free"))


PARTS = ("host kernel", "sandbox kernel", "store", "journal", "namespaces")


def _state(lab: Lab) -> tuple[object, ...]:
    journal = lab.state_dir / "journal"
    entries = sorted(os.listdir(journal)) if journal.exists() else []
    return (
        kernel_state(lab.host),
        kernel_state(lab.name("s")),
        store_state(lab.state_dir),
        entries,
        sorted(name for name in os.listdir("/run/netns") if name.startswith(lab.prefix)),
    )


def _settled(lab: Lab) -> tuple[object, ...]:
    """The state once the sandbox's IPv6 link-local address has done its duplicate
    address detection (its routes and flags change once, a second or two in)."""
    deadline = time.monotonic() + 20
    state = _state(lab)
    while time.monotonic() < deadline:
        time.sleep(2.5)  # longer than DAD's wait: no change within it is settled
        again = _state(lab)
        if again == state:
            return state
        state = again
    raise AssertionError("the lab's kernel state never settled")


def test_hostile_inputs_end_in_named_errors_and_change_nothing(
    lab: Lab, host: keelnet.Host
) -> None:
    _prepare(host, lab)
    before = _settled(lab)
    named, failures = 0, []
    for label, expected, action in CASES:
        try:
            action(host, lab)
        except expected as exc:
            if isinstance(exc, errors.KeelnetError) and str(exc):
                named += 1
            else:
                failures.append(f"{label}: {type(exc).__name__} without a message")
        except Exception as exc:
            failures.append(f"{label}: {type(exc).__name__}: {exc} (wanted {expected.__name__})")
        else:
            failures.append(f"{label}: accepted (wanted {expected.__name__})")
        after = _state(lab)
        if after != before:
            changed = [
                PARTS[i] for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b
            ]
            failures.append(f"{label}: changed {', '.join(changed)}")
            break  # later cases would compare against a changed state
    print(f"hostile inputs: {len(CASES)} tried, {named} ended in a named KeelnetError")
    assert not failures, "\n".join(failures)
    assert named == len(CASES) >= 100


def test_a_read_only_state_dir_is_a_state_dir_error(lab: Lab, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess_run(["mount", "-t", "tmpfs", "-o", "size=4m", "kn-ro", str(mount)])
    try:
        with keelnet.Host(netns=lab.host, state_dir=mount / "state") as host:
            host.create_sandbox(lab.name("ro"))
            host.remove_sandbox(lab.name("ro"))
        subprocess_run(["mount", "-o", "remount,ro", str(mount)])
        kernel_before = kernel_state(lab.host)
        with (
            pytest.raises(errors.StateDirError, match="writable") as raised,
            keelnet.Host(netns=lab.host, state_dir=mount / "state") as host,
        ):
            host.create_sandbox(lab.name("ro"))
        assert str(mount / "state") in str(raised.value)
        with pytest.raises(errors.StateDirError):
            keelnet.Host(netns=lab.host, state_dir=mount / "new-state")
        assert kernel_state(lab.host) == kernel_before
        assert not os.path.exists(netns_path(lab.name("ro")))
    finally:
        subprocess_run(["umount", "-l", str(mount)])


def test_a_damaged_row_is_corrupt_state(lab: Lab, host: keelnet.Host) -> None:
    _prepare(host, lab)
    db = sqlite3.connect(lab.state_dir / "keelnet.db")
    with db:
        db.execute("UPDATE networks SET options='{not json' WHERE name='taken'")
    db.close()
    kernel_before = kernel_state(lab.host)
    with pytest.raises(errors.CorruptState, match="damaged row"):
        host.networks()
    with pytest.raises(errors.CorruptState):
        host.connect("taken", lab.name("free"))
    assert kernel_state(lab.host) == kernel_before
    db = sqlite3.connect(lab.state_dir / "keelnet.db")
    with db:
        db.execute("UPDATE networks SET options='{}' WHERE name='taken'")
    db.close()


def subprocess_run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def test_an_unwritable_journal_stops_the_operation_before_the_kernel(
    lab: Lab, host: keelnet.Host
) -> None:
    _prepare(host, lab)
    journal = lab.state_dir / "journal"
    if journal.exists():
        journal.rmdir()
    journal.write_text("not a directory")
    try:
        kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)
        with pytest.raises(errors.StateDirError, match="crash journal"):
            host.create_network("late", subnet="10.81.0.0/24")
        with pytest.raises(errors.StateDirError, match="crash journal"):
            host.connect("taken", lab.name("free"))
        assert kernel_state(lab.host) == kernel_before
        assert store_state(lab.state_dir) == store_before
    finally:
        journal.unlink()
