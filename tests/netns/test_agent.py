"""`keelnet agent`: it serves CLI commands for its host while it runs, and only then."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from netlab import Lab
from nettools import ping, wait_until
from pyroute2 import NetNS

from keelnet import dns
from keelnet.agent import PROTOCOL, socket_path


def keelnet_cli(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "keelnet.cli", "--netns", lab.host]
    command += ["--state-dir", str(lab.state_dir), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def agent(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "keelnet.cli", "--netns", lab.host]
    command += ["--state-dir", str(lab.state_dir), "agent"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        banner = process.stdout.readline()
        assert banner.startswith("keelnet agent: serving"), banner + process.stderr.read()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def link_names(lab: Lab) -> set[str]:
    with NetNS(lab.host) as ns:
        return {link.get_attr("IFLA_IFNAME") for link in ns.get_links()}


def test_agent_serves_the_cli_and_stops_cleanly(lab: Lab, agent: subprocess.Popen[str]) -> None:
    path = socket_path(lab.host, str(lab.state_dir))
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    options = ["-o", "com.docker.network.bridge.name=kn-agent0"]
    created = keelnet_cli(
        lab, "network", "create", "--subnet", "10.97.0.0/24", *options, "viaagent"
    )
    assert created.returncode == 0, created.stderr
    assert "kn-agent0" in link_names(lab)
    listed = keelnet_cli(lab, "network", "ls", "--format", "json")
    assert [json.loads(line)["Name"] for line in listed.stdout.splitlines()] == ["viaagent"]
    # Errors come back as the CLI's own: one line, exit 1.
    duplicate = keelnet_cli(lab, "network", "create", "--subnet", "10.98.0.0/24", "viaagent")
    assert duplicate.returncode == 1 and duplicate.stderr.startswith("Error: ")
    assert len(duplicate.stderr.strip().splitlines()) == 1
    usage = keelnet_cli(lab, "network", "create")
    assert usage.returncode == 2 and "usage" in usage.stderr
    assert keelnet_cli(lab, "network", "rm", "viaagent").returncode == 0
    assert "kn-agent0" not in link_names(lab)

    agent.terminate()
    assert agent.wait(timeout=20) == 0
    assert not path.exists()
    # With the agent gone, the CLI runs commands itself.
    assert (
        keelnet_cli(lab, "network", "create", "--subnet", "10.97.0.0/24", "local").returncode == 0
    )
    assert keelnet_cli(lab, "network", "rm", "local").returncode == 0


def test_an_agent_whose_socket_is_removed_stops(lab: Lab, agent: subprocess.Popen[str]) -> None:
    """Its state directory removed (a test's, a throwaway host's): no command can reach
    it any more, so it stops by itself instead of running on unreachable."""
    socket_path(lab.host, str(lab.state_dir)).unlink()
    assert agent.wait(timeout=20) == 0
    assert agent.stdout is not None
    assert "was removed" in agent.stdout.read()


def test_a_dead_agents_socket_is_ignored(lab: Lab) -> None:
    import socket

    path = socket_path(lab.host, str(lab.state_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: what a killed agent leaves
        start = time.monotonic()
        result = keelnet_cli(lab, "network", "ls")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - start < 30
    path.unlink()


# --- the agent is there whenever a network needs it ------------------------------------------

STARTED = "keelnet: started the keelnet agent for this host"


def agent_pids(lab: Lab) -> list[int]:
    """Processes running `keelnet ... agent run` for the lab's state directory."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and b"run" in argv and str(lab.state_dir).encode() in argv:
            pids.append(int(entry))
    return pids


def interfaces(netns: str) -> set[str]:
    with NetNS(netns) as ns:
        return {link.get_attr("IFLA_IFNAME") for link in ns.get_links()}


def test_a_userspace_network_brings_its_agent_and_keeps_its_plane(lab: Lab) -> None:
    sandbox = lab.name("us")
    assert keelnet_cli(lab, "sandbox", "create", sandbox).returncode == 0
    created = keelnet_cli(
        lab, "network", "create", "--subnet", "10.81.0.0/24", "-o", "dataplane=userspace", "us"
    )
    assert created.returncode == 0, created.stderr
    assert created.stderr.count(STARTED) == 1 and "log: " in created.stderr
    assert len(agent_pids(lab)) == 1
    status = keelnet_cli(lab, "agent", "status")
    assert status.returncode == 0 and "userspace data planes: us" in status.stdout
    assert status.stdout.startswith("keelnet agent 0.") and " is running: pid " in status.stdout

    connected = keelnet_cli(lab, "network", "connect", "us", sandbox)
    assert connected.returncode == 0 and connected.stderr == ""  # said once, not again
    assert "eth0" in interfaces(sandbox)
    assert ping(sandbox, "10.81.0.1", timeout=5)  # the gateway TAP, through the agent's switch
    listed = keelnet_cli(lab, "network", "ls", "--format", "{{.Name}} {{.DataPlane}}")
    assert listed.stdout == "us userspace\n"
    inspected = json.loads(keelnet_cli(lab, "network", "inspect", "us").stdout)[0]
    assert (inspected["DataPlane"], inspected["DataPlaneStatus"]) == ("userspace", "running")

    # Killed outright: ls and inspect say the plane is down and why; the sandbox has lost
    # its interface (the TAP died with the agent).
    (pid,) = agent_pids(lab)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not agent_pids(lab), timeout=20)
    listed = keelnet_cli(lab, "network", "ls", "--format", "{{.Name}} {{.DataPlane}}")
    assert listed.stdout == "us userspace (not running)\n"
    inspected = json.loads(keelnet_cli(lab, "network", "inspect", "us").stdout)[0]
    assert inspected["DataPlaneStatus"].startswith(
        f"not running: the keelnet agent died (pid {pid}"
    )
    status = keelnet_cli(lab, "agent", "status")
    assert status.returncode == 1 and f"died (pid {pid}" in status.stdout
    assert "eth0" not in interfaces(sandbox)

    # The next command that changes the host starts it again, and the plane comes back.
    again = keelnet_cli(lab, "sandbox", "create", lab.name("other"))
    assert again.returncode == 0 and again.stderr.count(STARTED) == 1
    assert "eth0" in interfaces(sandbox) and ping(sandbox, "10.81.0.1", timeout=5)

    stopped = keelnet_cli(lab, "agent", "stop")
    assert stopped.returncode == 0 and stopped.stdout == "keelnet agent stopped\n"
    assert "userspace data planes of us stopped with it" in stopped.stderr
    assert not agent_pids(lab) and not socket_path(lab.host, str(lab.state_dir)).exists()
    status = keelnet_cli(lab, "agent", "status")
    assert status.returncode == 1
    assert status.stdout == "keelnet agent is not running: was stopped (by `keelnet agent stop`)\n"
    assert keelnet_cli(lab, "agent", "stop").stdout == "keelnet agent is not running\n"


