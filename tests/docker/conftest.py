"""Fixtures of the Docker suite: one plugin and one image per session, a lab per test.

The suite drives this machine's dockerd with keelnet serving as a network and IPAM
plugin in the root namespace. It skips, saying why, where no daemon answers. Sessions on
one machine take turns (a lock): they share dockerd and the root namespace. Whatever
happens, teardown removes the containers, networks and image the session made and stops
the plugin; it then checks that no kn- link, keelnet nftables table or plugin socket is
left behind.
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerlab import (
    DockerLab,
    Plugin,
    Session,
    build_image,
    docker,
    keelnet_tables,
    kn_links,
    machine_lock,
    why_no_docker,
)
from pyroute2 import IPRoute

#: The subnets the suite uses (tests take /24s and /64s in them); they must not touch
#: anything this machine routes.
SUBNETS = ("10.213.0.0/16", "fd42:6b6e:7400::/48")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/docker" in str(item.path):
            item.add_marker(pytest.mark.docker)


def _routed_clash() -> str | None:
    with IPRoute() as ipr:
        for route in ipr.route("dump"):
            if route["dst_len"] == 0:
                continue
            routed = ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
            for ours in map(ipaddress.ip_network, SUBNETS):
                if routed.version == ours.version and routed.overlaps(ours):
                    return f"this machine routes {routed}, which the Docker suite's {ours} touches"
    return None


@pytest.fixture(scope="session")
def docker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    reason = why_no_docker()
    if reason is not None:
        pytest.skip(reason)
    with machine_lock():
        clash = _routed_clash()
        if clash is not None:
            pytest.skip(clash)
        prefix = f"kn-t-{secrets.token_hex(3)}"
        links_before = kn_links()
        image = f"{prefix}-busybox:latest"
        state_dir = tmp_path_factory.mktemp("plugin-state")
        plugin = Plugin(prefix, state_dir, record=state_dir / "requests.jsonl")
        try:
            build_image(image)
            plugin.start()
            yield Session(prefix, plugin, image, itertools.count())
        finally:
            _remove_everything(prefix, plugin, image)
            left = {
                "links": sorted(kn_links() - links_before),
                "nftables": keelnet_tables(),
                "socket": plugin.socket.exists(),
            }
            assert left == {"links": [], "nftables": "", "socket": False}, left


def _remove_everything(prefix: str, plugin: Plugin, image: str) -> None:
    """Containers, then networks (the plugin must serve for those), then the rest."""
    try:
        if plugin.process is None:
            plugin.start()
        names = docker("ps", "-aq", "--filter", f"name={prefix}", check=False).split()
        if names:
            docker("rm", "-f", *names, check=False)
        for network in docker("network", "ls", "-q", "--filter", f"name={prefix}").split():
            docker("network", "rm", network, check=False)
    finally:
        plugin.stop()
        docker("rmi", "-f", image, check=False)


@pytest.fixture
def lab(docker_session: Session) -> Iterator[DockerLab]:
    session = docker_session
    the_lab = DockerLab(f"{session.prefix}-{next(session.counter)}", session.plugin, session.image)
    try:
        yield the_lab
    finally:
        if session.plugin.process is None:  # a test killed it: teardown needs it
            session.plugin.start()
        the_lab.cleanup()


@pytest.fixture
def state_dir(docker_session: Session) -> Path:
    return docker_session.plugin.state_dir
