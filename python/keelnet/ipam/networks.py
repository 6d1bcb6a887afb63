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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from keelnet import checks
from keelnet.errors import (
    AddressInUse,
    AddressOutOfRange,
    GatewayOutsideSubnet,
    InvalidRequest,
    InvalidSubnet,
    KeelnetError,
    OverlappingSubnet,
)
from keelnet.ipam import AddressPool, SubnetPools, contract
from keelnet.model import DEFAULT_IPAM, EXTERNAL_IPAM, Endpoint, IpamConfig, Network
from keelnet.store import Store

Undo = Callable[[], None]
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
    `--ip-range`, `--aux-address`, `--ipv6`, `--ipam-driver`, `--ipam-opt`, `--ipv4`);
    `gateway_on_host`: the network's driver puts the gateway on a host device."""

    subnets: list[str]
    gateways: list[str]
    ranges: list[str]
    aux: dict[str, str]
    ipv6: bool
    gateway_on_host: bool
    driver: str = DEFAULT_IPAM
    options: Mapping[str, str] = field(default_factory=dict)
    ipv4: bool = True

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP versions the network has a subnet of."""
        return tuple(version for version, on in ((4, self.ipv4), (6, self.ipv6)) if on)


class NetworkAddresses:
    """The address management of one Host: its store, its namespace's addresses, and
    (`global_networks`) the cluster's networks, whose subnets local ones keep clear of."""

    def __init__(
        self, store: Store, ipr: IPRoute, global_networks: Callable[[], list[Network]]
    ) -> None:
        self.store = store
        self.ipr = ipr
        self._global_networks = global_networks

    # --- networks ------------------------------------------------------------------------

    def plan(self, request: Request, undo: list[Undo]) -> Plan:
        if request.driver == DEFAULT_IPAM:
            return self._plan_default(request)
        if request.driver == EXTERNAL_IPAM:
            if request.ranges:
                raise InvalidRequest("a network with external IPAM takes no ip range")
            return Plan(self._plan_external(request))
        _check_given_families(request, self._given_subnets(request))
        configs, give_back = contract.plan_network(
            remote(request.driver),
            subnets=request.subnets,
            ranges=request.ranges,
            gateways=request.gateways,
            aux=request.aux,
            versions=request.versions,
            options=request.options,
        )
        undo.append(give_back)
        self._check_free([ipaddress.ip_network(c.subnet) for c in configs], request)
        return Plan(configs)

    def plan_for_cluster(
        self,
        request: Request,
        *,
        taken: list[tuple[checks.IPNetwork, str]],
        subnet_pools: SubnetPools,
    ) -> tuple[tuple[IpamConfig, ...], dict[int, AddressPool], list[str]]:
        """A global network's subnets and pools (keelnet's IPAM), clear of `taken`
        (subnet, network name) and carved from the cluster's `subnet_pools`."""
        plan = self._plan_default(request, taken, subnet_pools)
        return plan.configs, plan.pools, plan.carved

    def _plan_default(
        self,
        request: Request,
        taken: list[tuple[checks.IPNetwork, str]] | None = None,
        subnet_pools: SubnetPools | None = None,
    ) -> Plan:
        requested = self._given_subnets(request)
        versions = request.versions
        _check_given_families(request, requested)
        by_gateway = checks.by_family(request.gateways, "gateway", network=False)
        by_range = checks.by_family(request.ranges, "ip range", network=True)
        existing = self._check_free(list(requested.values()), request, taken)
        own_pools = subnet_pools is None
        if subnet_pools is None:
            subnet_pools = self.store.subnet_pools()
        plan = Plan()
        for version in versions:
            if version not in requested:
                avoid = [str(e) for e in existing] + self.on_link_routes()
                text = subnet_pools.request(avoid=avoid, ipv6=version == 6)
                plan.carved.append(text)
                requested[version] = ipaddress.ip_network(text)
        if plan.carved and own_pools:
            self.store.save_subnet_pools(subnet_pools)
        configs: list[IpamConfig] = []
        for version, net in sorted(requested.items()):
            gateway, ip_range = by_gateway.get(version), by_range.get(version)
            if gateway is not None:
                if ipaddress.ip_address(gateway) not in net:
                    raise GatewayOutsideSubnet(f"gateway {gateway} is not inside subnet {net}")
            else:
                gateway = str(net.network_address + 1) if net.num_addresses > 2 else None
            mine = _aux_in(request.aux, version, net)
            plan.pools[version] = AddressPool(
                str(net), ip_range=ip_range, gateway=gateway, reserved=tuple(mine.values())
            )
            configs.append(IpamConfig(str(net), gateway, ip_range, mine))
        for label, address in request.aux.items():
            if checks.ip_version(address, "aux address") not in requested:
                raise AddressOutOfRange(f"auxiliary address {label}={address} fits no subnet")
        plan.configs = tuple(configs)
        return plan

    def _plan_external(self, request: Request) -> tuple[IpamConfig, ...]:
        """One given subnet per family, its gateway if any, auxiliary addresses inside."""
        requested = self._given_subnets(request)
        missing = next((v for v in request.versions if v not in requested), None)
        if missing is not None:
            raise InvalidSubnet(f"a network with external IPAM needs its IPv{missing} subnet")
        self._check_free(list(requested.values()), request)
        _check_given_families(request, requested)
        gateways = checks.by_family(request.gateways, "gateway", network=False)
        configs = []
        for version, net in sorted(requested.items()):
            gateway = gateways.get(version)
            if gateway is not None and ipaddress.ip_address(gateway) not in net:
                raise GatewayOutsideSubnet(f"gateway {gateway} is not inside subnet {net}")
            configs.append(IpamConfig(str(net), gateway, None, _aux_in(request.aux, version, net)))
        return tuple(configs)

    def _given_subnets(self, request: Request) -> dict[int, checks.IPNetwork]:
        """The subnets given, by IP version: one per family, IPv6 only when enabled."""
        requested: dict[int, checks.IPNetwork] = {}
        for text in request.subnets:
            net = checks.subnet(text, gateway_on_host=request.gateway_on_host)
            if net.version in requested:
                raise InvalidSubnet(
                    "keelnet networks take one subnet per address family: "
                    f"{requested[net.version]} and {net} given"
                )
            if net.version == 6 and not request.ipv6:
                raise InvalidSubnet(f"IPv6 subnet {text} given but IPv6 is not enabled")
            if net.version == 4 and not request.ipv4:
                raise InvalidSubnet(f"IPv4 subnet {text} given but IPv4 is disabled (--ipv4=false)")
            requested[net.version] = net
        return requested

    def _check_free(
        self,
        subnets: list[checks.IPNetwork],
        request: Request,
        taken: list[tuple[checks.IPNetwork, str]] | None = None,
    ) -> list[checks.IPNetwork]:
        """Refuse subnets overlapping another network's (`taken`, default: every network
        this host knows, local and global) or, where the gateway goes on a host device,
        holding one of the host's addresses; returns the subnets in use."""
        if taken is None:
            taken = [
                (ipaddress.ip_network(c.subnet), n.name)
                for n in [*self.store.networks(), *self._global_networks()]
                for c in n.ipam
            ]
        for net in subnets:
            for other, owner in taken:
                if net.version == other.version and net.overlaps(other):
                    raise OverlappingSubnet(
                        f"subnet {net} overlaps with {other} of network {owner}: choose a "
                        f"subnet outside it (or remove network {owner} first)"
                    )
            if request.gateway_on_host:
                self._check_host_addresses(net)
        return [subnet for subnet, _ in taken]

    def _check_host_addresses(self, net: checks.IPNetwork) -> None:
        """Refuse a subnet holding one of the host namespace's own addresses: the gateway
        on a host device would take over routing for it (and could be that address)."""
        for entry in self.ipr.addr("dump"):
            address = ipaddress.ip_address(str(entry.get("address")).split("%")[0])
            if address in net:
                device = self.ipr.link("get", index=entry["index"])[0].get("ifname")
                raise OverlappingSubnet(
                    f"subnet {net} holds {address}, an address of {device} in this "
                    "namespace: pick a subnet no host interface uses"
                )

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
        networks = [*self.store.networks(), *self._global_networks()]
        return [c.subnet for n in networks for c in n.ipam] + self.on_link_routes()

    # --- endpoints -----------------------------------------------------------------------

    def allocate(
        self, network: Network, requested: dict[int, str], undo: list[Undo]
    ) -> dict[int, str]:
        """A new endpoint's addresses (those `requested`, by IP version, where given); a
        remote IPAM driver's are given back by `undo` when the operation fails."""
        for version, address in requested.items():
            if network.ipam_for(version) is None:
                raise AddressOutOfRange(
                    f"{address}: network {network.name} has no IPv{version} subnet"
                )
        if network.ipam_driver != DEFAULT_IPAM:
            addresses, give_back = contract.endpoint_addresses(
                remote(network.ipam_driver), network, requested
            )
            undo.append(give_back)
            return addresses
        addresses = {}
        for config in network.ipam:
            pool = self.store.address_pool(network.id, config.version)
            if pool is None:
                continue
            addresses[config.version] = pool.allocate(requested.get(config.version))
            self.store.save_address_pool(network.id, config.version, pool)
        return addresses

    def given(self, network: Network, requested: dict[int, str]) -> dict[int, str]:
        """The creator's addresses for a new endpoint (external IPAM): inside the
        network's subnets and not another endpoint's."""
        taken = {a for e in self.store.endpoints(network_id=network.id) for a in (e.ip, e.ipv6)}
        addresses: dict[int, str] = {}
        for version, text in requested.items():
            config = network.ipam_for(version)
            if config is None:
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


def _aux_in(aux: Mapping[str, str], version: int, net: checks.IPNetwork) -> dict[str, str]:
    mine = {k: v for k, v in aux.items() if checks.ip_version(v, "aux address") == version}
    for label, address in mine.items():
        if ipaddress.ip_address(address) not in net:
            raise AddressOutOfRange(f"auxiliary address {label}={address} not in {net}")
    return mine


def _check_given_families(request: Request, subnets: Mapping[int, checks.IPNetwork]) -> None:
    """Refuse a gateway or IP range of an address family no given subnet has."""
    for what, values in (("gateway", request.gateways), ("IP range", request.ranges)):
        for value in values:
            version = checks.ip_version(value.partition("/")[0], what)
            if version not in subnets:
                article = "an" if what[0] in "AEIOU" else "a"
                raise InvalidSubnet(
                    f"{article} {what} needs a subnet: {value} was given without an "
                    f"IPv{version} subnet (give the subnet it belongs to as well)"
                )
