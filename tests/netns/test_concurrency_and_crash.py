"""Several processes at once, and a process killed in the middle of a connect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from netlab import Lab, kernel_state, store_state
from nettools import ping

import keelnet
from keelnet.kernel import links, ownership
from keelnet.kernel.namespaces import iproute, netns_path

_CONNECT = textwrap.dedent(
    """
    import sys, keelnet
    host_ns, state_dir, network, sandbox = sys.argv[1:5]
    with keelnet.Host(netns=host_ns, state_dir=state_dir) as host:
        print(host.connect(network, sandbox).ip, flush=True)
    """
)

_CONNECT_THEN_HANG = textwrap.dedent(
    """
    import sys, time, keelnet
    from keelnet.drivers.bridge import BridgeDriver
    host_ns, state_dir, network, sandbox, marker = sys.argv[1:6]
    def hang(self, *args):
        open(marker, "w").close()  # the veth exists and the address is taken: kill me now
        time.sleep(60)
    BridgeDriver.join = hang
    with keelnet.Host(netns=host_ns, state_dir=state_dir) as host:
        host.connect(network, sandbox)
    """
)


def _owned_links(lab: Lab, host: keelnet.Host) -> list[str]:
    """The host ends of endpoints' veths, made or half made, of the store of `host`."""
    with iproute(netns_path(lab.host)) as ipr:
        owned = ownership.owned_links(ipr, host.owner)
    return sorted(link.ifname for link in owned if link.ifname.startswith("kn-v"))


def test_processes_connecting_at_once_get_distinct_addresses(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("busy", subnet="10.90.0.0/24")
    count = 8
    names = [lab.name(f"p{i}") for i in range(count)]
    for name in names:
        host.create_sandbox(name)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONNECT, lab.host, str(lab.state_dir), "busy", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    assert len(set(outputs)) == count
    assert sorted(outputs) == sorted(str(e.ip) for e in host.endpoints("busy"))
    assert len(_owned_links(lab, host)) == count
    assert ping(names[0], outputs[-1]) and ping(names[-1], outputs[0])


def test_kill_during_connect_then_reconcile_cleans_up(lab: Lab, host: keelnet.Host) -> None:
    host.create_network("fragile", subnet="10.91.0.0/24")
    victim = lab.name("victim")
    host.create_sandbox(victim)
    kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)
    marker = Path(lab.state_dir) / "joined"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CONNECT_THEN_HANG,
            lab.host,
            str(lab.state_dir),
            "fragile",
            victim,
            str(marker),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the connect never reached join"
        assert len(_owned_links(lab, host)) == 1  # half made: a veth with no committed endpoint
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    marker.unlink()

    removed = host.reconcile()
    assert removed["links"] == 1
    assert _owned_links(lab, host) == []
    assert kernel_state(lab.host) == kernel_before
    assert store_state(lab.state_dir) == store_before
    # The address the dead process had taken was never committed: the next connect gets it.
    assert host.connect("fragile", victim).ip == "10.91.0.2"


def test_reconcile_at_start_drops_endpoints_of_vanished_sandboxes(lab: Lab) -> None:
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as first:
        first.create_network("n", subnet="10.92.0.0/24")
        gone = lab.name("gone")
        first.create_sandbox(gone)
        first.connect("n", gone)
    subprocess.run(["ip", "netns", "del", gone], check=True)  # the sandbox dies behind our back
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as second:
        assert second.sandboxes() == [] and second.endpoints("n") == []
        assert _owned_links(lab, second) == []
        second.remove_network("n")


def test_reconcile_recreates_a_bridge_the_kernel_lost(lab: Lab, host: keelnet.Host) -> None:
    network = host.create_network("lost", subnet="10.93.0.0/24")
    bridge = str(network.kernel_name)
    with iproute(netns_path(lab.host)) as ipr:
        links.delete_link(ipr, bridge)
    assert host.reconcile()["recreated"] == 1
    with iproute(netns_path(lab.host)) as ipr:
        index = links.link_index(ipr, bridge)
        assert index is not None
        addresses = [a.get("address") for a in ipr.addr("dump", index=index)]
    assert "10.93.0.1" in addresses
    s = lab.name("s")
    host.create_sandbox(s)
    host.connect("lost", s)
    assert ping(s, "10.93.0.1")


_MAKE_THEN_HANG = textwrap.dedent(
    """
    import sys, time, keelnet
    from keelnet.kernel.ownership import Owner
    host_ns, state_dir, marker, action, sandbox = sys.argv[1:6]
    def hang(self, *args):
        open(marker, "w").close()  # the link exists, its alias is not set yet: kill me now
        time.sleep(60)
    Owner.alias = hang
    with keelnet.Host(netns=host_ns, state_dir=state_dir) as host:
        if action == "connect":
            host.connect("fragile", sandbox)
        else:
            host.create_network(
                "fixed", options={"com.docker.network.bridge.name": "kn-fixedbr"}
            )
    """
)


@pytest.mark.parametrize("action", ["connect", "create-network"])
def test_kill_between_creating_a_link_and_naming_it(lab: Lab, action: str) -> None:
    """The instant a link exists but its alias does not: the store's mark (the device
    group, set by the creating request) already says it is ours, for both veth ends."""
    victim = lab.name("victim")
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as host:
        host.create_network("fragile", subnet="10.91.0.0/24")
        host.create_sandbox(victim)
        kernel_before, store_before = kernel_state(lab.host), store_state(lab.state_dir)
        owner = host.owner
    marker = Path(lab.state_dir) / "made"
    argv = [lab.host, str(lab.state_dir), str(marker), action, victim]
    process = subprocess.Popen([sys.executable, "-c", _MAKE_THEN_HANG, *argv])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the link was never made"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    marker.unlink()
    half_made = [link.ifname for link in _half_made(lab.host, owner) + _half_made(victim, owner)]
    if action == "connect":  # both ends of the veth: the host's and the sandbox's
        assert len(half_made) == 2 and half_made[0].startswith("kn-v") and half_made[1] == "eth0"
    else:
        assert half_made == ["kn-fixedbr"]

    # The next open finds the cut-short operation in the journal and reconciles.
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as host:
        assert _half_made(lab.host, owner) == [] and _half_made(victim, owner) == []
        assert kernel_state(lab.host) == kernel_before
        assert store_state(lab.state_dir) == store_before
        # Nothing blocks the next try: the sandbox's eth0, the fixed bridge name are free.
        if action == "connect":
            assert host.connect("fragile", victim).ip == "10.91.0.2"
            assert ping(victim, "10.91.0.1")
        else:
            network = host.create_network(
                "fixed", options={"com.docker.network.bridge.name": "kn-fixedbr"}
            )
            assert network.kernel_name == "kn-fixedbr"
        host.remove_sandbox(victim)
        for network_name in ("fixed", "fragile"):
            host.remove_network(network_name)


def _half_made(netns: str, owner: ownership.Owner) -> list[ownership.OwnedLink]:
    """The owner's links in `netns` that carry its group but no alias yet."""
    with iproute(netns_path(netns)) as ipr:
        return [link for link in ownership.owned_links(ipr, owner) if link.mark is None]
