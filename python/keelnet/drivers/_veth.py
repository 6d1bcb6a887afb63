"""Sandbox-side plumbing shared by drivers whose endpoints are one interface in the sandbox."""

from __future__ import annotations

import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from keelnet.errors import KernelError
from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute
from keelnet.model import Endpoint, Network


def configure_sandbox_interface(
    network: Network, endpoint: Endpoint, sandbox_path: str, *, default_route: bool
) -> None:
    """Addresses, link up and default routes for `endpoint` inside the sandbox."""
    with iproute(sandbox_path) as ipr:
        index = links.link_index(ipr, endpoint.ifname)
        if index is None:
            raise KernelError(f"{endpoint.ifname} did not appear in the sandbox")
        try:
            v4, v6 = network.ipam_for(4), network.ipam_for(6)
            if endpoint.ip and v4:
                links.add_address(ipr, index, endpoint.ip, v4.prefix_length)
            if endpoint.ipv6 and v6:
                links.add_address(ipr, index, endpoint.ipv6, v6.prefix_length)
            ipr.link(
                "set",
                index=index,
                state="up",
                ifalias=links.alias_for(network.id, endpoint.id),
            )
            if default_route and endpoint.gateway:
                _default_route(ipr, endpoint.gateway, index, socket.AF_INET)
            if default_route and endpoint.ipv6_gateway:
                _default_route(ipr, endpoint.ipv6_gateway, index, socket.AF_INET6)
        except NetlinkError as exc:
            raise links.netlink_error(f"configuring {endpoint.ifname} in the sandbox", exc) from exc


def _default_route(ipr: IPRoute, gateway: str, index: int, family: int) -> None:
    dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    try:
        ipr.route("add", dst=dst, gateway=gateway, oif=index, family=family)
    except NetlinkError as exc:
        # Docker gives the first network joined the default route; later ones keep theirs.
        if exc.code != errno.EEXIST:
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
