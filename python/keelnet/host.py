"""Host: networks, sandboxes and endpoints of one network namespace.

Each public operation is one store transaction (`BEGIN IMMEDIATE`) held while the kernel is
changed. On failure the kernel steps done so far are undone in reverse order and the
transaction rolls back, so kernel and store are exactly as before. A process killed midway
commits nothing; what it left in the kernel carries the store's mark from the instant it
exists (`keelnet.kernel.ownership`) and is unreferenced, and the operation's entry in the
crash journal (`keelnet.store.journal`) stays behind. `reconcile()` removes such leftovers
and drops what the kernel lost; opening a Host runs it only when something calls for it
(a journal entry, a reboot or a new namespace since the last reconcile, a sandbox gone,
userspace networks to restart), so an open is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from keelnet import checks, dns
from keelnet import sandbox as netns_sandbox
from keelnet.drivers import _gateway, bridge, get_driver
from keelnet.drivers._userspace import PlaneHostContext
from keelnet.drivers.base import DATAPLANE_OPTION, Driver, NetworkRequest
from keelnet.errors import (
    AddressOutOfRange,
    Conflict,
    DuplicateEndpoint,
    DuplicateNetwork,
    DuplicateSandbox,
    EndpointNotFound,
    InvalidOption,
    InvalidRequest,
    KeelnetError,
    NetworkInUse,
    NetworkNotFound,
    PortInUse,
    SandboxNotFound,
    StateDirError,
    StoreUnavailable,
)
from keelnet.inspect import network_inspect
from keelnet.ipam.networks import NetworkAddresses, Plan
from keelnet.ipam.networks import Request as AddressRequest
from keelnet.kernel import iptables_compat, links, nftables, nftables_guard, ownership
from keelnet.kernel.namespaces import iproute, read_sysctl
from keelnet.kernel.ownership import Owner
from keelnet.kernel.rtnl import Rtnl
from keelnet.model import (
    DEFAULT_IPAM,
    EXTERNAL_IPAM,
    GATEWAY_BRIDGE_LABEL,
    HANDOVER_PREFIX,
    Endpoint,
    JoinInfo,
    Network,
    PortMapping,
    PortRequest,
    Sandbox,
    StaticRoute,
    created_now,
)
from keelnet.store import NetworkStore, PortTaken, Store, default_state_dir
from keelnet.store.claim import NamespaceClaim
from keelnet.store.journal import Entry, Journal
from keelnet.store.sqlite import DB_NAME, check_state_dir

if TYPE_CHECKING:  # a host with a cluster store imports them: requests, etcd3gw (~0.1 s)
    from keelnet.cluster import ClusterMember
    from keelnet.global_scope import GlobalScope
    from keelnet.store.etcd import EtcdStore

log = logging.getLogger(__name__)
Undo = Callable[[], None]
#: Docker's endpoint driver option that names the sandbox's interface.
ENDPOINT_IFNAME_OPTION = "com.docker.network.endpoint.ifname"
_ID = re.compile(r"[0-9a-f]{64}")
_EPOCH = "kernel_epoch"  # meta key: the boot and namespace the store last reconciled in
_RECONCILED = ("links", "sandbox_links", "endpoints", "sandboxes", "namespaces", "recreated")
#: The per-host bridge (and its network) that overlay sandboxes reach the outside by.
GATEWAY_BRIDGE = "kn-gwbridge"
_NAMESPACE = "netns"  # meta key: the path of the namespace the store manages ("": the caller's)


class Host:
    """keelnet's view of one network namespace (the caller's, or `netns`)."""

    def __init__(
        self,
        netns: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        serve_dns: bool = True,
        store: str | None = None,
        name: str | None = None,
        advertise_address: str | None = None,
        member: bool = True,
        lease_ttl: int | None = None,
        dataplane: str | None = None,
    ):
        """A host: `netns` (None: the caller's), its state in `state_dir`.

        `serve_dns=False`: this process runs no DNS server (the CLI's short-lived
        commands; the agent serves); sandboxes still get their resolv.conf.

        `store` (or `$KEELNET_STORE`): `etcd://HOST:PORT[,...]`, the cluster store that
        global-scope (overlay) networks live in; without it everything is local (SQLite).
        With it this Host is the cluster member `name` (default: the netns name, else the
        hostname) whose VTEP is `advertise_address` (default: this namespace's source
        address towards etcd); `member=False` only reads and writes the store (no lease,
        no peers: short-lived commands). `dataplane` (kernel or userspace) is what this
        host runs for global networks created with `dataplane=auto`."""
        if dataplane not in (None, "kernel", "userspace", "auto"):
            raise InvalidRequest(f"invalid dataplane {dataplane!r}: use kernel or userspace")
        self.netns = netns
        self.netns_path = netns_sandbox.host_path(netns)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(netns)
        check_state_dir(self.state_dir)
        if not (self.state_dir / DB_NAME).exists():  # refused before anything is made
            NamespaceClaim(netns, self.netns_path, None, self.state_dir).check()
        self.store = Store(self.state_dir)
        #: Held by each operation, and by the cluster watch while it takes down a network
        #: removed from the cluster (its thread): one at a time.
        self._lock = threading.RLock()
        self._exit = contextlib.ExitStack()
        self._exit.callback(self.store.close)
        try:
            self.owner = Owner(self.store.store_id)
            self._journal = Journal(self.state_dir)
            self._claim = NamespaceClaim(netns, self.netns_path, self.owner, self.state_dir)
            self._ipr: IPRoute = self._exit.enter_context(iproute(self.netns_path))
            self._rtnl = Rtnl(self.netns_path)
            self._exit.callback(self._rtnl.close)
            self._ctx = PlaneHostContext(self.netns_path, self._ipr, self._rtnl, self.owner)
            self._ctx.dataplane = dataplane
            self._addresses = NetworkAddresses(self.store, self._ipr, self._global_networks)
            # Userspace data planes run on this process's threads: they stop with the Host.
            self._exit.callback(self._ctx.planes.close_all)
            self._docker_compat = iptables_compat.DockerCompat(self.netns_path)
            self._applied_script: str | None = None  # the nft script last loaded here
            # The DNS resolver runs on this process's thread too: it stops with the Host.
            self._dns = dns.HostDns(self.store, netns, self.netns_path, serve=serve_dns)
            self._exit.callback(self._dns.close)
            self._check_store_namespace()
            self._claim.check()
            self._global: GlobalScope | None = None
            store = store or os.environ.get("KEELNET_STORE") or None
            if store:
                from keelnet.cluster import DEFAULT_LEASE_TTL
                from keelnet.global_scope import GlobalScope

                self._global = GlobalScope(
                    self._ctx,
                    store,
                    name=name or (Path(netns).name if netns else socket.gethostname()),
                    advertise_address=advertise_address,
                    member=member,
                    lease_ttl=DEFAULT_LEASE_TTL if lease_ttl is None else lease_ttl,
                    names=self._dns,
                )
                self._exit.callback(self._global.close)  # leaves before the planes stop
                self._dns.use_cluster(self._global)
            #: What the reconcile this open ran did (empty: none ran).
            self.reconciled_at_open: dict[str, int] = {}
            if self._needs_reconcile():
                self.reconciled_at_open = self.reconcile()
            elif self._global is not None and self.cluster is not None:
                # Its overlay endpoints: userspace ones to serve again, half-made ones.
                self._global.reconcile(self.store, dict.fromkeys(_RECONCILED, 0))
            self._dns.rebuild()
            if self.cluster is not None:  # removed networks noticed meanwhile wait for it
                self.cluster.on_network_gone = self._network_gone
        except BaseException:
            self.close()
            raise

    @property
    def global_store(self) -> EtcdStore | None:
        """The cluster store of global networks, if this Host has one."""
        return self._global.store if self._global else None

    @property
    def cluster(self) -> ClusterMember | None:
        """This host's membership of the cluster (lease, watch), if it is a member."""
        return self._global.cluster if self._global else None

    def close(self) -> None:
        nftables.close(self.netns_path)
        self._exit.close()

    def _check_store_namespace(self) -> None:
        """A store manages one namespace: another one's reconcile would find none of the
        store's objects there and drop them from the store."""
        recorded, here = self.store.meta(_NAMESPACE), self.netns_path or ""
        if recorded is not None and recorded != here and self.store.holds_anything():
            raise StateDirError(
                f"the keelnet store in {self.state_dir} manages the network namespace "
                f"{recorded or 'of the host'}, not {here or 'the host one'}: give each "
                "namespace a state directory of its own (--state-dir or KEELNET_STATE_DIR)"
            )

    def _needs_reconcile(self) -> bool:
        """Whether the kernel may not match the store (checked at open, cheaply)."""
        if self._journal.pending():
            return True  # an operation cut short, or under way in another process
        if not self.store.holds_anything():
            return False
        if self._claim.held is None or self.store.meta(_EPOCH) != self._kernel_epoch():
            return True  # a reboot, a new namespace, or our nftables tables flushed away
        if any(network.dataplane == "userspace" for network in self.store.networks()):
            return True  # their planes run in the process that holds the Host: start them
        return any(not os.path.exists(box.path) for box in self.store.sandboxes())

    def _kernel_epoch(self) -> str:
        """Names this boot and this namespace: when it changes, the kernel lost what the
        store made in it."""
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{self._rtnl.netns_cookie()}"

    def __enter__(self) -> Host:
        return self

    @property
    def resolver(self) -> dns.Resolver | None:
        """The embedded DNS resolver, once a network with DNS has an endpoint."""
        return self._dns.resolver

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- networks ------------------------------------------------------------------------

    def create_network(
        self,
        name: str,
        *,
        driver: str = "bridge",
        subnet: str | Sequence[str] | None = None,
        gateway: str | Sequence[str] | None = None,
        ip_range: str | Sequence[str] | None = None,
        aux_addresses: Mapping[str, str] | None = None,
        ipv6: bool = False,
        internal: bool = False,
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        ipam_driver: str = DEFAULT_IPAM,
        ipam_options: Mapping[str, str] | None = None,
        network_id: str | None = None,
        attachable: bool = False,
        ipv4: bool = True,
    ) -> Network:
        """Create a network; subnets are carved from the default pools when not given.

        `ipam_driver`: keelnet's own address management (`default`), a Docker IPAM plugin
        by name, or `external`: every subnet is given and every address is the caller's
        (dockerd's, when keelnet serves Docker; endpoints then come from
        `create_endpoint`). `network_id`: the id to use (Docker's), instead of a new one.
        `attachable` is Docker's flag, recorded and shown by inspect. `ipv4=False` (with
        `ipv6`): an IPv6-only network (Docker 28's `--ipv4=false`), for drivers that can.
        """
        netns_sandbox.check_name(name, "network")
        the_driver = get_driver(checks.text(driver, "driver"))
        opts = checks.string_map(options, "options")
        subnets = checks.text_list(subnet, "subnet")
        gateways = checks.text_list(gateway, "gateway")
        ranges = checks.text_list(ip_range, "ip_range")
        aux = checks.string_map(aux_addresses, "aux_addresses")
        label_map = checks.string_map(labels, "labels")
        ipam_opts = checks.string_map(ipam_options, "ipam_options")
        checks.text(ipam_driver, "ipam_driver")
        if network_id is not None and not _ID.fullmatch(checks.text(network_id, "network id")):
            raise InvalidRequest(f"invalid network id {network_id!r}: use 64 hex digits")
        for flag, value in (("ipv4", ipv4), ("ipv6", ipv6), ("internal", internal)):
            if not isinstance(value, bool):
                raise InvalidRequest(f"{flag} must be True or False, not {value!r}")
        if not ipv4:
            _check_ipv6_only(the_driver, ipv6)
        if the_driver.scope == "global":
            scope = self._require_global(the_driver.name)
            if self.store.find_network(name) is not None:
                raise DuplicateNetwork(f"network with name {name} already exists")
            if ipam_driver != DEFAULT_IPAM:
                raise InvalidRequest(
                    f"{the_driver.name} networks are global: keelnet's cluster store gives "
                    "their addresses (no IPAM driver)"
                )
            request = AddressRequest(subnets, gateways, ranges, aux, ipv6, gateway_on_host=False)
            plan_ipam = functools.partial(self._addresses.plan_for_cluster, request)
            local = [(c.subnet, n.name) for n in self.store.networks() for c in n.ipam]
            return scope.create_network(
                the_driver, name, plan_ipam, local, ipv6, internal, opts, label_map, network_id
            )
        with self._operation() as op:
            if self.store.find_network(name) is not None or self._global_named(name):
                raise DuplicateNetwork(f"network with name {name} already exists")
            if network_id is not None and self.store.find_network(network_id) is not None:
                raise DuplicateNetwork(f"network with id {network_id} already exists")
            if the_driver.singleton and any(
                n.driver == the_driver.name for n in self.store.networks()
            ):
                raise DuplicateNetwork(f"only one instance of {the_driver.name!r} can be created")
            the_driver.validate(self._ctx, NetworkRequest(name, opts, ipv6, internal))
            dataplane = the_driver.choose_dataplane(
                self._ctx, opts.get(DATAPLANE_OPTION, "auto"), options=opts
            )
            network_id = network_id or secrets.token_hex(32)
            plan = Plan()
            if the_driver.uses_ipam:
                request = AddressRequest(
                    subnets,
                    gateways,
                    ranges,
                    aux,
                    ipv6,
                    gateway_on_host=the_driver.gateway_on_host,
                    driver=ipam_driver,
                    options=ipam_opts,
                    ipv4=ipv4,
                )
                plan = self._addresses.plan(request, op.undo)
            elif subnets or gateways or ranges or aux or ipam_driver != DEFAULT_IPAM:
                raise InvalidRequest(f"driver {the_driver.name!r} takes no IPAM configuration")
            network = Network(
                id=network_id,
                name=name,
                driver=the_driver.name,
                dataplane=dataplane,
                created=created_now(),
                ipam=plan.configs,
                ipv6=ipv6,
                internal=internal,
                options=opts,
                labels=label_map,
                kernel_name=the_driver.kernel_name(network_id, opts),
                ipam_driver=ipam_driver if the_driver.uses_ipam else DEFAULT_IPAM,
                ipam_options=ipam_opts,
                attachable=attachable,
            )
            op.begin()
            the_driver.create_network(self._ctx, network)
            op.undo.append(lambda: the_driver.delete_network(self._ctx, network))
            self.store.add_network(network, plan.carved)
            for version, pool in plan.pools.items():
                self.store.save_address_pool(network_id, version, pool)
            self._sync_firewall(bridges_changed=True)
            return network

    def subnets_in_use(self) -> list[str]:
        """What carved pools keep clear of (keelnet's IPAM serving Docker asks this)."""
        with self._lock:  # not while the cluster watch lends the netlink socket its own
            return self._addresses.in_use()

    def _require_global(self, driver: str) -> GlobalScope:
        if self._global is None:
            raise InvalidRequest(
                f"{driver} networks are global: give a cluster store "
                "(keelnet --store etcd://HOST:PORT, $KEELNET_STORE, or Host(store=...))"
            )
        return self._global

    def _global_named(self, name: str) -> bool:
        return self.global_store is not None and self.global_store.find_network(name) is not None

    def _global_networks(self) -> list[Network]:
        return self.global_store.networks() if self.global_store is not None else []

    def remove_network(self, name: str) -> None:
        """Remove a network with no endpoints; one that does not exist is already removed.
        A global network is removed cluster-wide, refused while a live host has endpoints
        on it (those of hosts whose lease expired are stale and go with it)."""
        if self.store.find_network(name) is None and self.global_store is not None:
            found = self.global_store.find_network(name)
            if found is not None:
                with self._lock:  # the watch takes down what it sees removed, too
                    self.global_store.remove_network(found)
                    get_driver(found.driver).delete_network(self._ctx, found)  # this host's
                    self._dns.network_removed(found)
                return
        with self._operation(undoable=False) as op:
            network = self.store.find_network(name)
            if network is None:
                return
            if self.store.endpoints(network_id=network.id):
                raise NetworkInUse(
                    f"error while removing network: network {name} has active endpoints"
                )
            op.begin()
            get_driver(network.driver).delete_network(self._ctx, network)
            self._dns.network_removed(network)
            self._addresses.release_network(network)
            self.store.remove_network(network.id)
            self._sync_firewall(bridges_changed=True)
            self._release_if_empty()

    def _network_gone(self, network: Network) -> None:
        """The cluster watch saw the global `network` removed while this host may still
        hold a part of it (cut off from etcd past its lease, its endpoints were released
        as stale by the host that removed it): each of its endpoints here goes as a
        disconnect takes it (interface, DNS names, the sandbox's way out), then the
        network's plumbing. Idempotent; nothing happens where nothing is held."""
        scope = self._require_global(network.driver)
        with self._operation(undoable=False) as op:
            if not scope.holds_part(network):
                return  # the usual case: every host but those cut off while it went
            op.begin()
            mine = [endpoint for joined, endpoint in scope.joined() if joined.id == network.id]
            with self._netlink_of_this_thread():
                for endpoint in mine:
                    self._disconnect(network, endpoint)
                get_driver(network.driver).delete_network(self._ctx, network)
            self._dns.network_removed(network)
        log.warning(
            "keelnet: network %s was removed from the cluster while this host held a part "
            "of it: removed here, with %d endpoint(s) (%s)",
            network.name,
            len(mine),
            ", ".join(endpoint.sandbox or endpoint.id[:12] for endpoint in mine) or "none",
        )

    @contextlib.contextmanager
    def _netlink_of_this_thread(self) -> Iterator[None]:
        """The Host's pyroute2 socket serves only the thread that opened it: for work on
        another one (the cluster watch's, under `_lock`), one of that thread's own."""
        opened_by_host = self._ipr
        with iproute(self.netns_path) as ipr:
            self._ipr = self._ctx.ipr = self._addresses.ipr = ipr
            try:
                yield
            finally:
                self._ipr = self._ctx.ipr = self._addresses.ipr = opened_by_host

    def networks(self) -> list[Network]:
        """This host's local networks, then the cluster's global ones."""
        global_networks = self.global_store.networks() if self.global_store else []
        return self.store.networks() + global_networks

    def network(self, name: str) -> Network:
        network = self.store.find_network(name)
        if network is None and self.global_store is not None:
            network = self.global_store.find_network(name)
        if network is None:
            raise NetworkNotFound(f"network {name} not found")
        return network

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self.network(name)
        return network_inspect(self._store_for(network), network, self.store)

    def _store_for(self, network: Network) -> NetworkStore:
        if network.scope == "global":
            return self._require_global(network.driver).store
        return self.store

    def data_plane_running(self, network: Network) -> bool:
        """Whether this Host runs `network`'s userspace data plane."""
        return self._ctx.planes.get(network.id) is not None

    # --- sandboxes -----------------------------------------------------------------------

    def create_sandbox(self, name: str) -> Sandbox:
        """A new named network namespace with loopback up."""
        netns_sandbox.check_name(name)
        with self._operation() as op:
            if self.store.find_sandbox(name) is not None:
                raise DuplicateSandbox(f"sandbox {name} already exists")
            if os.path.exists(netns_sandbox.named_path(name)):
                # Checked before the journal names it: reconcile would delete a namespace
                # the journal names and the store does not hold.
                raise DuplicateSandbox(f"network namespace {name!r} already exists")
            op.begin(sandboxes=(name,))  # reconcile removes it if we die before commit
            path = netns_sandbox.create(name)
            op.undo.append(lambda: netns_sandbox.delete(path))
            sandbox = Sandbox(name, path, owned=True, id=secrets.token_hex(32))
            self.store.add_sandbox(sandbox)
            return sandbox

    def adopt_sandbox(self, name: str, path_or_pid: str | int) -> Sandbox:
        """Manage an existing namespace (a path, `ip netns` name or pid); never deleted."""
        netns_sandbox.check_name(name)
        path = netns_sandbox.resolve(path_or_pid)
        with self._operation() as op:
            if self.store.find_sandbox(name) is not None:
                raise DuplicateSandbox(f"sandbox {name} already exists")
            op.begin()  # the store will hold something: it claims the namespace
            sandbox = Sandbox(name, path, owned=False, id=secrets.token_hex(32))
            self.store.add_sandbox(sandbox)
            return sandbox

    def sandboxes(self) -> list[Sandbox]:
        return self.store.sandboxes()

    def sandbox(self, name: str) -> Sandbox:
        """A sandbox by name or id (or an id prefix of 12 digits or more)."""
        found = self.store.find_sandbox(name)
        if found is None:
            raise SandboxNotFound(f"no such sandbox: {name}")
        return found

    def _sandbox_name(self, name_or_id: str) -> str:
        """The name the store files a sandbox's endpoints and ports under."""
        found = self.store.find_sandbox(name_or_id)
        return found.name if found is not None else name_or_id

    def remove_sandbox(self, name: str) -> None:
        """Disconnect the sandbox everywhere and delete its namespace if keelnet made it."""
        with self._operation(undoable=False) as op:
            found = self.store.find_sandbox(name)
            if found is None:
                return
            op.begin()
            for endpoint in self._sandbox_endpoints(found.name):
                self._disconnect(self.network(endpoint.network_id), endpoint)
            if found.owned:
                netns_sandbox.delete(found.path)
            self.store.remove_sandbox(found.name)
            self._dns.sandbox_removed(name)
            self._release_if_empty()

    # --- endpoints -----------------------------------------------------------------------

    def connect(
        self,
        network: str,
        sandbox: str,
        *,
        ip: str | None = None,
        ipv6: str | None = None,
        mac: str | None = None,
        aliases: Sequence[str] = (),
        driver_options: Mapping[str, str] | None = None,
        gw_priority: int = 0,
    ) -> Endpoint:
        """Attach the sandbox to the network; returns its addresses (no prefix length).

        `ip`/`ipv6`: the addresses to take (any free one when not given); `gw_priority`:
        Docker's `--gw-priority`, which endpoint gives the sandbox its default routes;
        `driver_options`: `com.docker.network.endpoint.ifname` names the interface."""
        checks.text(network, "network")
        checks.text(sandbox, "sandbox")
        requested = _requested_addresses(ip, ipv6)
        mac = checks.mac(mac) if mac is not None else None
        names = checks.aliases(aliases)
        if isinstance(gw_priority, bool) or not isinstance(gw_priority, int):
            raise InvalidRequest(f"gw_priority must be an integer, not {gw_priority!r}")
        options = checks.string_map(driver_options, "driver options")
        wanted_ifname = options.pop(ENDPOINT_IFNAME_OPTION, None)
        if options:
            raise InvalidOption(
                f"unknown endpoint option(s) {', '.join(sorted(options))}: keelnet knows "
                f"{ENDPOINT_IFNAME_OPTION}"
            )
        with self._operation() as op:
            net = self.network(network)
            box = self.sandbox(sandbox)
            sandbox = box.name
            if not netns_sandbox.exists(box.path):
                raise SandboxNotFound(f"sandbox {sandbox}: its network namespace is gone")
            if self._store_for(net).endpoints(network_id=net.id, sandbox=sandbox):
                raise DuplicateEndpoint(f"sandbox {sandbox} is already connected to {net.name}")
            if net.ipam_driver == EXTERNAL_IPAM:
                raise InvalidRequest(
                    f"network {net.name} takes its addresses from its creator (Docker): "
                    "connect containers to it with `docker network connect`"
                )
            driver = get_driver(net.driver)
            if mac is not None and not driver.shares_parent_mac:
                self._check_mac_free(net, mac)
            endpoint_id = secrets.token_hex(32)
            ifname = self._endpoint_ifname(sandbox, wanted_ifname) if driver.uses_ipam else ""
            scope = self._require_global(net.driver) if net.scope == "global" else None
            if scope is not None:
                for version, address in requested.items():
                    if net.ipam_for(version) is None:
                        raise AddressOutOfRange(f"{address}: {net.name} has no IPv{version} subnet")
                ip = requested.get(4) or requested.get(6)
                addresses = scope.reserve(net, endpoint_id, sandbox, ifname, ip)
                # Until the connect completes, the reservation is undone on failure.
                op.undo.append(lambda: scope.release(net, endpoint_id, addresses))
            elif driver.uses_ipam:
                addresses = self._addresses.allocate(net, requested, op.undo)
            else:
                addresses = {}
            endpoint = self._endpoint(net, driver, endpoint_id, addresses, mac, ifname, sandbox)
            endpoint = dataclasses.replace(endpoint, aliases=names)
            op.begin()
            driver.create_endpoint(self._ctx, net, endpoint, box.path)
            op.undo.append(lambda: driver.delete_endpoint(self._ctx, net, endpoint))
            op.undo.append(lambda: driver.leave(self._ctx, net, endpoint, box.path))
            kept = driver.join(self._ctx, net, endpoint, box.path)
            if kept:
                endpoint = dataclasses.replace(endpoint, driver_data=dict(kept))
            if scope is not None:
                if not net.internal:
                    self._attach_gateway_bridge(sandbox, op.undo)
                scope.publish(net, endpoint)  # ready: the other hosts program it now
                op.undo.append(lambda: self._dns.endpoint_removed(net, endpoint))
                self._dns.endpoint_added(net, endpoint)
                return endpoint
            self.store.add_endpoint(endpoint)
            op.undo.append(lambda: self._dns.endpoint_removed(net, endpoint))
            self._dns.endpoint_added(net, endpoint)
            if gw_priority:
                self.store.set_gw_priority(sandbox, endpoint.id, gw_priority)
            # Put the sandbox's routes back as they were should anything after this fail.
            op.undo.append(lambda: self._route_sandbox(box, leaving=endpoint.id))
            self._route_sandbox(box)
            return endpoint

    def _endpoint(
        self,
        net: Network,
        driver: Driver,
        endpoint_id: str,
        addresses: Mapping[int, str],
        mac: str | None,
        ifname: str,
        sandbox: str,
    ) -> Endpoint:
        """A new endpoint of `net` with these addresses, before the driver plumbs it."""
        v4, v6 = net.ipam_for(4), net.ipam_for(6)
        routed = driver.uses_gateway(net) and not net.internal
        return Endpoint(
            ip=addresses.get(4),
            ipv6=addresses.get(6),
            mac=(
                driver.endpoint_mac(self._ctx, net, mac, addresses.get(4))
                if driver.uses_ipam
                else ""
            ),
            ifname=ifname,
            gateway=v4.gateway if v4 and routed else None,
            ipv6_gateway=v6.gateway if v6 and routed else None,
            id=endpoint_id,
            network_id=net.id,
            sandbox=sandbox,
            host_ifname=(
                links.veth_host_end(endpoint_id)
                if net.kernel_name and net.dataplane == "kernel"
                else None
            ),
        )

    def _attach_gateway_bridge(self, sandbox: str, undo: list[Undo]) -> None:
        """Give a sandbox on a global network its way out: the host's `kn-gwbridge`
        network (made on first use: a bridge with NAT whose sandboxes cannot reach each
        other), as Docker's docker_gwbridge. The sandbox's default route goes there."""
        if self.store.find_network(GATEWAY_BRIDGE) is None:
            self.create_network(
                GATEWAY_BRIDGE,
                options={bridge.NAME: GATEWAY_BRIDGE, bridge.ICC: "false"},
                labels={GATEWAY_BRIDGE_LABEL: "true"},
            )
            undo.append(lambda: self.remove_network(GATEWAY_BRIDGE))
        if not self.store.endpoints(network_id=self.network(GATEWAY_BRIDGE).id, sandbox=sandbox):
            self.connect(GATEWAY_BRIDGE, sandbox)
            undo.append(lambda: self.disconnect(GATEWAY_BRIDGE, sandbox))

    def _sandbox_endpoints(self, sandbox: str) -> list[Endpoint]:
        """The sandbox's endpoints on local and global networks."""
        found = self.store.endpoints(sandbox=sandbox)
        if self._global is not None:
            found += [endpoint for _, endpoint in self._global.joined(sandbox)]
        return found

    def _check_mac_free(self, network: Network, mac: str) -> None:
        """Refuse a MAC another endpoint of the network, or its host device, carries: two
        interfaces with one MAC on a segment take each other's frames."""
        for endpoint in self.store.endpoints(network_id=network.id):
            if endpoint.mac == mac:
                raise Conflict(
                    f"MAC address {mac} is already used by {endpoint.sandbox} on {network.name}"
                )
        devices = [network.kernel_name, network.options.get("parent", "").partition(".")[0]]
        for device in filter(None, devices):
            index = links.link_index(self._ipr, device)
            found = self._ipr.link("get", index=index)[0].get("address") if index else None
            if found == mac:
                raise Conflict(f"MAC address {mac} is the address of {device}, {network.name}'s")

    def _endpoint_ifname(self, sandbox: str, wanted: str | None) -> str:
        used = {e.ifname for e in self._sandbox_endpoints(sandbox)}
        if wanted is None:
            return next(f"eth{n}" for n in range(len(used) + 1) if f"eth{n}" not in used)
        links.check_ifname(wanted, ENDPOINT_IFNAME_OPTION, InvalidOption)
        if wanted in used:
            raise Conflict(f"sandbox {sandbox} already has an interface {wanted}")
        return wanted

    def _route_sandbox(self, box: Sandbox, leaving: str | None = None) -> None:
        """Give the sandbox the default routes Docker's order picks among its endpoints
        (`leaving`: an endpoint to leave out, one on its way out)."""
        current = self.store.find_sandbox(box.name)
        if current is None or not netns_sandbox.exists(current.path):
            return
        candidates = []
        for endpoint in self.store.endpoints(sandbox=current.name):
            if endpoint.id == leaving or not endpoint.ifname:
                continue
            network = self.network(endpoint.network_id)
            via4, via6 = get_driver(network.driver).default_routes(network, endpoint)
            candidates.append(
                _gateway.Candidate(
                    endpoint.ifname,
                    network.name,
                    network.internal,
                    current.gw_priorities.get(endpoint.id, 0),
                    via4,
                    via6,
                )
            )
        _gateway.apply(current.path, candidates)

    def disconnect(self, network: str, sandbox: str) -> None:
        """Detach the sandbox; succeeds if it is not (or no longer) connected."""
        with self._operation(undoable=False) as op:
            try:
                net = self.network(network)
            except NetworkNotFound:
                return
            name = self._sandbox_name(sandbox)
            for endpoint in self._store_for(net).endpoints(network_id=net.id, sandbox=name):
                op.begin()
                self._disconnect(net, endpoint)

    def _disconnect(self, network: Network, endpoint: Endpoint) -> None:
        driver = get_driver(network.driver)
        box = self.store.find_sandbox(endpoint.sandbox)
        path = box.path if box and netns_sandbox.exists(box.path) else None
        ports = self._revoke_ports(network, endpoint.sandbox) if endpoint.sandbox else []
        driver.leave(self._ctx, network, endpoint, path)
        driver.delete_endpoint(self._ctx, network, endpoint)
        if network.scope == "global":
            scope = self._require_global(network.driver)
            scope.remove(endpoint)
            if endpoint.handed_over:  # Docker names it, and gives the sandbox its way out
                self._forget_if_transient(endpoint.sandbox)
                return
            self._dns.endpoint_removed(network, endpoint)
            if not scope.joined(endpoint.sandbox):  # its last way out via overlay
                self.disconnect(GATEWAY_BRIDGE, endpoint.sandbox)
            return
        self._addresses.release(network, endpoint)
        self.store.remove_endpoint(endpoint.id)
        self._dns.endpoint_removed(network, endpoint)
        self.store.set_gw_priority(endpoint.sandbox, endpoint.id, None)
        self._forget_if_transient(endpoint.sandbox)
        if box is not None and path is not None:
            self._route_sandbox(box)  # the next network in Docker's order takes over
        if ports:
            self._sync_firewall()

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        """This host's endpoints (of one network, or all)."""
        if network is not None:
            net = self.network(network)
            return self._store_for(net).endpoints(network_id=net.id)
        found = self.store.endpoints()
        if self.global_store is not None:
            found += self.global_store.endpoints()
        return found

    # --- endpoints joined by the caller: libnetwork's flow, as dockerd drives it --------

    def create_endpoint(
        self,
        network: str,
        *,
        endpoint_id: str | None = None,
        ip: str | None = None,
        ipv6: str | None = None,
        mac: str | None = None,
    ) -> Endpoint:
        """An endpoint whose interface waits in this host's namespace, as `ifname`, for
        the caller to move into a sandbox (Docker's CreateEndpoint). On a network with
        external IPAM `ip` and `ipv6` are its addresses; elsewhere they are allocated
        (`ip`/`ipv6` ask for these)."""
        checks.text(network, "network")
        requested = _requested_addresses(ip, ipv6)
        mac = checks.mac(mac) if mac is not None else None
        if endpoint_id is not None and not _ID.fullmatch(checks.text(endpoint_id, "endpoint id")):
            raise InvalidRequest(f"invalid endpoint id {endpoint_id!r}: use 64 hex digits")
        with self._operation() as op:
            net = self.network(network)
            driver = get_driver(net.driver)
            if not driver.hands_over:
                raise InvalidRequest(
                    f"driver {driver.name!r} cannot leave an endpoint's interface for its "
                    "caller to move into a sandbox (Docker's plugin protocol needs that)"
                )
            endpoint_id = endpoint_id or secrets.token_hex(32)
            if self._find_endpoint(net, endpoint_id) is not None:
                raise DuplicateEndpoint(f"endpoint {endpoint_id[:12]} already exists")
            staging = f"{HANDOVER_PREFIX}{endpoint_id[:11]}"
            scope = self._require_global(net.driver) if net.scope == "global" else None
            if scope is not None:  # the caller's addresses (or new ones), taken cluster-wide
                ip = requested.get(4) or requested.get(6)
                addresses = scope.reserve(net, endpoint_id, "", staging, ip)
                op.undo.append(lambda: scope.release(net, endpoint_id, addresses))
            elif net.ipam_driver == EXTERNAL_IPAM:
                addresses = self._addresses.given(net, requested)
            else:
                addresses = self._addresses.allocate(net, requested, op.undo)
            endpoint = self._endpoint(net, driver, endpoint_id, addresses, mac, staging, "")
            op.begin()
            driver.create_endpoint(self._ctx, net, endpoint, None)
            op.undo.append(lambda: driver.delete_endpoint(self._ctx, net, endpoint))
            if scope is not None:
                scope.publish(net, endpoint)  # the other hosts program it; it waits for its caller
            else:
                self.store.add_endpoint(endpoint)
            return endpoint

    def join(self, network: str, endpoint_id: str, sandbox_path: str) -> JoinInfo:
        """The caller moves the endpoint's interface into the network namespace at
        `sandbox_path` (Docker's Join, whose SandboxKey it is); says how to set it up
        there. Joining again to the same sandbox answers the same."""
        with self.store.transaction():
            net = self.network(network)
            endpoint = self._endpoint_of(net, endpoint_id)
            box = self._sandbox_at(sandbox_path)
            if endpoint.sandbox and endpoint.sandbox != box.name:
                raise Conflict(
                    f"endpoint {endpoint_id[:12]} is already joined to sandbox {endpoint.sandbox}"
                )
            if not endpoint.sandbox:
                if any(e.network_id == net.id for e in self._sandbox_endpoints(box.name)):
                    raise DuplicateEndpoint(
                        f"sandbox {box.name} is already connected to {net.name}"
                    )
                self._set_endpoint_sandbox(net, endpoint, box.name)
            gateways: list[str | None] = []
            routes: list[StaticRoute] = []
            offers = get_driver(net.driver).default_routes(net, endpoint)
            for default, via in zip(("0.0.0.0/0", "::/0"), offers, strict=True):
                if via == _gateway.DEVICE:  # ipvlan l3: straight out, the parent host routes
                    routes.append(StaticRoute(default))
                gateways.append(None if via == _gateway.DEVICE else via)
            # No way out offered (overlay): the caller must not add one of its own
            # (dockerd's docker_gwbridge) beside keelnet's network.
            no_way_out = not net.internal and not any(offers)
            return JoinInfo(
                src_name=endpoint.ifname,
                gateway=gateways[0],
                ipv6_gateway=gateways[1],
                static_routes=tuple(routes),
                disable_gateway_service=bool(routes) or no_way_out,
            )

    def leave(self, network: str, endpoint_id: str) -> None:
        """The caller takes the interface out of its sandbox (Docker's Leave): its
        published ports go. An endpoint that is not joined (or not known) has left."""
        with self._operation(undoable=False) as op:
            net = self._known_network(network)
            endpoint = self._find_endpoint(net, endpoint_id) if net is not None else None
            if net is None or endpoint is None or not endpoint.sandbox:
                return
            op.begin()
            ports = self._revoke_ports(net, endpoint.sandbox)
            self._set_endpoint_sandbox(net, endpoint, "")
            self._forget_if_transient(endpoint.sandbox)
            if ports:
                self._sync_firewall()

    def delete_endpoint(self, network: str, endpoint_id: str) -> None:
        """Remove the endpoint and its interface wherever the caller left it (Docker's
        DeleteEndpoint); one that is not known is already removed."""
        with self._operation(undoable=False) as op:
            net = self._known_network(network)
            endpoint = self._find_endpoint(net, endpoint_id) if net is not None else None
            if net is None or endpoint is None:
                return
            op.begin()
            self._disconnect(net, endpoint)

    def endpoint(self, network: str, endpoint_id: str) -> Endpoint:
        return self._endpoint_of(self.network(network), endpoint_id)

    def _endpoint_of(self, net: Network, endpoint_id: str) -> Endpoint:
        endpoint = self._find_endpoint(net, endpoint_id)
        if endpoint is None:
            raise EndpointNotFound(f"network {net.name} has no endpoint {endpoint_id[:12]}")
        return endpoint

    def _find_endpoint(self, net: Network, endpoint_id: str) -> Endpoint | None:
        """The network's endpoint of that id on this host, in the network's store."""
        if net.scope == "global":
            joined = self._require_global(net.driver).joined()
            return next((e for n, e in joined if e.id == endpoint_id and n.id == net.id), None)
        endpoint = self.store.find_endpoint(endpoint_id)
        return endpoint if endpoint is not None and endpoint.network_id == net.id else None

    def _known_network(self, name_or_id: str) -> Network | None:
        """The network, local or global; None when this host knows no such network (for
        teardown: what is not known is already gone)."""
        try:
            return self.network(name_or_id)
        except NetworkNotFound:
            return None

    def _set_endpoint_sandbox(self, net: Network, endpoint: Endpoint, sandbox: str) -> None:
        """Join ("": leave) a caller's endpoint to the sandbox of that name."""
        if net.scope == "global":
            joined = dataclasses.replace(endpoint, sandbox=sandbox)
            self._require_global(net.driver).publish(net, joined)
        else:
            self.store.set_endpoint_sandbox(endpoint.id, sandbox)

    def _forget_if_transient(self, sandbox: str) -> None:
        """A sandbox adopted by a join goes from the store with its last endpoint."""
        box = self.store.find_sandbox(sandbox) if sandbox else None
        if box is None or not box.transient:
            return
        try:
            if self._sandbox_endpoints(box.name):
                return
        except StoreUnavailable:  # a Host that is no member asks etcd: kept till later
            return
        self.store.remove_sandbox(box.name)

    def _sandbox_at(self, path: str) -> Sandbox:
        """The sandbox of the namespace at `path`: a known one, else adopted for as long
        as endpoints are joined to it (transient). The namespace may not be there yet:
        dockerd joins a container's endpoints before runc makes its namespace."""
        if not os.path.isabs(path) or (os.path.exists(path) and not netns_sandbox.exists(path)):
            raise SandboxNotFound(f"sandbox key {path!r} is not a network namespace's path")
        for box in self.store.sandboxes():
            if box.path == path:
                return box
        name = Path(path).name
        if not netns_sandbox.valid_name(name) or self.store.find_sandbox(name) is not None:
            name = "sandbox-" + hashlib.sha256(path.encode()).hexdigest()[:12]
        box = Sandbox(name, path, owned=False, id=secrets.token_hex(32), transient=True)
        self.store.add_sandbox(box)
        return box

    # --- published ports -----------------------------------------------------------------

    def publish(
        self,
        network: str,
        sandbox: str,
        host_port: int,
        container_port: int,
        proto: str = "tcp",
        host_ip: str | None = None,
    ) -> PortMapping:
        """Forward host_port on the host's addresses (and from the host itself) to the sandbox."""
        checks.text(network, "network")
        checks.text(sandbox, "sandbox")
        request = PortRequest(container_port, proto, host_port, host_ip=host_ip)
        return self.publish_ports(network, sandbox, [request])[0]

    def publish_ports(
        self, network: str, sandbox: str, requests: Sequence[PortRequest]
    ) -> list[PortMapping]:
        """Publish several ports of the sandbox at once: all of them, or none."""
        for request in requests:
            request.check()
        with self._operation() as op:
            net = self.network(network)
            sandbox = self._sandbox_name(sandbox)
            found = self.store.endpoints(network_id=net.id, sandbox=sandbox)
            if not found:
                raise EndpointNotFound(f"sandbox {sandbox} is not connected to {net.name}")
            endpoint = found[0]
            op.begin()
            mappings = [self._add_port(net, endpoint, request) for request in requests]
            self._sync_firewall()
            return mappings

    def _add_port(self, net: Network, endpoint: Endpoint, request: PortRequest) -> PortMapping:
        host_ip, proto = request.host_ip, request.proto
        host_version = checks.ip_version(host_ip, "host IP") if host_ip is not None else None
        # Like Docker: no host IP means the host's IPv4 and IPv6 addresses alike.
        container_ip = endpoint.ip if host_version in (None, 4) else None
        container_ipv6 = endpoint.ipv6 if host_version in (None, 6) else None
        if container_ip is None and container_ipv6 is None:
            family = f"IPv{host_version}" if host_version else "IP"
            raise InvalidRequest(
                f"sandbox {endpoint.sandbox} has no {family} address on {net.name}"
            )
        host_port = request.host_port
        if host_port == 0 or request.host_port_end not in (None, host_port):
            host_port = self._free_port(proto, host_ip, request.host_port, request.host_port_end)
        mapping = PortMapping(
            net.id,
            endpoint.sandbox,
            host_port,
            request.container_port,
            proto,
            host_ip,
            container_ip,
            container_ipv6,
        )
        get_driver(net.driver).program_external_connectivity(self._ctx, net, endpoint, mapping)
        try:
            self.store.add_port(mapping)
        except PortTaken:
            where = f"{host_ip or '0.0.0.0'}:{host_port}/{proto}"
            raise PortInUse(f"Bind for {where} failed: port is already allocated") from None
        return mapping

    def _free_port(self, proto: str, host_ip: str | None, low: int, high: int | None) -> int:
        """The lowest port of low-high not yet published; with no range, of
        ip_local_port_range (Docker's ephemeral choice)."""
        if low == 0:
            try:
                text = read_sysctl(self.netns_path, "net.ipv4.ip_local_port_range")
                low, high = (int(part) for part in text.split())
            except (OSError, ValueError):
                low, high = 49153, 65535
        high = high or low
        taken = {
            p.host_port for p in self.store.ports() if p.proto == proto and p.host_ip == host_ip
        }
        for port in range(low, high + 1):
            if port not in taken:
                return port
        raise PortInUse(f"no free {proto} host port in {low}-{high}")

    def unpublish(
        self,
        network: str,
        sandbox: str,
        host_port: int,
        proto: str = "tcp",
        host_ip: str | None = None,
    ) -> None:
        """Remove a published port; one that is not published is already removed."""
        with self._operation(undoable=False) as op:
            net = self.store.find_network(network)
            if net is None:
                return
            sandbox = self._sandbox_name(sandbox)
            for port in self.store.ports(network_id=net.id, sandbox=sandbox):
                if (port.host_port, port.proto, port.host_ip) == (host_port, proto, host_ip):
                    op.begin()
                    endpoints = self.store.endpoints(network_id=net.id, sandbox=sandbox)
                    if endpoints:
                        get_driver(net.driver).revoke_external_connectivity(
                            self._ctx, net, endpoints[0], port
                        )
                    self.store.remove_port(host_ip, host_port, proto)
                    self._sync_firewall()

    def unpublish_all(self, network: str, sandbox: str) -> None:
        """Remove every port published for the sandbox on the network."""
        with self._operation(undoable=False) as op:
            net = self.store.find_network(network)
            if net is None or not self.store.ports(network_id=net.id, sandbox=sandbox):
                return
            op.begin()
            self._revoke_ports(net, sandbox)
            self._sync_firewall()

    def _revoke_ports(self, net: Network, sandbox: str) -> list[PortMapping]:
        """Revoke and forget the sandbox's ports on `net` (the caller syncs the firewall)."""
        driver = get_driver(net.driver)
        endpoints = self.store.endpoints(network_id=net.id, sandbox=sandbox)
        ports = self.store.ports(network_id=net.id, sandbox=sandbox)
        for port in ports:
            if endpoints:
                driver.revoke_external_connectivity(self._ctx, net, endpoints[0], port)
            self.store.remove_port(port.host_ip, port.host_port, port.proto)
        return ports

    def ports(self, network: str | None = None) -> list[PortMapping]:
        network_id = self.network(network).id if network else None
        return self.store.ports(network_id=network_id)

    # --- crash recovery ------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make the kernel match the store: remove the store's leftovers (half-made or
        unreferenced links, here and in its sandboxes; namespaces an operation cut short
        was creating), re-create what the kernel lost, drop what cannot come back. Only
        ever removes what this store made."""
        removed = dict.fromkeys(_RECONCILED, 0)
        with self.store.transaction():
            cut_short = [entry for entry in self._journal.entries() if not entry.live]
            self._claim.forget()  # it may be gone with our tables (a flushed ruleset)
            if self.store.holds_anything():
                self._take_claim()
            networks = {n.id: n for n in self.store.networks()}
            endpoint_ids = {e.id for e in self.store.endpoints()}
            # A sandbox's links of global networks are this store's too: while the cluster
            # store cannot say which those are, no sandbox link is removed.
            in_sandboxes: tuple[dict[str, Network], set[str]] | None = (networks, endpoint_ids)
            if self.global_store is not None:
                try:
                    in_sandboxes = (
                        networks | {n.id: n for n in self.global_store.networks()},
                        endpoint_ids | {e.id for e in self.global_store.endpoints()},
                    )
                except StoreUnavailable:
                    in_sandboxes = None
            # The host's namespace holds links of global networks too (handed-over ones
            # waiting for Docker): while the cluster store cannot say which, they stay.
            known = in_sandboxes or (networks, endpoint_ids)
            removed["links"] = self._remove_leftovers(
                self._ipr, *known, keep_unknown=in_sandboxes is None
            )
            links.delete_link(self._ipr, links.PROBE_LINK)  # a probe cut short
            for entry in cut_short:
                for name in entry.sandboxes:
                    if _is_name(name) and self.store.find_sandbox(name) is None:
                        netns_sandbox.delete(netns_sandbox.named_path(name))
                        removed["namespaces"] += 1
            for network in networks.values():
                # A bridge the kernel lost (a crash mid-removal, a reboot): make it again.
                if network.kernel_name and links.link_index(self._ipr, network.kernel_name) is None:
                    get_driver(network.driver).create_network(self._ctx, network)
                    removed["recreated"] += 1
            for box in self.store.sandboxes():
                if not netns_sandbox.exists(box.path):
                    for endpoint in self.store.endpoints(sandbox=box.name):
                        self._disconnect(networks[endpoint.network_id], endpoint)
                        removed["endpoints"] += 1
                    if box.owned:  # the empty file a cut-short removal leaves
                        netns_sandbox.delete(box.path)
                    self.store.remove_sandbox(box.name)
                    removed["sandboxes"] += 1
                    continue
                if in_sandboxes is None:
                    continue
                with iproute(box.path) as ipr:
                    removed["sandbox_links"] += self._remove_leftovers(ipr, *in_sandboxes)
            for endpoint in self.store.endpoints():
                network = networks[endpoint.network_id]
                if (
                    endpoint.host_ifname
                    and links.link_index(self._ipr, endpoint.host_ifname) is None
                ):
                    self._disconnect(network, endpoint)  # the kernel lost it (e.g. reboot)
                    removed["endpoints"] += 1
            for network in networks.values():
                if network.dataplane == "userspace":
                    removed["recreated"] += self._restore_userspace(network)
            if self._global is not None and self.cluster is not None:
                self._global.reconcile(self.store, removed)
            if self._global is not None:
                with contextlib.suppress(StoreUnavailable):  # etcd away: the next time
                    self._global.restore_guards()
            self._sync_firewall(bridges_changed=True, refresh=True)
            self.store.set_meta(_EPOCH, self._kernel_epoch())
            self._release_if_empty()
        for entry in cut_short:
            entry.close()
        return removed

    def _remove_leftovers(
        self,
        ipr: IPRoute,
        networks: Mapping[str, Network],
        endpoint_ids: set[str],
        *,
        keep_unknown: bool = False,
    ) -> int:
        """Delete this store's links in one namespace that no committed network or
        endpoint accounts for: half made (no alias yet) or left by a cut-short operation
        (`keep_unknown`: not those of networks missing from `networks`)."""
        count = 0
        for link in ownership.owned_links(ipr, self.owner):
            mark = link.mark
            if keep_unknown and mark is not None and mark.network_id not in networks:
                continue
            if (
                mark is None
                or mark.network_id not in networks
                or (mark.endpoint_id is not None and mark.endpoint_id not in endpoint_ids)
            ):
                links.delete_link(ipr, link.ifname)
                count += 1
        return count

    def _restore_userspace(self, network: Network) -> int:
        """Serve again the endpoints no running plane serves: a userspace plane's TAPs
        die with the process that ran it, and are made again in their sandbox (set up as
        `join` does). A handed-over endpoint's TAP (Docker's) is persistent: it waits,
        set up as dockerd left it, without carrier, to be attached to again; one never
        joined waits in the host's namespace. A TAP with carrier is served by this or
        another running process and is left alone."""
        driver = get_driver(network.driver)
        restored = 0
        for endpoint in self.store.endpoints(network_id=network.id):
            box = self.store.find_sandbox(endpoint.sandbox)
            path = box.path if box is not None else None
            if path is not None and not netns_sandbox.exists(path):
                continue
            with iproute(path) as ipr:
                found = links.endpoint_link(ipr, self.owner, network.id, endpoint.id)
                if found is None and path is not None and not endpoint.handed_over:
                    # not marked yet: `join` was cut short, the link is there
                    found = endpoint.ifname if links.link_index(ipr, endpoint.ifname) else None
                if found is not None and (
                    links.has_carrier(ipr, found) or not endpoint.handed_over
                ):
                    continue
            try:
                driver.create_endpoint(self._ctx, network, endpoint, path)
                if box is not None and path is not None and found is None:
                    driver.join(self._ctx, network, endpoint, path)
                    self._route_sandbox(box)
            except KeelnetError:
                # The Host must start even when a parent is gone; the endpoint stays in
                # the store and the next reconcile tries again.
                if found is None:
                    with contextlib.suppress(KeelnetError):
                        driver.leave(self._ctx, network, endpoint, path)
                continue
            restored += 1
        return restored

    # --- helpers -------------------------------------------------------------------------

    def _sync_firewall(self, *, bridges_changed: bool = False, refresh: bool = False) -> None:
        """Load the nftables (and iptables) rules the store's networks ask for. Only the
        store that claims the namespace writes them; one holding nothing has no claim."""
        if self._claim.held is None:
            return
        rules = []
        for network in self.store.networks():
            ports = tuple(self.store.ports(network_id=network.id))
            rule = get_driver(network.driver).firewall(network, ports)
            if rule is not None:
                rules.append(rule)
        script = nftables.render(rules)
        nftables.apply(self.netns_path, script)
        if refresh:
            # Port guards are set elements that connects add; a crash may have left some.
            guards: dict[nftables_guard.Guard, list[nftables_guard.GuardedPort]] = {}
            for network in self.store.networks():
                endpoints = self.store.endpoints(network_id=network.id)
                driver = get_driver(network.driver)
                for guard, guarded in driver.port_guards(network, endpoints).items():
                    guards.setdefault(guard, []).extend(guarded)
            for guard, guarded_ports in guards.items():
                nftables.apply(self.netns_path, nftables_guard.sync(guard, guarded_ports))
        if bridges_changed:
            try:
                self._docker_compat.sync([r.bridge for r in rules], refresh=refresh)
            except BaseException:
                # Always the last step of an operation: put nftables back as it was, so the
                # failed operation leaves the kernel as before (the store rolls back).
                if self._applied_script is not None:
                    with contextlib.suppress(KeelnetError):
                        nftables.apply(self.netns_path, self._applied_script)
                raise
        self._applied_script = script

    def _take_claim(self) -> None:
        """Hold the namespace's claim; a store starting to own objects here records the
        kernel epoch it does so in."""
        if self._claim.held is None:
            self._claim.take()
            self.store.set_meta(_EPOCH, self._kernel_epoch())
            self.store.set_meta(_NAMESPACE, self.netns_path or "")

    def _release_if_empty(self) -> None:
        """Let go of the namespace once the store holds nothing (after its last removal)."""
        if not self.store.holds_anything():
            self._claim.release()

    @contextlib.contextmanager
    def _operation(self, *, undoable: bool = True) -> Iterator[_Operation]:
        """One public operation: the store's write transaction, and from `op.begin()` on
        (its first kernel change) a crash-journal entry and the namespace's claim. On
        failure the undo steps run newest first; the entry goes when they all succeed
        (an `undoable=False` removal, which has none, leaves it to reconcile)."""
        op = _Operation(self)
        with self._lock, self.store.transaction():
            try:
                yield op
            except BaseException:
                clean = op.undo_all() and undoable
                if op.entry is not None:
                    if clean:
                        op.entry.close()
                    else:
                        op.entry.abandon()
                raise
        if op.entry is not None:
            op.entry.close()


class _Operation:
    """What one Host operation did so far: its journal entry, its undo steps."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.entry: Entry | None = None
        self.undo: list[Undo] = []

    def begin(self, *, sandboxes: tuple[str, ...] = ()) -> None:
        """Called before the operation's first kernel change (again: no-op)."""
        if self.entry is None:
            self.entry = self._host._journal.begin(sandboxes)
            self._host._take_claim()

    def undo_all(self) -> bool:
        """Run the undo steps newest first; whether every one succeeded."""
        clean = True
        for step in reversed(self.undo):
            try:
                step()
            except Exception:  # keep undoing; the operation's own error is the one raised
                clean = False
        return clean


def _check_ipv6_only(driver: Driver, ipv6: bool) -> None:
    """Refuse an IPv6-only network without IPv6, or of a driver that cannot make one."""
    if not ipv6:
        raise InvalidRequest("IPv4 or IPv6 must be enabled: with --ipv4=false give --ipv6")
    if not driver.ipv6_only:
        raise InvalidRequest(
            f"driver {driver.name!r} makes no IPv6-only networks (bridge, macvlan and "
            "ipvlan do): leave IPv4 on"
        )


def _is_name(name: str) -> bool:
    try:
        netns_sandbox.check_name(name)
    except KeelnetError:
        return False
    return True


def _requested_addresses(*addresses: str | None) -> dict[int, str]:
    requested: dict[int, str] = {}
    for address in addresses:
        if address is None:
            continue
        version = checks.ip_version(address)
        if version in requested:
            raise InvalidRequest(
                f"two IPv{version} addresses asked for: {requested[version]} and {address}"
            )
        requested[version] = address
    return requested
