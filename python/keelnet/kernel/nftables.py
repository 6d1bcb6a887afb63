"""nftables firewall back end: keelnet's own tables, replaced atomically from desired state.

The whole keelnet ruleset of a host is rendered from the store and loaded with one
`nft -f -` transaction, under the store's write lock. A failed load changes nothing, a
repeated one is a no-op, and nothing outside keelnet's tables is ever touched:

- `table inet keelnet`: forward filtering (isolation between networks, `internal`,
  published ports only reachable through DNAT),
- `table inet keelnet-nat`: DNAT of published ports (from outside and from the host itself)
  and masquerade (one inet table serves IPv4 and IPv6).

`enable_icc=false` is not a firewall rule: the bridge driver isolates the bridge ports
(IFLA_BRPORT_ISOLATED), which needs no br_netfilter and no bridge-family meta matches.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from keelnet.errors import KernelError
from keelnet.kernel.namespaces import preexec_setns
from keelnet.model import PortMapping

FILTER_TABLE = ("inet", "keelnet")
NAT_TABLE = ("inet", "keelnet-nat")
TABLES = (FILTER_TABLE, NAT_TABLE)


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall must do for one bridge network."""

    network_id: str
    bridge: str
    subnets: tuple[str, ...]
    internal: bool = False
    masquerade: bool = True
    ports: tuple[PortMapping, ...] = field(default_factory=tuple)


def render(bridges: Sequence[BridgeRules]) -> str:
    """The nft script that makes keelnet's tables say exactly what `bridges` ask for."""
    lines: list[str] = []
    for family, name in TABLES:  # add-then-delete: removes the table whether it exists or not
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
    if not bridges:
        return "\n".join(lines) + "\n"
    lines += _filter_table(bridges) + _nat_table(bridges)
    return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    return '"' + name.replace('"', "") + '"'


def _chain_id(rules: BridgeRules) -> str:
    return rules.network_id[:12]


def _filter_table(bridges: Sequence[BridgeRules]) -> list[str]:
    out = [
        "table inet keelnet {",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
    ]
    # Every "into a bridge" check first: a network's `from` chain accepts, and must not
    # let traffic skip the destination network's `to` chain.
    for b in bridges:
        out.append(f"    oifname {_q(b.bridge)} jump to-{_chain_id(b)}")
    for b in bridges:
        out.append(f"    iifname {_q(b.bridge)} jump from-{_chain_id(b)}")
    out.append("  }")
    for b in bridges:
        # Into the bridge: replies, and (unless internal) DNAT-ed published ports; nothing
        # else, which isolates networks from each other and from direct routing.
        out.append(f"  chain to-{_chain_id(b)} {{")
        out.append(f"    iifname {_q(b.bridge)} accept")
        if not b.internal:
            out.append("    ct state established,related accept")
            out.append("    ct status dnat accept")
        out.append("    counter drop")
        out.append("  }")
        out.append(f"  chain from-{_chain_id(b)} {{")
        if b.internal:
            out.append(f"    oifname != {_q(b.bridge)} counter drop")
        out.append("    accept")
        out.append("  }")
    out.append("}")
    return out


def _nat_table(bridges: Sequence[BridgeRules]) -> list[str]:
    published = [(b, p) for b in bridges if not b.internal for p in b.ports]
    out = [
        "table inet keelnet-nat {",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump published",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump published",
        "  }",
        "  chain published {",
    ]
    for _, port in published:
        match = f"ip daddr {port.host_ip} " if port.host_ip else "meta nfproto ipv4 "
        out.append(
            f"    {match}{port.proto} dport {port.host_port} "
            f"dnat ip to {port.container_ip}:{port.container_port}"
        )
    out += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for b in bridges:
        if b.internal:
            continue
        if b.masquerade:
            for subnet in b.subnets:
                family = "ip6" if ipaddress.ip_network(subnet).version == 6 else "ip"
                out.append(f"    {family} saddr {subnet} oifname != {_q(b.bridge)} masquerade")
        if b.ports:
            # From the host's loopback (route_localnet) and hairpin from the same bridge:
            # answers must come back through the host, so rewrite the source.
            out.append(f"    oifname {_q(b.bridge)} ip saddr 127.0.0.0/8 masquerade")
            for subnet in b.subnets:
                if ipaddress.ip_network(subnet).version == 4:
                    out.append(
                        f"    oifname {_q(b.bridge)} ip saddr {subnet} ct status dnat masquerade"
                    )
    out += ["  }", "}"]
    return out


def apply(netns_path: str | None, script: str) -> None:
    """Load `script` as one nft transaction inside the namespace."""
    result = subprocess.run(
        ["nft", "-f", "-"],
        input=script.encode(),
        capture_output=True,
        preexec_fn=preexec_setns(netns_path),
        check=False,
    )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise KernelError(f"nft rejected keelnet's rules: {message[0] if message else '?'}")


def list_ruleset(netns_path: str | None) -> str:
    result = subprocess.run(
        ["nft", "list", "ruleset"],
        capture_output=True,
        preexec_fn=preexec_setns(netns_path),
        check=True,
    )
    return result.stdout.decode()
