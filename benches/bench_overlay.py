"""Overlay networks across hosts: control-plane and data-plane figures, and the kernel's
hand-built equivalent measured in the same run.

    python benches/bench_overlay.py [--connects 100] [--seconds 5] [--rounds 7] [--hosts 10]
        [--endpoints 100] [--kills 5] [--only connect,throughput,scale,failover,names]  (root)

Everything runs in throwaway namespaces `kn-ob-…` on a TEST-NET-1 underlay with its own
one-member etcd (stopped and removed at the end, also on Ctrl-C):

1. connect → first ping: host A connects a sandbox, host B's sandbox pings the new address
   every 2 ms until it answers; p50/p99 over `--connects` connects (kernel and userspace).
   Goal (issue 12): p99 <= 200 ms.
2. TCP throughput (iperf3, one stream) sandbox → sandbox across two hosts: keelnet's
   overlay driver with the kernel data plane and with the userspace one, against a
   hand-built kernel bridge + vxlan on two other hosts with the same host firewall as
   keelnet's (and, for comparison, on two bare hosts). `--rounds` rounds each run every
   setup once, in an order rotated per round; a setup's ratio is the median over rounds
   of its figure over the reference's in the same round (a shared machine's load moves
   both together). Goals: kernel >= 0.95x, userspace >= 0.7x of the hand-built one.
3. Scale: `--hosts` host processes x `--endpoints` endpoints on one network: RSS of a host
   process (the agent's share), etcd keys and bytes per endpoint, and how long a new host
   takes from its start until its kernel holds every remote endpoint.
4. Failover: from SIGKILL of a host process until its endpoints are gone from another
   host's kernel table (lease TTL 3 s), `--kills` times.
5. Names: host B connects a sandbox while host A's sandbox asks 127.0.0.11 for its name
   every millisecond (from a thread started with the connect) until the address comes
   back (the watch brings the name); p50/p99 over `--connects` connects.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import resource
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from clusterlab import (
    Cluster,
    Connector,
    EtcdCluster,
    Segment,
    kernel_remote_macs,
    make_host_ns,
    overlay_ns,
)
from dplab import kernel_vxlan_host, sh
from netlab import create_ns, remove_prefix

from keelnet.kernel.namespaces import bridges_skip_iptables, call_in_netns, netns_path
from keelnet.model import Endpoint, Network

LEASE_TTL = 3


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@contextlib.contextmanager
def lab(root: Path) -> Iterator[tuple[str, Segment, EtcdCluster]]:
    prefix = f"kn-ob-{secrets.token_hex(2)}"
    segment = Segment(prefix, "sw", "192.0.2.")
    etcd = EtcdCluster(prefix, segment, root / "etcd", size=1, first_host_number=250)
    try:
        segment.create()
        etcd.start()
        yield prefix, segment, etcd
    finally:
        etcd.stop()
        remove_prefix(prefix)


def first_answer(netns: str, address: str, timeout: float = 10.0) -> float:
    """Seconds until `address` answers an ICMP echo sent from `netns` every 2 ms."""
    sock = call_in_netns(
        netns_path(netns),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    )
    start = time.perf_counter()
    with sock:
        sock.settimeout(0.002)
        ident, seq = os.getpid() & 0xFFFF, 0
        while time.perf_counter() - start < timeout:
            seq = (seq + 1) & 0xFFFF
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            words = sum(struct.unpack("!4H", header))
            words = (words >> 16) + (words & 0xFFFF)
            checksum = ~(words + (words >> 16)) & 0xFFFF
            with contextlib.suppress(OSError):
                sock.sendto(struct.pack("!BBHHH", 8, 0, checksum, ident, seq), (address, 0))
            with contextlib.suppress(TimeoutError):
                while True:
                    data = sock.recv(2048)
                    icmp = data[(data[0] & 0x0F) * 4 :]
                    if icmp[0] == 0 and icmp[4:6] == struct.pack("!H", ident):
                        return time.perf_counter() - start
    raise TimeoutError(f"{address} never answered from {netns}")


def first_resolution(netns: str, name: str, timeout: float = 10.0) -> float:
    """Seconds until 127.0.0.11 in `netns` answers `name` with an address, asked every
    millisecond."""
    query = struct.pack("!HHHHHH", 0x4B4E, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    query += b"\0" + struct.pack("!HH", 1, 1)  # A, IN
    sock = call_in_netns(
        netns_path(netns), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    start = time.perf_counter()
    with sock:
        sock.settimeout(0.001)
        sock.connect(("127.0.0.11", 53))
        while time.perf_counter() - start < timeout:
            sock.send(query)
            with contextlib.suppress(TimeoutError):
                while True:
                    answer = sock.recv(512)
                    flags, count = struct.unpack("!H", answer[2:4])[0], answer[7]
                    if answer[:2] == query[:2] and flags & 0xF == 0 and count:
                        return time.perf_counter() - start
    raise TimeoutError(f"{name} never resolved in {netns}")


def resolved_at(netns: str, name: str) -> float:
    """The `time.perf_counter()` at which `name` first resolves in `netns`."""
    first_resolution(netns, name)
    return time.perf_counter()


def bench_connect(root: Path, connects: int) -> None:
    print(f"\n1. connect on host A -> first ping from host B ({connects} connects each)")
    for plane in ("kernel", "userspace"):
        with lab(root / f"connect-{plane}") as (_prefix, _segment, etcd):
            cluster = Cluster(etcd, root / f"connect-{plane}" / "hosts")
            try:
                a = cluster.add_host(1, lease_ttl=LEASE_TTL, dataplane=plane)
                b = cluster.add_host(2, lease_ttl=LEASE_TTL, dataplane=plane)
                a.create_network("ov", driver="overlay", subnet="10.0.0.0/16")
                probe = cluster.sandbox(b, "probe")
                b.connect("ov", probe)
                boxes = [cluster.sandbox(a, f"s{i}") for i in range(connects)]
                calls, pings = [], []
                for box in boxes:
                    start = time.perf_counter()
                    endpoint = a.connect("ov", box)
                    calls.append(time.perf_counter() - start)
                    pings.append(calls[-1] + first_answer(probe, str(endpoint.ip)))
            finally:
                cluster.close()
        print(
            f"  {plane:<9} connect() p50 {statistics.median(calls) * 1e3:6.1f} ms, "
            f"p99 {percentile(calls, 99) * 1e3:6.1f} ms; until B's first ping answered: "
            f"p50 {statistics.median(pings) * 1e3:6.1f} ms, "
            f"p99 {percentile(pings, 99) * 1e3:6.1f} ms  (goal p99 <= 200 ms)"
        )


@dataclasses.dataclass
class ThroughputRun:
    gbits: float
    cpu_per_gb: float  # CPU seconds per GB received: both iperf3 processes + switch threads


def switch_cpu_seconds() -> float:
    """CPU time of this process's switch threads (the userspace hosts live here)."""
    total = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            if text[text.index("(") + 1 : text.rindex(")")].startswith("keelnet-switch"):
                fields = text[text.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def iperf_run(client: str, server: str, address: str, seconds: float) -> ThroughputRun:
    """One iperf3 stream from `client` to `server`; the softirq work of the kernel paths
    runs in the iperf3 processes' time (no IRQ time accounting), the userspace path's
    in the switch threads', so both count."""
    before = children_cpu_seconds() + switch_cpu_seconds()
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = sh(
            "iperf3", "-c", address, "-t", str(seconds), "-J", netns=client, timeout=seconds + 30
        )
    finally:
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the client failed: do not leave it behind
            daemon.kill()
            daemon.wait()
    cpu = children_cpu_seconds() + switch_cpu_seconds() - before
    received = json.loads(out)["end"]["sum_received"]
    return ThroughputRun(received["bits_per_second"] / 1e9, cpu / (received["bytes"] / 1e9))


@dataclasses.dataclass
class Setup:
    client: str
    server: str
    address: str


def hand_built_pair(
    prefix: str, segment: Segment, first: int, vni: int, *, firewall: bool
) -> Setup:
    """Docker-overlay style, built with ip/bridge on two more hosts (host numbers `first`
    and `first + 1`), its bridge kept out of iptables as keelnet's kernel plane keeps
    its own. With `firewall`, the hosts have what keelnet's test hosts have: Docker's
    iptables (FORWARD policy DROP) and a NAT rule like the one Docker adds for
    docker_gwbridge (keelnet's kn-gwbridge has its own), so conntrack follows the
    underlay's VXLAN datagrams on both sides of the comparison."""
    numbers = (first, first + 1)
    for number, peer in (numbers, numbers[::-1]):
        host, box = f"{prefix}-k{number}", f"{prefix}-kc{number}"
        if firewall:
            make_host_ns(host)
            sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "172.18.0.0/16",
               "!", "-o", "docker_gwbridge", "-j", "MASQUERADE", netns=host)  # fmt: skip
        else:
            create_ns(host)
        bridges_skip_iptables(netns_path(host))
        segment.plug(host, number, "ul0")
        create_ns(box)
        kernel_vxlan_host(
            host,
            box,
            vni=vni,
            local=f"192.0.2.{number}",
            remotes=[f"192.0.2.{peer}"],
            overlay_cidr=f"10.60.{first}.{number}/24",
        )
    return Setup(f"{prefix}-kc{first}", f"{prefix}-kc{first + 1}", f"10.60.{first}.{first + 1}")


