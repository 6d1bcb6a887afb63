"""Sandbox-side plumbing shared by drivers whose endpoints are one interface in the sandbox."""

from __future__ import annotations

import contextlib

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
