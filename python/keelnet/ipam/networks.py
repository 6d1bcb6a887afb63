"""Where the addresses of a Host's networks come from.

A network's `ipam_driver` says which of three:

- `default`: keelnet's own. A bitmap pool per subnet, kept in the store; subnets not
  given are carved from the default pools around what the host routes and keelnet's
  other networks hold.
- `external`: the network's creator gives every subnet and every address (dockerd, when
  keelnet serves Docker as a plugin: its IPAM already ran).
- a Docker IPAM plugin's name: pools, gateways and addresses requested from it through
  Docker's IPAM contract (`keelnet.ipam.contract`).

The Host calls these inside its operation's store transaction; what a remote driver
handed out is given back by the undo steps the calls append.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from keelnet.errors import (
    AddressInUse,
    AddressOutOfRange,
    GatewayOutsideSubnet,
    InvalidRequest,
    InvalidSubnet,
    KeelnetError,
    OverlappingSubnet,
)
from keelnet.ipam import AddressPool, contract
from keelnet.ipam.contract import pick_family
from keelnet.model import DEFAULT_IPAM, EXTERNAL_IPAM, Endpoint, IpamConfig, Network
from keelnet.store import Store

Undo = Callable[[], None]
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network
_RT_SCOPE_LINK = 253
_RT_TABLE_MAIN = 254


@dataclass
class Plan:
    """A new network's subnets, with keelnet's pools for them and the subnets carved
    from the default pools (given back when the network goes)."""

    configs: tuple[IpamConfig, ...] = ()
    pools: dict[int, AddressPool] = field(default_factory=dict)
    carved: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    """A network's IPAM as its creator asked for it (Docker's `--subnet`, `--gateway`,
    `--ip-range`, `--aux-address`, `--ipv6`, `--ipam-driver`, `--ipam-opt`)."""

    subnets: list[str]
    gateways: list[str]
    ranges: list[str]
    aux: dict[str, str]
    ipv6: bool
    driver: str = DEFAULT_IPAM
    options: Mapping[str, str] = field(default_factory=dict)


class NetworkAddresses:
    """The address management of one Host: its store and its namespace's routes."""

    def __init__(self, store: Store, ipr: IPRoute) -> None:
        self.store = store
        self.ipr = ipr

    # --- networks ------------------------------------------------------------------------

    def plan(self, request: Request, undo: list[Undo]) -> Plan:
        if request.driver == DEFAULT_IPAM:
            return self._plan_default(request)
        if request.driver == EXTERNAL_IPAM:
            if request.ranges:
                raise InvalidRequest("a network with external IPAM takes no ip range")
            return Plan(self._plan_external(request))
        configs, give_back = contract.plan_network(
            remote(request.driver),
            subnets=request.subnets,
            ranges=request.ranges,
            gateways=request.gateways,
            aux=request.aux,
            ipv6=request.ipv6,
            options=request.options,
        )
        undo.append(give_back)
        self.check_overlap([ipaddress.ip_network(c.subnet) for c in configs])
        return Plan(configs)

    def _plan_default(self, request: Request) -> Plan:
        requested = _by_family(request.subnets, request.ipv6, strict=True)
        existing = self.check_overlap(list(requested.values()))
        subnet_pools = self.store.subnet_pools()
        plan = Plan()
        for version in (4, 6) if request.ipv6 else (4,):
            if version not in requested:
                avoid = [str(e) for e in existing] + self.on_link_routes()
                text = subnet_pools.request(avoid=avoid, ipv6=version == 6)
                plan.carved.append(text)
                requested[version] = ipaddress.ip_network(text)
        if plan.carved:
            self.store.save_subnet_pools(subnet_pools)
        configs: list[IpamConfig] = []
        for version, net in sorted(requested.items()):
            gateway = pick_family(request.gateways, version, "gateway")
            ip_range = pick_family(request.ranges, version, "ip range")
            if gateway is not None:
                try:
                    inside = ipaddress.ip_address(gateway) in net
                except ValueError:
                    raise InvalidSubnet(f"invalid gateway address {gateway!r}") from None
                if not inside:
                    raise GatewayOutsideSubnet(f"gateway {gateway} is not inside subnet {net}")
            else:
                gateway = str(net.network_address + 1) if net.num_addresses > 2 else None
            mine = _aux_in(request.aux, version, net)
            plan.pools[version] = AddressPool(
                str(net), ip_range=ip_range, gateway=gateway, reserved=tuple(mine.values())
            )
            configs.append(IpamConfig(str(net), gateway, ip_range, mine))
        for label, address in request.aux.items():
            if version_of(address) not in requested:
                raise AddressOutOfRange(f"auxiliary address {label}={address} fits no subnet")
        plan.configs = tuple(configs)
        return plan

    def _plan_external(self, request: Request) -> tuple[IpamConfig, ...]:
        """One given subnet per family, its gateway if any, auxiliary addresses inside."""
        requested = _by_family(request.subnets, request.ipv6, strict=False)
        if 4 not in requested or (request.ipv6 and 6 not in requested):
            missing = "IPv4" if 4 not in requested else "IPv6"
            raise InvalidSubnet(f"a network with external IPAM needs its {missing} subnet")
        self.check_overlap(list(requested.values()))
        configs = []
        for version, net in sorted(requested.items()):
            gateway = pick_family(request.gateways, version, "gateway")
            if gateway is not None and ipaddress.ip_address(gateway) not in net:
                raise GatewayOutsideSubnet(f"gateway {gateway} is not inside subnet {net}")
            configs.append(IpamConfig(str(net), gateway, None, _aux_in(request.aux, version, net)))
        return tuple(configs)

    def check_overlap(self, subnets: Sequence[Subnet]) -> list[Subnet]:
        """Refuse subnets overlapping another network's; returns the subnets in use."""
        existing = [ipaddress.ip_network(c.subnet) for n in self.store.networks() for c in n.ipam]
        for net in subnets:
            for other in existing:
                if net.version == other.version and net.overlaps(other):
                    raise OverlappingSubnet(
                        f"invalid pool request: subnet {net} overlaps with {other} of another "
                        "network"
                    )
        return existing

    def release_network(self, network: Network) -> None:
        """Give back what the network holds: a remote driver's pools, or the subnets
        carved for it from the default pools (before the store forgets it)."""
        if network.ipam_driver not in (DEFAULT_IPAM, EXTERNAL_IPAM):
            contract.release_network(remote(network.ipam_driver), network)
        carved = self.store.subnets_from_defaults(network.id)
        if carved:
            subnet_pools = self.store.subnet_pools()
            for subnet in carved:
                with contextlib.suppress(KeelnetError):  # already free: nothing to do
                    subnet_pools.release(subnet)
            self.store.save_subnet_pools(subnet_pools)

    def on_link_routes(self) -> list[str]:
        """The subnets this host reaches directly (IPv4 and IPv6), kept clear of."""
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in self.ipr.route("dump", family=family):
                destination = f"{route.get('dst')}/{route['dst_len']}"
                # IPv6 routes have no link scope: an on-link one is one without a gateway.
                on_link = (
                    route["scope"] == _RT_SCOPE_LINK
                    if family == socket.AF_INET
                    else route.get("gateway") is None
                )
                if (
                    on_link
                    and route["table"] == _RT_TABLE_MAIN
                    and route["dst_len"] > 0
                    and not ipaddress.ip_network(destination, strict=False).is_link_local
                ):
                    routes.append(destination)
        return routes

    def in_use(self) -> list[str]:
        """What carved pools keep clear of: the host's on-link routes and the subnets of
        keelnet's networks (keelnet's IPAM serving Docker asks this)."""
        return [c.subnet for n in self.store.networks() for c in n.ipam] + self.on_link_routes()

    # --- endpoints -----------------------------------------------------------------------

    def allocate(self, network: Network, ip: str | None, undo: list[Undo]) -> dict[int, str]:
        """A new endpoint's addresses (`ip` in its family, if given); a remote IPAM
        driver's are given back by `undo` when the operation fails."""
        wanted = version_of(ip) if ip is not None else None
        if ip is not None and network.ipam_for(wanted or 0) is None:
            raise AddressOutOfRange(f"{ip}: network {network.name} has no IPv{wanted} subnet")
        if network.ipam_driver != DEFAULT_IPAM:
            addresses, give_back = contract.endpoint_addresses(
                remote(network.ipam_driver), network, ip
            )
            undo.append(give_back)
            return addresses
        addresses = {}
        for config in network.ipam:
            pool = self.store.address_pool(network.id, config.version)
            if pool is None:
                continue
            addresses[config.version] = pool.allocate(ip if wanted == config.version else None)
            self.store.save_address_pool(network.id, config.version, pool)
        return addresses

    def given(self, network: Network, ip: str | None, ipv6: str | None) -> dict[int, str]:
        """The creator's addresses for a new endpoint (external IPAM): inside the
        network's subnets and not another endpoint's."""
        addresses: dict[int, str] = {}
        taken = {a for e in self.store.endpoints(network_id=network.id) for a in (e.ip, e.ipv6)}
        for version, text in ((4, ip), (6, ipv6)):
            if text is None:
                continue
            config = network.ipam_for(version)
            if version_of(text) != version or config is None:
                raise AddressOutOfRange(f"{text}: network {network.name} has no such subnet")
            address = ipaddress.ip_address(text)
            if address not in ipaddress.ip_network(config.subnet):
                raise AddressOutOfRange(f"{text} is not in {network.name}'s subnet {config.subnet}")
            if str(address) in taken:
                raise AddressInUse(f"{text} belongs to another endpoint of {network.name}")
            addresses[version] = str(address)
        return addresses

    def release(self, network: Network, endpoint: Endpoint) -> None:
        """Give the endpoint's addresses back to whoever allocated them."""
        if network.ipam_driver == EXTERNAL_IPAM:
            return
        held = {v: a for v, a in ((4, endpoint.ip), (6, endpoint.ipv6)) if a is not None}
        if network.ipam_driver != DEFAULT_IPAM:
            contract.release_endpoint(remote(network.ipam_driver), network, held)
            return
        for version, address in held.items():
            pool = self.store.address_pool(network.id, version)
            if pool is None:
                continue
            with contextlib.suppress(KeelnetError):  # already free: teardown is idempotent
                pool.release(address)
            self.store.save_address_pool(network.id, version, pool)


