"""Several processes at once, and a process killed in the middle of a connect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from netlab import Lab, kernel_state, store_state
from nettools import ping

import keelnet
from keelnet.kernel import links
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


def _owned_links(lab: Lab) -> list[str]:
    with iproute(netns_path(lab.host)) as ipr:
        return sorted(name for _, name, _, endpoint in links.owned_links(ipr) if endpoint)


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
    assert len(_owned_links(lab)) == count
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
        assert len(_owned_links(lab)) == 1  # half made: a veth with no committed endpoint
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    marker.unlink()

    removed = host.reconcile()
    assert removed["links"] == 1
    assert _owned_links(lab) == []
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
        assert _owned_links(lab) == []
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
