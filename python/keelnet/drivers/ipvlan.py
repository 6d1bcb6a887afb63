"""ipvlan: endpoints share the parent's MAC; l2 or l3 mode (`ipvlan_mode`).

Kernel ipvlan where the kernel has the module. Where it does not, the userspace data
plane emulates it (`keelnet.dataplane_ipvlan`): an AF_PACKET socket on the parent and a
TAP with the parent's MAC in each sandbox, demultiplexed by IP address. `auto` picks the
kernel module when it exists, the emulation otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
from typing import ClassVar

from keelnet.dataplane_ipvlan import Ipvlan
from keelnet.drivers import _gateway, _parent, _port_security, _userspace, _veth
from keelnet.drivers.base import DATAPLANE_OPTION, HostContext, NetworkRequest
from keelnet.drivers.macvlan import LowerDeviceDriver
from keelnet.errors import (
    Conflict,
    DataplaneError,
    InvalidOption,
    KeelnetError,
    KernelError,
    MissingParentInterface,
    NotFound,
)
from keelnet.kernel import links, nftables
from keelnet.kernel.namespaces import iproute, write_sysctl
from keelnet.model import Endpoint, Network

USERSPACE_AVAILABLE = True
_IFF_NOARP = 0x80  # linux/if.h
#: Where the emulation keeps the host's own stack off its sandboxes' packets.
STEERING_FAMILY = "netdev"


class IpvlanDriver(LowerDeviceDriver):
    name = "ipvlan"
    kind = "ipvlan"
    userspace_instead = "the userspace data plane emulates it: dataplane=userspace (or auto)"
    mode_option = "ipvlan_mode"
    options = frozenset({_parent.PARENT, "ipvlan_mode", _port_security.OPTION})
    modes: ClassVar[dict[str, int]] = {"l2": 0, "l3": 1}  # linux/if_link.h IPVLAN_MODE_*
    default_mode = "l2"
    shares_parent_mac = True

    def tags_in_userspace(self, ctx: HostContext, request: NetworkRequest) -> bool:
        parent = _parent.parse(request.options, self.name)
        requested = request.options.get(DATAPLANE_OPTION, "auto")
        dataplane = self.choose_dataplane(ctx, requested, request.options)
        if parent.vlan is None or dataplane != "userspace":
            return False
        if request.options.get(self.mode_option, self.default_mode) != "l2":
            raise InvalidOption(
                f"ipvlan: parent {parent.name}: the userspace data plane tags VLANs in l2 "
                "mode only (l3 routes through the host, which would need the VLAN device)"
            )
        return True

    def uses_gateway(self, network: Network) -> bool:
        # l3: the parent host routes; sandboxes get a device default route, no gateway.
        return self._mode(network) != "l3"

    def default_routes(self, network: Network, endpoint: Endpoint) -> tuple[str | None, ...]:
        if self.uses_gateway(network) or network.internal:
            return super().default_routes(network, endpoint)
        return (
            _gateway.DEVICE if endpoint.ip else None,
            _gateway.DEVICE if endpoint.ipv6 else None,
        )

    def _mode(self, network: Network) -> str:
        return network.options.get(self.mode_option, self.default_mode)

    def link_attributes(self, network: Network) -> dict[str, object]:
        return {"ipvlan_mode": self.modes[self._mode(network)]}

    # --- the userspace emulation ---------------------------------------------------------

    def _plane(self, ctx: HostContext, network: Network) -> Ipvlan:
        """The network's running emulation, opened when this Host has none yet (after a
        restart, or on the first use by this process)."""
        planes = _userspace.planes_of(ctx)
        existing = planes.get(network.id)
        if isinstance(existing, Ipvlan):
            return existing
        parent = _parent.parse(network.options, self.name)
        mode = self._mode(network)
        for running in planes.running():
            if not isinstance(running, Ipvlan):
                continue
            if (running.parent, running.vlan) == (parent.base, parent.vlan):
                # One ipvlan port per parent, with one mode, as in the kernel: networks on
                # the same parent share it (so l3 routes between their subnets).
                if running.mode != mode:
                    raise Conflict(
                        f"ipvlan: parent {parent.name} already carries {running.mode} "
                        f"networks; one mode per parent"
                    )
                planes.add(network.id, running)
                return running
        # A VLAN parent is tagged here, on its base interface: no VLAN device.
        if links.link_index(ctx.ipr, parent.base) is None:
            raise MissingParentInterface(f"ipvlan: parent interface {parent.base!r} does not exist")
        try:
            plane = Ipvlan(parent.base, netns=ctx.netns_path, mode=mode, vlan=parent.vlan)
        except DataplaneError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise MissingParentInterface(
                    f"ipvlan: parent interface {parent.base!r} does not exist"
                ) from exc
            raise
        return planes.add_new(network.id, plane, start=Ipvlan.start)

    def create_network(self, ctx: HostContext, network: Network) -> None:
        if network.dataplane == "kernel":
            super().create_network(ctx, network)  # the VLAN device, for a VLAN parent
        else:
            self._plane(ctx, network)

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        if network.dataplane == "kernel":
            super().delete_network(ctx, network)
            return
        _userspace.planes_of(ctx).close(network.id)
        sync_steering(ctx, network)

    def endpoint_mac(
        self, ctx: HostContext, network: Network, requested: str | None, ip: str | None = None
    ) -> str:
        """Every ipvlan slave carries its parent's MAC: that is what ipvlan is."""
        parent = _parent.parse(network.options, self.name)
        index = links.link_index(ctx.ipr, parent.base)
        if index is None:
            raise MissingParentInterface(f"ipvlan: parent interface {parent.base!r} is gone")
        mac = str(ctx.ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")).lower()
        if requested is not None and requested.lower() != mac:
            # Docker refuses this too.
            raise InvalidOption(
                f"ipvlan endpoints carry the parent's MAC address ({mac}); "
                "a MAC address cannot be set for them"
            )
        return mac

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        if network.dataplane == "kernel":
            super().create_endpoint(ctx, network, endpoint, sandbox_path)
            return
        addresses = [a for a in (endpoint.ip, endpoint.ipv6) if a is not None]
        if network.ipam_for(6) is not None:
            addresses.append(_link_local(endpoint))
        plane = self._plane(ctx, network)
        try:
            plane.add_slave(
                endpoint.id,
                sandbox=sandbox_path,
                addresses=addresses,
                ifname=endpoint.ifname,
                port_security=_port_security.enabled(network.options),
            )
        except DataplaneError as exc:
            if exc.errno == errno.EEXIST:
                raise Conflict(f"interface {endpoint.ifname} exists in the sandbox") from exc
            raise
        try:
            sync_steering(ctx, network)
        except BaseException:
            plane.remove_slave(endpoint.id)
            raise

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        if network.dataplane == "userspace":
            _prepare_slave(network, endpoint, sandbox_path, l3=self._mode(network) == "l3")
        _veth.configure_sandbox_interface(ctx.owner, network, endpoint, sandbox_path)

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if network.dataplane == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, Ipvlan):
                with contextlib.suppress(NotFound):  # already gone: teardown is idempotent
                    plane.remove_slave(endpoint.id)
                sync_steering(ctx, network)
        # Kernel child, or a TAP another process still holds: delete it in the sandbox.
        _veth.remove_sandbox_interface(endpoint, sandbox_path)


