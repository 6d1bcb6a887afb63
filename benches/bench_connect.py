"""Connect latency and network-create latency, keelnet vs. the same setup with `ip` commands.

Run as root:  python benches/bench_connect.py [--sandboxes 100]
Everything happens in throwaway namespaces `kn-b-*`, removed at the end (also on Ctrl-C).
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

from pyroute2 import netns

import keelnet
from keelnet.kernel.namespaces import NETNS_RUN_DIR


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _p90_ms(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.9) - 1] * 1000


def bench_keelnet(prefix: str, count: int, creates: int) -> dict[str, list[float]]:
    host_ns = f"{prefix}-kh"
    netns.create(host_ns)
    state = tempfile.mkdtemp(prefix="kn-bench-")
    try:
        with keelnet.Host(netns=host_ns, state_dir=state) as host:
            create_times = []
            for i in range(creates):
                start = time.perf_counter()
                host.create_network(f"c{i}", subnet=f"10.{100 + i}.0.0/24")
                create_times.append(time.perf_counter() - start)
            host.create_network("bench", subnet="10.99.0.0/16")
            names = [f"{prefix}-k{i}" for i in range(count)]
            for name in names:
                host.create_sandbox(name)
            connect_times = []
            for name in names:
                start = time.perf_counter()
                host.connect("bench", name)
                connect_times.append(time.perf_counter() - start)
            for name in names:
                host.remove_sandbox(name)
            for network in host.networks():
                host.remove_network(network.name)
        return {"create": create_times, "connect": connect_times}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def bench_shell(prefix: str, count: int) -> float:
    """Seconds per connect for the same plumbing done by a shell script of `ip` commands."""
    host_ns = f"{prefix}-sh"
    names = [f"{prefix}-s{i}" for i in range(count)]
    setup = [
        f"ip netns add {host_ns}",
        f"ip -n {host_ns} link add kn-sbr type bridge",
        f"ip -n {host_ns} addr add 10.99.0.1/16 dev kn-sbr",
        f"ip -n {host_ns} link set kn-sbr up",
    ]
    setup += [f"ip netns add {n}" for n in names]
    subprocess.run(["sh", "-ec", "\n".join(setup)], check=True)
    lines = []
    for i, name in enumerate(names):
        ip = f"10.99.{(i + 2) // 256}.{(i + 2) % 256}"
        lines += [
            f"ip -n {host_ns} link add kn-sv{i} type veth peer name eth0 netns {name}",
            f"ip -n {host_ns} link set kn-sv{i} master kn-sbr up",
            f"ip -n {name} addr add {ip}/16 dev eth0",
            f"ip -n {name} link set eth0 up",
            f"ip -n {name} route add default via 10.99.0.1",
        ]
    start = time.perf_counter()
    subprocess.run(["sh", "-ec", "\n".join(lines)], check=True)
    return (time.perf_counter() - start) / count


def cleanup(prefix: str) -> None:
    for name in sorted(os.listdir(NETNS_RUN_DIR)):
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                netns.remove(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=100)
    parser.add_argument("--creates", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_connect needs root", file=sys.stderr)
        return 1
    prefix = f"kn-b-{secrets.token_hex(2)}"
    try:
        results = bench_keelnet(prefix, args.sandboxes, args.creates)
        shell = bench_shell(prefix, args.sandboxes)
    finally:
        cleanup(prefix)
    connect, create = results["connect"], results["create"]
    mean_connect = statistics.mean(connect)
    print(f"connect, {args.sandboxes} sandboxes on one bridge network:")
    print(
        f"  keelnet  median {_median_ms(connect):.2f} ms  p90 {_p90_ms(connect):.2f} ms  "
        f"mean {mean_connect * 1000:.2f} ms"
    )
    print(f"  ip(8) shell script  mean {shell * 1000:.2f} ms per connect")
    print(
        f"  ratio shell/keelnet (mean/mean) {shell / mean_connect:.1f}x, "
        f"(mean/median) {shell / statistics.median(connect):.1f}x"
    )
    print(
        f"network create: median {_median_ms(create):.2f} ms  p90 {_p90_ms(create):.2f} ms "
        f"({args.creates} networks)"
    )
    ok = _median_ms(connect) <= 5 and shell / mean_connect >= 2 and _median_ms(create) <= 20
    print(
        "goals (connect median <= 5 ms, >= 2x shell, create median <= 20 ms):",
        "met" if ok else "NOT met",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
