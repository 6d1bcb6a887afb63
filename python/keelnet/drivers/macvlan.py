"""macvlan: each endpoint is a macvlan child of the parent, created inside the sandbox.

Port security (on unless `-o port_security=false`): on the userspace data plane the
switch checks every sandbox's TAP; on the kernel's, nftables checks what leaves the
parent from an endpoint's MAC (`nftables_guard.parent`): sandbox-to-sandbox frames of a
bridge-mode network, which the macvlan driver switches itself, and frames from a MAC no
endpoint has are beyond its reach.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers import _parent, _port_security, _userspace, _veth
from keelnet.drivers.base import DATAPLANE_OPTION, DATAPLANES, Driver, HostContext, NetworkRequest
from keelnet.errors import (
    Conflict,
    InvalidOption,
    KernelError,
    MissingParentInterface,
)
from keelnet.kernel import links, nftables, nftables_guard, rtnl
from keelnet.model import Endpoint, Network


class LowerDeviceDriver(Driver):
    """Drivers whose endpoints are children of a parent link (macvlan, ipvlan)."""

    kind: ClassVar[str]
    mode_option: ClassVar[str]
    modes: ClassVar[dict[str, int]]
    default_mode: ClassVar[str]
    dataplanes = ("kernel", "userspace")
    hands_over = True
    ipv6_only = True
    #: What to tell a user whose kernel lacks the module.
    userspace_instead: ClassVar[str]

    def choose_dataplane(
        self, ctx: HostContext, requested: str, options: Mapping[str, str] | None = None
    ) -> str:
        """`auto` takes the kernel where it has the module (and, for a VLAN parent, the
        VLAN device or 8021q), the userspace plane elsewhere."""
        if requested not in DATAPLANES:
            raise InvalidOption(
                f"invalid dataplane {requested!r}: use one of {', '.join(DATAPLANES)}"
            )
        kernel_has_it = links.kind_supported(self.kind, ctx.netns_path)
        kernel_serves_it = kernel_has_it and self._kernel_has_vlan_parent(ctx, options)
        if requested == "kernel" or (requested == "auto" and kernel_serves_it):
            if not kernel_has_it:
                raise _parent.missing_module(
                    f"{self.kind} networks on the kernel data plane",
                    self.kind,
                    self.userspace_instead,
                )
            return "kernel"
        return "userspace"

    def _kernel_has_vlan_parent(self, ctx: HostContext, options: Mapping[str, str] | None) -> bool:
        """Whether the kernel can give a VLAN parent `eth1.10` (it exists, or 8021q can
        make it); true for plain parents."""
        if not options or not options.get(_parent.PARENT):
            return True
        parent = _parent.parse(options, self.name)
        if parent.vlan is None or links.link_index(ctx.ipr, parent.name) is not None:
            return True
        return links.kind_supported("vlan", ctx.netns_path)

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        super().validate(ctx, request)
        _port_security.enabled(request.options)
        mode = request.options.get(self.mode_option, self.default_mode)
        if mode not in self.modes:
            raise InvalidOption(
                f"{self.name}: {self.mode_option}={mode!r}: use one of {', '.join(self.modes)}"
            )
        parent = _parent.parse(request.options, self.name)
        _parent.check(ctx, parent, self.name, tag_in_userspace=self.tags_in_userspace(ctx, request))

    def tags_in_userspace(self, ctx: HostContext, request: NetworkRequest) -> bool:
        """Whether the userspace data plane tags this network's VLAN (no VLAN device)."""
        return False

    def create_network(self, ctx: HostContext, network: Network) -> None:
        _parent.ensure_vlan(ctx, _parent.parse(network.options, self.name), network.id)

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        _parent.remove_vlan(ctx, _parent.parse(network.options, self.name), network.id)

    def link_attributes(self, network: Network) -> dict[str, object]:
        raise NotImplementedError

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        parent = _parent.parse(network.options, self.name)
        parent_index = links.link_index(ctx.ipr, parent.name)
        if parent_index is None:
            raise KernelError(f"{self.name}: parent {parent.name} is gone")
        # Without a sandbox the child waits in the host's namespace, marked, to be moved.
        fd = None if sandbox_path is None else links.open_netns_fd(sandbox_path)
        try:
            ctx.ipr.link(
                "add",
                ifname=endpoint.ifname,
                kind=self.kind,
                link=parent_index,
                **({} if fd is None else {"net_ns_fd": fd}),
                **self.link_attributes(network),
                **({"address": endpoint.mac} if self.kind == "macvlan" else {}),
                **ctx.owner.link_attributes(),
            )
            if fd is None:
                alias = ctx.owner.alias(network.id, endpoint.id)
                ctx.rtnl.run([rtnl.set_link(endpoint.ifname, alias=alias)])
        except rtnl.RtnlError as exc:
            links.delete_link(ctx.ipr, endpoint.ifname)
            raise KernelError(f"marking {endpoint.ifname}: {exc.strerror}") from exc
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise Conflict(f"interface {endpoint.ifname} exists in the sandbox") from exc
            passthru = network.options.get(self.mode_option) == "passthru"
            if passthru and exc.code == errno.EINVAL:
                raise Conflict(
                    f"{self.name} passthru: parent {parent.name} already carries its one endpoint"
                ) from exc
            raise links.netlink_error(f"creating {self.name} endpoint", exc) from exc
        finally:
            if fd is not None:
                links.close_fd(fd)

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        _veth.configure_sandbox_interface(ctx.owner, network, endpoint, sandbox_path)

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        _veth.remove_sandbox_interface(endpoint, sandbox_path)

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        # A child lives in its sandbox, where `leave` removes it; a handed-over one the
        # caller left (or moved back) in the host's namespace goes here.
        left = links.endpoint_link(ctx.ipr, ctx.owner, network.id, endpoint.id)
        if left is not None:
            links.delete_link(ctx.ipr, left)


