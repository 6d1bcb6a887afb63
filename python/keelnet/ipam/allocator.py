"""keelnet's IPAM behind Docker's IPAM driver contract (`--ipam-driver keelnet`).

Pools are the requested subnet, or carved from keelnet's default pools (Docker's:
172.17-31.0.0/16, 192.168.0.0/16 in /20s, a ULA /48 in /64s) around every subnet the host
already routes or keelnet already uses; addresses come from keelnet's bitmap pools. All of
it lives in the host's store, so it survives restarts of the plugin and of dockerd (hence
`RequiresRequestReplay: false`). Identical requests for a subnet share one pool, counted,
as Docker's built-in driver does; requests that overlap an existing pool are refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Mapping

from keelnet.errors import (
    AddressNotAllocated,
    AddressOutOfRange,
    InvalidRequest,
    InvalidSubnet,
    KeelnetError,
    NotFound,
    OverlappingSubnet,
)
from keelnet.ipam import AddressPool
from keelnet.ipam.contract import GLOBAL_SPACE, LOCAL_SPACE, PoolLease
from keelnet.model import IpamPool
from keelnet.store import Store


class Allocator:
    """Docker's IPAM calls over `store`; `in_use()` lists the subnets (CIDR) the host
    routes or keelnet's networks hold, which carved pools keep clear of; `held_elsewhere`
    (subnet) the addresses other hosts hold in it (a global network's, in the cluster
    store), which addresses chosen here keep clear of."""

    def __init__(
        self,
        store: Store,
        in_use: Callable[[], list[str]],
        held_elsewhere: Callable[[str], set[str]] = lambda subnet: set(),
    ) -> None:
        self.store = store
        self._in_use = in_use
        self._held_elsewhere = held_elsewhere

    def address_spaces(self) -> tuple[str, str]:
        return LOCAL_SPACE, GLOBAL_SPACE

    def request_pool(
        self,
        address_space: str,
        pool: str | None,
        sub_pool: str | None,
        options: Mapping[str, str],
        v6: bool,
    ) -> PoolLease:
        if address_space not in (LOCAL_SPACE, GLOBAL_SPACE):
            raise InvalidRequest(
                f"unknown address space {address_space!r}: keelnet has {LOCAL_SPACE} and "
                f"{GLOBAL_SPACE}"
            )
        if sub_pool and not pool:
            raise InvalidSubnet(f"ip range {sub_pool} given without its subnet")
        with self.store.transaction():
            if pool:
                found = self._explicit(address_space, pool, sub_pool or None, v6)
            else:
                found = self._carved(address_space, v6)
            self.store.save_ipam_pool(found)
            return PoolLease(found.id, found.subnet, {})

    def _explicit(self, space: str, pool: str, sub_pool: str | None, v6: bool) -> IpamPool:
        subnet = _network(pool, "subnet")
        if (subnet.version == 6) != v6:
            raise InvalidSubnet(f"subnet {pool} is not an IPv{6 if v6 else 4} subnet")
        ip_range = None
        if sub_pool is not None:
            parsed = _network(sub_pool, "ip range")
            if parsed.version != subnet.version or not parsed.subnet_of(subnet):  # type: ignore[arg-type]
                raise InvalidSubnet(f"ip range {sub_pool} is not inside subnet {subnet}")
            ip_range = str(parsed)
        for existing in self.store.ipam_pools():
            if existing.address_space != space:
                continue
            other = ipaddress.ip_network(existing.subnet)
            if other == subnet and existing.sub_pool == ip_range:
                existing.refs += 1  # the same request again: Docker's drivers share it
                return existing
            if other.version == subnet.version and other.overlaps(subnet):
                raise OverlappingSubnet(
                    f"invalid pool request: pool {subnet} overlaps with pool {other} of "
                    "keelnet's IPAM"
                )
        addresses = AddressPool(str(subnet), ip_range=ip_range)
        pool_id = f"{space}/{subnet}" + (f"/{ip_range}" if ip_range else "")
        return IpamPool(pool_id, space, str(subnet), ip_range, v6, 1, False, addresses)

    def _carved(self, space: str, v6: bool) -> IpamPool:
        subnet_pools = self.store.subnet_pools()
        avoid = self._in_use() + [p.subnet for p in self.store.ipam_pools()]
        subnet = subnet_pools.request(avoid=avoid, ipv6=v6)
        self.store.save_subnet_pools(subnet_pools)
        return IpamPool(f"{space}/{subnet}", space, subnet, None, v6, 1, True, AddressPool(subnet))

    def release_pool(self, pool_id: str) -> None:
        """One reference less; the last one gives the pool back. An unknown id is a pool
        already given back (teardown is idempotent)."""
        with self.store.transaction():
            pool = self.store.ipam_pool(pool_id)
            if pool is None:
                return
            pool.refs -= 1
            if pool.refs > 0:
                self.store.save_ipam_pool(pool)
                return
            self.store.remove_ipam_pool(pool_id)
            if pool.from_defaults:
                subnet_pools = self.store.subnet_pools()
                with contextlib.suppress(KeelnetError):  # already free: nothing to do
                    subnet_pools.release(pool.subnet)
                self.store.save_subnet_pools(subnet_pools)

    def request_address(
        self, pool_id: str, address: str | None, options: Mapping[str, str] | None
    ) -> str:
        with self.store.transaction():
            pool = self._pool(pool_id)
            if address:
                parsed = ipaddress.ip_address(_checked_address(address))
                if parsed not in ipaddress.ip_network(pool.subnet):
                    raise AddressOutOfRange(f"{address} is not in pool {pool.subnet}")
            if address:
                given = pool.addresses.allocate(address)
            else:
                given = _allocate_clear_of(pool.addresses, self._held_elsewhere(pool.subnet))
            self.store.save_ipam_pool(pool)
            return f"{given}/{ipaddress.ip_network(pool.subnet).prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        """Give an address back; one not allocated (or of a pool given back) is fine."""
        with self.store.transaction():
            pool = self.store.ipam_pool(pool_id)
            if pool is None:
                return
            with contextlib.suppress(AddressNotAllocated, AddressOutOfRange):
                pool.addresses.release(_checked_address(address))
            self.store.save_ipam_pool(pool)

    def _pool(self, pool_id: str) -> IpamPool:
        pool = self.store.ipam_pool(pool_id)
        if pool is None:
            raise NotFound(f"keelnet's IPAM has no pool {pool_id!r}")
        return pool


def _allocate_clear_of(addresses: AddressPool, avoid: set[str]) -> str:
    """The pool's next free address that is not in `avoid`."""
    skipped = []
    try:
        while True:
            given = addresses.allocate(None)
            if given not in avoid:
                return given
            skipped.append(given)
    finally:
        for address in skipped:
            addresses.release(address)


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidSubnet(f"invalid {what} {text}: {exc}") from None


def _checked_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidRequest(f"invalid IP address {text!r}") from None
