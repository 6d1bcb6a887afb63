"""What opening a Host costs with many endpoints: every keelnet CLI command pays it.

Run as root:  python benches/open_cost.py [--endpoints 400] [--opens 20]

Builds one bridge network with N connected sandboxes in throwaway namespaces `kn-o-*`
(removed at the end, also on Ctrl-C), then times `Host(...)` + `close()` as the CLI opens
it (`serve_dns=False`) and as a library process that serves the sandboxes' DNS does (a
socket bound in every sandbox), and, for comparison, one explicit `reconcile()` (what
every open ran before the crash journal).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from netlab import create_ns, remove_prefix

import keelnet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=400)
    parser.add_argument("--opens", type=int, default=20)
    args = parser.parse_args()
    prefix = f"kn-o-{secrets.token_hex(3)}"
    host_ns = f"{prefix}-host"
    with tempfile.TemporaryDirectory(prefix="kn-open-") as state:
        create_ns(host_ns)
        try:
            with keelnet.Host(netns=host_ns, state_dir=state) as host:
                host.create_network("bench", subnet="10.99.0.0/16")
                for i in range(args.endpoints):
                    host.create_sandbox(f"{prefix}-s{i}")
                    host.connect("bench", f"{prefix}-s{i}")
            opens: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.opens):
                for serve_dns in opens:
                    started = time.perf_counter()
                    keelnet.Host(netns=host_ns, state_dir=state, serve_dns=serve_dns).close()
                    opens[serve_dns].append(time.perf_counter() - started)
            with keelnet.Host(netns=host_ns, state_dir=state) as host:
                started = time.perf_counter()
                host.reconcile()
                reconcile = time.perf_counter() - started
                for i in range(args.endpoints):
                    host.remove_sandbox(f"{prefix}-s{i}")
                host.remove_network("bench")
        finally:
            remove_prefix(prefix)
    print(f"endpoints            {args.endpoints}")
    for serve_dns, times in opens.items():
        how = "serving DNS" if serve_dns else "as the CLI "
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        print(f"open + close, {how}  median {median:.1f} ms, max {worst:.1f} ms ({args.opens})")
    print(f"reconcile()          {reconcile * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
