"""remote: a Docker network plugin as a keelnet driver, keelnet playing dockerd's part.

`keelnet network create -d PLUGIN` finds the plugin as dockerd does and drives it with
libnetwork's calls: CreateNetwork with keelnet's (or a remote IPAM driver's) subnets,
CreateEndpoint with the endpoint's addresses and MAC, Join with the sandbox's path as
SandboxKey. keelnet then does what dockerd does with the answer: moves the plugin's
interface into the sandbox, names it, gives it the endpoint's MAC and addresses, and adds
the gateways and static routes the plugin asked for. Leave moves it back into the host's
namespace under the plugin's name before DeleteEndpoint, as dockerd does. Every option
(`-o`) goes to the plugin. As dockerd does, a plugin's refusal to delete a network or an
endpoint does not keep it in keelnet (a plugin that cannot be reached does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from keelnet.drivers import _gateway, _veth
from keelnet.drivers.base import Driver, HostContext, NetworkRequest
from keelnet.model import Endpoint, Network, PortMapping
from keelnet.plugin import client, protocol
from keelnet.plugin.protocol import MethodNotFound, PluginError, PluginUnavailable

#: The data plane `inspect` shows for a plugin's network: the plugin's own.
DATAPLANE = "remote"
_SRC_NAME, _VIA4, _VIA6 = "src_name", "via4", "via6"


class RemoteDriver(Driver):
    """The driver of Docker network plugin `name` (one subclass per plugin name)."""

    dataplanes = (DATAPLANE,)

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        self._plugin().network_scope()  # found, activated, a network driver of known scope

    def choose_dataplane(
        self, ctx: HostContext, requested: str, options: Mapping[str, str] | None = None
    ) -> str:
        return DATAPLANE  # a `dataplane` option is the plugin's to read

    def uses_gateway(self, network: Network) -> bool:
        return False  # the plugin's Join answer names the gateways

    def default_routes(self, network: Network, endpoint: Endpoint) -> tuple[str | None, ...]:
        """What the plugin's Join answer offered: Gateway/GatewayIPv6, or a static route
        to 0.0.0.0/0 (::/0) straight out of the interface."""
        return tuple(endpoint.driver_data.get(key) for key in (_VIA4, _VIA6))

    def _plugin(self) -> client.Plugin:
        plugin = client.plugin(self.name)
        client.check_not_served_here(
            plugin, "use keelnet's drivers directly (-d bridge, macvlan or ipvlan)"
        )
        return plugin

    def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        plugin = self._plugin()
        plugin.network_scope()
        return plugin.client.call(f"{protocol.NETWORK_DRIVER}.{method}", body)

    def _teardown(self, method: str, body: Mapping[str, Any]) -> None:
        """A teardown call: the plugin's refusal is not keelnet's (dockerd only logs it);
        a plugin that cannot be reached keeps the object in keelnet, to try again."""
        try:
            self._call(method, body)
        except PluginUnavailable:
            raise
        except PluginError:
            pass

    def create_network(self, ctx: HostContext, network: Network) -> None:
        options: dict[str, Any] = {
            protocol.GENERIC: dict(network.options),
            protocol.ENABLE_IPV6: network.ipv6,
        }
        if network.internal:
            options[protocol.INTERNAL] = True
        self._call(
            "CreateNetwork",
            {
                "NetworkID": network.id,
                "Options": options,
                "IPv4Data": [protocol.ipam_data(c) for c in network.ipam if c.version == 4],
                "IPv6Data": [protocol.ipam_data(c) for c in network.ipam if c.version == 6],
            },
        )

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        self._teardown("DeleteNetwork", {"NetworkID": network.id})

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        interface = {"Address": "", "AddressIPv6": "", "MacAddress": endpoint.mac}
        addresses = ((4, endpoint.ip, "Address"), (6, endpoint.ipv6, "AddressIPv6"))
        for version, address, key in addresses:
            config = network.ipam_for(version)
            if address is not None and config is not None:
                interface[key] = protocol.with_prefix(address, config)
        answer = self._call(
            "CreateEndpoint",
            {
                "NetworkID": network.id,
                "EndpointID": endpoint.id,
                "Interface": interface,
                "Options": {},
            },
        )
        changed = {k: v for k, v in protocol.mapping(answer, "Interface").items() if v}
        if changed:
            # keelnet filled every field; libnetwork refuses such answers the same way.
            with contextlib.suppress(PluginError):
                self.delete_endpoint(ctx, network, endpoint)
            raise PluginError(
                f"CreateEndpoint: the plugin modified the endpoint's interface "
                f"({', '.join(sorted(changed))}), which keelnet set; rolled back"
            )

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> Mapping[str, str]:
        answer = self._call(
            "Join",
            {
                "NetworkID": network.id,
                "EndpointID": endpoint.id,
                "SandboxKey": sandbox_path,
                "Options": {},
            },
        )
        try:
            info = protocol.join_info(answer)
            _veth.take_into_sandbox(ctx, network, endpoint, sandbox_path, info)
        except BaseException:
            with contextlib.suppress(PluginError):
                self._call("Leave", {"NetworkID": network.id, "EndpointID": endpoint.id})
            raise
        kept = {_SRC_NAME: info.src_name}
        for key, gateway, default in (
            (_VIA4, info.gateway, "0.0.0.0/0"),
            (_VIA6, info.ipv6_gateway, "::/0"),
        ):
            connected = any(
                r.destination == default and r.next_hop is None for r in info.static_routes
            )
            via = gateway or (_gateway.DEVICE if connected else None)
            if via is not None:
                kept[key] = via
        return kept

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        self._teardown("Leave", {"NetworkID": network.id, "EndpointID": endpoint.id})
        _veth.give_back(ctx, endpoint, sandbox_path, endpoint.driver_data.get(_SRC_NAME, ""))

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        self._teardown("DeleteEndpoint", {"NetworkID": network.id, "EndpointID": endpoint.id})

    def program_external_connectivity(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, port: PortMapping
    ) -> None:
        binding = {
            "Proto": protocol.PROTOCOL_NUMBERS[port.proto],
            "IP": endpoint.ip or endpoint.ipv6 or "",
            "Port": port.container_port,
            "HostIP": port.host_ip or "",
            "HostPort": port.host_port,
            "HostPortEnd": port.host_port,
        }
        with contextlib.suppress(MethodNotFound):  # optional in the protocol
            self._call(
                "ProgramExternalConnectivity",
                {
                    "NetworkID": network.id,
                    "EndpointID": endpoint.id,
                    "Options": {protocol.PORT_MAP: [binding]},
                },
            )

    def revoke_external_connectivity(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, port: PortMapping
    ) -> None:
        self._teardown(
            "RevokeExternalConnectivity", {"NetworkID": network.id, "EndpointID": endpoint.id}
        )


@cache
def remote_driver(name: str) -> type[RemoteDriver]:
    """The driver class of plugin `name`."""
    return type(f"Remote[{name}]", (RemoteDriver,), {"name": name})
