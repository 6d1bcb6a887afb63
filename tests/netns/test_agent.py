"""`keelnet agent`: it serves CLI commands for its host while it runs, and only then."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from netlab import Lab
from pyroute2 import NetNS

from keelnet import dns
from keelnet.agent import socket_path


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


def test_cli_users_get_names_from_the_agents_resolver(
    lab: Lab, request: pytest.FixtureRequest
) -> None:
    """The CLI's commands exit, so they serve no names; the agent holds the Host, and its
    DNS server answers between them, also for what was connected before it started
    (`sandbox exec` mounts the sandbox's resolv.conf)."""
    a, b = lab.name("a"), lab.name("b")
    steps = [
        ("network", "create", "--subnet", "10.97.0.0/24", "named"),
        ("sandbox", "create", a),
        ("sandbox", "create", b),
        ("network", "connect", "--alias", "db", "named", a),
        ("network", "connect", "named", b),
    ]
    for step in steps:
        result = keelnet_cli(lab, *step)
        assert result.returncode == 0, (step, result.stderr)
    assert "nameserver 127.0.0.11" in dns.resolv_conf_path(b).read_text()
    alone = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db")
    assert alone.returncode == 2 and alone.stderr == "", alone  # nobody serves yet
    request.getfixturevalue("agent")
    found = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db")
    assert found.returncode == 0 and found.stdout.split()[0].startswith("10.97.0."), found
    keelnet_cli(lab, "network", "disconnect", "named", a)
    gone = keelnet_cli(lab, "sandbox", "exec", b, "--", "getent", "hosts", "db")
    assert gone.returncode == 2, gone
    for step in [("sandbox", "rm", a), ("sandbox", "rm", b), ("network", "rm", "named")]:
        assert keelnet_cli(lab, *step).returncode == 0
