"""The objects keelnet manages, and their `docker network inspect` shape."""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keelnet import checks
from keelnet.errors import InvalidRequest

TYPE_CHECKING = False  # the CLI reads models without loading the Rust extension
if TYPE_CHECKING:
    from keelnet.ipam import AddressPool

#: `Network.ipam_driver` of a network whose every address is given by its creator (dockerd,
#: when keelnet serves Docker as a plugin): keelnet allocates none of them.
EXTERNAL_IPAM = "external"
#: keelnet's own address management (`Network.ipam_driver`).
DEFAULT_IPAM = "default"
#: The host-side name of an endpoint's interface waiting to be moved into its sandbox by
#: the caller that joins it (dockerd): `kn-c` + the endpoint id's first 11 digits.
HANDOVER_PREFIX = "kn-c"


def created_now() -> str:
    """This moment as Docker writes `Created`: RFC 3339 in UTC with nanoseconds."""
    return rfc3339nano(time.time_ns())


def rfc3339nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    fraction = f"{nanos:09d}".rstrip("0")
    moment = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{fraction}Z" if fraction else f"{moment}Z"


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp of any precision (what the
    store holds: RFC3339Nano, or isoformat from stores made before keelnet wrote that)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    seconds = int(datetime.fromisoformat(base + zone).timestamp())
    return seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


#: Drivers whose networks have no embedded DNS server (Docker's).
NO_DNS_DRIVERS = frozenset({"host", "none"})
#: Marks a host's gateway bridge (kn-gwbridge, Docker's docker_gwbridge): no names on it,
#: as Docker's gateway endpoints have none (else every overlay sandbox of a host would
#: see the others by name there, whatever their overlay networks).
GATEWAY_BRIDGE_LABEL = "com.keelnet.gateway-bridge"


@dataclass(frozen=True)
class IpamConfig:
    """One subnet of a network (Docker's `IPAM.Config` entry)."""

    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)
    #: The pool's id at a remote IPAM driver (None for keelnet's own and external IPAM).
    pool_id: str | None = None

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.subnet).version

    def to_inspect(self) -> dict[str, Any]:
        # Docker omits empty fields here.
        entry: dict[str, Any] = {"Subnet": self.subnet}
        if self.ip_range:
            entry["IPRange"] = self.ip_range
        if self.gateway:
            entry["Gateway"] = self.gateway
        if self.aux_addresses:
            entry["AuxiliaryAddresses"] = dict(self.aux_addresses)
        return entry


@dataclass(frozen=True)
class Endpoint:
    """A sandbox's attachment to a network. Addresses carry no prefix length.

    An endpoint created for a caller that joins it itself (Docker's CreateEndpoint) has no
    sandbox ("") until it is joined; until then its interface waits in the host's
    namespace as `ifname`.
    """

    ip: str | None
    ipv6: str | None
    mac: str
    ifname: str
    gateway: str | None
    ipv6_gateway: str | None = None
    id: str = ""
    network_id: str = ""
    sandbox: str = ""
    host_ifname: str | None = None
    aliases: tuple[str, ...] = ()
    #: What the network's driver keeps about the endpoint (a remote plugin's interface name).
    driver_data: dict[str, str] = field(default_factory=dict)

    @property
    def handed_over(self) -> bool:
        """Made for a caller that joins it itself (Docker): keelnet keeps its staging name
        as `ifname`, whatever the caller renamed it to in the sandbox."""
        return self.ifname.startswith(HANDOVER_PREFIX)

    @property
    def names(self) -> tuple[str, ...]:
        """What keelnet's DNS answers for it: its sandbox's name and its aliases; none for
        a handed-over one (its sandbox's name is dockerd's id of a namespace; Docker's
        own DNS server names its containers)."""
        return () if self.handed_over else (self.sandbox, *self.aliases)


@dataclass(frozen=True)
class StaticRoute:
    """A route in a sandbox: via `next_hop`, or (None) straight out of the interface."""

    destination: str  # CIDR
    next_hop: str | None = None


@dataclass(frozen=True)
class JoinInfo:
    """How whoever moves an endpoint's interface into its sandbox must set it up there
    (Docker's answer to Join): the interface `src_name` of the host's namespace becomes
    `dst_prefix` + a number; the endpoint's addresses go on it, then these routes."""

    src_name: str
    dst_prefix: str = "eth"
    gateway: str | None = None
    ipv6_gateway: str | None = None
    static_routes: tuple[StaticRoute, ...] = ()
    #: No default route through this network, and none to be added by the caller either
    #: (Docker would otherwise attach the container to its docker_gwbridge network).
    disable_gateway_service: bool = False


@dataclass(frozen=True)
class Peer:
    """A host of the cluster: its name and the underlay address of its VTEP."""

    name: str
    vtep: str


@dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint of a global network on another host, as the data plane and the DNS
    server need it."""

    id: str
    network_id: str
    ip: str
    mac: str
    vtep: str
    host: str
    #: Its sandbox's name, then its aliases on the network (what it answers to by name).
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sandbox:
    """A network namespace keelnet attaches endpoints to (what a container is to a network)."""

    name: str
    path: str
    owned: bool  # created by keelnet (deleted on removal) or adopted (left alone)
    id: str = ""  # 64 hex digits: what `network inspect` keys its Containers by
    #: Docker's --gw-priority of each endpoint (by endpoint id), kept with the sandbox as
    #: libnetwork keeps it: the highest gives the sandbox its default routes.
    gw_priorities: dict[str, int] = field(default_factory=dict)
    #: Adopted by joining an endpoint to it (Docker's sandbox key): forgotten when its
    #: last endpoint leaves.
    transient: bool = False


@dataclass(frozen=True)
class PortMapping:
    """A host port forwarded to a sandbox's port."""

    network_id: str
    sandbox: str
    host_port: int
    container_port: int
    proto: str
    host_ip: str | None  # None: all the host's addresses, IPv4 and IPv6
    container_ip: str | None
    container_ipv6: str | None = None


PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PortRequest:
    """A port to publish: `container_port`/`proto` on host port `host_port` (0: any free
    one), or the first free port of `host_port`-`host_port_end` (Docker's `-p 8000-8010:80`),
    on `host_ip` (None: all the host's addresses)."""

    container_port: int
    proto: str = "tcp"
    host_port: int = 0
    host_port_end: int | None = None
    host_ip: str | None = None

    def check(self) -> None:
        """Refuse ports, ranges and protocols that cannot be published."""
        if self.host_port != 0 or isinstance(self.host_port, bool):  # 0: any free one
            checks.port(self.host_port, "host port")
        if self.host_port_end is not None:
            checks.port(self.host_port_end, "host port")
            if self.host_port == 0 or self.host_port_end < self.host_port:
                raise InvalidRequest(
                    f"invalid host port range {self.host_port}-{self.host_port_end}"
                )
        checks.port(self.container_port, "container port")
        if self.proto not in PROTOCOLS:
            raise InvalidRequest(f"invalid protocol {self.proto!r}: use tcp, udp or sctp")
        if self.host_ip is not None:
            checks.ip_version(self.host_ip, "host IP")


@dataclass(frozen=True)
class Network:
    """A network as stored; `inspect` turns it into Docker's shape."""

    id: str
    name: str
    driver: str
    dataplane: str
    created: str
    ipam: tuple[IpamConfig, ...]
    ipv6: bool
    internal: bool
    options: dict[str, str]
    labels: dict[str, str]
    kernel_name: str | None  # bridge name, or None for drivers without a host-side device
    #: Who allocates addresses: DEFAULT_IPAM, EXTERNAL_IPAM or a remote IPAM plugin's name.
    ipam_driver: str = DEFAULT_IPAM
    ipam_options: dict[str, str] = field(default_factory=dict)
    attachable: bool = False  # Docker's --attachable, recorded (every keelnet network is)
    scope: str = "local"  # "global": shared by the hosts of a cluster store (overlay)

    @property
    def embedded_dns(self) -> bool:
        """Whether its sandboxes find each other by name through keelnet's DNS server:
        every network but Docker's `host` and `none` (as every user-defined network),
        those whose creator hands out the addresses (external IPAM: Docker, whose own DNS
        server serves its containers) and a host's gateway bridge."""
        return (
            self.driver not in NO_DNS_DRIVERS
            and self.ipam_driver != EXTERNAL_IPAM
            and GATEWAY_BRIDGE_LABEL not in self.labels
        )

    @property
    def ipv4(self) -> bool:
        """Whether IPv4 is enabled (Docker's EnableIPv4): false only for an IPv6-only
        network, the one kind with subnets but none of IPv4 (`host` and `none` have none)."""
        return not self.ipam or self.ipam_for(4) is not None

    @property
    def created_ns(self) -> int:
        return timestamp_ns(self.created)

    def ipam_for(self, version: int) -> IpamConfig | None:
        return next((c for c in self.ipam if c.version == version), None)

    def to_inspect(
        self,
        endpoints: list[Endpoint],
        ipam_status: dict[str, dict[str, int]] | None = None,
        sandbox_ids: dict[str, str] | None = None,
        peers: list[Peer] | None = None,
    ) -> dict[str, Any]:
        """Docker's shape; `Containers` is keyed by each sandbox's id (`sandbox_ids`, by
        name), as Docker keys it by container id, with the sandbox's name inside."""
        ids = sandbox_ids or {}
        containers = {
            ids.get(ep.sandbox) or ep.sandbox: {
                "Name": ep.sandbox,
                "EndpointID": ep.id,
                "MacAddress": ep.mac,
                "IPv4Address": self._with_prefix(ep.ip, 4),
                "IPv6Address": self._with_prefix(ep.ipv6, 6),
            }
            for ep in endpoints
            if ep.sandbox
        }
        shape: dict[str, Any] = {
            "Name": self.name,
            "Id": self.id,
            "Created": rfc3339nano(self.created_ns),
            "Scope": self.scope,
            "Driver": self.driver,
            "EnableIPv4": self.ipv4,
            "EnableIPv6": self.ipv6,
            "IPAM": {
                "Driver": self.ipam_driver,
                "Options": dict(self.ipam_options),
                "Config": [c.to_inspect() for c in self.ipam],
            },
            "Internal": self.internal,
            "Attachable": self.attachable or self.scope == "global",
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": containers,
            "Options": dict(self.options),
            "Labels": dict(self.labels),
            "DataPlane": self.dataplane,  # keelnet addition: which data plane runs
            "Status": {"IPAM": {"Subnets": ipam_status or {}}},
        }
        if peers is not None:  # global networks: the hosts taking part, as Docker shows them
            shape["Peers"] = [{"Name": p.name, "IP": p.vtep} for p in peers]
        return shape

    def _with_prefix(self, address: str | None, version: int) -> str:
        config = self.ipam_for(version)
        if address is None or config is None:
            return ""
        return f"{address}/{config.prefix_length}"


@dataclass
class IpamPool:
    """A pool handed out by keelnet's IPAM serving as Docker's IPAM driver (`RequestPool`).

    Identical requests share it (`refs` counts them); `addresses` holds what
    `RequestAddress` gave out of it.
    """

    id: str
    address_space: str
    subnet: str
    sub_pool: str | None  # Docker's --ip-range: where dynamic addresses come from
    v6: bool
    refs: int
    from_defaults: bool  # carved from the default pools (given back when released)
    addresses: AddressPool
