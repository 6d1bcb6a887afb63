"""keelnet's userspace data plane against the kernel's, measured side by side in one run.

    python benches/dataplane_vs_kernel.py [--seconds 5] [--repeats 2]   (root; iperf3)

Builds throwaway test hosts (namespaces `kn-dp…` on an underlay bridge, 192.0.2.0/24,
MTU 1500) and, interleaving kernel and keelnet runs:

1. TCP, one iperf3 stream (`--streams N`: N in parallel), sandbox → sandbox across two
   hosts, both directions:
   kernel bridge+vxlan on both hosts vs a keelnet switch (TAP ports, VTEP) on both.
   Also keelnet ↔ kernel (the interop path). CPU seconds per GB from /proc/stat (all
   cores: iperf3, softirqs and the switch thread share the 2 vCPUs).
2. Same host, two sandboxes: kernel bridge + veth vs one keelnet switch with TAP ports.
3. 64-byte frames (18-byte UDP payloads) at full speed across two hosts, from a small C
   sender with sendmmsg (iperf3 tops out at ~50 kpps here: it would measure itself):
   packets per second delivered to the receiving sandbox.
4. Latency: ping RTT p50/p99 across two hosts and on one host (interleaved rounds), and
   the latency each overlay adds to the bare underlay's.

Prints every figure and the keelnet/kernel ratios against the goals of issue 4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from dplab import (
    UNDERLAY_V4,
    DpLab,
    address,
    dp_lab,
    kernel_vxlan_host,
    sh,
)
from nettools import PING_SCRIPT

from keelnet.dataplane import Switch

VNI = 42
NET = "198.51.100.{}"


def cpu_busy_seconds() -> float:
    """Busy time of all CPUs (everything but idle and iowait) from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """Other sessions share the machine: the load average says how much."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: float, *extra: str) -> dict:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        busy = cpu_busy_seconds()
        ours = os.times()
        out = sh(
            "iperf3",
            "-c",
            server_ip,
            "-t",
            str(seconds),
            "-J",
            *extra,
            netns=client_ns,
            timeout=seconds + 30,
        )
        busy = cpu_busy_seconds() - busy
        after = os.times()
    finally:
        server.wait(timeout=10)
    result = json.loads(out)
    result["_cpu_busy"] = busy
    # CPU of the two iperf3 processes (their syscalls carry most softirq work too) and of
    # this process (the keelnet switch threads): unlike /proc/stat, not polluted by
    # whatever else runs on the machine.
    usage = result["end"]["cpu_utilization_percent"]
    duration = result["end"]["sum_received" if "sum_received" in result["end"] else "sum"][
        "seconds"
    ]
    iperf_cpu = (usage["host_total"] + usage["remote_total"]) / 100 * duration
    result["_cpu_ours"] = iperf_cpu + (after.user + after.system) - (ours.user + ours.system)
    return result


def tcp_run(
    client: str, server: str, ip: str, seconds: float, reverse: bool, streams: int = 1
) -> tuple[float, float, float]:
    """(Gbit/s received, CPU s/GB of iperf3 + switch, CPU s/GB machine-wide)."""
    extra = (["-R"] if reverse else []) + (["-P", str(streams)] if streams > 1 else [])
    result = iperf(client, server, ip, seconds, *extra)
    received = result["end"]["sum_received"]
    gbytes = max(received["bytes"] / 1e9, 1e-9)
    return (
        received["bits_per_second"] / 1e9,
        result["_cpu_ours"] / gbytes,
        result["_cpu_busy"] / gbytes,
    )


def udpflood() -> str:
    """Builds benches/tools/udpflood.c (sendmmsg/recvmmsg, 64 per call) once."""
    binary = Path(tempfile.gettempdir()) / "keelnet-udpflood"
    source = Path(__file__).resolve().parent / "tools" / "udpflood.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


def udp_pps(client: str, server: str, ip: str, seconds: float) -> float:
    """Datagrams per second delivered to the receiving sandbox, 18-byte payloads (64-byte
    Ethernet frames), sent as fast as one sender with sendmmsg manages."""
    tool = udpflood()
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", server, tool, "recv", ip, "5300", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("udpflood receiver did not start")
        sh(tool, "send", ip, "5300", str(seconds + 1), "18", netns=client, timeout=seconds + 30)
        out, _ = receiver.communicate(timeout=seconds + 40)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    received, duration = out.split()
    return int(received) / max(float(duration), 1e-9)


def rtts(netns: str, ip: str, count: int) -> list[float]:
    """RTTs in microseconds of `count` sequential ICMP echoes (raw socket, Python)."""
    out = sh(
        sys.executable,
        "-c",
        PING_SCRIPT,
        ip,
        "30",
        str(count),
        netns=netns,
        timeout=60,
        check=False,
    )
    return [float(x) for x in out.split()[1:]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def added_latency(runs: dict[str, list[list[float]]], name: str) -> tuple[float, float]:
    """(p50, p99) of `name`'s RTTs minus the underlay's p50, per interleaved round, then
    the median over rounds: load from other sessions that comes and goes between rounds
    moves both terms of one round together."""
    rounds = list(zip(runs[name], runs["underlay"], strict=True))
    return (
        statistics.median(percentile(own, 0.5) - percentile(base, 0.5) for own, base in rounds),
        statistics.median(percentile(own, 0.99) - percentile(base, 0.5) for own, base in rounds),
    )


class Topology:
    """Kernel hosts 1-2, keelnet hosts 3-4, and a same-host pair of each kind on 5/6."""

    def __init__(
        self,
        lab: DpLab,
        gso: bool,
        coalesce: bool,
        busy_poll: int | None,
        workers: int = 1,
        tunnel_gso: bool = True,
        queues: int = 1,
        port_security: bool = False,
    ) -> None:
        self.switches: list[Switch] = []

        def allowed(n: int) -> list[str] | None:
            return [NET.format(n)] if port_security else None

        h = {n: lab.host(n) for n in range(1, 7)}
        self.hosts = h
        s = {n: lab.sandbox(f"s{n}") for n in (1, 2, 3, 4, 5, 6, 7, 8)}
        self.sandboxes = s
        # Kernel overlay: h1/s1 ↔ h2/s2.
        kernel_vxlan_host(
            h[1],
            s[1],
            vni=VNI,
            local=UNDERLAY_V4.format(1),
            remotes=[UNDERLAY_V4.format(2)],
            overlay_cidr=f"{NET.format(1)}/24",
        )
        kernel_vxlan_host(
            h[2],
            s[2],
            vni=VNI,
            local=UNDERLAY_V4.format(2),
            remotes=[UNDERLAY_V4.format(1)],
            overlay_cidr=f"{NET.format(2)}/24",
        )
        # keelnet overlay: h3/s3 ↔ h4/s4.
        for n, peer in ((3, 4), (4, 3)):
            sw = Switch(
                netns=h[n],
                udp_gso=gso,
                tunnel_gso=tunnel_gso,
                coalesce=coalesce,
                busy_poll_us=busy_poll,
                workers=workers,
            )
            sw.add_vtep(UNDERLAY_V4.format(n))
            sw.add_tap("p", vni=VNI, sandbox=s[n], mtu=1450, queues=queues, allowed_ips=allowed(n))
            address(s[n], "eth0", f"{NET.format(n)}/24")
            sw.add_peer(VNI, UNDERLAY_V4.format(peer))
            sw.start()
            self.switches.append(sw)
        # Same host, kernel: bridge + veth on h5 (s5, s6).
        sh("ip", "link", "add", "br0", "type", "bridge", netns=h[5])
        sh("ip", "link", "set", "br0", "up", netns=h[5])
        for n in (5, 6):
            sh(
                "ip",
                "link",
                "add",
                f"v{n}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                s[n],
                netns=h[5],
            )
            sh("ip", "link", "set", f"v{n}", "master", "br0", "up", netns=h[5])
            address(s[n], "eth0", f"{NET.format(n)}/24")
        # Same host, keelnet: one switch on h6 with TAP ports (s7, s8).
        sw = Switch(netns=h[6], coalesce=coalesce, busy_poll_us=busy_poll, workers=workers)
        for n in (7, 8):
            sw.add_tap(f"p{n}", vni=VNI, sandbox=s[n], queues=queues, allowed_ips=allowed(n))
            address(s[n], "eth0", f"{NET.format(n)}/24")
        sw.start()
        self.switches.append(sw)

    def close(self) -> None:
        for sw in self.switches:
            sw.close()


def print_tcp(tcp: dict[str, list], streams: int) -> dict[str, tuple[float, float]]:
    print(
        f"\nTCP, {streams} stream(s): Gbit/s received (runs); CPU s/GB of iperf3 + switch;",
        "machine-wide",
    )
    med: dict[str, tuple[float, float]] = {}
    for name, values in tcp.items():
        gbps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        wide = statistics.median(v[2] for v in values)
        med[name] = (gbps, cpu)
        runs = ", ".join(f"{v[0]:.2f}" for v in values)
        print(f"  {name:32s} {gbps:6.2f} Gbit/s  ({runs})  {cpu:5.2f} CPU-s/GB  {wide:5.2f}")
    return med


def print_tcp_ratios(med: dict[str, tuple[float, float]]) -> None:
    for direction in ("→", "←"):
        k, u = med[f"kernel vxlan {direction}"], med[f"keelnet vtep {direction}"]
        print(
            f"  TCP across hosts {direction}: {u[0] / k[0]:.2f}x (≥ 0.5)",
            f"  CPU/GB {u[1] / k[1]:.2f}x",
        )
    k, u = med["kernel bridge+veth (same host)"], med["keelnet tap (same host)"]
    print(f"  TCP same host:       {u[0] / k[0]:.2f}x (≥ 0.8)   CPU/GB {u[1] / k[1]:.2f}x")


def interleave(repeats: int, runs: dict[str, Callable[[], object]]) -> dict[str, list]:
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pings", type=int, default=300, help="echoes per repeat")
    parser.add_argument("--no-gso", action="store_true", help="VTEP without UDP GSO")
    parser.add_argument(
        "--no-tunnel-gso", action="store_true", help="segment super-frames in the switch"
    )
    parser.add_argument("--no-coalesce", action="store_true", help="no GRO towards TAPs")
    parser.add_argument("--workers", type=int, default=1, help="switch worker threads")
    parser.add_argument("--queues", type=int, default=1, help="queues of keelnet's TAP ports")
    parser.add_argument("--streams", type=int, default=1, help="parallel TCP streams (-P)")
    parser.add_argument(
        "--busy-poll-us", type=int, default=None, help="switch polling limit (default: keelnet's)"
    )
    parser.add_argument(
        "--port-security", action="store_true", help="keelnet's TAP ports checked (issue 10)"
    )
    parser.add_argument("--tcp-only", action="store_true", help="skip packet rate and latency")
    parser.add_argument("--latency-only", action="store_true", help="only the ping RTTs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, TAP devices)")
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, {args.seconds:g} s x {args.repeats}",
        f"load average {load_average()}",
    )
    with dp_lab() as lab:
        topo = Topology(
            lab,
            gso=not args.no_gso,
            tunnel_gso=not args.no_tunnel_gso,
            coalesce=not args.no_coalesce,
            busy_poll=args.busy_poll_us,
            workers=args.workers,
            queues=args.queues,
            port_security=args.port_security,
        )
        s, t, n = topo.sandboxes, args.seconds, args.streams
        try:
            # Warm up ARP/FDB on every path.
            for a, b in ((1, 2), (2, 1), (3, 4), (4, 3), (5, 6), (7, 8), (8, 7)):
                sh("ip", "netns", "exec", s[a], "true")
                rtts(s[a], NET.format(b), 3)
            tcp_runs: dict[str, Callable[[], object]] = {
                "kernel vxlan →": lambda: tcp_run(s[1], s[2], NET.format(2), t, False, n),
                "keelnet vtep →": lambda: tcp_run(s[3], s[4], NET.format(4), t, False, n),
                "kernel vxlan ←": lambda: tcp_run(s[1], s[2], NET.format(2), t, True, n),
                "keelnet vtep ←": lambda: tcp_run(s[3], s[4], NET.format(4), t, True, n),
                "kernel bridge+veth (same host)": lambda: tcp_run(
                    s[5], s[6], NET.format(6), t, False, n
                ),
                "keelnet tap (same host)": lambda: tcp_run(s[7], s[8], NET.format(8), t, False, n),
            }
            tcp = {} if args.latency_only else interleave(args.repeats, tcp_runs)
            if args.tcp_only:
                print("\nRatios keelnet / kernel (goal)")
                print_tcp_ratios(print_tcp(tcp, n))
                return
            pps_runs: dict[str, Callable[[], object]] = {
                "kernel vxlan": lambda: udp_pps(s[1], s[2], NET.format(2), t),
                "keelnet vtep": lambda: udp_pps(s[3], s[4], NET.format(4), t),
            }
            pps = {} if args.latency_only else interleave(args.repeats, pps_runs)
            # Interleaved like the rest: a burst of load from other sessions hits both sides.
            latency_runs = interleave(
                args.repeats,
                {
                    "underlay": lambda: rtts(topo.hosts[1], UNDERLAY_V4.format(2), args.pings),
                    "kernel vxlan": lambda: rtts(s[1], NET.format(2), args.pings),
                    "keelnet vtep": lambda: rtts(s[3], NET.format(4), args.pings),
                    "kernel bridge+veth": lambda: rtts(s[5], NET.format(6), args.pings),
                    "keelnet tap": lambda: rtts(s[7], NET.format(8), args.pings),
                },
            )
            latency = {
                name: [rtt for run in runs for rtt in run] for name, runs in latency_runs.items()
            }
            vtep_stats = topo.switches[0].stats()["vteps"][0]
            drops = [sum(sw.stats()["drops"].values()) for sw in topo.switches]
        finally:
            topo.close()

    print(f"load average at the end {load_average()}")
    med = print_tcp(tcp, args.streams) if tcp else {}
    if pps:
        print("\n64-byte UDP frames, delivered packets/s")
    pps_med = {name: statistics.median(v) for name, v in pps.items()}
    for name, values in pps.items():
        print(
            f"  {name:32s} {pps_med[name] / 1e3:8.1f} kpps",
            f"({', '.join(f'{v / 1e3:.1f}' for v in values)})",
        )
    print(f"\nping RTT, {args.repeats} x {args.pings} echoes (µs)")
    for name, values in latency.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"  {name:32s} p50 {p50:7.1f}  p99 {p99:7.1f}  ({len(values)} answered)")
    add = {name: added_latency(latency_runs, name) for name in ("kernel vxlan", "keelnet vtep")}
    print(
        "\nOffloads: TAP IFF_VNET_HDR + TUN_F_CSUM|TSO4|TSO6|TSO_ECN; "
        f"VTEP UDP GSO {vtep_stats['gso']}, UDP GRO {vtep_stats['gro']}, "
        f"tunnel GSO through {vtep_stats['tunnel_device'] or vtep_stats['tunnel_error']}; "
        f"coalescing towards TAPs {not args.no_coalesce}; switch drops {drops}; "
        f"port security {args.port_security}"
    )
    print("\nRatios keelnet / kernel (goal)")
    if med:
        print_tcp_ratios(med)
    if pps_med:
        pps_ratio = pps_med["keelnet vtep"] / pps_med["kernel vxlan"]
        print(f"  64-byte pps:         {pps_ratio:.2f}x (≥ 0.5)")
    for i, label in ((0, "p50"), (1, "p99")):
        k_add, u_add = add["kernel vxlan"][i], add["keelnet vtep"][i]
        print(
            f"  added latency {label}:   keelnet {u_add:.1f} µs vs kernel {k_add:.1f} µs "
            f"= {u_add / max(k_add, 1e-9):.2f}x (≤ 2)"
        )
    # Whole round trips, for reference: the goal is on what each overlay adds.
    k_rtt = percentile(latency["kernel vxlan"], 0.5)
    u_rtt = percentile(latency["keelnet vtep"], 0.5)
    print(
        f"  (whole RTT p50:     keelnet {u_rtt:.1f} µs vs kernel {k_rtt:.1f} µs "
        f"= {u_rtt / k_rtt:.2f}x, underlay included)"
    )


if __name__ == "__main__":
    main()
