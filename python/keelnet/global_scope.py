"""A Host's global scope: its cluster store, its membership, its global networks.

What `Host` does for networks shared by the hosts of a cluster (overlay), kept here so
host.py stays the orchestrator: joining the cluster (the store, the lease and watch of
`ClusterMember`, the local VTEP address), creating a network with a cluster-wide VNI,
reserving and releasing endpoint addresses, remembering this host's own endpoints, and
reconciling them with its kernel after a restart (or, while it runs, after a network
was removed while it was cut off: `holds_part`, used by the Host's watch handler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import secrets
from collections.abc import Callable

from pyroute2.netlink.exceptions import NetlinkError

from keelnet import sandbox as netns_sandbox
from keelnet.cluster import ClusterMember, PeerProgrammer
from keelnet.drivers import get_driver, overlay
from keelnet.drivers.base import DATAPLANE_OPTION, Driver, HostContext, NetworkRequest
from keelnet.errors import (
    AddressInUse,
    AddressOutOfRange,
    Conflict,
    DuplicateNetwork,
    InvalidRequest,
    KeelnetError,
    StoreUnavailable,
)
from keelnet.ipam import AddressPool, SubnetPools
from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute
from keelnet.model import Endpoint, IpamConfig, Network, RemoteEndpoint, created_now
from keelnet.store import Store
from keelnet.store.etcd import VNI_OPTION, EtcdStore, lowest_free_vni, retry_on_conflict

#: Where overlay subnets are carved from when none is given (Docker's: 10.0.0.0/8 in /24s).
OVERLAY_DEFAULT_POOLS = [("10.0.0.0/8", 24)]

#: Plans a network's IPAM: (existing subnets, pools to carve from) -> configs, pools, carved.
PlanIpam = Callable[..., tuple[tuple[IpamConfig, ...], dict[int, AddressPool], list[str]]]


class _PeerProgrammer:
    """What the cluster watch calls to program remote endpoints into this host's planes,
    and their names into its DNS server (`names`): a name answers once its address is
    reachable, and goes before it is not."""

    def __init__(self, ctx: HostContext, names: PeerProgrammer) -> None:
        self._ctx = ctx
        self._names = names

    def add_peer(self, network: Network, peer: RemoteEndpoint) -> None:
        driver = get_driver(network.driver)
        try:
            if isinstance(driver, overlay.OverlayDriver):
                driver.add_peer(self._ctx, network, peer)
        finally:  # the watch counts it as added either way: its names follow that
            self._names.add_peer(network, peer)

    def remove_peer(self, network: Network, peer: RemoteEndpoint) -> None:
        driver = get_driver(network.driver)
        self._names.remove_peer(network, peer)
        if isinstance(driver, overlay.OverlayDriver):
            driver.remove_peer(self._ctx, network, peer)


class GlobalScope:
    """The cluster store at `url` for the host of `ctx`, as the member `name` (with a
    lease and a watch) unless `member` is False; the watch hands the other hosts'
    endpoints to `names` (the host's DNS) too."""

    def __init__(
        self,
        ctx: HostContext,
        url: str,
        *,
        name: str,
        advertise_address: str | None,
        member: bool,
        lease_ttl: int,
        names: PeerProgrammer,
    ) -> None:
        netns_sandbox.check_name(name, "host")
        self._ctx = ctx
        self.store = EtcdStore(url, host=name, netns_path=ctx.netns_path)
        self.cluster: ClusterMember | None = None
        #: A member's endpoints on global networks, reserved or ready (id -> network,
        #: endpoint), in the order they joined: only this process connects and disconnects
        #: them, so it knows them without asking etcd: a local operation works while etcd
        #: is away.
        self._joined: dict[str, tuple[Network, Endpoint]] = {}
        if not member:
            return
        try:
            vtep = advertise_address or self._source_address(self.store.client.endpoints[0][0])
            self.cluster = ClusterMember(
                self.store, vtep, _PeerProgrammer(ctx, names), lease_ttl=lease_ttl
            )
            self.cluster.start()
            self._joined = {e.id: (n, e) for n, e in self.cluster.own_endpoints()}
        except BaseException:
            self.store.close()
            raise
        ctx.cluster = self.cluster

    def close(self) -> None:
        """Leave the cluster (the lease goes at once) and close the store's connections."""
        if self.cluster is not None:
            self.cluster.close()
            self._ctx.cluster = None
        self.store.close()

    def _source_address(self, destination: str) -> str:
        """The address this namespace sends from towards `destination` (Docker's default
        advertise address)."""
        try:
            route = self._ctx.ipr.route("get", dst=destination)[0]
        except (NetlinkError, ValueError, IndexError) as exc:
            raise StoreUnavailable(
                f"no route to the etcd store at {destination}: {exc}; give advertise_address"
            ) from None
        source = route.get("prefsrc") or route.get_attr("RTA_PREFSRC")
        if not source:
            raise StoreUnavailable(
                f"no source address towards {destination}: give advertise_address"
            )
        return str(source)

    # --- networks ------------------------------------------------------------------------

    def create_network(
        self,
        the_driver: Driver,
        name: str,
        plan_ipam: PlanIpam,
        local_networks: list[tuple[str, str]],
        ipv6: bool,
        internal: bool,
        opts: dict[str, str],
        labels: dict[str, str],
        network_id: str | None = None,
    ) -> Network:
        """A network in the cluster store, its VNI taken cluster-wide (or the one pinned by
        `vxlanid_list`), its subnet overlapping no network of the cluster or of this host
        (`local_networks`: subnet, network name); nothing is built on any host until a
        sandbox joins there. `network_id`: the id to use (Docker's), else a new one."""
        the_driver.validate(self._ctx, NetworkRequest(name, opts, ipv6, internal))
        dataplane = the_driver.choose_dataplane(
            self._ctx, opts.get(DATAPLANE_OPTION, "auto"), options=opts
        )
        pinned = overlay.pinned_vni(opts)

        def attempt() -> Network:
            existing, revision = self.store.networks_at()
            if any(n.name == name for n in existing):
                raise DuplicateNetwork(f"network with name {name} already exists")
            used = self.store.used_vnis()
            if pinned is not None and pinned in used:
                owner = next((n.name for n in existing if n.id == used[pinned]), used[pinned])
                raise Conflict(
                    f"VNI {pinned} is already used by network {owner}: pick another "
                    f"{VNI_OPTION} or leave it out"
                )
            taken = [(ipaddress.ip_network(c.subnet), n.name) for n in existing for c in n.ipam]
            taken += [(ipaddress.ip_network(subnet), owner) for subnet, owner in local_networks]
            configs, pools, _ = plan_ipam(
                taken=taken, subnet_pools=SubnetPools(OVERLAY_DEFAULT_POOLS)
            )
            new_id = network_id or secrets.token_hex(32)
            if network_id is not None and any(n.id == network_id for n in existing):
                raise DuplicateNetwork(f"network with id {network_id} already exists")
            vni = pinned if pinned is not None else lowest_free_vni(used)
            network = Network(
                id=new_id,
                name=name,
                driver=the_driver.name,
                dataplane=dataplane,
                created=created_now(),
                ipam=configs,
                ipv6=ipv6,
                internal=internal,
                options={**opts, VNI_OPTION: str(vni)},
                labels=labels,
                kernel_name=None,
                scope="global",
            )
            self.store.add_network(network, pools, checked_at=revision)
            return network

        return retry_on_conflict(attempt)

    # --- endpoints -----------------------------------------------------------------------

    def reserve(
        self, network: Network, endpoint_id: str, sandbox: str, ifname: str, ip: str | None
    ) -> dict[int, str]:
        """Addresses for an endpoint of a global network, taken in the cluster store
        together with the endpoint's (not yet ready) record."""
        if self.cluster is None:
            raise InvalidRequest(
                f"connecting to {network.driver} network {network.name} needs this host in "
                "the cluster: keelnet.Host(store=...) or `keelnet --store ... agent`"
            )
        if ip is not None:
            try:
                version = ipaddress.ip_address(ip).version
            except ValueError:
                raise InvalidRequest(f"invalid IP address {ip!r}") from None
            if network.ipam_for(version) is None:
                raise AddressOutOfRange(f"{ip}: network {network.name} has no such subnet")
        placeholder = Endpoint(
            None, None, "", ifname, None, id=endpoint_id, network_id=network.id, sandbox=sandbox
        )
        try:
            addresses = self.store.reserve_endpoint(network, placeholder, ip, self.cluster.vtep)
        except AddressInUse:
            holder = self.store.holder(network.id, ip) if ip is not None else None
            if holder is None:
                raise
            raise AddressInUse(
                f"{ip} is already taken on network {network.name} by host {holder}"
            ) from None
        # Its interface name is taken from now on (a kn-gwbridge connect comes before
        # `publish`, which puts the whole endpoint in its place).
        self._joined[endpoint_id] = (network, placeholder)
        # No peer's record takes these addresses here from now on (nor one that did).
        self.cluster.hold(
            dataclasses.replace(placeholder, ip=addresses.get(4), ipv6=addresses.get(6))
        )
        return addresses

    def publish(self, network: Network, endpoint: Endpoint) -> None:
        """The endpoint's connect completed: mark it ready for the other hosts."""
        assert self.cluster is not None  # reserve() refused otherwise
        self.cluster.hold(endpoint)  # its MAC too
        self.store.publish_endpoint(endpoint, self.cluster.vtep)
        self._joined[endpoint.id] = (network, endpoint)

    def release(self, network: Network, endpoint_id: str, addresses: dict[int, str]) -> None:
        """Undo `reserve` (and `publish`)."""
        endpoint = Endpoint(addresses.get(4), addresses.get(6), "", "", None, id=endpoint_id)
        self.remove(dataclasses.replace(endpoint, network_id=network.id))

    def remove(self, endpoint: Endpoint) -> None:
        """The endpoint is gone from this host: its record and addresses go."""
        self.store.release_endpoint(endpoint)
        self._joined.pop(endpoint.id, None)
        if self.cluster is not None:
            self.cluster.let_go(endpoint.id)

    def joined(self, sandbox: str | None = None) -> list[tuple[Network, Endpoint]]:
        """This host's endpoints on global networks (of `sandbox`), with their networks:
        a member's as it remembers them, never asking etcd; a process that is no member
        reads them from the store."""
        if self.cluster is not None:
            found = list(self._joined.values())
        else:
            networks = {n.id: n for n in self.store.networks()}
            found = [
                (networks[e.network_id], e)
                for e in self.store.endpoints(sandbox=sandbox)
                if e.network_id in networks
            ]
        return [(n, e) for n, e in found if sandbox is None or e.sandbox == sandbox]

    def holds_part(self, network: Network) -> bool:
        """Whether this host holds anything of `network`: an endpoint, or its plumbing."""
        driver = get_driver(network.driver)
        if isinstance(driver, overlay.OverlayDriver) and driver.has_local_part(self._ctx, network):
            return True
        return any(joined.id == network.id for joined, _ in self._joined.values())

    def reconcile(self, local: Store, removed: dict[str, int]) -> None:
        """This host's endpoints on global networks against its kernel: release those
        whose connect never finished or whose sandbox or interface is gone; re-create
        the TAPs of userspace ones (they died with the process that served them); remove
        the namespaces of networks it has no endpoint on any more."""
        networks = {n.id: n for n in self.store.networks()}
        for endpoint, ready in self.store.endpoint_states():
            network = networks.get(endpoint.network_id)
            if network is None:
                continue
            driver = get_driver(network.driver)
            box = local.find_sandbox(endpoint.sandbox)
            path = box.path if box is not None and netns_sandbox.exists(box.path) else None
            if endpoint.handed_over:
                if ready and self._still_handed_over(network, endpoint, path, removed):
                    continue
            elif path is not None and ready:
                with iproute(path) as ipr:
                    if links.link_index(ipr, endpoint.ifname) is not None:
                        continue  # served: by the kernel, or by another running process
                if (
                    isinstance(driver, overlay.OverlayDriver)
                    and driver.local_dataplane(self._ctx, network) == "userspace"
                ):
                    try:
                        driver.create_endpoint(self._ctx, network, endpoint, path)
                        driver.join(self._ctx, network, endpoint, path)
                        removed["recreated"] += 1
                        continue
                    except KeelnetError:
                        pass  # cannot serve it here any more: release it below
            with contextlib.suppress(KeelnetError):
                driver.leave(self._ctx, network, endpoint, path)
                driver.delete_endpoint(self._ctx, network, endpoint)
            self.remove(endpoint)
            removed["endpoints"] += 1
        in_use = {e.network_id for e in self.store.endpoints()}
        removed["namespaces"] += overlay.OverlayDriver().remove_unused(self._ctx, in_use)

    def restore_guards(self) -> None:
        """Port security of this host's kernel parts of overlay networks back as the
        store says (a ruleset flushed by hand): member or not, as reconcile asks."""
        networks = {n.id: n for n in self.store.networks()}
        mine: dict[str, list[Endpoint]] = {}
        for endpoint in self.store.endpoints():
            mine.setdefault(endpoint.network_id, []).append(endpoint)
        for network_id, endpoints in mine.items():
            network = networks.get(network_id)
            driver = get_driver(network.driver) if network is not None else None
            if network is not None and isinstance(driver, overlay.OverlayDriver):
                driver.restore_guard(self._ctx, network, endpoints)

    def _still_handed_over(
        self,
        network: Network,
        endpoint: Endpoint,
        path: str | None,
        removed: dict[str, int],
    ) -> bool:
        """Whether an endpoint handed to its caller (Docker) is still served: its
        interface, found by its mark under whatever name the caller gave it, in its
        sandbox or (not joined yet) waiting in the host's namespace. A userspace one's
        TAP persists without carrier when the process that served it died: a new plane
        attaches to it, set up as the caller left it."""
        if endpoint.sandbox and path is None:
            return False  # the container's namespace went, and the interface with it
        where = path if endpoint.sandbox else self._ctx.netns_path
        with iproute(where) as ipr:
            found = links.endpoint_link(ipr, self._ctx.owner, network.id, endpoint.id)
            if found is None:
                return False
            if links.has_carrier(ipr, found):
                return True  # served: by the kernel, or by another running process
        driver = get_driver(network.driver)
        if not isinstance(driver, overlay.OverlayDriver):
            return True
        if driver.local_dataplane(self._ctx, network) != "userspace":
            return True  # a veth: the kernel serves it
        try:
            driver.create_endpoint(self._ctx, network, endpoint, path)
        except KeelnetError:
            return False
        removed["recreated"] += 1
        return True
