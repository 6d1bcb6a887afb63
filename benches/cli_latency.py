"""How long `keelnet` commands take end to end, beside `python -c pass` and `docker network ls`.

Run as root:  python benches/cli_latency.py [--runs 30]

Every figure is the wall time of a whole process (fork, interpreter start, imports, the work,
exit), median and p90 over `--runs` runs, all measured in one run of this script. keelnet
works on a throwaway host namespace `kn-bc-*` with its own state directory (one bridge
network, one sandbox), removed at the end, also on Ctrl-C. Commands are timed twice: with
no agent (the CLI process does the work) and with `keelnet agent` running (the CLI forwards
to it). `network connect` is timed connect by connect, each followed by an untimed
disconnect. Goals (issue 11): `network ls` <= 60 ms, `--version` <= 40 ms, `network
connect` <= 80 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

GOALS_MS = {"--version": 40.0, "network ls": 60.0, "network connect": 80.0}


def timed(argv: list[str], runs: int, between: list[str] | None = None) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True)
        samples.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        if between:
            subprocess.run(between, capture_output=True, check=True)
    return samples


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    median = statistics.median(ordered) * 1000
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)] * 1000
    goal = next((g for key, g in GOALS_MS.items() if name.startswith(key)), None)
    verdict = (
        "" if goal is None else f"goal <= {goal:.0f} ms: {'met' if median <= goal else 'MISSED'}"
    )
    return f"| {name} | {median:.1f} | {p90:.1f} | {verdict} |"


@contextlib.contextmanager
def throwaway_host() -> Iterator[tuple[str, str]]:
    netns = f"kn-bc-{secrets.token_hex(3)}"
    state = tempfile.mkdtemp(prefix="kn-bc-state-")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        yield netns, state
    finally:
        keelnet = [sys.executable, "-m", "keelnet.cli", "--netns", netns, "--state-dir", state]
        subprocess.run([*keelnet, "agent", "stop"], capture_output=True)
        subprocess.run([*keelnet, "sandbox", "rm", "-f", f"{netns}-sb"], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per command (default 30)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("cli_latency needs root (it makes a network namespace)", file=sys.stderr)
        return 1
    entry = shutil.which("keelnet") or ""
    keelnet_bin = [entry] if entry else [sys.executable, "-m", "keelnet.cli"]
    with throwaway_host() as (netns, state):
        keelnet = [*keelnet_bin, "--netns", netns, "--state-dir", state]
        sandbox = f"{netns}-sb"
        subprocess.run(
            [*keelnet, "network", "create", "--subnet", "10.199.0.0/24", "bench"],
            check=True,
            capture_output=True,
        )
        subprocess.run([*keelnet, "sandbox", "create", sandbox], check=True, capture_output=True)
        connect = [*keelnet, "network", "connect", "bench", sandbox]
        disconnect = [*keelnet, "network", "disconnect", "bench", sandbox]
        rows = [
            row("python -c pass", timed([sys.executable, "-c", "pass"], args.runs)),
        ]
        if shutil.which("docker"):
            rows.append(row("docker network ls", timed(["docker", "network", "ls"], args.runs)))
        rows.append(row("keelnet --version", timed([*keelnet_bin, "--version"], args.runs)))
        for mode in ("no agent", "agent running"):
            if mode == "agent running":
                subprocess.run([*keelnet, "agent", "start"], check=True, capture_output=True)
            rows.append(row(f"network ls ({mode})", timed([*keelnet, "network", "ls"], args.runs)))
            rows.append(
                row(
                    f"network inspect ({mode})",
                    timed([*keelnet, "network", "inspect", "bench"], args.runs),
                )
            )
            rows.append(row(f"network connect ({mode})", timed(connect, args.runs, disconnect)))
    load = os.getloadavg()
    print(
        f"keelnet CLI latency, {args.runs} runs each; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"keelnet: {' '.join(keelnet_bin)}")
    print("| command | median ms | p90 ms | |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
