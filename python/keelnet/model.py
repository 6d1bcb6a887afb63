"""The objects keelnet manages, and their `docker network inspect` shape."""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


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


@dataclass(frozen=True)
class IpamConfig:
    """One subnet of a network (Docker's `IPAM.Config` entry)."""

    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)

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
    """A sandbox's attachment to a network. Addresses carry no prefix length."""

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


@dataclass(frozen=True)
class Peer:
    """A host of the cluster: its name and the underlay address of its VTEP."""

    name: str
    vtep: str


@dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint of a global network on another host, as the data plane needs it."""

    id: str
    network_id: str
    ip: str
    mac: str
    vtep: str
    host: str


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
    attachable: bool = False  # Docker's --attachable, recorded (every keelnet network is)
    scope: str = "local"  # "global": shared by the hosts of a cluster store (overlay)

    @property
    def embedded_dns(self) -> bool:
        """Whether its sandboxes find each other by name through keelnet's DNS server:
        every network but Docker's `host` and `none` (as every user-defined network)."""
        return self.driver not in NO_DNS_DRIVERS

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
        }
        shape: dict[str, Any] = {
            "Name": self.name,
            "Id": self.id,
            "Created": rfc3339nano(self.created_ns),
            "Scope": self.scope,
            "Driver": self.driver,
            "EnableIPv4": True,  # keelnet has no IPv6-only networks (yet)
            "EnableIPv6": self.ipv6,
            "IPAM": {
                "Driver": "default",
                "Options": {},
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