def remote(name: str) -> contract.IpamDriver:
    """Docker IPAM plugin `name`, found where dockerd finds it."""
    from keelnet.plugin.client import remote_ipam

    return remote_ipam(name)


def _by_family(subnets: list[str], ipv6: bool, *, strict: bool) -> dict[int, Subnet]:
    """The given subnets by IP version: one per family, IPv6 only when enabled."""
    requested: dict[int, Subnet] = {}
    for text in subnets:
        try:
            net = ipaddress.ip_network(text, strict=strict)
        except ValueError as exc:
            raise InvalidSubnet(f"invalid subnet {text}: {exc}") from None
        if net.version in requested:
            raise InvalidSubnet(
                "keelnet networks take one subnet per address family: "
                f"{requested[net.version]} and {net} given"
            )
        if net.version == 6 and not ipv6:
            raise InvalidSubnet(f"IPv6 subnet {text} given but IPv6 is not enabled")
        requested[net.version] = net
    return requested


def _aux_in(aux: Mapping[str, str], version: int, net: Subnet) -> dict[str, str]:
    mine = {k: v for k, v in aux.items() if version_of(v) == version}
    for label, address in mine.items():
        if ipaddress.ip_address(address) not in net:
            raise AddressOutOfRange(f"auxiliary address {label}={address} not in {net}")
    return mine


def version_of(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        raise InvalidRequest(f"invalid IP address {address!r}") from None
