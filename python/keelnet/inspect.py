"""`docker network inspect`'s view of a network, from the store alone (no kernel access),
so that the CLI answers it without opening a Host."""

from __future__ import annotations

import ipaddress
from typing import Any

from keelnet import port_security
from keelnet.ipam import AddressPool
from keelnet.model import IpamConfig, Network
from keelnet.store import NetworkStore, Store

#: Docker reports address counts as uint64, saturated.
_UINT64_MAX = 2**64 - 1


def network_inspect(store: NetworkStore, network: Network, local: Store) -> dict[str, Any]:
    """The network as `store` (the host's `local` one, or the cluster's) holds it.
    `Containers`: this host's endpoints (Docker's swarm mode shows the local ones);
    `Peers`: for a global network, the hosts taking part."""
    endpoints = store.endpoints(network_id=network.id)
    status = {}
    allocated = store.addresses(network.id)  # by every host
    for config in network.ipam:
        pool = store.address_pool(network.id, config.version)
        if pool is not None:
            mine = [a for a in allocated if ipaddress.ip_address(a).version == config.version]
            status[config.subnet] = subnet_status(config, pool, mine)
    sandbox_ids = {box.name: box.id for box in local.sandboxes()}
    view = network.to_inspect(endpoints, status, sandbox_ids, store.peers(network.id))
    view["PortSecurity"] = port_security.holds(network)  # keelnet addition, as DataPlane
    return view


def subnet_status(config: IpamConfig, pool: AddressPool, allocated: list[str]) -> dict[str, int]:
    """Docker's `Status.IPAM.Subnets` entry: addresses in use in the subnet (reserved ones
    included), and those left to hand out in the range dynamic addresses come from
    (`--ip-range`, else the subnet), both saturating at 2^64 - 1 as Docker's do."""
    dynamic = ipaddress.ip_network(config.ip_range or config.subnet)
    in_use = {ipaddress.ip_address(a) for a in [*pool.reserved, *allocated]}
    in_range = sum(1 for address in in_use if address in dynamic)
    return {
        "IPsInUse": min(len(in_use), _UINT64_MAX),
        "DynamicIPsAvailable": min(dynamic.num_addresses - in_range, _UINT64_MAX),
    }
