"""The network demo runs, finds what it expects, and leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from keelnet import cli
from keelnet.dns import NETNS_ETC
from keelnet.kernel.namespaces import NETNS_RUN_DIR


def test_keelnet_demo_passes_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    """`keelnet demo`, the README's first command, as the CLI runs it."""
    assert cli.main(["demo"]) == 0
    output = capsys.readouterr().out
    assert "WRONG" not in output and "bridge: web -> db" in output
    assert "dns: web pings api by name" in output
    assert "IPAM" in output and "a damaged blob" in output and "refused" in output
    assert "overlay: app1 (kernel) -> app2 (userspace)" in output
    assert "out via kn-gwbridge" in output and "peer host3 at 192.0.2.3" in output
    assert not [n for n in os.listdir(NETNS_RUN_DIR) if n.startswith("kn-demo-")]
    assert not [n for n in os.listdir(NETNS_ETC) if n.startswith("kn-demo-")]
