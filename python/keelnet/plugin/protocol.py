"""Docker's plugin protocol as both sides of keelnet see it: names, paths, JSON shapes.

A legacy ("v1") plugin is an HTTP/1.1 server on a unix socket; dockerd POSTs JSON to
`/<Subsystem>.<Method>` (`/NetworkDriver.Join`, `/IpamDriver.RequestPool`, ...) and reads
JSON back. Success is HTTP 200 with a JSON body (at least `{}`); a failure is a non-200
answer with `{"Err": message}` (the network driver's error field; the IPAM driver's is
`Error`, and keelnet sends both). Requests without arguments have an empty body. See
moby's `pkg/plugins` and `daemon/libnetwork/drivers/remote` (read, not copied).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keelnet.errors import InvalidRequest, KeelnetError
from keelnet.model import IpamConfig, JoinInfo, PortMapping, StaticRoute

#: Where dockerd looks for a plugin `NAME`, in this order: a socket
#: `/run/docker/plugins/NAME.sock` (or `NAME/NAME.sock`), then `NAME.spec` (one URL) or
#: `NAME.json` (`{"Addr": URL, "TLSConfig": {...}}`) in each spec directory.
#: `$KEELNET_PLUGIN_DIR` replaces them all with one directory (sockets and specs alike):
#: for plugins kept away from where a dockerd looks (tests, a dockerd with other paths).
PLUGIN_DIR_VARIABLE = "KEELNET_PLUGIN_DIR"
_ONE_DIR = os.environ.get(PLUGIN_DIR_VARIABLE)
SOCKET_DIR = Path(_ONE_DIR or "/run/docker/plugins")
SPEC_DIRS = (
    (Path(_ONE_DIR),)
    if _ONE_DIR
    else (Path("/etc/docker/plugins"), Path("/usr/lib/docker/plugins"))
)

NETWORK_DRIVER = "NetworkDriver"
IPAM_DRIVER = "IpamDriver"
#: What dockerd sends in Accept; what plugins answer in Content-Type.
ACCEPT = "application/vnd.docker.plugins.v1.2+json"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.1+json"

# CreateNetwork's Options (libnetwork's netlabel package).
GENERIC = "com.docker.network.generic"  # the user's `-o key=value` map
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
# Join's and ProgramExternalConnectivity's Options: the container's ports.
PORT_MAP = "com.docker.network.portmap"
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
#: IP protocol numbers as libnetwork's PortBinding carries them.
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
#: StaticRoute.RouteType: via NextHop, or straight out of the interface.
ROUTE_NEXTHOP, ROUTE_CONNECTED = 0, 1


#: The plugin addresses this process serves keelnet's plugin on, with the thread that
#: runs their Host (`keelnet.plugin.server.serve`): that Host must not take its own plugin
#: for a remote driver, its one thread would wait for itself.
served_here: dict[str, int] = {}


class PluginError(KeelnetError):
    """A plugin answered with an error (its own message), or not with the protocol."""


class PluginUnavailable(PluginError):
    """No plugin answers at the plugin's address."""


class MethodNotFound(PluginError):
    """The plugin does not implement the method (HTTP 404)."""


# --- reading requests and answers -----------------------------------------------------------


