"""keelnet as Docker's network plugin against Docker's own bridge, side by side in one run.

    python benches/docker_plugin.py [--runs 20] [--seconds 5] [--repeats 2] [--overlay]
                                                                           (root; dockerd)

Uses this machine's dockerd and keelnet's plugin (started here, in the root namespace,
named `kn-b-…`), on three networks made for the run, all MTU 1500:

- `keelnet`: `docker network create -d <plugin>` (the kernel data plane: bridge + veth);
- `keelnet-userspace`: the same with `-o dataplane=userspace` (keelnet's switch, TAPs);
- `docker`: `docker network create -d bridge`, Docker's own;
- with `--overlay`, `keelnet-overlay` too: `-o keelnet.driver=overlay --ipam-driver
  <plugin>` (kernel data plane, inner MTU 1450), the plugin a member of an etcd started
  for the run in a namespace of its own (tests/docker/overlaylab.py); its containers are
  on one host, so its traffic crosses the overlay's bridge, not VXLAN.

1. `docker run --rm --network N IMAGE true`, wall time (the docker CLI's, as a user sees
   it), interleaved runs; goal keelnet <= 1.1x Docker's bridge.
2. `docker network connect` of a running container, then `disconnect`, wall time.
3. Container-to-container TCP throughput with iperf3 (one stream, `--seconds` each,
   interleaved `--repeats` rounds): goal keelnet's kernel plane >= 0.95x Docker's bridge.
   The image is busybox with this machine's iperf3 binary and the shared libraries `ldd`
   lists for it copied in (no registry is needed).

Prints every figure and the ratios. Removes every container, network and image it made,
and stops the plugin, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "docker"))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from dockerlab import (
    DockerLab,
    Plugin,
    build_image,
    docker,
    machine_lock,
    read_records,
    why_no_docker,
)
from overlaylab import etcd_beside_dockerd, why_no_underlay

MTU = ("-o", "com.docker.network.driver.mtu=1500")


def timed(action: Callable[..., object], *args: str) -> float:
    start = time.perf_counter()
    action(*args)
    return time.perf_counter() - start


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"


def run_times(lab: DockerLab, networks: dict[str, str], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label in networks}
    for _ in range(runs):
        for label, network in networks.items():
            run = ("run", "--rm", "--network", network, lab.image, "true")
            times[label].append(timed(lab.docker, *run))
    return times


def connect_times(
    lab: DockerLab, networks: dict[str, str], runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    base = lab.network("base", *MTU, "--subnet", "10.213.103.0/24", driver="bridge")
    box = lab.run("box", "--network", base)
    connect: dict[str, list[float]] = {label: [] for label in networks}
    disconnect: dict[str, list[float]] = {label: [] for label in networks}
    for _ in range(runs):
        for label, network in networks.items():
            connect[label].append(timed(lab.docker, "network", "connect", network, box))
            disconnect[label].append(timed(lab.docker, "network", "disconnect", network, box))
    return connect, disconnect


def throughput(
    lab: DockerLab, networks: dict[str, str], seconds: int, repeats: int
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {label: [] for label in networks}
    servers = {}
    for label, network in networks.items():
        server = lab.run(f"srv-{label}", "--network", network, command=["iperf3", "-s"])
        servers[label] = (network, server, lab.address(server, network))
    time.sleep(1)
    for _ in range(repeats):
        for label, (network, _server, address) in servers.items():
            out = lab.docker(
                "run",
                "--rm",
                "--network",
                network,
                lab.image,
                "iperf3",
                "-c",
                address,
                "-t",
                str(seconds),
                "-J",
                timeout=seconds + 60,
            )
            result = json.loads(out)
            rates[label].append(result["end"]["sum_received"]["bits_per_second"] / 1e9)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="docker run / connect samples")
    parser.add_argument("--seconds", type=int, default=5, help="per iperf3 run")
    parser.add_argument("--repeats", type=int, default=2, help="iperf3 rounds")
    parser.add_argument(
        "--overlay", action="store_true", help="a keelnet overlay network too (starts etcd)"
    )
    args = parser.parse_args()
    reason = why_no_docker() or (why_no_underlay() if args.overlay else None)
    iperf3 = shutil.which("iperf3")
    if reason is not None or iperf3 is None:
        print(f"skipped: {reason or 'no iperf3 (scripts/system-deps bench installs it)'}")
        return 1
    with machine_lock():
        prefix = f"kn-b-{secrets.token_hex(3)}"
        state = Path(tempfile.mkdtemp(prefix="kn-bench-"))
        try:
            with contextlib.ExitStack() as stack:
                store = None
                if args.overlay:
                    store = stack.enter_context(etcd_beside_dockerd(prefix, state)).url
                bench(args, prefix, state, iperf3, store)
        finally:
            shutil.rmtree(state, ignore_errors=True)
    return 0


def bench(
    args: argparse.Namespace, prefix: str, state: Path, iperf3: str, store: str | None
) -> None:
    plugin = Plugin(prefix, state / "plugin", record=state / "requests.jsonl", store=store)
    image = f"{prefix}-iperf3:latest"
    lab = DockerLab(prefix, plugin, image)
    try:
        build_image(image, extra_binaries=[iperf3])
        plugin.start()
        networks = {
            "keelnet": lab.network("kn", *MTU, "--subnet", "10.213.100.0/24"),
            "docker": lab.network("dk", *MTU, "--subnet", "10.213.102.0/24", driver="bridge"),
        }
        if store is not None:
            overlay = ("-o", "keelnet.driver=overlay", "--ipam-driver", plugin.name)
            networks["keelnet-overlay"] = lab.network(
                "ov", *overlay, *MTU, "--subnet", "10.213.104.0/24"
            )
        userspace = lab.network(
            "us", "-o", "dataplane=userspace", *MTU, "--subnet", "10.213.101.0/24"
        )
        print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")

        times = run_times(lab, networks, args.runs)
        print(f"\n1. docker run --rm --network N {image} true ({args.runs} runs each)")
        for label, samples in times.items():
            print(f"   {label:18} {summary(samples)}")
        ratio = statistics.median(times["keelnet"]) / statistics.median(times["docker"])
        print(f"   keelnet / docker: {ratio:.2f}x (goal <= 1.1x)")
        print("   the plugin's part (each call, from request read to answer), median:")
        labels = {network_id(lab, name): label for label, name in networks.items()}
        per_method: dict[tuple[str, str], list[float]] = {}
        for entry in read_records(state / "requests.jsonl"):
            request = entry["request"] if isinstance(entry["request"], dict) else {}
            label = labels.get(request.get("NetworkID", ""), "")
            per_method.setdefault((label, entry["method"]), []).append(entry["ms"])
        methods = ("CreateEndpoint", "Join", "ProgramExternalConnectivity", "Leave")
        methods += ("RevokeExternalConnectivity", "DeleteEndpoint")
        for label in networks:
            for method in methods:
                samples = per_method.get((label, f"NetworkDriver.{method}"), [])
                if samples:
                    median = statistics.median(samples)
                    print(f"     {label:16} {method:28} {median:6.2f} ms")

        connect, disconnect = connect_times(lab, networks, args.runs)
        print(f"\n2. docker network connect / disconnect ({args.runs} each)")
        for label in networks:
            print(f"   connect    {label:10} {summary(connect[label])}")
            print(f"   disconnect {label:10} {summary(disconnect[label])}")
        ratio = statistics.median(connect["keelnet"]) / statistics.median(connect["docker"])
        print(f"   connect keelnet / docker: {ratio:.2f}x")

        rates = throughput(
            lab, {**networks, "keelnet-userspace": userspace}, args.seconds, args.repeats
        )
        print(f"\n3. iperf3 TCP, one stream, {args.seconds} s x {args.repeats} (Gbit/s)")
        for label, samples in rates.items():
            print(f"   {label:18} " + "  ".join(f"{r:6.2f}" for r in samples))
        ratio = statistics.mean(rates["keelnet"]) / statistics.mean(rates["docker"])
        print(f"   keelnet kernel / docker: {ratio:.2f}x (goal >= 0.95x)")
        user = statistics.mean(rates["keelnet-userspace"]) / statistics.mean(rates["docker"])
        print(f"   keelnet userspace / docker: {user:.2f}x")
        print(f"\nload average {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        lab.cleanup()
        plugin.stop()
        docker("rmi", "-f", image, check=False)


def network_id(lab: DockerLab, name: str) -> str:
    return str(lab.inspect("network", name)["Id"])


if __name__ == "__main__":
    sys.exit(main())
