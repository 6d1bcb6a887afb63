"""The README's CLI session, run command by command on a throwaway host: what the README
shows is what the CLI prints (ids, interface indexes and pids aside)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from netlab import Lab

README = Path(__file__).parents[2] / "README.md"


def session() -> list[tuple[str, list[str]]]:
    """The `$ command` lines of the README's first console block, each with its output."""
    text = README.read_text()
    block = text[text.index("```console\n") + len("```console\n") :]
    block = block[: block.index("```")]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def normalized(lines: list[str], names: dict[str, str]) -> list[list[str]]:
    result = []
    for line in lines:
        for mine, shown in names.items():
            line = line.replace(mine, shown)
        line = re.sub(r"\b[0-9a-f]{64}\b", "<id>", line)
        line = re.sub(r"\b[0-9a-f]{12}\b", "<id>", line)
        line = re.sub(r"@if\d+", "@if<n>", line)
        result.append(line.split())
    return result


def test_the_readme_session_prints_what_the_readme_shows(lab: Lab) -> None:
    sandboxes = {shown: lab.name(shown) for shown in ("app", "db")}
    names = {str(lab.state_dir): "/var/lib/keelnet/default"}
    names.update({mine: shown for shown, mine in sandboxes.items()})
    keelnet = [sys.executable, "-m", "keelnet.cli", "--netns", lab.host]
    keelnet += ["--state-dir", str(lab.state_dir)]
    steps = session()
    assert len(steps) > 10
    for command, shown in steps:
        argv = shlex.split(command)
        assert argv[0] == "keelnet", command
        argv = [sandboxes.get(word, word) for word in argv[1:]]
        result = subprocess.run(
            [*keelnet, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        printed = (result.stdout + result.stderr).splitlines()
        assert normalized(printed, names) == normalized(shown, names), command
