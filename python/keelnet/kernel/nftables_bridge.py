"""nftables bridge family: port security for sandboxes on kernel bridges.

`table bridge keelnet` checks every frame a guarded sandbox port (the host end of its
veth) brings into its bridge, before the bridge learns or forwards it: the source MAC
must be the endpoint's; no VLAN tag; ARP only with the endpoint's MAC and addresses (or a
probe for its own address); IPv4 and IPv6 only from the endpoint's addresses (its EUI-64
link-local one included); `::` only for duplicate address detection of its own address
and listener reports; neighbour advertisements only for its own addresses, the first
link-layer address option only its MAC; no router advertisements or redirects. Drops
are counted per reason in named counters (the userspace switch's drop reasons).

The rules are fixed and rendered with the host's other tables (`rules`); what varies per
port lives in sets keyed by the port's name, which only connect and disconnect change
(`add_port`, `remove_port`: one small transaction each, no rule rewritten) and
reconcile makes match the store again (`sync_ports`). Reloading the rules leaves the
sets alone, so rolling back a failed operation never drops a port's guard.
nft 1.0 matches neither the ND target nor ND options by name: those two sets hold the
same addresses as raw payload (`@th,...`). Only the first ND option is looked at: one
that follows another option is not checked here (the userspace switch checks them all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

FAMILY, NAME = "bridge", "keelnet"
TABLE = (FAMILY, NAME)
#: Drop counters, named as the userspace switch's drop reasons.
REASONS = ("spoofed_mac", "tagged", "spoofed_arp", "spoofed_ip", "spoofed_nd")

_SETS = {
    "guarded": "type ifname;",
    "port_mac": "type ifname . ether_addr;",
    "port_ipv4": "type ifname . ipv4_addr;",
    "port_ipv6": "type ifname . ipv6_addr;",
    # The ND target address and link-layer address option, as raw payload.
    "port_nd_target": "typeof iifname . @th,64,128;",
    "port_nd_lladdr": "typeof iifname . @th,208,48;",
}

_RULES = (
    "prerouting iifname @guarded jump port_security",
    "port_security iifname . ether saddr != @port_mac counter name spoofed_mac drop",
    "port_security ether type { 0x8100, 0x88a8 } counter name tagged drop",
    "port_security iifname . arp saddr ether != @port_mac counter name spoofed_arp drop",
    "port_security arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @port_ipv4 "
    "counter name spoofed_arp drop",
    # A probe (RFC 5227) has no sender address and may only ask about its own.
    "port_security arp saddr ip 0.0.0.0 iifname . arp daddr ip != @port_ipv4 "
    "counter name spoofed_arp drop",
    "port_security iifname . ip saddr != @port_ipv4 counter name spoofed_ip drop",
    "port_security ip6 saddr != :: iifname . ip6 saddr != @port_ipv6 counter name spoofed_ip drop",
    "port_security ip6 saddr :: meta l4proto != ipv6-icmp counter name spoofed_ip drop",
    "port_security ip6 saddr :: icmpv6 type != { nd-neighbor-solicit, mld-listener-report, "
    "mld2-listener-report } counter name spoofed_ip drop",
    "port_security icmpv6 type { nd-router-advert, nd-redirect } counter name spoofed_nd drop",
    "port_security icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @port_nd_target "
    "counter name spoofed_nd drop",
    # Duplicate address detection of another's address would make it give the address up.
    "port_security ip6 saddr :: icmpv6 type nd-neighbor-solicit "
    "iifname . @th,64,128 != @port_nd_target counter name spoofed_nd drop",
    "port_security icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } "
    "iifname . @th,208,48 != @port_nd_lladdr counter name spoofed_nd drop",
)


@dataclass(frozen=True)
class GuardedPort:
    """A sandbox's bridge port and what may come from it."""

    ifname: str
    mac: str
    addresses: tuple[str, ...]


def _declarations() -> list[str]:
    """The table, counters, sets and chains, declared without touching what they hold."""
    lines = [f"add table {FAMILY} {NAME}"]
    lines += [f"add counter {FAMILY} {NAME} {reason}" for reason in REASONS]
    lines += [f"add set {FAMILY} {NAME} {name} {{ {spec} }}" for name, spec in _SETS.items()]
    lines.append(
        f"add chain {FAMILY} {NAME} prerouting "
        "{ type filter hook prerouting priority filter; policy accept; }"
    )
    lines.append(f"add chain {FAMILY} {NAME} port_security")
    return lines


def rules() -> list[str]:
    """The table and its rules, for the host's nft transaction (`flush table` replaces
    the rules; the sets keep their elements)."""
    lines = _declarations()
    lines.append(f"flush table {FAMILY} {NAME}")
    lines += [f"add rule {FAMILY} {NAME} {rule}" for rule in _RULES]
    return lines


def sync_ports(ports: Sequence[GuardedPort]) -> str:
    """Make the sets hold exactly `ports` (after a crash left some of a half-made port)."""
    lines = _declarations() + [f"flush set {FAMILY} {NAME} {name}" for name in _SETS]
    return "\n".join(lines + _elements("add", ports)) + "\n"


def remove() -> list[str]:
    """Lines that remove the table whether it exists or not."""
    return [f"add table {FAMILY} {NAME}", f"delete table {FAMILY} {NAME}"]


def add_port(port: GuardedPort) -> str:
    """Guard one more port (its rules come from `render`, loaded when the bridge was)."""
    return "\n".join(_declarations() + _elements("add", [port])) + "\n"


def remove_port(port: GuardedPort) -> str:
    """Stop guarding a port; a port that is not guarded is fine (add, then delete)."""
    lines = _declarations() + _elements("add", [port]) + _elements("delete", [port])
    return "\n".join(lines) + "\n"


def _elements(command: str, ports: Sequence[GuardedPort]) -> list[str]:
    members: dict[str, list[str]] = {name: [] for name in _SETS}
    for port in ports:
        name = _quote(port.ifname)
        mac = port.mac.lower()
        members["guarded"].append(name)
        members["port_mac"].append(f"{name} . {mac}")
        members["port_nd_lladdr"].append(f"{name} . 0x{mac.replace(':', '')}")
        for text in port.addresses:
            address = ipaddress.ip_address(text)
            if address.version == 4:
                members["port_ipv4"].append(f"{name} . {address}")
            else:
                members["port_ipv6"].append(f"{name} . {address}")
                members["port_nd_target"].append(f"{name} . 0x{address.packed.hex()}")
    return [
        f"{command} element {FAMILY} {NAME} {set_name} {{ {', '.join(values)} }}"
        for set_name, values in members.items()
        if values
    ]


def _quote(ifname: str) -> str:
    # Interface names are validated before they reach the kernel: no quote can occur.
    if '"' in ifname or "\\" in ifname:
        raise ValueError(f"interface name {ifname!r} cannot be quoted for nft")
    return f'"{ifname}"'
