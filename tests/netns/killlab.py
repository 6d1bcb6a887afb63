"""A SIGKILL campaign: keelnet processes killed at random instants, then an audit.

Workers (forked from the caller, so a start costs milliseconds) open a Host and run
random operations (create/remove network, one with a fixed bridge name; create/remove
sandbox; connect; disconnect; publish) until they are killed at a random instant: most
kills are timed from the moment the worker's Host is open, some from its fork, so they
also land in the open and the reconcile it runs. The schedule and the operations come
from one seed. The audit then reconciles and counts what a crash may have left:

- leaked links: a link in the host namespace or a sandbox that the store does not
  account for (beyond what the namespace had before the campaign),
- leaked namespaces: a namespace of the campaign's prefix the store does not hold,
- unusable sandboxes: a sandbox that cannot be connected to a new network,
- duplicate addresses: an IPv4 address configured in two sandboxes,
- broken endpoints: an endpoint of the store whose interface its sandbox lacks,
- unexpected errors: an operation that failed with anything but the refusals a random
  sequence meets (not found, duplicate, in use): e.g. "interface eth0 already exists".
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keelnet
from keelnet import errors
from keelnet.kernel.namespaces import NETNS_RUN_DIR, iproute, netns_path

NETWORKS = {"n0": "10.70.0.0/24", "n1": "10.71.0.0/24", "fixed": "10.72.0.0/24"}
SANDBOXES = 6
#: What a random sequence of operations meets by design: these are not failures.
EXPECTED = (
    errors.NotFound,
    errors.DuplicateNetwork,
    errors.DuplicateSandbox,
    errors.DuplicateEndpoint,
    errors.NetworkInUse,
    errors.PortInUse,
)


@dataclass
class Result:
    seed: int
    operations: int = 0
    kills: int = 0
    leaked_links: list[str] = field(default_factory=list)
    leaked_namespaces: list[str] = field(default_factory=list)
    unusable_sandboxes: list[str] = field(default_factory=list)
    duplicate_addresses: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    broken_endpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.operations} operations, {self.kills} kills in "
            f"{self.seconds:.0f} s; leaked links {len(self.leaked_links)}, leaked namespaces "
            f"{len(self.leaked_namespaces)}, unusable sandboxes "
            f"{len(self.unusable_sandboxes)}, duplicate addresses "
            f"{len(self.duplicate_addresses)}, broken endpoints {len(self.broken_endpoints)}, "
            f"unexpected errors {len(self.unexpected_errors)}"
        )

    @property
    def clean(self) -> bool:
        return not (
            self.leaked_links
            or self.leaked_namespaces
            or self.unusable_sandboxes
            or self.duplicate_addresses
            or self.unexpected_errors
            or self.broken_endpoints
        )


class Campaign:
    def __init__(self, host_ns: str, prefix: str, state_dir: Path, seed: int) -> None:
        self.host_ns = host_ns
        self.prefix = prefix
        self.state_dir = state_dir
        self.rng = random.Random(seed)
        self.result = Result(seed)
        self.sandboxes = [f"{prefix}-k{i}" for i in range(SANDBOXES)]
        self.fixed_bridge = f"{prefix}-fx"[-15:]
        self._baseline = _link_names(host_ns)

    def run(self, kills: int, *, max_delay: float = 0.15, budget: float = 600.0) -> Result:
        """`kills` kills (fewer when `budget` seconds run out), then the audit."""
        started = time.monotonic()
        while self.result.kills < kills and time.monotonic() - started < budget:
            self._one_life(max_delay)
        self.result.seconds = time.monotonic() - started
        self.audit()
        return self.result

    # --- the workers -----------------------------------------------------------------------

    def _one_life(self, max_delay: float) -> None:
        seed = self.rng.getrandbits(64)
        from_fork = self.rng.random() < 0.15
        delay = self.rng.uniform(0, 0.1 if from_fork else max_delay)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            status = 1
            try:
                os.close(read_end)
                self._work(seed, write_end)
            finally:
                os._exit(status)
        os.close(write_end)
        events = bytearray()
        try:
            if not from_fork:
                events += _read_until(read_end, b"R", deadline=time.monotonic() + 60)
            time.sleep(delay)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            events += _read_all(read_end)
            os.close(read_end)
        self.result.kills += 1
        for line in bytes(events).split(b"\n"):
            if line.startswith(b"X"):
                self.result.unexpected_errors.append(line[1:].decode(errors="replace"))
            else:
                self.result.operations += line.count(b".")

    def _work(self, seed: int, out: int) -> None:
        rng = random.Random(seed)
        try:
            host = keelnet.Host(netns=self.host_ns, state_dir=self.state_dir)
        except Exception as exc:  # reported, then the worker waits for its kill
            os.write(out, f"\nXopen: {type(exc).__name__}: {exc}\nR".encode())
            time.sleep(600)
            return
        os.write(out, b"R")
        operations = self._operations()
        while True:
            name, operation = rng.choice(operations)
            os.write(out, b".")  # one operation starts
            try:
                operation(host, rng)
            except EXPECTED:
                pass
            except Exception as exc:
                os.write(out, f"\nX{name}: {type(exc).__name__}: {exc}\n".encode())

    def _operations(self) -> list[tuple[str, Callable[[keelnet.Host, random.Random], object]]]:
        def network(rng: random.Random) -> str:
            return rng.choice(list(NETWORKS))

        def sandbox(rng: random.Random) -> str:
            return rng.choice(self.sandboxes)

        def create_network(host: keelnet.Host, rng: random.Random) -> object:
            name = network(rng)
            options = (
                {"com.docker.network.bridge.name": self.fixed_bridge} if name == "fixed" else {}
            )
            return host.create_network(name, subnet=NETWORKS[name], options=options)

        def publish(host: keelnet.Host, rng: random.Random) -> object:
            return host.publish(network(rng), sandbox(rng), rng.randrange(20000, 20050), 80)

        return [
            ("create network", create_network),
            ("remove network", lambda h, rng: h.remove_network(network(rng))),
            ("create sandbox", lambda h, rng: h.create_sandbox(sandbox(rng))),
            ("remove sandbox", lambda h, rng: h.remove_sandbox(sandbox(rng))),
            ("connect", lambda h, rng: h.connect(network(rng), sandbox(rng))),
            ("connect", lambda h, rng: h.connect(network(rng), sandbox(rng))),
            ("disconnect", lambda h, rng: h.disconnect(network(rng), sandbox(rng))),
            ("publish", publish),
        ]

    # --- the audit -------------------------------------------------------------------------

    def audit(self) -> None:
        result = self.result
        with keelnet.Host(netns=self.host_ns, state_dir=self.state_dir) as host:
            host.reconcile()
            expected = {n.kernel_name for n in host.networks() if n.kernel_name}
            expected |= {e.host_ifname for e in host.endpoints() if e.host_ifname}
            for name in sorted(_link_names(self.host_ns) - self._baseline - expected):
                result.leaked_links.append(f"{self.host_ns}: {name}")
            held = {box.name for box in host.sandboxes()}
            for name in sorted(os.listdir(NETNS_RUN_DIR)):
                if name.startswith(f"{self.prefix}-k") and name not in held:
                    result.leaked_namespaces.append(name)
            seen: Counter[str] = Counter()
            for box in host.sandboxes():
                ifnames = {e.ifname for e in host.endpoints() if e.sandbox == box.name}
                present = _link_names(box.name)
                for name in sorted(present - {"lo"} - ifnames):
                    result.leaked_links.append(f"{box.name}: {name}")
                for name in sorted(ifnames - present):
                    result.broken_endpoints.append(f"{box.name}: {name} is missing")
                seen.update(_ipv4_addresses(box.name))
            result.duplicate_addresses += sorted(a for a, n in seen.items() if n > 1)
            host.create_network("audit", subnet="10.79.0.0/24")
            for box in host.sandboxes():
                try:
                    host.connect("audit", box.name)
                    host.disconnect("audit", box.name)
                except errors.KeelnetError as exc:
                    result.unusable_sandboxes.append(f"{box.name}: {exc}")
            host.remove_network("audit")

    def clean_up(self) -> None:
        """Remove everything the campaign's store holds (its namespaces included)."""
        with keelnet.Host(netns=self.host_ns, state_dir=self.state_dir) as host:
            for box in host.sandboxes():
                host.remove_sandbox(box.name)
            for network in host.networks():
                host.remove_network(network.name)


def _link_names(netns: str) -> set[str]:
    with iproute(netns_path(netns)) as ipr:
        return {str(link.get("ifname")) for link in ipr.link("dump")}


def _ipv4_addresses(netns: str) -> list[str]:
    with iproute(netns_path(netns)) as ipr:
        found = [str(a.get("address")) for a in ipr.addr("dump", family=2)]
    return [a for a in found if not a.startswith("127.")]


def _read_until(fd: int, wanted: bytes, *, deadline: float) -> bytes:
    data = bytearray()
    while wanted not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            raise TimeoutError(f"no worker came up in time (saw {bytes(data)[-200:]!r})")
        data += chunk
    return bytes(data)


def _read_all(fd: int) -> bytes:
    data = bytearray()
    while chunk := os.read(fd, 65536):
        data += chunk
    return bytes(data)