#: macvlan modes on the userspace switch, as the forwarding rule of each sandbox's TAP:
#: bridge ports reach each other; vepa ports reach each other only when the outside switch
#: hairpins their frames back; private ports never reach each other.
USERSPACE_ISOLATION = {"bridge": "open", "vepa": "vepa", "private": "private"}


class MacvlanPlane(_userspace.SwitchPlane):
    """macvlan on the userspace data plane: keelnet's switch with an AF_PACKET port on the
    parent and a TAP per sandbox, each with the endpoint's own MAC and its mode's
    forwarding rule (USERSPACE_ISOLATION). A VLAN parent is tagged by the switch's port."""

    def __init__(self, ctx: HostContext, parent: _parent.Parent) -> None:
        self.parent = parent.name  # networks on the same parent (and VLAN) share the plane
        self.base = parent.base  # the interface the AF_PACKET port is on
        # A VLAN parent `eth1.10`: the port tags VLAN 10 itself (no VLAN device).
        super().__init__(
            ctx, lambda switch: switch.add_packet_port(parent.base, vni=0, vlan=parent.vlan)
        )


class MacvlanDriver(LowerDeviceDriver):
    name = "macvlan"
    kind = "macvlan"
    userspace_instead = (
        "the userspace data plane emulates bridge, private and vepa modes: dataplane=userspace"
    )
    mode_option = "macvlan_mode"
    options = frozenset({_parent.PARENT, "macvlan_mode", _port_security.OPTION})
    # linux/if_link.h MACVLAN_MODE_*
    modes: ClassVar[dict[str, int]] = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
    default_mode = "bridge"

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        super().validate(ctx, request)
        requested = request.options.get(DATAPLANE_OPTION, "auto")
        mode = request.options.get(self.mode_option, self.default_mode)
        dataplane = self.choose_dataplane(ctx, requested, request.options)
        if mode not in USERSPACE_ISOLATION and dataplane == "userspace":
            raise InvalidOption(
                f"macvlan: macvlan_mode={mode} is not emulated by the userspace data plane "
                f"(modes {', '.join(USERSPACE_ISOLATION)}; passthru needs the kernel's macvlan)"
            )

    def link_attributes(self, network: Network) -> dict[str, object]:
        mode = network.options.get(self.mode_option, self.default_mode)
        return {"macvlan_mode": mode}

    # --- the userspace emulation ---------------------------------------------------------

    def _plane(self, ctx: HostContext, network: Network) -> MacvlanPlane:
        """The network's running switch; networks on one parent share it (as kernel
        macvlan networks share the parent's macvlan port)."""
        planes = _userspace.planes_of(ctx)
        existing = planes.get(network.id)
        if isinstance(existing, MacvlanPlane):
            return existing
        parent = _parent.parse(network.options, self.name)
        for running in planes.running():
            if isinstance(running, MacvlanPlane) and running.parent == parent.name:
                planes.add(network.id, running)
                return running
        if links.link_index(ctx.ipr, parent.base) is None:
            raise MissingParentInterface(
                f"macvlan: parent interface {parent.base!r} does not exist"
            )
        return planes.add_new(network.id, MacvlanPlane(ctx, parent))

    def tags_in_userspace(self, ctx: HostContext, request: NetworkRequest) -> bool:
        parent = _parent.parse(request.options, self.name)
        requested = request.options.get(DATAPLANE_OPTION, "auto")
        dataplane = self.choose_dataplane(ctx, requested, request.options)
        return parent.vlan is not None and dataplane == "userspace"

    def create_network(self, ctx: HostContext, network: Network) -> None:
        if network.dataplane == "userspace":
            self._plane(ctx, network)  # tags a VLAN parent's frames itself
            return
        super().create_network(ctx, network)  # the VLAN device, for a VLAN parent
        guard = self._guard(network)
        if guard is not None:
            try:
                nftables.apply(ctx.netns_path, "\n".join(nftables_guard.rules(guard)) + "\n")
            except BaseException:
                super().delete_network(ctx, network)
                raise

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        if network.dataplane == "userspace":
            _userspace.planes_of(ctx).close(network.id)
            return
        guard = self._guard(network)
        if guard is not None:
            nftables.apply(ctx.netns_path, "\n".join(nftables_guard.remove(guard)) + "\n")
        super().delete_network(ctx, network)

    def _guard(self, network: Network) -> nftables_guard.Guard | None:
        """Where nftables checks the sandboxes of a kernel network under port security."""
        if network.dataplane != "kernel" or not _port_security.enabled(network.options):
            return None
        return nftables_guard.parent(network.id, _parent.parse(network.options, self.name).name)

    def port_guards(
        self, network: Network, endpoints: Sequence[Endpoint]
    ) -> dict[nftables_guard.Guard, tuple[nftables_guard.GuardedPort, ...]]:
        guard = self._guard(network)
        if guard is None:
            return {}
        return {guard: tuple(_port_security.guarded_port(e, e.ifname) for e in endpoints)}

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if network.dataplane == "kernel":
            super().create_endpoint(ctx, network, endpoint, sandbox_path)
            guard = self._guard(network)
            if guard is not None:
                port = _port_security.guarded_port(endpoint, endpoint.ifname)
                try:
                    nftables.apply(ctx.netns_path, nftables_guard.add_port(guard, port))
                except BaseException:
                    super().leave(ctx, network, endpoint, sandbox_path)
                    raise
            return
        plane = self._plane(ctx, network)
        parent_index = links.link_index(ctx.ipr, plane.base)
        if parent_index is None:
            raise KernelError(f"macvlan: parent {plane.base} is gone")
        mtu = ctx.ipr.link("get", index=parent_index)[0].get("mtu")
        _userspace.add_sandbox_tap(
            ctx,
            plane.switch,
            endpoint,
            sandbox_path,
            mtu=int(mtu) if mtu else None,
            isolation=USERSPACE_ISOLATION[network.options.get(self.mode_option, self.default_mode)],
            port_security=_port_security.enabled(network.options),
        )

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        guarded = self._guard(network) is not None
        _veth.configure_sandbox_interface(
            ctx.owner, network, endpoint, sandbox_path, eui64_link_local=guarded
        )

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if network.dataplane == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, MacvlanPlane):
                _userspace.remove_sandbox_tap(plane.switch, endpoint)
        super().leave(ctx, network, endpoint, sandbox_path)

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        if network.dataplane == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, MacvlanPlane):
                _userspace.remove_sandbox_tap(plane.switch, endpoint)
        guard = self._guard(network)
        if guard is not None:
            port = _port_security.guarded_port(endpoint, endpoint.ifname)
            nftables.apply(ctx.netns_path, nftables_guard.remove_port(guard, port))
        super().delete_endpoint(ctx, network, endpoint)
