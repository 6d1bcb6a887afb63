"""Docker's IPAM driver contract (libnetwork's `ipamapi`), which keelnet speaks both ways.

keelnet's own pools stand behind it as Docker's `--ipam-driver keelnet`
(:class:`keelnet.ipam.allocator.Allocator`), and a network of keelnet's own can take its
addresses from any Docker IPAM plugin through it (`keelnet network create --ipam-driver
PLUGIN`, :class:`keelnet.plugin.client.RemoteIpam`). The functions here do for such a
network what libnetwork does with an IPAM driver: a pool per address family, its gateway
and auxiliary addresses, then an address per endpoint.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from keelnet.errors import AddressOutOfRange, InvalidSubnet, KeelnetError
from keelnet.model import IpamConfig, Network

#: The address spaces keelnet's IPAM offers (the names Docker's built-in one uses).
LOCAL_SPACE = "LocalDefault"
GLOBAL_SPACE = "GlobalDefault"
#: `RequestAddress` options key and value with which libnetwork asks for a gateway.
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY = "com.docker.network.gateway"
#: A pool's `Data` may name its gateway under this key ("ip/len"); then none is requested.
GATEWAY_DATA = GATEWAY


@dataclass(frozen=True)
class PoolLease:
    """What `RequestPool` answers: an opaque id, the pool (CIDR) and driver data."""

    pool_id: str
    subnet: str
    data: Mapping[str, str]


class IpamDriver(Protocol):
    """The calls of Docker's IPAM driver protocol, errors raised as keelnet errors."""

    def address_spaces(self) -> tuple[str, str]:
        """(local default, global default) address space names."""
        ...

    def request_pool(
        self,
        address_space: str,
        pool: str | None,
        sub_pool: str | None,
        options: Mapping[str, str],
        v6: bool,
    ) -> PoolLease: ...

    def release_pool(self, pool_id: str) -> None: ...

    def request_address(
        self, pool_id: str, address: str | None, options: Mapping[str, str] | None
    ) -> str:
        """An address of the pool as "ip/len": `address`, or any free one."""
        ...

    def release_address(self, pool_id: str, address: str) -> None: ...


Undo = Callable[[], None]


def plan_network(
    driver: IpamDriver,
    *,
    subnets: list[str],
    ranges: list[str],
    gateways: list[str],
    aux: Mapping[str, str],
    versions: tuple[int, ...],
    options: Mapping[str, str],
) -> tuple[tuple[IpamConfig, ...], Undo]:
    """Pools, gateways and auxiliary addresses of a new network (a pool per IP version
    of `versions`), as libnetwork asks them of an IPAM driver; returns the network's IPAM
    configuration and the undo that gives all of it back."""
    undo: list[Undo] = []

    def give_back() -> None:
        for step in reversed(undo):
            with contextlib.suppress(KeelnetError):  # give back the rest whatever one says
                step()

    try:
        local_space, _ = driver.address_spaces()
        configs = []
        for version in versions:
            subnet = pick_family(subnets, version, "subnet")
            ip_range = pick_family(ranges, version, "ip range")
            if ip_range is not None and subnet is None:
                raise InvalidSubnet(f"ip range {ip_range} given without its subnet")
            lease = driver.request_pool(local_space, subnet, ip_range, options, version == 6)
            undo.append(functools.partial(driver.release_pool, lease.pool_id))
            pool = ipaddress.ip_network(lease.subnet, strict=False)
            gateway = pick_family(gateways, version, "gateway")
            if gateway is None and GATEWAY_DATA in lease.data:
                gateway = _address(lease.data[GATEWAY_DATA])  # the driver named it
            else:
                gateway = _address(
                    driver.request_address(lease.pool_id, gateway, {REQUEST_ADDRESS_TYPE: GATEWAY})
                )
                undo.append(functools.partial(driver.release_address, lease.pool_id, gateway))
            mine = {}
            for label, address in aux.items():
                if ipaddress.ip_address(address).version != version:
                    continue
                if ipaddress.ip_address(address) not in pool:
                    raise AddressOutOfRange(f"auxiliary address {label}={address} not in {pool}")
                driver.request_address(lease.pool_id, address, None)
                undo.append(functools.partial(driver.release_address, lease.pool_id, address))
                mine[label] = address
            configs.append(IpamConfig(str(pool), gateway, ip_range, mine, pool_id=lease.pool_id))
    except BaseException:
        give_back()
        raise
    return tuple(configs), give_back


def release_network(driver: IpamDriver, network: Network) -> None:
    """Give back a network's gateways, auxiliary addresses and pools; what is already
    given back is fine."""
    for config in network.ipam:
        if config.pool_id is None:
            continue
        for address in (config.gateway, *config.aux_addresses.values()):
            if address is not None:
                with contextlib.suppress(KeelnetError):
                    driver.release_address(config.pool_id, address)
        with contextlib.suppress(KeelnetError):
            driver.release_pool(config.pool_id)


def endpoint_addresses(
    driver: IpamDriver, network: Network, requested: Mapping[int, str]
) -> tuple[dict[int, str], Undo]:
    """An address of each of the network's pools (the one `requested` for its IP
    version, where given), and the undo that gives them back."""
    addresses: dict[int, str] = {}

    def give_back() -> None:
        release_endpoint(driver, network, addresses)

    try:
        for config in network.ipam:
            if config.pool_id is None:
                continue
            asked = requested.get(config.version)
            answer = driver.request_address(config.pool_id, asked, network.ipam_options)
            addresses[config.version] = _address(answer)
    except BaseException:
        give_back()
        raise
    return addresses, give_back


def release_endpoint(driver: IpamDriver, network: Network, addresses: Mapping[int, str]) -> None:
    for config in network.ipam:
        address = addresses.get(config.version)
        if config.pool_id is not None and address is not None:
            with contextlib.suppress(KeelnetError):  # already given back
                driver.release_address(config.pool_id, address)


def pick_family(values: list[str], version: int, what: str) -> str | None:
    """The first of `values` (addresses or CIDRs) of IP `version`."""
    for value in values:
        try:
            parsed = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidSubnet(f"invalid {what} {value!r}") from None
        if parsed.version == version:
            return value
    return None


def _address(cidr: str) -> str:
    """The address of "ip/len" (or of a bare "ip")."""
    try:
        return str(ipaddress.ip_interface(cidr).ip)
    except ValueError:
        raise InvalidSubnet(f"the IPAM driver answered {cidr!r}, not an address") from None