def _link_local(endpoint: Endpoint) -> str:
    """The slave's link-local address. Every slave has the parent's MAC, so the EUI-64
    link-local would be the same for all (the kernel gives each slave a dev_id for that);
    here one derived from the endpoint id: known in advance, so the emulation delivers
    frames for it and port security allows it."""
    interface_id = bytearray(hashlib.sha256(endpoint.id.encode()).digest()[:8])
    interface_id[0] &= ~0x02  # not universal (RFC 4291 modified EUI-64 u bit)
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + bytes(interface_id)))


def _prepare_slave(network: Network, endpoint: Endpoint, sandbox_path: str, *, l3: bool) -> None:
    """What kernel ipvlan slaves have and a TAP lacks. NOARP in l3 mode. On IPv6 networks
    the link-local address of `_link_local` (addr_gen_mode none: the kernel makes none, so
    the TAP is taken down and up to drop the one it made), none on IPv4-only ones."""
    ifname = endpoint.ifname
    try:
        if network.ipam_for(6) is None:
            with contextlib.suppress(OSError):  # a kernel without IPv6 has none to disable
                write_sysctl(sandbox_path, f"net/ipv6/conf/{ifname}/disable_ipv6", "1")
        else:
            write_sysctl(sandbox_path, f"net/ipv6/conf/{ifname}/addr_gen_mode", "1")
        with iproute(sandbox_path) as ipr:
            index = links.link_index(ipr, ifname)
            if index is None:
                raise KernelError(f"{ifname} did not appear in the sandbox")
            if l3:
                ipr.link("set", index=index, flags=_IFF_NOARP, change=_IFF_NOARP)
            if network.ipam_for(6) is not None:
                ipr.link("set", index=index, state="down")
                ipr.link("set", index=index, state="up")
                links.add_address(ipr, index, _link_local(endpoint), 64)
    except KeelnetError:
        raise
    except Exception as exc:
        raise KernelError(f"preparing {ifname} in the sandbox: {exc}") from exc


def sync_steering(ctx: HostContext, network: Network) -> None:
    """Make the host's own stack ignore packets for the network's sandbox addresses, as
    kernel ipvlan (which takes them off the parent) does: without it a host that forwards
    would answer them too, with ICMP errors or duplicates. A netdev ingress chain on the
    parent drops them after the emulation's AF_PACKET socket has seen them (packet taps
    run before ingress hooks). One table per network, so a process only ever rewrites
    the networks it runs; replaced whole, atomically."""
    subnets = [ipaddress.ip_network(config.subnet) for config in network.ipam]
    owned: dict[int, list[str]] = {4: [], 6: []}
    plane = _userspace.planes_of(ctx).get(network.id)
    # A tagged VLAN never reaches the host's stack (it has no VLAN device): nothing to do.
    if isinstance(plane, Ipvlan) and not plane.closed and plane.vlan is None:
        for slave in plane.stats()["slaves"].values():
            for text in slave["addresses"] if slave["failed"] is None else ():
                address = ipaddress.ip_address(text)
                if any(address in subnet for subnet in subnets):
                    owned[address.version].append(text)
    rules = [
        f"    {family} daddr {{ {', '.join(addresses)} }} drop\n"
        for family, addresses in (("ip", owned[4]), ("ip6", owned[6]))
        if addresses
    ]
    family, name = STEERING_FAMILY, f"keelnet-ipvlan-{network.id[:12]}"
    # add-then-delete: removes the table whether it exists or not
    script = f"add table {family} {name}\ndelete table {family} {name}\n"
    if rules and isinstance(plane, Ipvlan):
        hook = f'type filter hook ingress device "{plane.parent}" priority 0; policy accept;'
        script += f"table {family} {name} {{\n  chain ingress {{\n    {hook}\n"
        script += "".join(rules) + "  }\n}\n"
    nftables.apply(ctx.netns_path, script)
