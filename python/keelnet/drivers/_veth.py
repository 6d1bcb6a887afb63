"""Sandbox-side plumbing shared by drivers whose endpoints are one interface in the sandbox."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers.base import HostContext
from keelnet.errors import KernelError
from keelnet.kernel import links, rtnl
from keelnet.kernel.namespaces import iproute
from keelnet.kernel.ownership import Owner
from keelnet.model import Endpoint, JoinInfo, Network


def configure_sandbox_interface(
    owner: Owner,
    network: Network,
    endpoint: Endpoint,
    sandbox_path: str,
    *,
    default_route: bool,
    device_route: bool = False,
) -> None:
    """Addresses, link up and default routes for `endpoint` inside the sandbox.

    `default_route`: via the endpoint's gateways; `device_route`: straight out of the
    interface with no next hop (ipvlan l3, where the parent host routes).
    """
    try:
        with rtnl.Rtnl(sandbox_path) as sandbox:
            index = sandbox.link_index(endpoint.ifname)
            if index is None:
                raise KernelError(f"{endpoint.ifname} did not appear in the sandbox")
            v4, v6 = network.ipam_for(4), network.ipam_for(6)
            requests = [
                rtnl.set_link(endpoint.ifname, alias=owner.alias(network.id, endpoint.id), up=True)
            ]
            if endpoint.ip and v4:
                requests.append(rtnl.add_address(index, endpoint.ip, v4.prefix_length))
            if endpoint.ipv6 and v6:
                requests.append(rtnl.add_address(index, endpoint.ipv6, v6.prefix_length))
            sandbox.run(requests)
            for version, gateway, address in (
                (4, endpoint.gateway, endpoint.ip),
                (6, endpoint.ipv6_gateway, endpoint.ipv6),
            ):
                if default_route and gateway:
                    _default_route(sandbox, rtnl.add_default_route(index, gateway))
                elif device_route and address:
                    _default_route(sandbox, rtnl.add_default_route(index, None, version=version))
    except rtnl.RtnlError as exc:
        raise KernelError(f"configuring {endpoint.ifname} in the sandbox: {exc.strerror}") from exc


def _default_route(sandbox: rtnl.Rtnl, route: rtnl.Request) -> None:
    try:
        sandbox.run([route])
    except rtnl.RtnlError as exc:
        # Docker gives the first network joined the default route; later ones keep theirs.
        if exc.errno != errno.EEXIST:
            raise


def remove_sandbox_interface(endpoint: Endpoint, sandbox_path: str | None) -> None:
    """Delete the endpoint's interface in the sandbox; a gone sandbox or link is fine."""
    if sandbox_path is None:
        return
    try:
        with iproute(sandbox_path) as ipr:
            links.delete_link(ipr, endpoint.ifname)
    except FileNotFoundError:
        return  # the namespace itself is gone, and its interfaces with it


def take_into_sandbox(
    ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str, info: JoinInfo
) -> None:
    """What dockerd does with a plugin's Join answer: move the plugin's interface
    `info.src_name` from the host's namespace into the sandbox as `endpoint.ifname`, give
    it the endpoint's MAC and addresses, then the gateways and routes the plugin named."""
    index = links.link_index(ctx.ipr, info.src_name) if info.src_name else None
    if index is None:
        raise KernelError(
            f"the plugin named interface {info.src_name!r} for the endpoint, which is not in "
            "the host's namespace"
        )
    fd = links.open_netns_fd(sandbox_path)
    try:
        ctx.ipr.link("set", index=index, state="down")
        ctx.ipr.link("set", index=index, net_ns_fd=fd, ifname=endpoint.ifname)
    except NetlinkError as exc:
        raise links.netlink_error(f"moving {info.src_name} into the sandbox", exc) from exc
    finally:
        links.close_fd(fd)
    try:
        with iproute(sandbox_path) as ipr:
            moved = links.link_index(ipr, endpoint.ifname)
            if endpoint.mac and moved is not None:
                ipr.link("set", index=moved, address=endpoint.mac)
        configure_sandbox_interface(ctx.owner, network, endpoint, sandbox_path, default_route=False)
        with rtnl.Rtnl(sandbox_path) as sandbox:
            moved = sandbox.link_index(endpoint.ifname)
            assert moved is not None  # configure_sandbox_interface found it
            requests = [
                rtnl.add_default_route(moved, gateway)
                for gateway in (info.gateway, info.ipv6_gateway)
                if gateway
            ]
            requests += [
                rtnl.add_route(moved, route.destination, route.next_hop)
                for route in info.static_routes
            ]
            for request in requests:
                _default_route(sandbox, request)  # the first network's default route stays
    except (NetlinkError, rtnl.RtnlError) as exc:
        raise KernelError(f"setting up {endpoint.ifname} in the sandbox: {exc}") from exc


def give_back(ctx: HostContext, endpoint: Endpoint, sandbox_path: str | None, name: str) -> None:
    """Move a plugin's interface out of the sandbox into the host's namespace as `name`,
    unmarked, as dockerd does before DeleteEndpoint; gone already is fine."""
    if sandbox_path is None or not name:
        return
    host_path = ctx.netns_path or "/proc/self/ns/net"
    try:
        with iproute(sandbox_path) as ipr:
            current = links.endpoint_link(ipr, ctx.owner, endpoint.network_id, endpoint.id)
            index = links.link_index(ipr, current) if current else None
            if index is None:
                return
            fd = links.open_netns_fd(host_path)
            try:
                ipr.link("set", index=index, state="down", ifalias="")
                ipr.link("set", index=index, net_ns_fd=fd, ifname=name)
            finally:
                links.close_fd(fd)
    except FileNotFoundError:
        return  # the sandbox is gone, and the interface with it
    except NetlinkError as exc:
        raise links.netlink_error(f"moving {endpoint.ifname} out of the sandbox", exc) from exc
