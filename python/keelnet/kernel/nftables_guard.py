"""nftables port security: what a guarded sandbox may send, checked by the kernel.

One rule set, hung where a sandbox's frames can be told apart:
- `BRIDGE` (`table bridge keelnet`): every frame a sandbox's bridge port (the host end of
  its veth) brings into a kernel bridge, before the bridge learns or forwards it; the
  port is told by its name.
- `parent(...)` (`table netdev keelnet-mv-<network>`): every frame leaving a kernel
  macvlan network's parent, told by its source MAC. macvlan switches its children inside
  the driver, so frames between two sandboxes of a bridge-mode network never pass here,
  and a sandbox that changes its MAC to one no endpoint has is not recognised (the
  parent carries the host's and other devices' frames too, which must pass).

A guarded frame must come from the endpoint's MAC, untagged; ARP only with its MAC and
addresses (or a probe for its own address); IPv4 and IPv6 only from its addresses (its
link-local one included); `::` only for duplicate address detection of its own address
and listener reports; neighbour advertisements only for its own addresses, the first
link-layer address option only its MAC; no router advertisements or redirects. Drops are
counted per reason in named counters (the userspace switch's drop reasons).

The rules are fixed; what varies per port lives in sets keyed by the port, which only
connect and disconnect change (`add_port`, `remove_port`: one small transaction, no rule
rewritten) and reconcile makes match the store again (`sync`). Reloading the rules
leaves the sets alone, so rolling back a failed operation never drops a port's guard.
nft 1.0 matches neither the ND target nor ND options by name: two sets hold the same
addresses as raw payload (`@th,...`), and only the first ND option is looked at (the
userspace switch checks them all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

#: Drop counters, named as the userspace switch's drop reasons.
REASONS = ("spoofed_mac", "tagged", "spoofed_arp", "spoofed_ip", "spoofed_nd")


@dataclass(frozen=True)
class Guard:
    """Where the checks hang and what tells one port from another (`key`)."""

    family: str
    table: str
    hook: str
    key: str  # `iifname` (a bridge port's name) or `ether saddr` (the source MAC)
    key_type: str


BRIDGE = Guard(
    "bridge", "keelnet", "type filter hook prerouting priority filter;", "iifname", "ifname"
)


def parent(network_id: str, device: str) -> Guard:
    """The egress of a kernel macvlan network's parent `device`."""
    hook = f"type filter hook egress device {_quote(device)} priority filter;"
    return Guard("netdev", f"keelnet-mv-{network_id[:12]}", hook, "ether saddr", "ether_addr")


@dataclass(frozen=True)
class GuardedPort:
    """A sandbox's port and what may come from it."""

    ifname: str
    mac: str
    addresses: tuple[str, ...]


def _sets(guard: Guard) -> dict[str, str]:
    key = guard.key_type
    return {
        "guarded": f"type {key};",
        "port_mac": f"type {key} . ether_addr;",
        "port_ipv4": f"type {key} . ipv4_addr;",
        "port_ipv6": f"type {key} . ipv6_addr;",
        # The ND target address and link-layer address option, as raw payload.
        "port_nd_target": f"typeof {guard.key} . @th,64,128;",
        "port_nd_lladdr": f"typeof {guard.key} . @th,208,48;",
    }


