"""Fixtures for the root-only namespace tests.

Every test gets a throwaway "host" namespace `kn-t-<random>` with its own state directory,
and an "outside" namespace joined to it by a veth underlay in 192.0.2.0/24 (TEST-NET-1).
The host namespace mirrors Docker's iptables: FORWARD policy DROP, a DOCKER-USER chain.
Nothing touches the machine's own interfaces. Everything is removed after the test, also
on failure: namespaces are deleted by their per-test prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterlab import Cluster, EtcdCluster, Segment
from netlab import Lab, build, remove_prefix

import keelnet
from keelnet import agent
from keelnet.plugin import protocol


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="netns tests need root (network namespaces, veth, nftables)")
    for item in items:
        if "tests/netns" in str(item.path):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_agent_outlives_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An agent that a test's command started and nothing stopped is a leak: killed here,
    and the run fails naming it."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    left = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "keelnet.cli" in argv and "agent" in argv and any(base in a for a in argv):
                left[int(entry.name)] = " ".join(argv)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"agents left running by the tests (now killed): {left}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    prefix = f"kn-t-{secrets.token_hex(3)}"
    the_lab = Lab(prefix, f"{prefix}-host", f"{prefix}-out", tmp_path / "state")
    try:
        build(the_lab)
        yield the_lab
    finally:
        try:
            stop_agent(the_lab)
        finally:
            remove_prefix(prefix)


def stop_agent(lab: Lab) -> None:
    """Stop the keelnet agent a test's commands started for the lab's host, if any: by
    request, else (it hangs) by SIGKILL to the pid it recorded."""
    try:
        agent.stop(lab.host, str(lab.state_dir), timeout=30)
    except Exception:
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads((lab.state_dir / agent.STATUS_NAME).read_text())
            os.kill(int(record["pid"]), signal.SIGKILL)


@pytest.fixture
def host(lab: Lab) -> Iterator[keelnet.Host]:
    the_host = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    try:
        yield the_host
    finally:
        try:
            for sandbox in the_host.sandboxes():
                the_host.remove_sandbox(sandbox.name)
            for network in the_host.networks():
                the_host.remove_network(network.name)
        finally:
            the_host.close()


# --- clusters: several test hosts and etcd, each in its own namespace -------------------


@pytest.fixture
def cluster_prefix() -> Iterator[str]:
    """A namespace prefix whose every namespace is removed after the test."""
    prefix = f"kn-c-{secrets.token_hex(3)}"
    try:
        yield prefix
    finally:
        remove_prefix(prefix)


@pytest.fixture
def underlay(cluster_prefix: str) -> Segment:
    """One L2 underlay segment, 192.0.2.0/24."""
    segment = Segment(cluster_prefix, "sw", "192.0.2.")
    segment.create()
    return segment


def _etcd(
    cluster_prefix: str, underlay: Segment, tmp_path: Path, size: int
) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(cluster_prefix, underlay, tmp_path / "etcd", size=size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # every member, also when the test failed


@pytest.fixture
def etcd(cluster_prefix: str, underlay: Segment, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd on the underlay (192.0.2.101)."""
    yield from _etcd(cluster_prefix, underlay, tmp_path, 1)


@pytest.fixture
def etcd3(cluster_prefix: str, underlay: Segment, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd on the underlay (192.0.2.101-103)."""
    yield from _etcd(cluster_prefix, underlay, tmp_path, 3)


@pytest.fixture
def cluster(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Cluster]:
    """keelnet hosts on the underlay, members of the one-member etcd."""
    with Cluster(etcd, tmp_path / "hosts") as the_cluster:
        yield the_cluster


@pytest.fixture
def cluster3(etcd3: EtcdCluster, tmp_path: Path) -> Iterator[Cluster]:
    """keelnet hosts on the underlay, members of the three-member etcd."""
    with Cluster(etcd3, tmp_path / "hosts") as the_cluster:
        yield the_cluster


@pytest.fixture
def plugin_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The socket directory keelnet's client looks in (spec directories: none)."""
    sockets = tmp_path / "plugins"
    sockets.mkdir()
    monkeypatch.setattr(protocol, "SOCKET_DIR", sockets)
    monkeypatch.setattr(protocol, "SPEC_DIRS", (tmp_path / "etc", tmp_path / "usr"))
    return sockets
