"""bridge: a Linux bridge holding the gateway address, one veth pair per endpoint.

With `dataplane=userspace`: keelnet's switch instead, a TAP per sandbox and a host-side
TAP named like the bridge holding the gateway address (so routing, NAT and the firewall
rules work on it as on a bridge). `enable_icc=false` isolates the sandboxes' ports
(the kernel bridge's port isolation; the switch's private ports): each reaches the
gateway, never another sandbox, also not through the host's routing.

Port security (`_port_security`, on unless `-o port_security=false`): each sandbox sends
only from its MAC and addresses (nftables bridge rules on the kernel bridge, a check per
port in the switch). Endpoint MACs are static FDB entries either way: learning never
moves them (the kernel bridge's ports learn nothing at all under port security).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers import _port_security, _userspace, _veth
from keelnet.drivers.base import (
    Driver,
    HostContext,
    NetworkRequest,
    option_bool,
)
from keelnet.errors import Conflict, InvalidOption, KernelError
from keelnet.kernel import links, nftables, nftables_guard, rtnl
from keelnet.kernel.namespaces import write_sysctl
from keelnet.kernel.nftables import BridgeRules
from keelnet.model import Endpoint, Network, PortMapping

NAME = "com.docker.network.bridge.name"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
ICC = "com.docker.network.bridge.enable_icc"
MTU = "com.docker.network.driver.mtu"


def mtu_option(options: Mapping[str, str]) -> int | None:
    value = options.get(MTU)
    if value is None or value in ("", "0"):
        return None
    if not value.isdigit() or not 68 <= int(value) <= 65535:
        raise InvalidOption(f"option {MTU}: {value!r} is not an MTU between 68 and 65535")
    return int(value)


class BridgePlane(_userspace.SwitchPlane):
    """A userspace bridge: keelnet's switch with the gateway TAP in the host namespace."""

    def __init__(self, ctx: HostContext, gateway_device: str, mtu: int | None) -> None:
        super().__init__(ctx, lambda switch: switch.add_tap(gateway_device, vni=0, mtu=mtu))


