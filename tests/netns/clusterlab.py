"""Several test hosts and an etcd cluster, each in its own namespace, on TEST-NET underlays.

A `Segment` is an L2 underlay: a namespace holding a bridge that host and etcd
namespaces plug into by veth. `EtcdCluster` runs 1 or 3 etcd members, each in its own
namespace on a segment, with per-test data directories; stopping it (also when a test
fails) kills every member it started. `route_between` joins two segments through a
router namespace (VXLAN over L3). Everything is named `<prefix>-...` so the fixture
removes it all by prefix. Host namespaces mirror Docker's iptables (FORWARD DROP).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netlab import DOCKER_RULES, create_ns, run_in

from keelnet import Host
from keelnet import agent as agents
from keelnet.dns import NETNS_ETC
from keelnet.drivers.overlay import OverlayPlane
from keelnet.errors import StoreUnavailable
from keelnet.kernel.namespaces import (
    bridges_skip_iptables,
    iproute,
    netns_path,
    write_sysctl,
)
from keelnet.model import Network
from keelnet.store.etcd import VNI_OPTION
from keelnet.store.etcd_client import EtcdClient

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


@dataclass
class Segment:
    """An L2 underlay: a bridge in namespace `<prefix>-<name>` that others plug into."""

    prefix: str
    name: str
    subnet_prefix: str  # "192.0.2." style, a /24
    ports: int = 0

    @property
    def netns(self) -> str:
        return f"{self.prefix}-{self.name}"

    def create(self) -> None:
        create_ns(self.netns)
        bridges_skip_iptables(netns_path(self.netns))  # the wire runs no host firewall
        with iproute(netns_path(self.netns)) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname="br0")[0], state="up")

    def plug(self, netns: str, host_number: int, ifname: str = "eth0") -> str:
        """A veth from `netns` (as `ifname`) into the bridge; returns its address."""
        address = f"{self.subnet_prefix}{host_number}"
        self.ports += 1
        port = f"p{self.ports}"
        with iproute(netns_path(self.netns)) as ipr:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": fd})
            finally:
                os.close(fd)
            index = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=index, master=ipr.link_lookup(ifname="br0")[0], state="up")
        write_sysctl(netns_path(netns), f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
        with iproute(netns_path(netns)) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=index, address=address, prefixlen=24)
            ipr.link("set", index=index, state="up")
        return address


def make_host_ns(netns: str) -> None:
    """A test host namespace with Docker's iptables (FORWARD policy DROP) and a
    resolv.conf naming no server: its sandboxes' DNS forwards nothing off the machine."""
    create_ns(netns)
    for rule in DOCKER_RULES:
        run_in(netns, "iptables", "-w", *rule.split())
    (NETNS_ETC / netns).mkdir(parents=True, exist_ok=True)
    (NETNS_ETC / netns / "resolv.conf").write_text("# keelnet test host: no upstream\n")


@contextlib.contextmanager
def cut_off(netns: str, ifname: str = "eth0") -> Iterator[None]:
    """The host namespace's underlay link down (no etcd, no VXLAN) until the block ends,
    also when it fails; its address stays, and its route comes back with the link."""
    with iproute(netns_path(netns)) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="down")
        try:
            yield
        finally:
            ipr.link("set", index=index, state="up")


def route_between(prefix: str, a: Segment, b: Segment) -> str:
    """A router namespace with a leg on each segment (.254); returns its name."""
    router = f"{prefix}-rt"
    create_ns(router)
    a.plug(router, 254, "eth0")
    b.plug(router, 254, "eth1")
    write_sysctl(netns_path(router), "net.ipv4.ip_forward", "1")
    return router


def default_route(netns: str, gateway: str) -> None:
    run_in(netns, "ip", "route", "add", "default", "via", gateway)


