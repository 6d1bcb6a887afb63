"""keelnet's plugin answers a recorded dockerd 20.10 session as it answered dockerd.

`tests/data/dockerd-20.10.24-requests.jsonl` is every request this machine's dockerd sent
keelnet's plugin during a run of the Docker suite (networks with and without keelnet's
IPAM, IPv6, --internal, --ip, connect/disconnect, published ports, refused options), with
the answers. Replayed here into a plugin whose Host is a test namespace, no dockerd
needed: every answer must have the recorded status and the recorded values (MAC
addresses, random at every run, only their form).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from netlab import HOST_UPLINK, Lab, run_in
from pluginlab import post, served_plugin

RECORDED = Path(__file__).parent.parent / "data" / "dockerd-20.10.24-requests.jsonl"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _same(recorded: Any, replayed: Any, where: str) -> None:
    if isinstance(recorded, dict):
        assert isinstance(replayed, dict) and set(recorded) == set(replayed), where
        for key, value in recorded.items():
            _same(value, replayed[key], f"{where}.{key}")
    elif isinstance(recorded, str) and _MAC.match(recorded):
        assert isinstance(replayed, str) and _MAC.match(replayed), where
    else:
        assert recorded == replayed, where


def test_the_plugin_answers_a_recorded_dockerd_session(lab: Lab, tmp_path: Path) -> None:
    entries = [json.loads(line) for line in RECORDED.read_text().splitlines()]
    assert len(entries) > 100
    # The recording machine's docker0 held 172.17.0.0/16, which keelnet's IPAM avoided.
    run_in(lab.host, "ip", "route", "add", "172.17.0.0/16", "dev", HOST_UPLINK)
    socket_path = tmp_path / "replay.sock"
    with served_plugin(lab.host, socket_path, tmp_path / "state"):
        for number, entry in enumerate(entries):
            status, answer = post(socket_path, entry["method"], entry["request"])
            where = f"#{number} {entry['method']}"
            assert status == entry["status"], (where, answer)
            _same(entry["answer"], answer, where)
