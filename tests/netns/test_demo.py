"""The network demo runs, finds what it expects, and leaves nothing behind."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from keelnet import cli, demo, demo_overlay
from keelnet.dns import NETNS_ETC
from keelnet.kernel.namespaces import NETNS_RUN_DIR


def test_keelnet_demo_passes_and_cleans_up(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keelnet demo`, the README's first command, as the CLI runs it."""
    # This run's own prefix: other demos may run on the machine at the same time.
    token = f"{os.getpid() & 0xFFFF:04x}"
    overlay_token = f"{(os.getpid() + 1) & 0xFFFF:04x}"
    monkeypatch.setattr(demo, "secrets", SimpleNamespace(token_hex=lambda _n: token))
    monkeypatch.setattr(
        demo_overlay, "secrets", SimpleNamespace(token_hex=lambda _n: overlay_token)
    )
    assert cli.main(["demo"]) == 0
    output = capsys.readouterr().out
    assert "WRONG" not in output and "bridge: web -> db" in output, output
    assert "dns: web pings api by name" in output
    assert "IPAM" in output and "a damaged blob" in output and "refused" in output
    assert "overlay: app1 (kernel) -> app2 (userspace)" in output
    assert "out via kn-gwbridge" in output and "peer host3 at 192.0.2.3" in output
    assert "overlay: app1 (host1) pings app3 (host3) by name" in output
    for prefix in (f"kn-demo-{token}", f"kn-demo-{overlay_token}"):
        assert not [n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix)]
        assert not [n for n in os.listdir(NETNS_ETC) if n.startswith(prefix)]
