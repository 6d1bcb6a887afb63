"""none: the sandbox keeps its loopback only."""

from __future__ import annotations

from keelnet.drivers.base import Driver, HostContext
from keelnet.model import Endpoint, Network


class NoneDriver(Driver):
    name = "none"
    uses_ipam = False
    gateway_route = False
    singleton = True

    def create_network(self, ctx: HostContext, network: Network) -> None:
        return

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        return

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        return

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        return

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        return

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        return
