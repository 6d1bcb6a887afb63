"""Parent interfaces of macvlan and ipvlan networks, including `eth1.10` VLAN parents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers.base import HostContext
from keelnet.errors import InvalidOption, KernelFeatureMissing, MissingParentInterface
from keelnet.kernel import links, ownership

PARENT = "parent"
NO_USERSPACE_VLAN = "keelnet's userspace data plane tags 802.1q VLANs for macvlan and "
NO_USERSPACE_VLAN += "ipvlan l2 (-o dataplane=userspace)"


@dataclass(frozen=True)
class Parent:
    name: str  # the interface endpoints hang off (the VLAN device for `eth1.10`)
    base: str  # the physical interface
    vlan: int | None


def parse(options: Mapping[str, str], driver: str) -> Parent:
    value = options.get(PARENT)
    if not value:
        raise MissingParentInterface(f"{driver} networks need a parent: -o parent=IFACE")
    if value == "lo":
        raise InvalidOption(f"{driver}: loopback cannot be a parent interface")
    links.check_ifname(value, f"{driver}: parent", InvalidOption)
    base, dot, tag = value.partition(".")
    if not dot:
        return Parent(value, value, None)
    if not tag.isdigit() or not 1 <= int(tag) <= 4094:
        raise InvalidOption(f"{driver}: {value!r}: VLAN id must be 1-4094")
    return Parent(value, base, int(tag))


def check(ctx: HostContext, parent: Parent, driver: str, *, tag_in_userspace: bool = False) -> None:
    """The parent exists, and a VLAN parent can be made by this kernel (unless the
    userspace data plane tags the VLAN itself)."""
    if links.link_index(ctx.ipr, parent.base) is None:
        raise MissingParentInterface(f"{driver}: parent interface {parent.base!r} does not exist")
    if tag_in_userspace:
        return
    if parent.vlan is not None and links.link_index(ctx.ipr, parent.name) is None:
        links.require_kind(
            ctx.netns_path,
            "vlan",
            "8021q",
            f"{driver}: parent {parent.name} needs an 802.1q VLAN device",
            NO_USERSPACE_VLAN,
        )


def ensure_vlan(ctx: HostContext, parent: Parent, network_id: str) -> None:
    """Create the VLAN device `eth1.10` if missing, marked as belonging to the network."""
    if parent.vlan is None or links.link_index(ctx.ipr, parent.name) is not None:
        return
    base = links.link_index(ctx.ipr, parent.base)
    try:
        ctx.ipr.link(
            "add",
            ifname=parent.name,
            kind="vlan",
            link=base,
            vlan_id=parent.vlan,
            **ctx.owner.link_attributes(),
        )
        index = links.link_index(ctx.ipr, parent.name)
        ctx.ipr.link("set", index=index, ifalias=ctx.owner.alias(network_id), state="up")
    except NetlinkError as exc:
        links.delete_link(ctx.ipr, parent.name)
        raise links.netlink_error(f"creating VLAN device {parent.name}", exc) from exc


def remove_vlan(ctx: HostContext, parent: Parent, network_id: str) -> None:
    """Delete the VLAN device only if this network created it."""
    if parent.vlan is None:
        return
    index = links.link_index(ctx.ipr, parent.name)
    if index is None:
        return
    mark = ownership.parse_alias(ctx.ipr.link("get", index=index)[0].get("ifalias"))
    if ctx.owner.made(mark) and mark is not None and mark.network_id == network_id:
        links.delete_link(ctx.ipr, parent.name)


def missing_module(what: str, module: str, alternative: str) -> KernelFeatureMissing:
    return KernelFeatureMissing(what, module=module, alternative=alternative)
