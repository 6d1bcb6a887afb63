"""Sandbox-side plumbing shared by drivers whose endpoints are one interface in the sandbox."""

from __future__ import annotations

import contextlib

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
    eui64_link_local: bool = False,
) -> None:
    """Addresses and link up for `endpoint` inside the sandbox. Its default routes are the
    Host's to set, across the sandbox's endpoints (`_gateway`). `eui64_link_local`: the
    link-local address from the MAC, whatever the namespace's default (port security
    allows that one)."""
    try:
        with rtnl.Rtnl(sandbox_path) as sandbox:
            index = sandbox.link_index(endpoint.ifname)
            if index is None:
                raise KernelError(f"{endpoint.ifname} did not appear in the sandbox")
            if eui64_link_local:
                mode = rtnl.set_addr_gen_mode(endpoint.ifname, rtnl.ADDR_GEN_MODE_EUI64)
                with contextlib.suppress(rtnl.RtnlError):  # a kernel without IPv6
                    sandbox.run([mode])
            v4, v6 = network.ipam_for(4), network.ipam_for(6)
            requests = [
                rtnl.set_link(endpoint.ifname, alias=owner.alias(network.id, endpoint.id), up=True)
            ]
            if endpoint.ip and v4:
                requests.append(rtnl.add_address(index, endpoint.ip, v4.prefix_length))
            if endpoint.ipv6 and v6:
                requests.append(rtnl.add_address(index, endpoint.ipv6, v6.prefix_length))
            sandbox.run(requests)
    except rtnl.RtnlError as exc:
        raise KernelError(f"configuring {endpoint.ifname} in the sandbox: {exc.strerror}") from exc


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
    it the endpoint's MAC and addresses, then the static routes the plugin named besides
    default ones (those, like every endpoint's, are the Host's to choose: `_gateway`)."""
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
        configure_sandbox_interface(ctx.owner, network, endpoint, sandbox_path)
        with rtnl.Rtnl(sandbox_path) as sandbox:
            moved = sandbox.link_index(endpoint.ifname)
            assert moved is not None  # configure_sandbox_interface found it
            routes = [r for r in info.static_routes if not r.destination.endswith("/0")]
            if routes:
                sandbox.run([rtnl.add_route(moved, r.destination, r.next_hop) for r in routes])
    except (NetlinkError, rtnl.RtnlError) as exc:
        raise KernelError(f"setting up {endpoint.ifname} in the sandbox: {exc}") from exc


def give_back(ctx: HostContext, endpoint: Endpoint, sandbox_path: str | None, name: str) -> None:
    """Move a plugin's interface out of the sandbox into the host's namespace as `name`,
    unmarked, as dockerd does before DeleteEndpoint; gone already is fine."""
    if sandbox_path is None or not name:
        return
    host_path = ctx.netns_path or links.OWN_NETNS
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
