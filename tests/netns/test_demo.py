"""The network demo runs, finds what it expects, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from types import SimpleNamespace

import pytest

from keelnet import cli, demo
from keelnet.dns import NETNS_ETC
from keelnet.kernel.namespaces import NETNS_RUN_DIR, netns_path, remove_named


def test_keelnet_demo_passes_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    """`keelnet demo`, the README's first command, as the CLI runs it."""
    assert cli.main(["demo"]) == 0
    output = capsys.readouterr().out
    assert "WRONG" not in output and "bridge: web -> db" in output, output
    assert "dns: web pings api by name" in output
    assert "IPAM" in output and "a damaged blob" in output and "refused" in output
    assert "overlay: app1 (kernel) -> app2 (userspace)" in output
    assert "out via kn-gwbridge" in output and "peer host3 at 192.0.2.3" in output
    assert "overlay: app1 (host1) pings app3 (host3) by name" in output
    # Each part names the namespace prefix it claimed (other demos may run beside this
    # one, under prefixes of their own): nothing of this run's is left.
    prefixes = re.findall(r"built in namespaces (\S+)-\*, all removed", output)
    assert len(prefixes) == 2 and len(set(prefixes)) == 2, output
    for prefix in prefixes:
        assert not [n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(f"{prefix}-")]
        assert not [n for n in os.listdir(NETNS_ETC) if n.startswith(f"{prefix}-")]


def test_a_prefix_another_demo_holds_is_never_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    held = demo.claim_prefix("kn-demo", "host")  # as another run, right now
    claimed: list[str] = [held]
    try:
        drawn = iter([held.removeprefix("kn-demo-"), secrets.token_hex(3)])
        monkeypatch.setattr(demo, "secrets", SimpleNamespace(token_hex=lambda _n: next(drawn)))
        claimed.append(demo.claim_prefix("kn-demo", "host"))
        assert claimed[1] != held
        assert os.path.exists(netns_path(f"{claimed[1]}-host"))
    finally:
        for prefix in claimed:
            with contextlib.suppress(OSError):
                remove_named(netns_path(f"{prefix}-host"))
