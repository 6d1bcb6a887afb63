"""keelnet's IPAM behind Docker's `IpamDriver` protocol (`--ipam-driver keelnet`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keelnet.host import Host
from keelnet.ipam.allocator import Allocator
from keelnet.plugin.protocol import flag, string_map, text

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def held_in_the_cluster(host: Host) -> Callable[[str], set[str]]:
    """The addresses the cluster's endpoints hold in a subnet, when it is a global
    network's (a Docker overlay network's): keelnet's IPAM gives Docker's containers
    addresses clear of them, which CreateEndpoint then takes in the cluster store."""

    def held(subnet: str) -> set[str]:
        store = host.global_store
        if store is None:
            return set()
        for network in store.networks():
            if any(config.subnet == subnet for config in network.ipam):
                return set(store.addresses(network.id))
        return set()

    return held


class IpamDriverApi:
    """The `IpamDriver.*` methods over keelnet's allocator; JSON objects in and out."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetCapabilities": self.get_capabilities,
            "GetDefaultAddressSpaces": self.address_spaces,
            "RequestPool": self.request_pool,
            "ReleasePool": self.release_pool,
            "RequestAddress": self.request_address,
            "ReleaseAddress": self.release_address,
        }

    def get_capabilities(self, body: dict[str, Any]) -> dict[str, Any]:
        # The store keeps pools and addresses: dockerd need not replay them at its start.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, body: dict[str, Any]) -> dict[str, Any]:
        local, global_ = self.allocator.address_spaces()
        return {"LocalDefaultAddressSpace": local, "GlobalDefaultAddressSpace": global_}

    def request_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = self.allocator.request_pool(
            text(body, "AddressSpace"),
            text(body, "Pool", required=False) or None,
            text(body, "SubPool", required=False) or None,
            string_map(body, "Options"),
            flag(body, "V6"),
        )
        return {"PoolID": lease.pool_id, "Pool": lease.subnet, "Data": dict(lease.data)}

    def release_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        self.allocator.release_pool(text(body, "PoolID"))
        return {}

    def request_address(self, body: dict[str, Any]) -> dict[str, Any]:
        address = self.allocator.request_address(
            text(body, "PoolID"),
            text(body, "Address", required=False) or None,
            string_map(body, "Options"),
        )
        return {"Address": address, "Data": {}}

    def release_address(self, body: dict[str, Any]) -> dict[str, Any]:
        self.allocator.release_address(text(body, "PoolID"), text(body, "Address"))
        return {}