class BridgeDriver(Driver):
    name = "bridge"
    options = frozenset({NAME, MASQUERADE, ICC, MTU, _port_security.OPTION})
    dataplanes = ("kernel", "userspace")
    gateway_on_host = True
    hands_over = True
    ipv6_only = True

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        super().validate(ctx, request)
        mtu_option(request.options)
        option_bool(request.options, MASQUERADE, True)
        option_bool(request.options, ICC, True)
        _port_security.enabled(request.options)
        bridge = request.options.get(NAME)
        if bridge is not None:
            links.check_ifname(bridge, f"option {NAME}:", InvalidOption)
            if links.link_index(ctx.ipr, bridge) is not None:
                raise Conflict(f"option {NAME}: interface {bridge!r} already exists")

    def kernel_name(self, network_id: str, options: Mapping[str, str]) -> str:
        return options.get(NAME) or f"kn-{network_id[:12]}"

    def create_network(self, ctx: HostContext, network: Network) -> None:
        bridge = self._bridge(network)
        mtu = mtu_option(network.options)
        userspace = network.dataplane == "userspace"
        try:
            if userspace:
                planes = _userspace.planes_of(ctx)
                if links.link_index(ctx.ipr, bridge) is not None:
                    raise Conflict(
                        f"the userspace bridge {bridge} of {network.name} runs in another process"
                    )
                planes.add_new(network.id, BridgePlane(ctx, bridge, mtu))
            else:
                # A fixed MAC: otherwise the bridge takes its ports' lowest MAC, which
                # changes under the sandboxes' feet as endpoints come and go.
                ctx.ipr.link(
                    "add",
                    ifname=bridge,
                    kind="bridge",
                    address=links.random_mac(),
                    **({"mtu": mtu} if mtu else {}),
                    **ctx.owner.link_attributes(),
                )
            index = links.link_index(ctx.ipr, bridge)
            if index is None:
                raise KernelError(f"bridge {bridge} vanished after creation")
            ctx.ipr.link("set", index=index, ifalias=ctx.owner.alias(network.id))
            for config in network.ipam:
                if config.gateway:
                    links.add_address(ctx.ipr, index, config.gateway, config.prefix_length)
            if network.ipv6:
                # Forwarded packets are resolved with the bridge's link-local address as
                # source; while that is tentative (DAD, ~1 s) the kernel sends no
                # solicitation and IPv6 to new sandboxes silently stalls.
                write_sysctl(ctx.netns_path, f"net/ipv6/conf/{bridge}/accept_dad", "0")
            else:  # an IPv4-only network gives the host no IPv6 on it (as Docker does)
                write_sysctl(ctx.netns_path, f"net/ipv6/conf/{bridge}/disable_ipv6", "1")
            ctx.ipr.link("set", index=index, state="up")
            # Published ports are reachable from the host's loopback (Docker's hairpin mode).
            write_sysctl(ctx.netns_path, f"net/ipv4/conf/{bridge}/route_localnet", "1")
            if not option_bool(network.options, ICC, True):
                # A redirect would point one sandbox at another, which icc forbids.
                write_sysctl(ctx.netns_path, f"net/ipv4/conf/{bridge}/send_redirects", "0")
        except NetlinkError as exc:
            self._remove(ctx, network)
            raise links.netlink_error(f"creating bridge {bridge}", exc) from exc
        except BaseException:
            self._remove(ctx, network)
            raise
        # Host-wide switches, left on when the network goes (Docker does the same).
        if not network.internal:
            write_sysctl(ctx.netns_path, "net.ipv4.ip_forward", "1")
            if network.ipv6:
                write_sysctl(ctx.netns_path, "net.ipv6.conf.all.forwarding", "1")

    def _remove(self, ctx: HostContext, network: Network) -> None:
        if network.dataplane == "userspace":
            _userspace.planes_of(ctx).close(network.id)  # its gateway TAP vanishes
        else:
            links.delete_link(ctx.ipr, self._bridge(network))

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        self._remove(ctx, network)

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if network.dataplane == "userspace":
            self._create_tap_endpoint(ctx, network, endpoint, sandbox_path)
            return
        bridge = self._bridge(network)
        bridge_index = ctx.rtnl.link_index(bridge)
        if bridge_index is None:
            raise KernelError(f"bridge {bridge} of {network.name} is missing")
        assert endpoint.host_ifname is not None
        fd = None if sandbox_path is None else links.open_netns_fd(sandbox_path)
        try:
            ctx.rtnl.run(
                [
                    rtnl.add_veth(
                        endpoint.host_ifname,
                        master=bridge_index,
                        peer_ifname=endpoint.ifname,
                        peer_netns_fd=fd,
                        peer_mac=endpoint.mac,
                        mtu=mtu_option(network.options),
                        group=ctx.owner.group,
                    )
                ]
            )
        except rtnl.RtnlError as exc:
            if exc.errno == errno.EEXIST:
                raise Conflict(
                    f"interface {endpoint.ifname} or {endpoint.host_ifname} already exists"
                ) from exc
            raise KernelError(f"creating veth pair: {exc.strerror}") from exc
        finally:
            if fd is not None:
                links.close_fd(fd)
        self._guard_bridge_port(ctx, network, endpoint)
        if sandbox_path is None:  # the container's end waits here, marked, to be moved
            try:
                alias = ctx.owner.alias(network.id, endpoint.id)
                ctx.rtnl.run([rtnl.set_link(endpoint.ifname, alias=alias)])
            except rtnl.RtnlError as exc:
                self.delete_endpoint(ctx, network, endpoint)
                raise KernelError(f"marking {endpoint.ifname}: {exc.strerror}") from exc

    def _guard_bridge_port(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        """The veth's bridge port: marked and up; its MAC static; under port security it
        learns nothing, gets no unknown-unicast floods and is checked by nftables; with
        icc off it is isolated. Before the sandbox's end comes up (at join), so no frame
        ever passes unchecked."""
        assert endpoint.host_ifname is not None
        ifname = endpoint.host_ifname
        guarded = _port_security.enabled(network.options)
        try:
            index = ctx.rtnl.link_index(ifname)
            if index is None:
                raise KernelError(f"{ifname} vanished after creation")
            alias = ctx.owner.alias(network.id, endpoint.id)
            ctx.rtnl.run(
                [
                    rtnl.set_link(ifname, alias=alias, up=True),
                    rtnl.set_bridge_port(
                        ifname,
                        learning=not guarded,
                        unicast_flood=not guarded,
                        isolated=not option_bool(network.options, ICC, True),
                    ),
                    rtnl.add_static_fdb(index, endpoint.mac),
                ]
            )
            # A bridge port needs no addresses of its own; without this, its link-local
            # address and routes appear a second later, when DAD ends.
            write_sysctl(ctx.netns_path, f"net/ipv6/conf/{ifname}/disable_ipv6", "1")
            if guarded:
                script = nftables_guard.add_port(nftables_guard.BRIDGE, _guarded_port(endpoint))
                nftables.apply(ctx.netns_path, script)
        except (NetlinkError, OSError, KernelError) as exc:  # RtnlError is an OSError
            self.delete_endpoint(ctx, network, endpoint)
            if isinstance(exc, KernelError):
                raise
            raise KernelError(f"setting up {ifname}: {exc}") from exc

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        _veth.configure_sandbox_interface(
            ctx.owner,
            network,
            endpoint,
            sandbox_path,
            eui64_link_local=_port_security.enabled(network.options),
        )

    def _create_tap_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        plane = _userspace.planes_of(ctx).get(network.id)
        if not isinstance(plane, BridgePlane):
            raise KernelError(f"the userspace bridge of {network.name} is not running here")
        _userspace.add_sandbox_tap(
            ctx,
            plane.switch,
            endpoint,
            sandbox_path,
            mtu=mtu_option(network.options),
            # The gateway TAP stays open: isolated sandboxes still reach it.
            isolation="open" if option_bool(network.options, ICC, True) else "private",
            port_security=_port_security.enabled(network.options),
        )

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if network.dataplane == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, BridgePlane):
                _userspace.remove_sandbox_tap(plane.switch, endpoint)
            _veth.remove_sandbox_interface(endpoint, sandbox_path)
        # Kernel: deleting the host end removes the pair; the sandbox needs nothing else.

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        if network.dataplane == "userspace":
            # A handed-over TAP the caller moved back into the host's namespace.
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, BridgePlane):
                _userspace.remove_sandbox_tap(plane.switch, endpoint)
        if endpoint.host_ifname:
            links.delete_link(ctx.ipr, endpoint.host_ifname)
            if _port_security.enabled(network.options):
                script = nftables_guard.remove_port(nftables_guard.BRIDGE, _guarded_port(endpoint))
                nftables.apply(ctx.netns_path, script)

    def program_external_connectivity(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, port: PortMapping
    ) -> None:
        if network.internal:
            raise InvalidOption(f"network {network.name} is internal: ports cannot be published")

    def firewall(self, network: Network, ports: tuple[PortMapping, ...]) -> BridgeRules:
        return BridgeRules(
            network_id=network.id,
            bridge=self._bridge(network),
            subnets=tuple(c.subnet for c in network.ipam),
            internal=network.internal,
            masquerade=option_bool(network.options, MASQUERADE, True),
            ports=ports,
            icc=option_bool(network.options, ICC, True),
            port_security=_port_security.enabled(network.options),
        )

    def port_guards(
        self, network: Network, endpoints: Sequence[Endpoint]
    ) -> dict[nftables_guard.Guard, tuple[nftables_guard.GuardedPort, ...]]:
        if not _port_security.enabled(network.options) or network.dataplane != "kernel":
            return {}
        ports = tuple(_guarded_port(endpoint) for endpoint in endpoints if endpoint.host_ifname)
        return {nftables_guard.BRIDGE: ports}

    def _bridge(self, network: Network) -> str:
        return network.kernel_name or self.kernel_name(network.id, network.options)


def _guarded_port(endpoint: Endpoint) -> nftables_guard.GuardedPort:
    assert endpoint.host_ifname is not None
    return _port_security.guarded_port(endpoint, endpoint.host_ifname)
