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
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The overlay tests' etcd and test hosts come from the netns suite's lab.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "netns"))

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
        docker_before = _docker_state()
        image = f"{prefix}-busybox:latest"
        state_dir = tmp_path_factory.mktemp("plugin-state")
        plugin = Plugin(prefix, state_dir, record=state_dir / "requests.jsonl")
        default_bridge: list[bool] = []
        try:
            build_image(image)
            default_bridge.append(_default_bridge_works(prefix, image))
            plugin.start()
            yield Session(prefix, plugin, image, itertools.count())
        finally:
            # What the tests' own teardown left (docker ps -a, docker network ls)...
            left = {
                "containers": docker("ps", "-aq", "--filter", f"name={prefix}", check=False),
                "networks": docker("network", "ls", "-q", "--filter", f"name={prefix}"),
            }
            try:
                _remove_everything(prefix, plugin)
                # ...and Docker's own networking as it was: docker0, its networks (no
                # docker_gwbridge made), a container on its default bridge still works.
                if default_bridge:
                    works = _default_bridge_works(prefix, image)
                    left["default bridge works as before"] = works == default_bridge[0]
            finally:
                docker("rmi", "-f", image, check=False)
            left |= {
                "docker": _docker_state(),
                "links": sorted(kn_links() - links_before),
                "nftables": keelnet_tables(),
                "socket": plugin.socket.exists(),
            }
            clean = {"containers": "", "networks": "", "docker": docker_before, "links": []}
            clean |= {"nftables": "", "socket": False}
            if default_bridge:
                clean["default bridge works as before"] = True
            assert left == clean, left


def _remove_everything(prefix: str, plugin: Plugin) -> None:
    """Containers, then networks (the plugin must serve for those), then the plugin."""
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


def _docker_state() -> dict[str, object]:
    """Docker's networks (by name) and docker0's addresses: what keelnet must not touch."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname="docker0")
        docker0 = (
            sorted(f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=found[0]))
            if found
            else None
        )
    names = docker("network", "ls", "--format", "{{.Name}}").split()
    return {"networks": sorted(names), "docker0": docker0}


def _default_bridge_works(prefix: str, image: str) -> bool:
    """Whether a container on Docker's default `bridge` network reaches its gateway."""
    config = json.loads(docker("network", "inspect", "bridge", check=False) or "[{}]")[0]
    gateways = [c.get("Gateway") for c in (config.get("IPAM") or {}).get("Config") or []]
    if not gateways or not gateways[0]:
        return False
    argv = ["run", "--rm", "--network", "bridge", "--name", f"{prefix}-default-bridge", image]
    out = docker(*argv, "ping", "-c", "1", "-W", "2", gateways[0], check=False, timeout=60)
    return "1 packets received" in out


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
