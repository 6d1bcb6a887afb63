"""The driver interface: libnetwork's driver calls, for one host.

A Host calls, in order: `validate` then `create_network`; per connect `create_endpoint` then
`join`; per disconnect `leave` then `delete_endpoint`; `delete_network` last. Drivers that
`hand_over` endpoints also serve libnetwork's own flow (keelnet as Docker's plugin):
`create_endpoint` without a sandbox leaves the interface in the host's namespace, the
caller (dockerd) moves and configures it (`join` is not called), and `delete_endpoint`
removes it wherever the caller left it. Publishing
calls `program_external_connectivity` / `revoke_external_connectivity`. Every `delete_*`,
`leave` and `revoke_*` must succeed when what it removes is already gone: teardown is
idempotent. Every link a driver creates carries its store's mark from the request that
creates it on (`ctx.owner`, see `keelnet.kernel.ownership`), so a crash never leaves a link
nobody can prove is ours; names of host-side links start with `kn-`.

A driver lists the data planes it implements; the `dataplane` option picks one (`kernel`,
`userspace`, or `auto`: the kernel where it has the module, userspace where it does not).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pyroute2 import IPRoute

from keelnet.errors import DataPlaneUnavailable, InvalidOption
from keelnet.kernel import links
from keelnet.kernel.nftables import BridgeRules
from keelnet.kernel.nftables_guard import Guard, GuardedPort
from keelnet.kernel.ownership import Owner
from keelnet.kernel.rtnl import Rtnl
from keelnet.model import Endpoint, Network, PortMapping

if TYPE_CHECKING:
    from keelnet.cluster import ClusterMember

DATAPLANE_OPTION = "dataplane"
DATAPLANES = ("kernel", "userspace", "auto")


@dataclass
class HostContext:
    """What a driver may use of the host: its namespace, netlink sockets into it, and
    the identity of the store whose marks the driver's links carry."""

    netns_path: str | None
    ipr: IPRoute
    rtnl: Rtnl  # the fast path for per-connect requests
    owner: Owner
    cluster: ClusterMember | None = None  # this host in a cluster store (global networks)
    dataplane: str | None = None  # this host's choice where a global network says auto


@dataclass(frozen=True)
class NetworkRequest:
    """A create request after keelnet's generic validation, before the driver's."""

    name: str
    options: Mapping[str, str]
    ipv6: bool
    internal: bool


class Driver(ABC):
    """One network driver. Subclasses are stateless: all state is in the store or kernel."""

    name: ClassVar[str]
    #: "local": networks live on one host; "global": shared through the cluster store.
    scope: ClassVar[str] = "local"
    #: Options the driver understands besides `dataplane`.
    options: ClassVar[frozenset[str]] = frozenset()
    #: Data planes implemented, in order of preference for `auto`.
    dataplanes: ClassVar[tuple[str, ...]] = ("kernel",)
    #: Whether endpoints get addresses from keelnet's IPAM.
    uses_ipam: ClassVar[bool] = True
    #: Whether endpoints get a default route via the network's gateway.
    gateway_route: ClassVar[bool] = True
    #: Only one network of this driver per host (Docker: host, none).
    singleton: ClassVar[bool] = False
    #: Whether the gateway sits on a device of the host namespace (a bridge): the subnet
    #: then needs room for it and must not hold one of the host's own addresses.
    gateway_on_host: ClassVar[bool] = False
    #: Whether every endpoint carries the parent's MAC (ipvlan) instead of one of its own.
    shares_parent_mac: ClassVar[bool] = False
    #: Whether it makes IPv6-only networks (Docker 28's `--ipv4=false`): no IPv4 subnet,
    #: gateway or address anywhere.
    ipv6_only: ClassVar[bool] = False
    #: Whether `create_endpoint` can leave the interface in the host's namespace for the
    #: caller to move into a sandbox (what Docker's remote-driver protocol needs).
    hands_over: ClassVar[bool] = False

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        """Refuse unknown or bad options; extended by drivers with checks of their own."""
        unknown = set(request.options) - self.options - {DATAPLANE_OPTION}
        if unknown:
            raise InvalidOption(
                f"driver {self.name!r} does not know option(s) {', '.join(sorted(unknown))}"
            )

    def choose_dataplane(
        self, ctx: HostContext, requested: str, options: Mapping[str, str] | None = None
    ) -> str:
        """The data plane that will run for `requested` (kernel|userspace|auto), for a
        network with `options`."""
        if requested not in DATAPLANES:
            raise InvalidOption(
                f"invalid dataplane {requested!r}: use one of {', '.join(DATAPLANES)}"
            )
        if requested == "auto":
            return self.dataplanes[0]
        if requested not in self.dataplanes:
            raise DataPlaneUnavailable(
                f"driver {self.name!r} has no {requested} data plane: "
                f"use {' or '.join(self.dataplanes)} (or auto)"
            )
        return requested

    def endpoint_mac(
        self, ctx: HostContext, network: Network, requested: str | None, ip: str | None = None
    ) -> str:
        """The MAC address the endpoint's interface (IPv4 address `ip`) will carry:
        `requested`, else a random one."""
        return (requested or links.random_mac()).lower()

    def uses_gateway(self, network: Network) -> bool:
        """Whether this network's endpoints route through its gateway."""
        return self.gateway_route

    def default_routes(self, network: Network, endpoint: Endpoint) -> tuple[str | None, ...]:
        """The default routes `endpoint` offers its sandbox, IPv4 then IPv6: a gateway
        address, `_gateway.DEVICE` (straight out of the interface) or None. The Host
        installs those of the one endpoint Docker's order picks per family."""
        return endpoint.gateway, endpoint.ipv6_gateway

    def kernel_name(self, network_id: str, options: Mapping[str, str]) -> str | None:
        """The host-side device this network owns, if any (for isolation and cleanup)."""
        return None

    @abstractmethod
    def create_network(self, ctx: HostContext, network: Network) -> None: ...

    @abstractmethod
    def delete_network(self, ctx: HostContext, network: Network) -> None: ...

    @abstractmethod
    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        """The endpoint's interface, as `endpoint.ifname` in the sandbox; with no sandbox
        (only asked of drivers that `hand_over`), in the host's namespace, down and marked
        with `ctx.owner.alias(network.id, endpoint.id)`, for the caller to move."""

    @abstractmethod
    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> Mapping[str, str] | None:
        """Set the endpoint's interface up in the sandbox; may return what the driver
        keeps about the endpoint (the Host stores it as `endpoint.driver_data`)."""

    @abstractmethod
    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None: ...

    @abstractmethod
    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        """Remove what `create_endpoint` made on the host side, and a handed-over interface
        the caller left in the host's namespace."""

    def program_external_connectivity(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, port: PortMapping
    ) -> None:
        """Prepare the kernel for a published port (the host renders firewall rules)."""
        raise InvalidOption(f"driver {self.name!r} does not publish ports")

    def revoke_external_connectivity(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, port: PortMapping
    ) -> None:
        """Undo `program_external_connectivity`; nothing to do by default."""
        return

    def firewall(self, network: Network, ports: tuple[PortMapping, ...]) -> BridgeRules | None:
        """This network's part of the host's nftables ruleset, if it has one."""
        return None

    def port_guards(
        self, network: Network, endpoints: Sequence[Endpoint]
    ) -> dict[Guard, tuple[GuardedPort, ...]]:
        """Where nftables checks what the endpoints' sandboxes send (`nftables_guard`,
        kernel data planes under port security), for reconcile to make it match."""
        return {}


def option_bool(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidOption(f"option {key}: {value!r} is not a boolean")