REFERENCE = "hand-built kernel"
GOALS = {"keelnet kernel": 0.95, "keelnet userspace": 0.70}


def bench_throughput(root: Path, seconds: float, rounds: int) -> None:
    print(
        f"\n2. TCP, one iperf3 stream, sandbox -> sandbox across two hosts: {rounds} rounds, "
        f"each runs every setup once for {seconds:g} s (order rotated per round); ratio = "
        f"median over rounds of (setup / {REFERENCE}) in the same round"
    )
    with lab(root / "throughput") as (prefix, segment, etcd):
        setups = {
            # The reference: hosts with the same firewall as keelnet's.
            REFERENCE: hand_built_pair(prefix, segment, 11, 42, firewall=True),
            # What the host firewall (conntrack) costs the kernel path, for comparison.
            "hand-built, bare hosts": hand_built_pair(prefix, segment, 13, 43, firewall=False),
        }
        cluster = Cluster(etcd, root / "throughput" / "hosts")
        try:
            for plane, (first, second) in (("kernel", (1, 2)), ("userspace", (3, 4))):
                a = cluster.add_host(first, dataplane=plane)
                b = cluster.add_host(second, dataplane=plane)
                name = f"ov-{plane}"
                subnet = "10.61.0.0/24" if plane == "kernel" else "10.62.0.0/24"
                a.create_network(name, driver="overlay", subnet=subnet)
                ca, cb = cluster.sandbox(a, f"{plane}-a"), cluster.sandbox(b, f"{plane}-b")
                a.connect(name, ca)
                target = str(b.connect(name, cb).ip)
                first_answer(ca, target)
                setups[f"keelnet {plane}"] = Setup(ca, cb, target)
            labels = list(setups)
            runs: dict[str, list[ThroughputRun]] = {label: [] for label in labels}
            for number in range(rounds):
                order = labels[number % len(labels) :] + labels[: number % len(labels)]
                for label in order:
                    setup = setups[label]
                    run = iperf_run(setup.client, setup.server, setup.address, seconds)
                    runs[label].append(run)
                line = ", ".join(f"{label} {runs[label][-1].gbits:.2f}" for label in labels)
                print(f"  round {number + 1}: {line} Gbit/s (load {load_average()})")
        finally:
            cluster.close()
    reference = runs[REFERENCE]
    for label in labels:
        ratios = [run.gbits / ref.gbits for run, ref in zip(runs[label], reference, strict=True)]
        gbits = statistics.median(run.gbits for run in runs[label])
        cpu = statistics.median(run.cpu_per_gb for run in runs[label])
        goal = f" (goal >= {GOALS[label]:.2f}x)" if label in GOALS else ""
        print(
            f"  {label:<22} {gbits:6.2f} Gbit/s = {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}]{goal}; {cpu:.2f} CPU-s/GB"
        )