def test_commands_that_race_start_one_agent(lab: Lab) -> None:
    created = keelnet_cli(
        lab, "network", "create", "--subnet", "10.82.0.0/24", "-o", "dataplane=userspace", "r"
    )
    assert created.returncode == 0, created.stderr
    assert keelnet_cli(lab, "agent", "stop").returncode == 0
    command = [sys.executable, "-m", "keelnet.cli", "--netns", lab.host]
    command += ["--state-dir", str(lab.state_dir), "sandbox", "create"]
    racers = [
        subprocess.Popen([*command, lab.name(f"race{n}")], stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    notices = 0
    for racer in racers:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        notices += err.count(STARTED)
    assert notices == 1
    assert len(agent_pids(lab)) == 1
    listed = keelnet_cli(lab, "sandbox", "ls", "--format", "{{.Name}}").stdout.split()
    assert listed == sorted(lab.name(f"race{n}") for n in range(4))


def test_networks_without_names_or_planes_need_no_agent(lab: Lab) -> None:
    created = keelnet_cli(lab, "network", "create", "-d", "none", "k")
    assert created.returncode == 0 and created.stderr == ""
    assert keelnet_cli(lab, "sandbox", "create", lab.name("k")).returncode == 0
    assert keelnet_cli(lab, "network", "connect", "k", lab.name("k")).returncode == 0
    assert agent_pids(lab) == []
    inspected = json.loads(keelnet_cli(lab, "network", "inspect", "k").stdout)[0]
    assert "DataPlaneStatus" not in inspected


def test_a_network_with_names_brings_the_agent_that_serves_them(lab: Lab) -> None:
    """The CLI's commands exit, so a bridge network's DNS server lives in the agent
    (started by the command that made the network); `sandbox exec` mounts the
    sandbox's resolv.conf, and the names answer between commands."""
    a, b = lab.name("a"), lab.name("b")
    created = keelnet_cli(lab, "network", "create", "--subnet", "10.97.0.0/24", "named")
    assert created.returncode == 0 and created.stderr.count(STARTED) == 1, created.stderr
    assert "its DNS server" in created.stderr
    for step in [
        ("sandbox", "create", a),
        ("sandbox", "create", b),
        ("network", "connect", "--alias", "db", "named", a),
        ("network", "connect", "named", b),
    ]:
        result = keelnet_cli(lab, *step)
        assert result.returncode == 0 and result.stderr == "", (step, result.stderr)
    assert len(agent_pids(lab)) == 1
    assert "nameserver 127.0.0.11" in dns.resolv_conf_path(b).read_text()
    found = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db")
    assert found.returncode == 0 and found.stdout.split()[0].startswith("10.97.0."), found
    assert keelnet_cli(lab, "network", "disconnect", "named", a).returncode == 0
    gone = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db")
    assert gone.returncode == 2, gone
    # Killed outright, the agent comes back with the next change and serves the names
    # the store holds.
    (pid,) = agent_pids(lab)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not agent_pids(lab), timeout=20)
    assert keelnet_cli(lab, "network", "connect", "--alias", "db2", "named", a).returncode == 0
    found = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db2")
    assert found.returncode == 0, found
    assert keelnet_cli(lab, "sandbox", "exec", a, "--", "getent", "hosts", b).returncode == 0


def test_an_agent_of_another_protocol_is_named_not_misunderstood(lab: Lab) -> None:
    assert keelnet_cli(lab, "agent", "start").returncode == 0
    stale = forward_raw(lab, {"protocol": 0, "argv": ["network", "ls"], "netns": lab.host})
    assert stale["status"] == 1 and "restart it (`keelnet agent stop`" in stale["stderr"]
    other = forward_raw(lab, {"protocol": PROTOCOL, "argv": ["network", "ls"], "netns": "x"})
    assert other["status"] == 1 and "give each host its own --state-dir" in other["stderr"]
    garbage = forward_raw(lab, {"argv": "network ls", "protocol": PROTOCOL})
    assert garbage["status"] == 2 and "bad agent request" in garbage["stderr"]


def forward_raw(lab: Lab, request: dict[str, object]) -> dict[str, object]:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(socket_path(lab.host, str(lab.state_dir))))
        conn.sendall(json.dumps(request).encode())
        conn.shutdown(socket.SHUT_WR)
        answer: dict[str, object] = json.loads(conn.makefile("rb").read())
    return answer
