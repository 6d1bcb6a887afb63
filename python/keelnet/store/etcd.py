"""The etcd store: global-scope networks shared by the hosts of a cluster.

Keys (under ``/keelnet/``), JSON values unless said otherwise:

    networks/<id>                 the network (its VNI in its options, as Docker returns it)
    names/<name>                  network id: one network per name, cluster-wide
    vnis/<vni>                    network id: one network per VNI
    pools/<id>/<ip version>       the network's AddressPool, as its versioned bytes
    endpoints/<network id>/<id>   an endpoint: addresses, MAC, sandbox name, aliases, host
                                  and the host's VTEP
    hosts/<name>                  a live host and its VTEP address, under the host's lease

Every write that could collide with another host's is a compare-and-swap transaction:
a network is created only if its name and VNI are free and no network was added since
its subnet was checked for overlaps; an address is taken only if the pool is unchanged
since it was read (else read again and retry); a network is removed only if no endpoint
appeared since it was found free of live hosts' endpoints (the stale ones of hosts whose
lease expired are released first). An endpoint record is written together with its
address (`reserve_endpoint`), so a host that dies after that leaves a record naming it,
which its own reconcile removes, never an address nobody accounts for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from keelnet.errors import (
    AddressNotAllocated,
    CorruptState,
    DuplicateNetwork,
    NetworkInUse,
    PoolExhausted,
    StoreConflict,
)
from keelnet.ipam import AddressPool
from keelnet.model import Endpoint, IpamConfig, Network, Peer, RemoteEndpoint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from keelnet.store.etcd_client import KeyValue

# etcd_client is imported where used: it loads requests and etcd3gw (~0.1 s), which a host
# without a cluster store (its overlay driver reads VNI_OPTION from here) never needs.

PREFIX = "/keelnet/"
NETWORKS = PREFIX + "networks/"
NAMES = PREFIX + "names/"
VNIS = PREFIX + "vnis/"
POOLS = PREFIX + "pools/"
ENDPOINTS = PREFIX + "endpoints/"
HOSTS = PREFIX + "hosts/"
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
FIRST_VNI = 4096  # Docker's: keeps clear of 802.1Q VLAN ids
LAST_VNI = (1 << 24) - 1
_RETRIES = 200

T = TypeVar("T")


def network_to_json(network: Network) -> bytes:
    return json.dumps(dataclasses.asdict(network)).encode()


def network_from_json(data: bytes) -> Network:
    try:
        raw = json.loads(data)
        raw["ipam"] = tuple(IpamConfig(**c) for c in raw["ipam"])
        return Network(**raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptState(f"a network record in etcd cannot be read: {exc}") from None


def endpoint_record(endpoint: Endpoint, host: str, vtep: str, *, ready: bool) -> bytes:
    return json.dumps(
        {"endpoint": dataclasses.asdict(endpoint), "host": host, "vtep": vtep, "ready": ready}
    ).encode()


def endpoint_from_record(data: bytes) -> tuple[Endpoint, str, str, bool]:
    """(endpoint, host, vtep, ready) of an endpoint record."""
    try:
        raw = json.loads(data)
        fields = dict(raw["endpoint"])
        fields["aliases"] = tuple(fields.get("aliases", ()))
        return Endpoint(**fields), str(raw["host"]), str(raw["vtep"]), bool(raw["ready"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptState(f"an endpoint record in etcd cannot be read: {exc}") from None


def remote_endpoint(data: bytes) -> tuple[RemoteEndpoint, bool] | None:
    """The other hosts' view of an endpoint record (and whether it is ready); None when
    it has no IPv4 address to program. Its names are its sandbox's and its aliases (a
    record without them, or with a non-text one, has fewer: it still forwards)."""
    endpoint, host, vtep, ready = endpoint_from_record(data)
    if not endpoint.ip:
        return None
    # Docker's containers (handed over) are named by Docker's DNS, not keelnet's.
    handed_over = isinstance(endpoint.ifname, str) and endpoint.handed_over
    given = () if handed_over else (endpoint.sandbox, *endpoint.aliases)
    names = tuple(n for n in given if isinstance(n, str) and n)
    return (
        RemoteEndpoint(
            endpoint.id, endpoint.network_id, endpoint.ip, endpoint.mac, vtep, host, names
        ),
        ready,
    )


def vni_of(network: Network) -> int:
    return int(network.options[VNI_OPTION])


def lowest_free_vni(used: dict[int, str]) -> int:
    """The lowest VNI from 4096 up that no network uses."""
    vni = FIRST_VNI
    while vni in used:
        vni += 1
    if vni > LAST_VNI:
        raise PoolExhausted("no VNI is left in 4096-16777215")
    return vni


def retry_on_conflict(operation: Callable[[], T]) -> T:
    """Run a compare-and-swap operation until it wins (bounded; jittered back-off)."""
    for attempt in range(_RETRIES):
        try:
            return operation()
        except StoreConflict:
            time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
    raise StoreConflict(f"the etcd store kept changing under {_RETRIES} attempts; try again")


class EtcdStore:
    """The global-scope store of one host, `host` by name, in the cluster at `url`."""

    scope = "global"

    def __init__(self, url: str, *, host: str, netns_path: str | None = None) -> None:
        from keelnet.store.etcd_client import EtcdClient

        self.host = host
        self.client = EtcdClient(url, netns_path)

    @property
    def url(self) -> str:
        return self.client.url

    def close(self) -> None:
        self.client.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # Each write below is a transaction of its own (see the module's docstring).
        yield

    # --- networks ------------------------------------------------------------------------

    def networks_at(self) -> tuple[list[Network], int]:
        """Every global network, and the store's revision they were read at."""
        found, revision = self.client.range(NETWORKS, prefix=True)
        networks = sorted((network_from_json(kv.value) for kv in found), key=lambda n: n.name)
        return networks, revision

    def networks(self) -> list[Network]:
        return self.networks_at()[0]

    def find_network(self, name_or_id: str) -> Network | None:
        by_name = self.client.get(NAMES + name_or_id)
        network_id = by_name.value.decode() if by_name else name_or_id
        found = self.client.get(NETWORKS + network_id) if "/" not in network_id else None
        if found is not None:
            return network_from_json(found.value)
        if len(name_or_id) >= 12:  # Docker accepts an id prefix
            for network in self.networks():
                if network.id.startswith(name_or_id):
                    return network
        return None

    def used_vnis(self) -> dict[int, str]:
        """VNI → network id, for every VNI taken."""
        found, _ = self.client.range(VNIS, prefix=True)
        return {int(kv.key[len(VNIS) :]): kv.value.decode() for kv in found}

    def add_network(
        self, network: Network, pools: dict[int, AddressPool], *, checked_at: int
    ) -> None:
        """Create the network with its pools, if its name and VNI are free and no network
        appeared since revision `checked_at` (when its subnet was checked for overlaps).
        Raises DuplicateNetwork, or StoreConflict when something changed (check again)."""
        from keelnet.store.etcd_client import Compare, Txn

        vni = vni_of(network)
        txn = Txn(
            compares=[
                Compare(NAMES + network.name),
                Compare(VNIS + str(vni)),
                Compare(NETWORKS, prefix=True, below=checked_at + 1),
            ],
            puts=[
                (NETWORKS + network.id, network_to_json(network), 0),
                (NAMES + network.name, network.id.encode(), 0),
                (VNIS + str(vni), network.id.encode(), 0),
            ]
            + [(f"{POOLS}{network.id}/{v}", pool.to_bytes(), 0) for v, pool in pools.items()],
            deletes=[],
        )
        if self.client.txn(txn):
            return
        if self.client.get(NAMES + network.name) is not None:
            raise DuplicateNetwork(f"network with name {network.name} already exists")
        raise StoreConflict(f"VNI {vni} or the set of networks changed while creating one")

    def remove_network(self, network: Network) -> None:
        """Delete the network if no live host has an endpoint on it; else NetworkInUse
        naming those hosts. Endpoints of hosts that are not live (their lease expired, or
        they left) are stale, as Docker treats a departed node's: their records go with
        the network and its pools, in one transaction that holds only while no endpoint
        appeared and every stale host is still away (a host that came back keeps its
        endpoints and the network; releasing them one by one before would have handed
        its addresses out again). A stale host that comes back finds the network gone
        and removes its part of it (the cluster watch)."""
        from keelnet.store.etcd_client import Compare, Txn

        def attempt() -> None:
            found, revision = self.client.range(f"{ENDPOINTS}{network.id}/", prefix=True)
            records = [endpoint_from_record(kv.value) for kv in found]
            live = {peer.name for peer in self.peers()}
            in_use = sorted({host for _, host, _, _ in records if host in live})
            if in_use:
                named = ", ".join(f"{host} (up)" for host in in_use)
                raise NetworkInUse(
                    f"error while removing network: network {network.name} has active "
                    f"endpoints on host(s) {named}: disconnect them there first"
                )
            stale_hosts = sorted({host for _, host, _, _ in records})
            txn = Txn(
                compares=[
                    Compare(f"{ENDPOINTS}{network.id}/", prefix=True, below=revision + 1),
                    *(Compare(HOSTS + host) for host in stale_hosts),  # still away
                ],
                puts=[],
                deletes=[
                    NETWORKS + network.id,
                    NAMES + network.name,
                    VNIS + str(vni_of(network)),
                    f"{POOLS}{network.id}/4",
                    f"{POOLS}{network.id}/6",
                ],
                delete_prefixes=[f"{ENDPOINTS}{network.id}/"],  # the stale endpoints
            )
            if not self.client.txn(txn):
                raise StoreConflict("an endpoint or a host appeared while removing the network")

        retry_on_conflict(attempt)

    # --- addresses and endpoints ---------------------------------------------------------

    def _pool(self, network_id: str, version: int) -> tuple[AddressPool, KeyValue] | None:
        found = self.client.get(f"{POOLS}{network_id}/{version}")
        if found is None:
            return None
        return AddressPool.from_bytes(found.value), found

    def address_pool(self, network_id: str, version: int) -> AddressPool | None:
        found = self._pool(network_id, version)
        return found[0] if found else None

    def reserve_endpoint(
        self, network: Network, endpoint: Endpoint, ip: str | None, vtep: str
    ) -> dict[int, str]:
        """Take addresses for `endpoint` (`ip` if given) and record the endpoint, not yet
        ready, in one transaction; returns the addresses by IP version."""
        from keelnet.store.etcd_client import Compare, Txn

        def attempt() -> dict[int, str]:
            compares, puts, addresses = [], [], {}
            for config in network.ipam:
                found = self._pool(network.id, config.version)
                if found is None:
                    continue
                pool, kv = found
                wanted = ip if ip is not None and config.version == _version(ip) else None
                addresses[config.version] = pool.allocate(wanted)
                compares.append(Compare(kv.key, kv.mod_revision))
                puts.append((kv.key, pool.to_bytes(), 0))
            record = dataclasses.replace(
                endpoint, ip=addresses.get(4), ipv6=addresses.get(6), network_id=network.id
            )
            key = f"{ENDPOINTS}{network.id}/{endpoint.id}"
            compares.append(Compare(key))
            puts.append((key, endpoint_record(record, self.host, vtep, ready=False), 0))
            if not self.client.txn(Txn(compares, puts, [])):
                raise StoreConflict("the address pool changed")
            return addresses

        return retry_on_conflict(attempt)

    def publish_endpoint(self, endpoint: Endpoint, vtep: str) -> None:
        """Mark the endpoint ready (its interface is up): peers program it now."""
        self.client.put(
            f"{ENDPOINTS}{endpoint.network_id}/{endpoint.id}",
            endpoint_record(endpoint, self.host, vtep, ready=True),
        )

    def release_endpoint(self, endpoint: Endpoint) -> None:
        """Give the endpoint's addresses back and delete its record (both or neither);
        an endpoint already released is fine."""
        from keelnet.store.etcd_client import Compare, Txn

        def attempt() -> None:
            compares: list[Compare] = []
            puts: list[tuple[str, bytes, int]] = []
            for version, address in ((4, endpoint.ip), (6, endpoint.ipv6)):
                found = self._pool(endpoint.network_id, version)
                if address is None or found is None:
                    continue
                pool, kv = found
                with contextlib.suppress(AddressNotAllocated):
                    pool.release(address)
                compares.append(Compare(kv.key, kv.mod_revision))
                puts.append((kv.key, pool.to_bytes(), 0))
            key = f"{ENDPOINTS}{endpoint.network_id}/{endpoint.id}"
            if not self.client.txn(Txn(compares, puts, [key])):
                raise StoreConflict("the address pool changed")

        retry_on_conflict(attempt)

    def endpoints(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[Endpoint]:
        return [e for e, _ in self.endpoint_states(network_id=network_id, sandbox=sandbox)]

    def holder(self, network_id: str, address: str) -> str | None:
        """The host whose endpoint holds `address` on the network, if any does."""
        found, _ = self.client.range(f"{ENDPOINTS}{network_id}/", prefix=True)
        for kv in found:
            endpoint, host, _vtep, _ready = endpoint_from_record(kv.value)
            if address in (endpoint.ip, endpoint.ipv6):
                return host
        return None

    def addresses(self, network_id: str) -> list[str]:
        found, _ = self.client.range(f"{ENDPOINTS}{network_id}/", prefix=True)
        records = [endpoint_from_record(kv.value)[0] for kv in found]
        return [a for e in records for a in (e.ip, e.ipv6) if a is not None]

    def endpoint_states(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[tuple[Endpoint, bool]]:
        """This host's endpoints, each with whether its connect completed."""
        prefix = f"{ENDPOINTS}{network_id}/" if network_id else ENDPOINTS
        found, _ = self.client.range(prefix, prefix=True)
        mine = []
        for kv in found:
            endpoint, host, _vtep, ready = endpoint_from_record(kv.value)
            if host == self.host and (sandbox is None or endpoint.sandbox == sandbox):
                mine.append((endpoint, ready))
        return sorted(mine, key=lambda item: item[0].sandbox)

    # --- hosts ---------------------------------------------------------------------------

    def peers(self, network_id: str | None = None) -> list[Peer]:
        """The live hosts of the cluster (their lease holds), this one included; with
        `network_id`, those with endpoints on that network (Docker's `Peers`)."""
        found, _ = self.client.range(HOSTS, prefix=True)
        live = [Peer(kv.key[len(HOSTS) :], json.loads(kv.value)["vtep"]) for kv in found]
        if network_id is None:
            return live
        records, _ = self.client.range(f"{ENDPOINTS}{network_id}/", prefix=True)
        taking_part = {endpoint_from_record(kv.value)[1] for kv in records}
        return [peer for peer in live if peer.name in taking_part]

    def host_record(self, vtep: str) -> bytes:
        return json.dumps({"vtep": vtep}).encode()


def _version(address: str) -> int:
    return 6 if ":" in address else 4