def etcd_usage(etcd: EtcdCluster) -> tuple[int, int]:
    """(keys, bytes of keys and values) under /keelnet/."""
    listed = json.loads(etcd.etcdctl("get", "--prefix", "/keelnet/", "-w", "json"))
    kvs = listed.get("kvs", [])
    size = sum(len(kv["key"]) * 3 // 4 + len(kv.get("value", "")) * 3 // 4 for kv in kvs)
    return len(kvs), size


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_scale(root: Path, hosts: int, endpoints: int) -> None:
    print(f"\n3. scale: {hosts} host processes x {endpoints} endpoints on one network (kernel)")
    with lab(root / "scale") as (prefix, segment, etcd):
        cluster = Cluster(etcd, root / "scale" / "hosts")
        connectors: list[Connector] = []
        try:
            creator = cluster.add_host(200)
            network = creator.create_network("ov", driver="overlay", subnet="10.70.0.0/16")
            started = time.perf_counter()
            for number in range(1, hosts + 1):
                netns = f"{prefix}-h{number}"
                make_host_ns(netns)
                segment.plug(netns, number)
                connectors.append(
                    Connector(netns, root / "scale" / netns, etcd.url, "ov", endpoints)
                )
            for connector in connectors:
                connector.go()
            for connector in connectors:
                connector.result()
            built = time.perf_counter() - started
            rss = [rss_mib(c.process.pid) for c in connectors]
            keys, size = etcd_usage(etcd)
            total = hosts * endpoints
            print(
                f"  built in {built:.0f} s; host process RSS median "
                f"{statistics.median(rss):.0f} MiB (max {max(rss):.0f}); "
                f"etcd: {keys} keys, {size / 1024:.0f} KiB = "
                f"{size / total:.0f} bytes per endpoint (endpoint records, pools, hosts)"
            )
            netns = f"{prefix}-h{hosts + 1}"
            make_host_ns(netns)
            segment.plug(netns, hosts + 1)
            started = time.perf_counter()
            newcomer = Connector(netns, root / "scale" / netns, etcd.url, "ov", 1)
            connectors.append(newcomer)
            newcomer.go()
            newcomer.result()
            table = overlay_ns(netns, network.id)
            while len(kernel_remote_macs(table)) < total and time.perf_counter() - started < 300:
                time.sleep(0.05)
            converged = time.perf_counter() - started
            print(
                f"  a new host converges (start, join, connect one sandbox, hold all {total} "
                f"remote endpoints in its kernel): {converged:.2f} s "
                f"(it holds {len(kernel_remote_macs(table))})"
            )
        finally:
            for connector in connectors:
                connector.request_stop()
            for connector in connectors:
                connector.wait()
            cluster.close()


def bench_failover(root: Path, kills: int) -> None:
    print(
        f"\n4. failover: SIGKILL of a host process -> its endpoints gone elsewhere "
        f"(TTL {LEASE_TTL} s)"
    )
    times = []
    with lab(root / "failover") as (prefix, segment, etcd):
        cluster = Cluster(etcd, root / "failover" / "hosts")
        try:
            watcher = cluster.add_host(1, lease_ttl=LEASE_TTL)
            network = watcher.create_network("ov", driver="overlay", subnet="10.80.0.0/16")
            box = cluster.sandbox(watcher, "w")
            watcher.connect("ov", box)
            table = overlay_ns(str(watcher.netns), network.id)
            for round_number in range(kills):
                netns = f"{prefix}-v{round_number}"
                make_host_ns(netns)
                segment.plug(netns, 100 + round_number)
                victim = Connector(netns, root / "failover" / netns, etcd.url, "ov", 5)
                victim.go()
                victim.result()
                while len(kernel_remote_macs(table)) < 5:
                    time.sleep(0.01)
                started = time.perf_counter()
                victim.process.kill()
                while kernel_remote_macs(table):
                    time.sleep(0.01)
                times.append(time.perf_counter() - started)
                victim.process.wait(timeout=10)
        finally:
            cluster.close()
    print(
        f"  {kills} kills: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
        f"(bound: TTL + 1 = {LEASE_TTL + 1} s)"
    )


def bench_names(root: Path, connects: int) -> None:
    print(f"\n5. connect on host B -> its name resolves on host A ({connects} connects)")
    with lab(root / "names") as (_prefix, _segment, etcd):
        cluster = Cluster(etcd, root / "names" / "hosts")
        try:
            a = cluster.add_host(1, lease_ttl=LEASE_TTL)
            b = cluster.add_host(2, lease_ttl=LEASE_TTL)
            a.create_network("ov", driver="overlay", subnet="10.0.0.0/16")
            asker = cluster.sandbox(a, "asker")
            a.connect("ov", asker)
            boxes = [cluster.sandbox(b, f"s{i}") for i in range(connects)]
            # Note when B's "ready" record went to etcd (what A's watch reacts to).
            scope, published = b._global, [0.0]
            assert scope is not None
            publish = scope.publish

            def publish_and_note(network: Network, endpoint: Endpoint) -> None:
                publish(network, endpoint)
                published[0] = time.perf_counter()

            scope.publish = publish_and_note  # type: ignore[method-assign]
            calls, totals, watched = [], [], []
            # A asks while B connects: the name may answer before B's connect() returns.
            with concurrent.futures.ThreadPoolExecutor(1) as asking:
                for box in boxes:
                    start = time.perf_counter()
                    answered = asking.submit(resolved_at, asker, box)
                    b.connect("ov", box)
                    calls.append(time.perf_counter() - start)
                    resolved = answered.result()
                    totals.append(resolved - start)
                    watched.append(resolved - published[0])
        finally:
            cluster.close()
    for label, samples in (
        ("B's connect() alone", calls),
        ("connect() called on B -> A's sandbox gets the address", totals),
        ("B's ready record written -> A's sandbox gets the address", watched),
    ):
        print(
            f"  {label:<56} p50 {statistics.median(samples) * 1e3:6.2f} ms, "
            f"p99 {percentile(samples, 99) * 1e3:6.2f} ms, max {max(samples) * 1e3:6.2f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--only", default="connect,throughput,scale,failover,names")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)")
        return 1
    only = set(args.only.split(","))
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="kn-bench-overlay-") as tmp:
        root = Path(tmp)
        if "connect" in only:
            bench_connect(root, args.connects)
        if "throughput" in only:
            bench_throughput(root, args.seconds, args.rounds)
        if "scale" in only:
            bench_scale(root, args.hosts, args.endpoints)
        if "failover" in only:
            bench_failover(root, args.kills)
        if "names" in only:
            bench_names(root, args.connects)
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