@dataclass
class EtcdMember:
    name: str
    netns: str
    address: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class EtcdCluster:
    """1 or 3 etcd members on `segment`, each in its own namespace."""

    prefix: str
    segment: Segment
    root: Path
    size: int = 1
    first_host_number: int = 101
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{m.address}:{ETCD_CLIENT_PORT}" for m in self.members)

    def start(self) -> None:
        for i in range(self.size):
            netns = f"{self.prefix}-etcd{i}"
            make_host_ns(netns)
            address = self.segment.plug(netns, self.first_host_number + i)
            self.members.append(EtcdMember(f"m{i}", netns, address, self.root / f"m{i}"))
        for i in range(self.size):
            self.start_member(i)
        self.wait_healthy()

    def start_member(self, i: int) -> None:
        member = self.members[i]
        member.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        peers = ",".join(f"{m.name}=http://{m.address}:{ETCD_PEER_PORT}" for m in self.members)
        argv = [
            "etcd",
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls=http://{member.address}:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://{member.address}:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://{member.address}:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://{member.address}:{ETCD_PEER_PORT}",
            f"--initial-cluster={peers}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.prefix}",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--log-level=error",
        ]
        log = (self.root / f"{member.name}.log").open("ab")
        member.process = subprocess.Popen(
            ["ip", "netns", "exec", member.netns, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop_member(self, i: int) -> None:
        member = self.members[i]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait(timeout=10)
        member.process = None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        client = EtcdClient(self.url, netns_path(self.members[0].netns))
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.put("/health-check", b"ok")
                    return
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        logs = "".join(
                            (self.root / f"{m.name}.log").read_text(errors="replace")[-2000:]
                            for m in self.members
                            if (self.root / f"{m.name}.log").exists()
                        )
                        raise RuntimeError(f"etcd did not become healthy:\n{logs}") from None
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        for i in range(len(self.members)):
            with contextlib.suppress(Exception):
                self.stop_member(i)
        shutil.rmtree(self.root, ignore_errors=True)

    def etcdctl(self, *argv: str) -> str:
        """Run etcdctl against the cluster from the first live member's namespace."""
        live = [m for m in self.members if m.process is not None]
        endpoints = ",".join(f"http://{m.address}:{ETCD_CLIENT_PORT}" for m in live)
        result = subprocess.run(
            ["ip", "netns", "exec", live[0].netns, "etcdctl", f"--endpoints={endpoints}", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {argv}: {result.stderr}")
        return result.stdout


class Cluster:
    """Test hosts (namespaces `<prefix>-h<n>`) on an underlay, each with a keelnet Host
    that is a member of the etcd cluster; `close()` removes their sandboxes, leaves."""

    def __init__(self, etcd: EtcdCluster, root: Path) -> None:
        self.etcd = etcd
        self.root = root
        self.hosts: dict[str, Host] = {}

    def add_host(self, number: int, segment: Segment | None = None, **options: object) -> Host:
        netns = f"{self.etcd.prefix}-h{number}"
        if not Path(netns_path(netns)).exists():
            make_host_ns(netns)
            (segment or self.etcd.segment).plug(netns, number)
        host = Host(netns=netns, state_dir=self.root / f"h{number}", store=self.etcd.url, **options)  # type: ignore[arg-type]
        self.hosts[netns] = host
        return host

    def sandbox(self, host: Host, name: str) -> str:
        """A sandbox namespace removed with the cluster prefix; returns its name."""
        full = f"{self.etcd.prefix}-{name}"
        host.create_sandbox(full)
        return full

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for netns, host in self.hosts.items():
            with contextlib.suppress(Exception):
                for box in host.sandboxes():
                    host.remove_sandbox(box.name)
            with contextlib.suppress(Exception):
                host.close()
            # An agent that a CLI command started for this host (a change starts one).
            with contextlib.suppress(Exception):
                agents.stop(netns, str(host.state_dir))
        self.hosts.clear()


def overlay_ns(host_netns: str, network_id: str) -> str:
    return f"{host_netns}-ov-{network_id[:10]}"


def links_in(netns: str) -> list[str]:
    """The names of the links in `netns`, sorted."""
    with iproute(netns_path(netns)) as ipr:
        return sorted(str(link.get("ifname")) for link in ipr.link("dump"))


def remote_macs(host: Host, net: Network) -> set[tuple[str, str]]:
    """(MAC, VTEP) of every remote endpoint the host's data plane holds for `net`,
    read from the kernel's vxlan FDB or from the userspace switch."""
    vni = int(net.options[VNI_OPTION])
    plane = host._ctx.planes.get(net.id)
    if isinstance(plane, OverlayPlane):
        return {(e["mac"], e["remote"]) for e in plane.switch.fdb(vni) if e.get("remote")}
    assert host.netns is not None
    return kernel_remote_macs(overlay_ns(host.netns, net.id))


def kernel_remote_macs(overlay_netns: str) -> set[tuple[str, str]]:
    """(MAC, VTEP) of the FDB entries of the vxlan device in a kernel overlay namespace."""
    if not Path(netns_path(overlay_netns)).exists():
        return set()
    found = set()
    for line in run_in(overlay_netns, "bridge", "fdb", "show").splitlines():
        words = line.split()
        if "dst" in words and words[2].startswith("kn-vx"):
            found.add((words[0], words[words.index("dst") + 1]))
    return found


def keelnet_cli(
    netns: str, state_dir: Path, store: str, *argv: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "keelnet.cli", "--netns", netns, "--state-dir"]
    command += [str(state_dir), "--store", store, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


class Agent:
    """`keelnet --store ... agent` for one test host, as a process of its own."""

    def __init__(self, netns: str, state_dir: Path, store: str, *options: str) -> None:
        self.netns, self.state_dir, self.store = netns, state_dir, store
        command = [sys.executable, "-m", "keelnet.cli", "--netns", netns, "--state-dir"]
        command += [str(state_dir), "--store", store, "agent", *options]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        banner = self.process.stdout.readline()
        if not banner.startswith("keelnet agent: serving"):
            self.kill()
            raise RuntimeError(banner + self.process.stderr.read())

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return keelnet_cli(self.netns, self.state_dir, self.store, *argv)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


PINGER = textwrap.dedent(
    """
    import json, socket, struct, sys, time
    dst, interval = sys.argv[1], float(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setblocking(False)
    def csum(b):
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF)
        return ~(t + (t >> 16)) & 0xFFFF
    import select, threading
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    sent = got = 0; last = time.monotonic(); gap = 0.0; seq = 0
    while not stop.is_set():
        seq = (seq + 1) & 0xFFFF
        hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4b4f, seq) + b"flow"
        s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr), 0x4b4f, seq) + b"flow", (dst, 0))
        sent += 1
        until = time.monotonic() + interval
        while time.monotonic() < until:
            r, _, _ = select.select([s], [], [], max(0, until - time.monotonic()))
            if not r: break
            data = s.recv(2048); icmp = data[(data[0] & 0x0F) * 4:]
            if icmp[0] == 0 and icmp[4:6] == struct.pack("!H", 0x4b4f):
                got += 1; now = time.monotonic(); gap = max(gap, now - last); last = now
    gap = max(gap, time.monotonic() - last)
    print(json.dumps({"sent": sent, "got": got, "max_gap": gap}))
    """
)


CONNECTOR = textwrap.dedent(
    """
    import dataclasses, json, sys
    from keelnet import Host
    netns, state_dir, store, network, count = sys.argv[1:6]
    host = Host(netns=netns, state_dir=state_dir, store=store, lease_ttl=3)
    boxes = [host.create_sandbox(f"{netns}-s{i}").name for i in range(int(count))]
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every host starts at once
    made = [dataclasses.asdict(host.connect(network, box)) for box in boxes]
    print(json.dumps({"vtep": host.cluster.vtep, "endpoints": made}), flush=True)
    sys.stdin.readline()  # "stop": stay a member until then
    for box in boxes:
        host.remove_sandbox(box)
    host.close()
    """
)


class Connector:
    """A process holding one test host's Host that connects `count` sandboxes on "go"."""

    def __init__(self, netns: str, state_dir: Path, store: str, network: str, count: int):
        self.process = subprocess.Popen(
            [sys.executable, "-c", CONNECTOR, netns, str(state_dir), store, network, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"connector for {netns} did not start")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("connector failed: " + str(self.process.wait(timeout=5)))
        return dict(json.loads(line))

    def stop(self) -> None:
        self.request_stop()
        self.wait()

    def request_stop(self) -> None:
        """Ask it to remove its sandboxes and leave (several can do so at once)."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.write("stop\n")
                self.process.stdin.flush()

    def wait(self) -> None:
        try:
            self.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
