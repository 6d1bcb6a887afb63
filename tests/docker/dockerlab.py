"""The Docker test lab: the test image, keelnet's plugin process, and containers and
networks that are removed whatever happens.

Everything made here is named `kn-t-<session>-...` (containers, networks, the image, the
plugin's name and socket), so teardown finds it all; the plugin runs in the root network
namespace beside dockerd, which is why sessions take a machine-wide lock first.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from keelnet.kernel.namespaces import iproute

PLUGIN_DIR = Path("/run/docker/plugins")
LOCK = Path("/run/lock/keelnet-docker-tests.lock")
#: What the test containers run: busybox's applets (sh, ping, httpd, wget, nc, ip...).
APPLETS_FROM = Path(shutil.which("busybox") or "/bin/busybox")


def docker(*argv: str, check: bool = True, timeout: float = 120, host: str | None = None) -> str:
    env = dict(os.environ)
    if host is not None:
        env["DOCKER_HOST"] = host
    result = subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise DockerError(argv, result.returncode, result.stderr.strip())
    return result.stdout.strip()


class DockerError(RuntimeError):
    def __init__(self, argv: Sequence[str], status: int, stderr: str) -> None:
        super().__init__(f"docker {' '.join(argv)} failed ({status}): {stderr}")
        self.stderr = stderr


def why_no_docker() -> str | None:
    """None when a Docker daemon answers here; else why the Docker tests cannot run."""
    if os.geteuid() != 0:
        return "the Docker tests need root (the plugin works in dockerd's namespace)"
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    try:
        docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except (DockerError, subprocess.TimeoutExpired) as exc:
        return f"no Docker daemon answers: {exc}"
    if not APPLETS_FROM.is_file():
        return f"{APPLETS_FROM} is missing (scripts/system-deps installs busybox-static)"
    return None


@contextlib.contextmanager
def machine_lock(timeout: float = 900) -> Iterator[None]:
    """One Docker test session at a time on this machine: they share dockerd and the
    root namespace (bounded wait)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK} stayed locked for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_image(tag: str, extra_binaries: Sequence[str] = (), host: str | None = None) -> None:
    """`docker import` a root filesystem of busybox with a link per applet, plus
    `extra_binaries` (with the shared libraries `ldd` lists for them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "lib", "tmp", "www", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(APPLETS_FROM, "bin/busybox")
        applets = subprocess.run(
            [str(APPLETS_FROM), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        added: set[str] = set()
        for binary in extra_binaries:
            tar.add(binary, f"bin/{Path(binary).name}")
            for library in _libraries(binary):
                if library not in added:  # the file itself where ldd names a link
                    added.add(library)
                    tar.add(os.path.realpath(library), library.lstrip("/"))
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    env = dict(os.environ)
    if host is not None:
        env["DOCKER_HOST"] = host
    subprocess.run(
        ["docker", "import", "--change", "ENV PATH=/bin", "--change", 'CMD ["/bin/sh"]', "-", tag],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
        timeout=120,
        env=env,
    )


def _libraries(binary: str) -> list[str]:
    """The shared objects a binary loads (its interpreter included), as `ldd` says."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        for part in line.split():
            if part.startswith("/") and os.path.exists(part):
                found.append(part)
    return found


@dataclass
class Plugin:
    """keelnet's plugin process, serving `name` from `state_dir` (a member of the cluster
    `store`, if one is set)."""

    name: str
    state_dir: Path
    record: Path | None = None
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    store: str | None = None

    @property
    def socket(self) -> Path:
        return PLUGIN_DIR / f"{self.name}.sock"

    def start(self, timeout: float = 60) -> None:
        command = [sys.executable, "-m", "keelnet.cli", "--state-dir", str(self.state_dir)]
        command += ["plugin", "--name", self.name]
        if self.record is not None:
            command += ["--record", str(self.record)]
        if self.store is not None:
            command += ["--store", self.store]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        banner = ""
        # The agent's line comes first, then the plugin's once it serves.
        while not banner.startswith("keelnet plugin: serving"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            line = self.process.stdout.readline() if ready else ""
            if not line:
                self.process.kill()
                _, err = self.process.communicate(timeout=30)
                self.process = None
                raise RuntimeError(f"the plugin did not start: {banner}{err}")
            banner = line

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=30)
        self.process = None


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@dataclass
class Session:
    """What a Docker test session shares: its name prefix, plugin and image."""

    prefix: str
    plugin: Plugin
    image: str
    counter: itertools.count[int]


@dataclass
class DockerLab:
    """Containers and networks of one test, all named `<prefix>-...`, removed at the end."""

    prefix: str
    plugin: Plugin
    image: str
    host: str | None = None  # DOCKER_HOST of a private daemon, None: the machine's
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def docker(self, *argv: str, check: bool = True, timeout: float = 120) -> str:
        return docker(*argv, check=check, timeout=timeout, host=self.host)

    def network(self, suffix: str, *options: str, driver: str | None = None) -> str:
        name = f"{self.prefix}-{suffix}"
        self.networks.append(name)
        self.docker("network", "create", "-d", driver or self.plugin.name, *options, name)
        return name

    def run(self, suffix: str, *options: str, command: Sequence[str] = ("sleep", "3600")) -> str:
        name = f"{self.prefix}-{suffix}"
        self.containers.append(name)
        self.docker("run", "-d", "--name", name, *options, self.image, *command)
        return name

    def exec(self, container: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
        return self.docker("exec", container, *argv, check=check, timeout=timeout)

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.docker(kind, "inspect", name))[0])

    def address(self, container: str, network: str, key: str = "IPAddress") -> str:
        settings = self.inspect("container", container)["NetworkSettings"]["Networks"]
        return str(settings[network][key])

    def cleanup(self) -> None:
        for name in reversed(self.containers):
            self.docker("rm", "-f", name, check=False)
        for name in reversed(self.networks):
            self.docker("network", "rm", name, check=False)
        self.containers.clear()
        self.networks.clear()


def ping(lab: DockerLab, container: str, address: str, count: int = 2) -> bool:
    """Whether `container` gets an answer from `address` (bounded: 2 s per probe)."""
    tool = "ping6" if ipaddress.ip_address(address).version == 6 else "ping"
    out = lab.docker(
        "exec", container, tool, "-c", str(count), "-W", "2", address, check=False, timeout=60
    )
    return f"{count} packets received" in out or f", {count} received" in out


def container_links(lab: DockerLab, container: str) -> dict[str, str]:
    """Interface name -> kind, as the kernel sees the container's namespace."""
    key = lab.inspect("container", container)["NetworkSettings"]["SandboxKey"]
    with iproute(key) as ipr:
        return {
            str(link.get("ifname")): str(link.get(("linkinfo", "kind")) or "")
            for link in ipr.link("dump")
        }


def kn_links() -> set[str]:
    """The names of the root namespace's links keelnet made (kn-...)."""
    with IPRoute() as ipr:
        return {
            str(link.get("ifname"))
            for link in ipr.link("dump")
            if str(link.get("ifname")).startswith("kn-")
        }


def keelnet_tables() -> str:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if "keelnet" in line)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