def text(body: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, not {type(value).__name__}")
    return value


def mapping(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An object field; a missing or null one is empty."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{key} must be an object, not {type(value).__name__}")
    return value


def string_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = mapping(body, key)
    if not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest(f"{key} must map strings to strings")
    return value


def items(body: Mapping[str, Any], key: str) -> list[Any]:
    """An array field; a missing or null one is empty."""
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{key} must be an array, not {type(value).__name__}")
    return value


def flag(body: Mapping[str, Any], key: str) -> bool:
    """A boolean option; dockerd sends JSON booleans, some tools send "true"."""
    value = body.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequest(f"{key} must be a boolean, not {value!r}")


def address_of(cidr: str, what: str) -> str:
    """The address of "ip/len" (libnetwork writes gateways and endpoint addresses so)."""
    try:
        return str(ipaddress.ip_interface(cidr).ip)
    except ValueError:
        raise InvalidRequest(f"{what} {cidr!r} is not an address") from None


def with_prefix(address: str, config: IpamConfig) -> str:
    return f"{address}/{config.prefix_length}"


# --- IPAMData, Join answers -------------------------------------------------------------


def ipam_data(config: IpamConfig, address_space: str = "") -> dict[str, Any]:
    """libnetwork's IPAMData of one subnet: Gateway and aux addresses as "ip/len"."""
    data: dict[str, Any] = {"AddressSpace": address_space, "Pool": config.subnet}
    if config.gateway:
        data["Gateway"] = with_prefix(config.gateway, config)
    if config.aux_addresses:
        data["AuxAddresses"] = {k: with_prefix(v, config) for k, v in config.aux_addresses.items()}
    return data


def port_bindings(port: PortMapping) -> list[dict[str, Any]]:
    """libnetwork's PortBinding objects, as its JSON has them, of one published port: one
    per address family it forwards (no host IP: all of the family's, as Docker writes)."""
    return [
        {
            "Proto": PROTOCOL_NUMBERS[port.proto],
            "IP": container_ip,
            "Port": port.container_port,
            "HostIP": port.host_ip or every_address,
            "HostPort": port.host_port,
            "HostPortEnd": port.host_port,
        }
        for container_ip, every_address in (
            (port.container_ip, "0.0.0.0"),
            (port.container_ipv6, "::"),
        )
        if container_ip is not None
    ]


def join_answer(info: JoinInfo) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix},
        "StaticRoutes": [
            {"Destination": route.destination, "RouteType": ROUTE_CONNECTED}
            if route.next_hop is None
            else {
                "Destination": route.destination,
                "RouteType": ROUTE_NEXTHOP,
                "NextHop": route.next_hop,
            }
            for route in info.static_routes
        ],
        "DisableGatewayService": info.disable_gateway_service,
    }
    if info.gateway:
        answer["Gateway"] = info.gateway
    if info.ipv6_gateway:
        answer["GatewayIPv6"] = info.ipv6_gateway
    return answer


def join_info(answer: Mapping[str, Any]) -> JoinInfo:
    """A plugin's Join answer, checked as libnetwork checks it."""
    names = mapping(answer, "InterfaceName")
    routes = []
    for route in items(answer, "StaticRoutes"):
        if not isinstance(route, dict):
            raise PluginError("Join: StaticRoutes must hold objects")
        destination = text(route, "Destination")
        try:
            ipaddress.ip_network(destination, strict=False)
        except ValueError:
            raise PluginError(f"Join: static route to {destination!r}, not a CIDR") from None
        kind = route.get("RouteType", ROUTE_NEXTHOP)
        if kind == ROUTE_CONNECTED:
            routes.append(StaticRoute(destination))
        elif kind == ROUTE_NEXTHOP:
            hop = address_of(text(route, "NextHop"), "NextHop")
            routes.append(StaticRoute(destination, hop))
        else:
            raise PluginError(f"Join: unknown RouteType {kind!r}")
    gateways = {}
    for key in ("Gateway", "GatewayIPv6"):
        value = text(answer, key, required=False)
        if value:
            try:
                gateways[key] = str(ipaddress.ip_address(value))
            except ValueError:
                raise PluginError(f"Join: unable to parse {key} {value!r}") from None
    return JoinInfo(
        src_name=text(names, "SrcName", required=False),
        dst_prefix=text(names, "DstPrefix", required=False) or "eth",
        gateway=gateways.get("Gateway"),
        ipv6_gateway=gateways.get("GatewayIPv6"),
        static_routes=tuple(routes),
        disable_gateway_service=bool(answer.get("DisableGatewayService", False)),
    )
