"""keelnet's drivers behind Docker's `NetworkDriver` protocol (`docker network create -d keelnet`).

dockerd's IPAM (its own, or keelnet's: `--ipam-driver keelnet`) has already chosen every
subnet and address; each Docker network becomes a keelnet network of the Host with
`external` IPAM, with Docker's network id as its id and `docker-<id12>` as its name. The
keelnet driver is chosen with `-o keelnet.driver=NAME` (default `bridge`); every other `-o`
goes to that driver (`dataplane=userspace`, `parent=eth1`, `com.docker.network.bridge.*`,
...). Endpoints follow libnetwork's flow: CreateEndpoint leaves the interface in the host's
namespace, Join names it to dockerd, which moves and sets it up; ProgramExternalConnectivity
publishes the container's ports. Every call is one Host operation: all or nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keelnet.drivers import driver_names, get_driver
from keelnet.errors import KeelnetError, NetworkNotFound, UnknownDriver
from keelnet.host import Host
from keelnet.model import EXTERNAL_IPAM, Network, PortRequest
from keelnet.plugin import protocol
from keelnet.plugin.protocol import address_of, flag, items, mapping, string_map, text

#: The `-o` option that picks the keelnet driver of a Docker network.
DRIVER_OPTION = "keelnet.driver"
DEFAULT_DRIVER = "bridge"

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def network_name(network_id: str) -> str:
    """The keelnet name of a Docker network (dockerd never tells a driver the name)."""
    return f"docker-{network_id[:12]}"


class NetworkDriverApi:
    """The `NetworkDriver.*` methods over one Host; each takes and returns JSON objects."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetCapabilities": self.get_capabilities,
            "CreateNetwork": self.create_network,
            "DeleteNetwork": self.delete_network,
            "AllocateNetwork": self.allocate_network,
            "FreeNetwork": self.free_network,
            "CreateEndpoint": self.create_endpoint,
            "EndpointOperInfo": self.endpoint_info,
            "DeleteEndpoint": self.delete_endpoint,
            "Join": self.join,
            "Leave": self.leave,
            "ProgramExternalConnectivity": self.program_external_connectivity,
            "RevokeExternalConnectivity": self.revoke_external_connectivity,
            "DiscoverNew": self.discover,
            "DiscoverDelete": self.discover,
            "GwAllocCheck": self.gateway_check,
        }

    def get_capabilities(self, body: dict[str, Any]) -> dict[str, Any]:
        # Local: a network's state is this host's store; overlay comes with global scope.
        return {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": False}

    # --- networks ------------------------------------------------------------------------

    def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = text(body, "NetworkID")
        options = mapping(body, "Options")
        generic = string_map(options, protocol.GENERIC)
        driver = generic.pop(DRIVER_OPTION, DEFAULT_DRIVER)
        self._check_driver(driver)
        subnets, gateways, aux = [], [], {}
        for data in items(body, "IPv4Data") + items(body, "IPv6Data"):
            if not isinstance(data, dict):
                raise KeelnetError("IPv4Data and IPv6Data must hold objects")
            subnets.append(text(data, "Pool"))
            gateway = text(data, "Gateway", required=False)
            if gateway:
                gateways.append(address_of(gateway, "Gateway"))
            for label, cidr in string_map(data, "AuxAddresses").items():
                aux[label] = address_of(cidr, f"auxiliary address {label}")
        existing = self.host.store.find_network(network_id)
        if existing is not None and existing.id == network_id:
            return {}  # dockerd replays a create it did not see answered: already made
        self.host.create_network(
            network_name(network_id),
            driver=driver,
            subnet=subnets,
            gateway=gateways,
            aux_addresses=aux,
            ipv6=flag(options, protocol.ENABLE_IPV6),
            internal=flag(options, protocol.INTERNAL),
            options=generic,
            ipam_driver=EXTERNAL_IPAM,
            network_id=network_id,
        )
        return {}

    def _check_driver(self, name: str) -> None:
        if not _hands_over(name):
            serving = ", ".join(n for n in driver_names() if _hands_over(n))
            raise UnknownDriver(
                f"{DRIVER_OPTION}={name}: keelnet serves Docker with the drivers {serving}"
            )

    def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        self.host.remove_network(self._known_id(body))
        return {}

    def allocate_network(self, body: dict[str, Any]) -> dict[str, Any]:
        # Only asked of drivers of global scope on a swarm manager; keelnet's is local.
        return {"Options": {}}

    def free_network(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    def discover(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}  # swarm node discovery: nothing keelnet's local networks need

    def gateway_check(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"SkipIPv4": False, "SkipIPv6": False}

    # --- endpoints -----------------------------------------------------------------------

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        network = self._network(body)
        endpoint_id = text(body, "EndpointID")
        interface = mapping(body, "Interface")
        address = text(interface, "Address", required=False)
        address6 = text(interface, "AddressIPv6", required=False)
        mac = text(interface, "MacAddress", required=False)
        existing = self.host.store.find_endpoint(endpoint_id)
        if existing is None:
            existing = self.host.create_endpoint(
                network.id,
                endpoint_id=endpoint_id,
                ip=address_of(address, "Address") if address else None,
                ipv6=address_of(address6, "AddressIPv6") if address6 else None,
                mac=mac.lower() or None,
            )
        # libnetwork takes only the fields it left empty; the MAC is the one keelnet chose.
        return {} if mac else {"Interface": {"MacAddress": existing.mac}}

    def endpoint_info(self, body: dict[str, Any]) -> dict[str, Any]:
        network = self._network(body)
        endpoint = self.host.endpoint(network.id, text(body, "EndpointID"))
        value = {
            "keelnet.network": network.name,
            "keelnet.driver": network.driver,
            "keelnet.dataplane": network.dataplane,
            "keelnet.sandbox": endpoint.sandbox,
        }
        if endpoint.host_ifname:
            value["keelnet.host_interface"] = endpoint.host_ifname
        return {"Value": value}

    def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        self.host.delete_endpoint(self._known_id(body), text(body, "EndpointID"))
        return {}

    def join(self, body: dict[str, Any]) -> dict[str, Any]:
        network = self._network(body)
        info = self.host.join(network.id, text(body, "EndpointID"), text(body, "SandboxKey"))
        return protocol.join_answer(info)

    def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        self.host.leave(self._known_id(body), text(body, "EndpointID"))
        return {}

    def program_external_connectivity(self, body: dict[str, Any]) -> dict[str, Any]:
        network = self._network(body)
        endpoint = self.host.endpoint(network.id, text(body, "EndpointID"))
        requests = [_port_request(b) for b in items(mapping(body, "Options"), protocol.PORT_MAP)]
        if not endpoint.sandbox:
            raise KeelnetError(f"endpoint {endpoint.id[:12]} is not joined to a sandbox")
        # Asked again (a replay, or a new gateway endpoint): the ports it names now.
        self.host.unpublish_all(network.id, endpoint.sandbox)
        if requests:
            self.host.publish_ports(network.id, endpoint.sandbox, requests)
        return {}

    def revoke_external_connectivity(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = self._known_id(body)
        endpoint = self.host.store.find_endpoint(text(body, "EndpointID"))
        if endpoint is not None and endpoint.sandbox:
            self.host.unpublish_all(network_id, endpoint.sandbox)
        return {}

    # --- helpers -------------------------------------------------------------------------

    def _network(self, body: dict[str, Any]) -> Network:
        """The keelnet network of the request's NetworkID, or a clear error."""
        network_id = text(body, "NetworkID")
        network = self.host.store.find_network(network_id)
        if network is None or network.id != network_id:
            raise NetworkNotFound(
                f"network {network_id[:12]} is not known to keelnet (state in "
                f"{self.host.state_dir}): it was made before that state or the state was "
                "lost; remove it (docker network rm) and create it again"
            )
        return network

    def _known_id(self, body: dict[str, Any]) -> str:
        """The NetworkID of a teardown request: an unknown network is already gone."""
        network_id = text(body, "NetworkID")
        network = self.host.store.find_network(network_id)
        return network.id if network is not None and network.id == network_id else network_id


def _hands_over(name: str) -> bool:
    try:
        return get_driver(name).hands_over
    except KeelnetError:
        return False


def _port_request(binding: Any) -> PortRequest:
    """One of libnetwork's PortBinding objects: Proto number, Port, HostIP, HostPort(End)."""
    if not isinstance(binding, dict):
        raise KeelnetError(f"{protocol.PORT_MAP} must hold objects")
    proto = protocol.PROTOCOL_NAMES.get(binding.get("Proto", 6))
    if proto is None:
        raise KeelnetError(f"unknown IP protocol number {binding.get('Proto')!r}")
    host_ip = binding.get("HostIP") or None
    if host_ip in ("0.0.0.0", "::"):
        host_ip = None  # Docker's "every address"
    end = binding.get("HostPortEnd") or None
    return PortRequest(
        container_port=binding.get("Port", 0),
        proto=proto,
        host_port=binding.get("HostPort") or 0,
        host_port_end=end,
        host_ip=host_ip,
    )
