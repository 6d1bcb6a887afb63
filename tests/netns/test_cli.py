"""The keelnet CLI end to end, as a Docker user would drive it."""

from __future__ import annotations

import json
import subprocess
import sys

from netlab import OUTSIDE_ADDRESS, Lab
from nettools import TcpServer, tcp_request


def keelnet_cli(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "keelnet.cli",
            "--netns",
            lab.host,
            "--state-dir",
            str(lab.state_dir),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_network_lifecycle(lab: Lab) -> None:
    sandbox = lab.name("web")
    created = keelnet_cli(
        lab,
        "network",
        "create",
        "--subnet",
        "10.95.0.0/24",
        "--label",
        "team=net",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "front",
    )
    assert created.returncode == 0, created.stderr
    network_id = created.stdout.strip()
    assert len(network_id) == 64

    listed = keelnet_cli(lab, "network", "ls", "--format", "json")
    assert [json.loads(line)["Name"] for line in listed.stdout.splitlines()] == ["front"]

    assert keelnet_cli(lab, "sandbox", "create", sandbox).returncode == 0
    connected = keelnet_cli(lab, "network", "connect", "--ip", "10.95.0.50", "front", sandbox)
    assert connected.returncode == 0, connected.stderr
    inspected = json.loads(keelnet_cli(lab, "network", "inspect", "front").stdout)
    assert inspected[0]["Id"] == network_id
    assert inspected[0]["Labels"] == {"team": "net"}
    assert inspected[0]["Containers"][sandbox]["IPv4Address"] == "10.95.0.50/24"

    listed = keelnet_cli(lab, "sandbox", "ls", "--format", "json")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["Name"] == sandbox and row["Networks"]["front"]["IPAddress"] == "10.95.0.50"
    shown = keelnet_cli(lab, "sandbox", "exec", sandbox, "--", "ip", "-4", "-o", "addr")
    assert "10.95.0.50/24" in shown.stdout

    assert keelnet_cli(lab, "port", "publish", "front", sandbox, "8080:80").returncode == 0
    with TcpServer(sandbox, "0.0.0.0", 80, "cli"):
        assert tcp_request(lab.outside, "192.0.2.1", 8080, "q") == f"cli q from {OUTSIDE_ADDRESS}"
    assert keelnet_cli(lab, "port", "unpublish", "front", sandbox, "8080:80").returncode == 0

    busy = keelnet_cli(lab, "network", "rm", "front")
    assert busy.returncode == 1 and "active endpoints" in busy.stderr
    assert keelnet_cli(lab, "network", "disconnect", "front", sandbox).returncode == 0
    assert keelnet_cli(lab, "sandbox", "rm", sandbox).returncode == 0
    assert (
        keelnet_cli(lab, "network", "create", "spare", "--subnet", "10.96.0.0/24").returncode == 0
    )
    pruned = keelnet_cli(lab, "network", "prune", "-f")
    assert pruned.stdout.split() == ["Deleted", "Networks:", "front", "spare"]
    assert keelnet_cli(lab, "network", "ls", "-q").stdout == ""


def test_cli_errors_are_one_line_with_nonzero_exit(lab: Lab) -> None:
    assert keelnet_cli(lab, "network", "create", "--subnet", "10.97.0.0/24", "n").returncode == 0
    for argv, text in [
        (("network", "create", "n"), "already exists"),
        (("network", "create", "-d", "nosuch", "m"), "nosuch"),
        (("network", "create", "--subnet", "10.97.0.0/25", "m"), "overlaps"),
        (("network", "rm", "ghost"), "ghost"),
        (("network", "connect", "n", "ghost"), "ghost"),
        (("port", "publish", "n", "x", "nonsense"), "port mapping"),
    ]:
        result = keelnet_cli(lab, *argv)
        assert result.returncode == 1, argv
        assert result.stderr.startswith("Error: ") and text in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert keelnet_cli(lab, "network", "rm", "-f", "ghost").returncode == 0
    assert keelnet_cli(lab, "network", "rm", "n").returncode == 0
