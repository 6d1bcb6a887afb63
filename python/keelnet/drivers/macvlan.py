"""macvlan: each endpoint is a macvlan child of the parent, created inside the sandbox."""

from __future__ import annotations

import errno
from typing import ClassVar

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers import _parent, _veth
from keelnet.drivers.base import Driver, HostContext, NetworkRequest
from keelnet.errors import Conflict, InvalidOption, KernelError
from keelnet.kernel import links
from keelnet.model import Endpoint, Network


class LowerDeviceDriver(Driver):
    """Drivers whose endpoints are children of a parent link (macvlan, ipvlan)."""

    kind: ClassVar[str]
    mode_option: ClassVar[str]
    modes: ClassVar[dict[str, int]]
    default_mode: ClassVar[str]

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        super().validate(ctx, request)
        mode = request.options.get(self.mode_option, self.default_mode)
        if mode not in self.modes:
            raise InvalidOption(
                f"{self.name}: {self.mode_option}={mode!r}: use one of {', '.join(self.modes)}"
            )
        _parent.check(ctx, _parent.parse(request.options, self.name), self.name)

    def create_network(self, ctx: HostContext, network: Network) -> None:
        _parent.ensure_vlan(ctx, _parent.parse(network.options, self.name), network.id)

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        _parent.remove_vlan(ctx, _parent.parse(network.options, self.name), network.id)

    def link_attributes(self, network: Network) -> dict[str, object]:
        raise NotImplementedError

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        parent = _parent.parse(network.options, self.name)
        parent_index = links.link_index(ctx.ipr, parent.name)
        if parent_index is None:
            raise KernelError(f"{self.name}: parent {parent.name} is gone")
        fd = links.open_netns_fd(sandbox_path)
        try:
            ctx.ipr.link(
                "add",
                ifname=endpoint.ifname,
                kind=self.kind,
                link=parent_index,
                net_ns_fd=fd,
                **self.link_attributes(network),
                **({"address": endpoint.mac} if self.kind == "macvlan" else {}),
            )
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
            links.close_fd(fd)

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        _veth.configure_sandbox_interface(
            network, endpoint, sandbox_path, default_route=not network.internal
        )

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        _veth.remove_sandbox_interface(endpoint, sandbox_path)

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        return  # the child lives only in the sandbox; `leave` removed it


class MacvlanDriver(LowerDeviceDriver):
    name = "macvlan"
    kind = "macvlan"
    mode_option = "macvlan_mode"
    options = frozenset({_parent.PARENT, "macvlan_mode"})
    # linux/if_link.h MACVLAN_MODE_*
    modes: ClassVar[dict[str, int]] = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
    default_mode = "bridge"

    def link_attributes(self, network: Network) -> dict[str, object]:
        mode = network.options.get(self.mode_option, self.default_mode)
        return {"macvlan_mode": mode}
