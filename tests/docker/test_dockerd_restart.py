"""dockerd restarted under running containers on a keelnet network.

This machine's dockerd is shared and started by the machine, not by the tests, so the
test starts a daemon of its own: its own roots and socket, `--live-restore` (containers
outlive the daemon, as in production setups that restart dockerd), no iptables, and a
default bridge of the test's (so it never touches docker0). keelnet's session plugin
serves both daemons.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerlab import DockerLab, Session, build_image, docker, ping, terminate
from pyroute2 import IPRoute


class PrivateDockerd:
    def __init__(self, root: Path, bridge: str) -> None:
        self.root = root
        self.host = f"unix://{root}/d.sock"
        self.argv = [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "-H",
            self.host,
            "--pidfile",
            str(root / "d.pid"),
            "--config-file",
            str(root / "daemon.json"),
            "--bridge",
            bridge,
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--live-restore",
            "--storage-driver",
            "vfs",
        ]
        (root / "daemon.json").write_text("{}")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()}")
            with contextlib.suppress(Exception):
                docker("info", "--format", "{{.ID}}", host=self.host, timeout=10)
                return
            time.sleep(0.3)
        raise TimeoutError("the private dockerd did not answer")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=60)
        self.process = None

    def remove(self) -> None:
        """Stop it, then what it left: processes started for it (its containerd, shims),
        mounts under its roots, the roots."""
        self.stop()
        for pid in _pids_mentioning(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for target in sorted((m.split()[1] for m in mounts), reverse=True):
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.fixture
def private_dockerd(docker_session: Session) -> Iterator[PrivateDockerd]:
    bridge = f"{docker_session.prefix}-d0"
    root = Path(tempfile.mkdtemp(prefix="kn-d", dir="/tmp"))  # short: socket paths
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
        index = ipr.link_lookup(ifname=bridge)[0]
        ipr.addr("add", index=index, address="10.213.250.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
    daemon = PrivateDockerd(root, bridge)
    try:
        daemon.start()
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            if daemon.process is not None:
                for name in docker("ps", "-aq", host=daemon.host).split():
                    docker("rm", "-f", name, host=daemon.host, check=False)
                for line in docker(
                    "network", "ls", "--format", "{{json .}}", host=daemon.host
                ).splitlines():
                    network = json.loads(line)
                    if network["Name"].startswith(docker_session.prefix):
                        docker("network", "rm", network["ID"], host=daemon.host, check=False)
        daemon.remove()
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=bridge)
            if found:
                ipr.link("del", index=found[0])


def test_dockerd_restart_keeps_containers_working(
    docker_session: Session, private_dockerd: PrivateDockerd
) -> None:
    lab = DockerLab(
        f"{docker_session.prefix}-restart",
        docker_session.plugin,
        docker_session.image,
        host=private_dockerd.host,
    )
    build_image(docker_session.image, host=private_dockerd.host)
    try:
        net = lab.network("net", "--subnet", "10.213.21.0/24")
        a = lab.run("a", "--network", net)
        b = lab.run("b", "--network", net)
        address_a, address_b = lab.address(a, net), lab.address(b, net)
        assert ping(lab, a, address_b)

        private_dockerd.stop()
        private_dockerd.start()

        # The containers lived on (live restore), and so did their keelnet network.
        assert lab.inspect("container", a)["State"]["Running"]
        assert ping(lab, a, address_b) and ping(lab, b, address_a)
        # Later requests, from the new daemon, work: a new container, a disconnect.
        c = lab.run("c", "--network", net)
        assert ping(lab, c, address_a)
        lab.docker("network", "disconnect", net, b)
        assert not ping(lab, a, address_b, count=1)
    finally:
        lab.cleanup()
