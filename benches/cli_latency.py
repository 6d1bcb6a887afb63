"""How long `keelnet` commands take end to end, beside `python -c pass` and `docker network ls`.

Run as root:  python benches/cli_latency.py [--runs 30]

Every figure is the wall time of a whole process (fork, interpreter start, imports, the work,
exit), median and p90 over `--runs` runs, all measured in one run of this script, with the
package's bytecode compiled as pip compiles it at install. keelnet works on a throwaway
host namespace `kn-bc-*` with its own state directory (one bridge network, one sandbox),
removed at the end, also on Ctrl-C. Commands are timed twice: with no agent (the CLI process
reads the store itself) and with `keelnet agent` running (the CLI hands the command line to
it). `network connect` is timed connect by connect, each followed by an untimed disconnect;
with no agent, a connect to a bridge network (its DNS server runs in the agent) starts the
agent first, so that row is the once-per-boot cost of a first command (the agent stopped
again, untimed, after each).
The ratio to `python -c pass` of the same run stays meaningful on a busy machine, where
every process start is slower. Goals (issue 11): `network ls` <= 60 ms, `--version`
<= 40 ms, `network connect` <= 80 ms.
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
# As installed by pip: bytecode compiled and used (an environment that sets
# PYTHONDONTWRITEBYTECODE would time the compiler instead).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], runs: int, between: tuple[list[str], ...] = ()) -> list[float]:
    """Wall times of `runs` runs of `argv`, the commands `between` run (untimed) after each."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=ENV)
        samples.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        for command in between:
            subprocess.run(command, capture_output=True, check=True, env=ENV)
    return samples


def row(name: str, samples: list[float], baseline: list[float]) -> str:
    median = statistics.median(samples) * 1000
    p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)] * 1000
    ratio = median / (statistics.median(baseline) * 1000)
    goal = next((g for k, g in GOALS_MS.items() if name.startswith(f"keelnet {k}")), None)
    if "starting the agent" in name:
        goal = None  # once per boot: the goals are for the commands after it
    verdict = "" if goal is None else f"<= {goal:.0f} ms: {'met' if median <= goal else 'missed'}"
    return f"| {name} | {median:.1f} | {p90:.1f} | {ratio:.1f}x | {verdict} |"


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
    import keelnet

    package = os.path.dirname(keelnet.__file__)
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True, env=ENV)
    entry = shutil.which("keelnet")
    keelnet_bin = [entry] if entry else [sys.executable, "-m", "keelnet.cli"]
    with throwaway_host() as (netns, state):
        keelnet_host = [*keelnet_bin, "--netns", netns, "--state-dir", state]
        sandbox = f"{netns}-sb"
        subnet = ["--subnet", "10.199.0.0/24", "bench"]
        for setup in (["network", "create", *subnet], ["sandbox", "create", sandbox]):
            subprocess.run([*keelnet_host, *setup], check=True, capture_output=True, env=ENV)
        connect = [*keelnet_host, "network", "connect", "bench", sandbox]
        disconnect = [*keelnet_host, "network", "disconnect", "bench", sandbox]
        base = timed([sys.executable, "-c", "pass"], args.runs)
        rows = [row("python -c pass", base, base)]
        if shutil.which("docker"):
            rows.append(
                row("docker network ls", timed(["docker", "network", "ls"], args.runs), base)
            )
        rows.append(row("keelnet --version", timed([*keelnet_bin, "--version"], args.runs), base))
        stop = [*keelnet_host, "agent", "stop"]
        for mode in ("no agent", "agent running"):
            if mode == "agent running":
                start = [*keelnet_host, "agent", "start"]
                subprocess.run(start, check=True, capture_output=True, env=ENV)
            else:
                subprocess.run(stop, check=True, capture_output=True, env=ENV)
            for name, argv, between in (
                ("network ls", [*keelnet_host, "network", "ls"], ()),
                ("network inspect", [*keelnet_host, "network", "inspect", "bench"], ()),
                ("network connect", connect, (disconnect,)),
            ):
                if mode == "no agent" and name == "network connect":
                    name, between = "network connect, starting the agent", (disconnect, stop)
                samples = timed(argv, args.runs, between)
                rows.append(row(f"keelnet {name} ({mode})", samples, base))
    load = " ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"keelnet CLI latency, {args.runs} runs each; load average after: {load}")
    print(f"keelnet: {' '.join(keelnet_bin)}")
    print("| command | median ms | p90 ms | x python -c pass | goal |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
