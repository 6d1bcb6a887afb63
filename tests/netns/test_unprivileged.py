"""Every keelnet command run by an unprivileged user says in one line that keelnet needs
root (and which capabilities), exits non-zero and shows no traceback, whatever state
directory it is pointed at; help and --version still work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netlab import Lab

NEEDS_ROOT = (
    "Error: keelnet needs root: it manages network namespaces, interfaces and firewall rules "
    "(missing CAP_NET_ADMIN and CAP_SYS_ADMIN); run it with sudo\n"
)
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
EVERY_COMMAND = [
    ["network", "create", "--subnet", "10.88.0.0/24", "n"],
    ["network", "ls"],
    ["network", "list", "-q"],
    ["network", "inspect", "n"],
    ["network", "connect", "n", "s"],
    ["network", "disconnect", "n", "s"],
    ["network", "rm", "n"],
    ["network", "prune"],
    ["network", "prune", "-f"],
    ["sandbox", "create", "s"],
    ["sandbox", "ls"],
    ["sandbox", "exec", "s", "--", "true"],
    ["sandbox", "rm", "s"],
    ["port", "publish", "n", "s", "8080:80"],
    ["port", "unpublish", "n", "s", "8080:80"],
    ["port", "ls"],
    ["agent"],
    ["agent", "run"],
    ["agent", "start"],
    ["agent", "status"],
    ["agent", "stop"],
    ["system", "reconcile"],
    ["demo"],
]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, sys.executable, "-m", "keelnet.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def root_state(lab: Lab) -> Lab:
    """A host whose state exists, made by root: a network and a running agent's socket."""
    command = [sys.executable, "-m", "keelnet.cli", "--netns", lab.host]
    command += ["--state-dir", str(lab.state_dir)]
    subprocess.run([*command, "network", "create", "--subnet", "10.87.0.0/24", "n"], check=True)
    subprocess.run([*command, "agent", "start"], check=True, capture_output=True)
    return lab


@pytest.mark.parametrize("where", ["the host's state dir", "the default state dir"])
def test_every_command_says_it_needs_root(root_state: Lab, where: str) -> None:
    flags = ["--netns", root_state.host]
    if where == "the host's state dir":
        flags += ["--state-dir", str(root_state.state_dir)]
    for argv in EVERY_COMMAND:
        result = as_nobody(*flags, *argv)
        assert (result.returncode, result.stderr, result.stdout) == (1, NEEDS_ROOT, ""), argv


def test_help_and_version_need_no_root() -> None:
    version = as_nobody("--version")
    assert version.returncode == 0 and version.stdout.startswith("keelnet ")
    helped = as_nobody("network", "ls", "--help")
    assert helped.returncode == 0 and "--filter" in helped.stdout
    usage = as_nobody("network", "frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    assert "Traceback" not in usage.stderr
