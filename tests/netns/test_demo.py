"""The network demo runs, finds what it expects, and leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from keelnet.demo import run_network_demo
from keelnet.kernel.namespaces import NETNS_RUN_DIR


def test_network_demo_passes_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_network_demo() == 0
    output = capsys.readouterr().out
    assert "WRONG" not in output and "bridge: web -> db" in output
    assert not [n for n in os.listdir(NETNS_RUN_DIR) if n.startswith("kn-demo-")]
