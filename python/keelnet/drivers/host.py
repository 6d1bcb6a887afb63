"""host: the sandbox is the host's own network namespace; nothing is plumbed."""

from __future__ import annotations

import os

from keelnet.drivers.base import HostContext
from keelnet.drivers.none import NoneDriver
from keelnet.errors import InvalidRequest
from keelnet.kernel import links
from keelnet.model import Endpoint, Network


def _same_namespace(a: str, b: str) -> bool:
    first, second = os.stat(a), os.stat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


class HostDriver(NoneDriver):
    """Plumbs nothing, as `none` does; the sandbox must be the host's own namespace."""

    name = "host"

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        host_path = ctx.netns_path or links.OWN_NETNS
        if sandbox_path is None or not _same_namespace(host_path, sandbox_path):
            # Docker refuses this too: a container with its own namespace cannot share the
            # host's. Adopt the host namespace as the sandbox instead.
            raise InvalidRequest(
                f"sandbox {endpoint.sandbox!r} has its own network namespace; only a sandbox "
                "adopted from the host's namespace can join a host network"
            )
