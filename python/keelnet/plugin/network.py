"""keelnet's drivers behind Docker's `NetworkDriver` protocol (`docker network create -d keelnet`).

dockerd's IPAM (its own, or keelnet's: `--ipam-driver keelnet`) has already chosen every
subnet and address; each Docker network becomes a keelnet network of the Host with
`external` IPAM, with Docker's network id as its id and `docker-<id12>` as its name. The
keelnet driver is chosen with `-o keelnet.driver=NAME` (default `bridge`); every other `-o`
goes to that driver (`dataplane=userspace`, `parent=eth1`, `com.docker.network.bridge.*`,
...). Endpoints follow libnetwork's flow: CreateEndpoint leaves the interface in the host's
namespace, Join names it to dockerd, which moves and sets it up; ProgramExternalConnectivity
publishes the container's ports. Every call is one Host operation: all or nothing.

An overlay network (`-o keelnet.driver=overlay`, the plugin started with `--store
etcd://...`) is a global network of the cluster store under the same id and name, so
keelnet hosts of the cluster connect to it by that name: Docker's subnet and gateway are
its own, and each container's address, chosen by dockerd's IPAM, is taken in the cluster
store at CreateEndpoint (keelnet's IPAM, `--ipam-driver keelnet`, chooses one no host of
the cluster holds). Its containers reach the overlay only: keelnet offers no way out and
tells dockerd not to add its docker_gwbridge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keelnet.drivers import driver_names, get_driver
from keelnet.errors import (
    AddressInUse,
    EndpointNotFound,
    InvalidOption,
    InvalidRequest,
    KeelnetError,
    NetworkNotFound,
    UnknownDriver,
)
from keelnet.host import Host
from keelnet.model import DEFAULT_IPAM, EXTERNAL_IPAM, Endpoint, Network, PortRequest
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
        # Local, overlay included: dockerd keeps a global-scope network in a cluster store
        # of its own, which only swarm gives it (else "This node is not a swarm manager");
        # keelnet keeps the overlay's cluster state in etcd itself.
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
        if self._find(network_id) is not None:
            return {}  # dockerd replays a create it did not see answered: already made
        clustered = get_driver(driver).scope == "global"
        if clustered and self.host.global_store is None:
            raise InvalidRequest(
                f"{DRIVER_OPTION}={driver}: {driver} networks span the hosts of a cluster "
                "store; start the plugin as a member of one: keelnet --store "
                "etcd://HOST:PORT plugin"
            )
        self.host.create_network(
            network_name(network_id),
            driver=driver,
            subnet=subnets,
            gateway=gateways,
            aux_addresses=aux,
            ipv6=flag(options, protocol.ENABLE_IPV6),
            internal=flag(options, protocol.INTERNAL),
            options=generic,
            # A global network's addresses are the cluster store's (taken at CreateEndpoint).
            ipam_driver=DEFAULT_IPAM if clustered else EXTERNAL_IPAM,
            network_id=network_id,
        )
        return {}

    def _check_driver(self, name: str) -> None:
        if not _hands_over(name):
            serving = ", ".join(n for n in driver_names() if _hands_over(n))
            raise UnknownDriver(
                f"{DRIVER_OPTION}={name}: keelnet serves Docker with the drivers {serving}"
            )

    def _find(self, network_id: str) -> Network | None:
        """The keelnet network of Docker's network id: local, or global in the cluster."""
        found = self.host.store.find_network(network_id)
        if found is None and self.host.global_store is not None:
            found = self.host.global_store.find_network(network_id)
        return found if found is not None and found.id == network_id else None

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
        existing = self._endpoint(network, endpoint_id)
        if existing is None:
            try:
                existing = self.host.create_endpoint(
                    network.id,
                    endpoint_id=endpoint_id,
                    ip=address_of(address, "Address") if address else None,
                    ipv6=address_of(address6, "AddressIPv6") if address6 else None,
                    mac=mac.lower() or None,
                )
            except AddressInUse as exc:
                if network.scope != "global":
                    raise
                raise AddressInUse(
                    f"{exc}: dockerd's own IPAM does not know the cluster's addresses; create "
                    "the network with keelnet's (--ipam-driver keelnet), which picks free "
                    "ones, or give the container a free --ip"
                ) from None
        # libnetwork takes only the fields it left empty; the MAC is the one keelnet chose.
        return {} if mac else {"Interface": {"MacAddress": existing.mac}}

    def endpoint_info(self, body: dict[str, Any]) -> dict[str, Any]:
        network = self._network(body)
        endpoint = self.host.endpoint(network.id, text(body, "EndpointID"))
        value: dict[str, Any] = {
            "keelnet.network": network.name,
            "keelnet.driver": network.driver,
            "keelnet.dataplane": network.dataplane,
            "keelnet.sandbox": endpoint.sandbox,
        }
        if endpoint.host_ifname:
            value["keelnet.host_interface"] = endpoint.host_ifname
        ports = self.host.store.ports(network_id=network.id, sandbox=endpoint.sandbox)
        if endpoint.sandbox and ports:
            # What libnetwork's bridge driver answers. dockerd (20.10 up to today's moby)
            # builds a container's NetworkSettings.Ports, which `docker ps`/`docker port`
            # show, only from Go values of its own drivers' (a type assertion on
            # []types.PortBinding); from a plugin's JSON it takes nothing.
            value[protocol.PORT_MAP] = [b for port in ports for b in protocol.port_bindings(port)]
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
        if network.scope == "global":  # no way out of the host: nothing to publish through
            if requests:
                raise InvalidOption(
                    f"{network.driver} network {network.name} publishes no ports: publish "
                    "them on a keelnet bridge network the container is connected to as well"
                )
            return {}
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
        network = self._find(network_id)
        if network is None:
            raise NetworkNotFound(
                f"network {network_id[:12]} is not known to keelnet (state in "
                f"{self.host.state_dir}): it was made before that state or the state was "
                "lost; remove it (docker network rm) and create it again"
            )
        return network

    def _endpoint(self, network: Network, endpoint_id: str) -> Endpoint | None:
        try:
            return self.host.endpoint(network.id, endpoint_id)
        except EndpointNotFound:
            return None

    def _known_id(self, body: dict[str, Any]) -> str:
        """The NetworkID of a teardown request: an unknown network is already gone."""
        network_id = text(body, "NetworkID")
        network = self._find(network_id)
        return network.id if network is not None else network_id


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
