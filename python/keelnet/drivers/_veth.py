"""Sandbox-side plumbing shared by drivers whose endpoints are one interface in the sandbox."""

from __future__ import annotations

import errno

from keelnet.errors import KernelError
from keelnet.kernel import links, rtnl
from keelnet.kernel.namespaces import iproute
from keelnet.kernel.ownership import Owner
from keelnet.model import Endpoint, Network


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