_RULES = (
    "ports {key} @guarded jump port_security",
    "port_security {key} . ether saddr != @port_mac counter name spoofed_mac drop",
    "port_security ether type {{ 0x8100, 0x88a8 }} counter name tagged drop",
    "port_security {key} . arp saddr ether != @port_mac counter name spoofed_arp drop",
    "port_security arp saddr ip != 0.0.0.0 {key} . arp saddr ip != @port_ipv4 "
    "counter name spoofed_arp drop",
    # A probe (RFC 5227) has no sender address and may only ask about its own.
    "port_security arp saddr ip 0.0.0.0 {key} . arp daddr ip != @port_ipv4 "
    "counter name spoofed_arp drop",
    "port_security {key} . ip saddr != @port_ipv4 counter name spoofed_ip drop",
    "port_security ip6 saddr != :: {key} . ip6 saddr != @port_ipv6 counter name spoofed_ip drop",
    "port_security ip6 saddr :: meta l4proto != ipv6-icmp counter name spoofed_ip drop",
    "port_security ip6 saddr :: icmpv6 type != {{ nd-neighbor-solicit, mld-listener-report, "
    "mld2-listener-report }} counter name spoofed_ip drop",
    "port_security icmpv6 type {{ nd-router-advert, nd-redirect }} counter name spoofed_nd drop",
    "port_security icmpv6 type nd-neighbor-advert {key} . @th,64,128 != @port_nd_target "
    "counter name spoofed_nd drop",
    # Duplicate address detection of another's address would make it give the address up.
    "port_security ip6 saddr :: icmpv6 type nd-neighbor-solicit "
    "{key} . @th,64,128 != @port_nd_target counter name spoofed_nd drop",
    "port_security icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} "
    "@th,192,8 {{ 1, 2 }} {key} . @th,208,48 != @port_nd_lladdr counter name spoofed_nd drop",
)


def _declarations(guard: Guard) -> list[str]:
    """The table, counters, sets and chains, declared without touching what they hold."""
    table = f"{guard.family} {guard.table}"
    lines = [f"add table {table}"]
    lines += [f"add counter {table} {reason}" for reason in REASONS]
    lines += [f"add set {table} {name} {{ {spec} }}" for name, spec in _sets(guard).items()]
    lines.append(f"add chain {table} ports {{ {guard.hook} policy accept; }}")
    lines.append(f"add chain {table} port_security")
    return lines


def rules(guard: Guard) -> list[str]:
    """The table and its rules (`flush table` replaces the rules; sets keep elements)."""
    table = f"{guard.family} {guard.table}"
    lines = [*_declarations(guard), f"flush table {table}"]
    return lines + [f"add rule {table} {rule.format(key=guard.key)}" for rule in _RULES]


def remove(guard: Guard) -> list[str]:
    """Lines that remove the table whether it exists or not."""
    table = f"{guard.family} {guard.table}"
    return [f"add table {table}", f"delete table {table}"]


def sync(guard: Guard, ports: Sequence[GuardedPort]) -> str:
    """The table with its rules, its sets holding exactly `ports` (after a crash left
    some of a half-made port, or a flushed ruleset lost them all)."""
    flushes = [f"flush set {guard.family} {guard.table} {name}" for name in _sets(guard)]
    return _script(rules(guard) + flushes + _elements(guard, "add", ports))


def add_port(guard: Guard, port: GuardedPort) -> str:
    """Guard one more port. The table is in place since its network was made (a connect
    pays for no declarations); without it nft refuses, and the connect fails."""
    return _script(_elements(guard, "add", [port]))


def remove_port(guard: Guard, port: GuardedPort) -> str:
    """Stop guarding a port; a port that is not guarded is fine (add, then delete)."""
    lines = _declarations(guard) + _elements(guard, "add", [port])
    return _script(lines + _elements(guard, "delete", [port]))


def _script(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _elements(guard: Guard, command: str, ports: Sequence[GuardedPort]) -> list[str]:
    members: dict[str, list[str]] = {name: [] for name in _sets(guard)}
    for port in ports:
        mac = port.mac.lower()
        key = _quote(port.ifname) if guard.key == "iifname" else mac
        members["guarded"].append(key)
        members["port_mac"].append(f"{key} . {mac}")
        members["port_nd_lladdr"].append(f"{key} . 0x{mac.replace(':', '')}")
        for text in port.addresses:
            address = ipaddress.ip_address(text)
            if address.version == 4:
                members["port_ipv4"].append(f"{key} . {address}")
            else:
                members["port_ipv6"].append(f"{key} . {address}")
                members["port_nd_target"].append(f"{key} . 0x{address.packed.hex()}")
    table = f"{guard.family} {guard.table}"
    return [
        f"{command} element {table} {name} {{ {', '.join(values)} }}"
        for name, values in members.items()
        if values
    ]


def _quote(ifname: str) -> str:
    """An interface name as an nftables string, checked, never altered."""
    from keelnet.kernel import links  # here: the store reads claims without pyroute2

    return '"' + links.check_ifname(ifname, "interface name") + '"'
