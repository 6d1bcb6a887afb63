"""nftables firewall back end: keelnet's own tables, replaced atomically from desired state.

The whole keelnet ruleset of a host is rendered from the store and loaded with one
`nft -f -` transaction, under the store's write lock. A failed load changes nothing, a
repeated one is a no-op, and nothing outside keelnet's tables is ever touched:

- `table inet keelnet`: forward filtering (isolation between networks, `internal`,
  published ports only reachable through DNAT),
- `table inet keelnet-nat`: DNAT of published ports (from outside and from the host itself)
  and masquerade (one inet table serves IPv4 and IPv6),
- `table bridge keelnet`: port security of sandboxes on kernel bridges
  (`keelnet.kernel.nftables_guard`).

`enable_icc=false` between sandboxes on one bridge is the bridge driver's port isolation
(IFLA_BRPORT_ISOLATED; the userspace switch's private ports), which needs no
br_netfilter; here it also stops the host from routing a frame sent to the gateway's MAC
back into the same bridge. With port security on, a bridge's packets may only be
forwarded with a source in its own subnets, so no forged source is ever masqueraded.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from keelnet.errors import KernelError
from keelnet.kernel.namespaces import call_in_netns
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
    #: Sandboxes may talk to each other, also through the host (`enable_icc`).
    icc: bool = True
    #: Sandboxes send only from their own addresses (see `nftables_guard`).
    port_security: bool = False


_BASE_CHAINS = {
    FILTER_TABLE: {"forward": "type filter hook forward priority filter; policy accept;"},
    NAT_TABLE: {
        "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
        "output": "type nat hook output priority -100; policy accept;",
        "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
        "published": "",
    },
}


def render(bridges: Sequence[BridgeRules]) -> str:
    """The nft script that makes keelnet's tables say exactly what `bridges` ask for.

    The chains are fixed and only their rules are replaced (`flush table`): re-creating
    base chains re-registers netfilter hooks, which costs milliseconds per change.
    """
    # here: reading a store's claim (every CLI command) needs none of the rules
    from keelnet.kernel import nftables_guard

    lines: list[str] = []
    if not bridges:  # add-then-delete: removes the table whether it exists or not
        for family, name in TABLES:
            lines += [f"add table {family} {name}", f"delete table {family} {name}"]
        return "\n".join(lines + nftables_guard.remove(nftables_guard.BRIDGE)) + "\n"
    for (family, name), chains in _BASE_CHAINS.items():
        lines.append(f"add table {family} {name}")
        for chain, spec in chains.items():
            lines.append(f"add chain {family} {name} {chain}" + (f" {{ {spec} }}" if spec else ""))
        lines.append(f"flush table {family} {name}")
    lines += _filter_rules(bridges) + _nat_rules(bridges)
    lines += nftables_guard.rules(nftables_guard.BRIDGE)
    return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    """An interface name as an nftables string. Names are checked, never altered: a
    stripped character would make the rule name another device."""
    from keelnet.kernel import links  # here: the store reads claims without pyroute2

    return '"' + links.check_ifname(name, "interface name") + '"'


def _filter_rules(bridges: Sequence[BridgeRules]) -> list[str]:
    rule = "add rule inet keelnet forward "
    out = []
    # Out of a guarded bridge only from its subnets: a forged source is neither routed
    # nor masqueraded.
    for b in bridges:
        if b.port_security:
            out += _source_rules(rule, b)
    # Into a bridge first: replies and (unless internal) DNAT-ed published ports only,
    # which isolates networks from each other and from direct routing. Within a bridge,
    # routed by the host (to the gateway's MAC), only when its sandboxes may talk.
    for b in bridges:
        verdict = "accept" if b.icc else "counter drop"
        out.append(f"{rule}oifname {_q(b.bridge)} iifname {_q(b.bridge)} {verdict}")
        if not b.internal:
            out.append(f"{rule}oifname {_q(b.bridge)} ct state established,related accept")
            out.append(f"{rule}oifname {_q(b.bridge)} ct status dnat accept")
        out.append(f"{rule}oifname {_q(b.bridge)} counter drop")
    # Out of a bridge: anywhere, except for internal networks.
    for b in bridges:
        if b.internal:
            out.append(f"{rule}iifname {_q(b.bridge)} counter drop")
    return out


def _source_rules(rule: str, b: BridgeRules) -> list[str]:
    out = []
    for version, family, nfproto in ((4, "ip", "ipv4"), (6, "ip6", "ipv6")):
        own = ", ".join(s for s in b.subnets if ipaddress.ip_network(s).version == version)
        match = f"{family} saddr != {{ {own} }}" if own else f"meta nfproto {nfproto}"
        out.append(f"{rule}iifname {_q(b.bridge)} {match} counter drop")
    return out


def _nat_rules(bridges: Sequence[BridgeRules]) -> list[str]:
    table = "add rule inet keelnet-nat"
    out = [
        f"{table} prerouting fib daddr type local jump published",
        f"{table} output fib daddr type local jump published",
    ]
    for b in bridges:
        if b.internal:
            continue
        for port in b.ports:
            host_version = ipaddress.ip_address(port.host_ip).version if port.host_ip else None
            if port.container_ip and host_version in (None, 4):
                match = f"ip daddr {port.host_ip} " if port.host_ip else "meta nfproto ipv4 "
                out.append(
                    f"{table} published {match}{port.proto} dport {port.host_port} "
                    f"dnat ip to {port.container_ip}:{port.container_port}"
                )
            if port.container_ipv6 and host_version in (None, 6):
                match = f"ip6 daddr {port.host_ip} " if port.host_ip else "meta nfproto ipv6 "
                out.append(
                    f"{table} published {match}{port.proto} dport {port.host_port} "
                    f"dnat ip6 to [{port.container_ipv6}]:{port.container_port}"
                )
    for b in bridges:
        if b.internal:
            continue
        if b.masquerade:
            for subnet in b.subnets:
                family = "ip6" if ipaddress.ip_network(subnet).version == 6 else "ip"
                out.append(
                    f"{table} postrouting {family} saddr {subnet} "
                    f"oifname != {_q(b.bridge)} masquerade"
                )
        if b.ports:
            # From the host's loopback (route_localnet) and hairpin from the same bridge:
            # answers must come back through the host, so rewrite the source.
            out.append(
                f"{table} postrouting oifname {_q(b.bridge)} ip saddr 127.0.0.0/8 masquerade"
            )
            for subnet in b.subnets:
                family = "ip6" if ipaddress.ip_network(subnet).version == 6 else "ip"
                out.append(
                    f"{table} postrouting oifname {_q(b.bridge)} {family} saddr {subnet} "
                    "ct status dnat masquerade"
                )
    return out


def apply(netns_path: str | None, script: str) -> None:
    """Load `script` as one nft transaction inside the namespace.

    In-process through libnftables when it is installed (no fork per change: network
    create has a latency budget), else through the `nft` command.
    """
    failed, message, _ = _run(netns_path, script)
    if failed:
        lines = message.strip().splitlines()
        raise KernelError(f"nft rejected keelnet's rules: {lines[0] if lines else '?'}")


def try_apply(netns_path: str | None, script: str) -> bool:
    """Load `script` as one transaction; False when nft refuses it (nothing changed)."""
    failed, _, _ = _run(netns_path, script)
    return not failed


def query(netns_path: str | None, command: str) -> str | None:
    """nft's listing for `command`, with handles; None when it names nothing."""
    failed, message, output = _run(netns_path, command + "\n", handles=True)
    if not failed:
        return output
    if "No such file or directory" in message:
        return None
    lines = message.strip().splitlines()
    raise KernelError(f"nft could not {command}: {lines[0] if lines else '?'}")


def _run(netns_path: str | None, script: str, *, handles: bool = False) -> tuple[bool, str, str]:
    """(failed, error text, output) of one nft transaction in the namespace."""
    library = _libnftables()
    if library is not None:
        return call_in_netns(netns_path, lambda: _run_library(library, netns_path, script, handles))
    import subprocess  # the fallback without libnftables

    argv = ["nft", *(["-a"] if handles else []), "-f", "-"]
    result = call_in_netns(
        netns_path,
        lambda: subprocess.run(argv, input=script.encode(), capture_output=True, check=False),
    )
    return (
        result.returncode != 0,
        result.stderr.decode(errors="replace"),
        result.stdout.decode(errors="replace"),
    )


_library: list[ctypes.CDLL | None] = []
#: The soname every libnftables since 0.9 has: loaded by name first, because
#: ctypes.util.find_library runs `ldconfig -p` (~10-30 ms, on every command's first nft use).
_SONAME = "libnftables.so.1"


def _load_libnftables() -> ctypes.CDLL | None:
    for name in (_SONAME, None):
        if name is None:
            from ctypes.util import find_library

            name = find_library("nftables")
            if name is None:
                return None
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _libnftables() -> ctypes.CDLL | None:
    if not _library:
        library = _load_libnftables()
        if library is not None:
            library.nft_ctx_new.restype = ctypes.c_void_p
            library.nft_ctx_new.argtypes = [ctypes.c_uint32]
            library.nft_ctx_free.argtypes = [ctypes.c_void_p]
            library.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            library.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            library.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            library.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            library.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            library.nft_ctx_output_get_flags.restype = ctypes.c_uint
            library.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
            library.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            library.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _library.append(library)
    return _library[0]


_contexts: dict[str | None, int] = {}
# A forked child makes its own: sharing the parent's netlink socket would mix their replies.
os.register_at_fork(after_in_child=_contexts.clear)


_OUTPUT_HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE


def _run_library(
    library: ctypes.CDLL, netns_path: str | None, script: str, handles: bool
) -> tuple[bool, str, str]:
    # One long-lived context per namespace, made on a thread inside it so its netlink
    # socket lives there: closing that socket costs ~10 ms, too much for every change.
    context = _contexts.get(netns_path)
    if context is None:
        context = library.nft_ctx_new(0)
        library.nft_ctx_buffer_error(context)
        library.nft_ctx_buffer_output(context)
        _contexts[netns_path] = context
    library.nft_ctx_get_output_buffer(context)  # reading rewinds: start from empty
    flags = library.nft_ctx_output_get_flags(context)
    if handles:
        library.nft_ctx_output_set_flags(context, flags | _OUTPUT_HANDLE)
    try:
        failed = library.nft_run_cmd_from_buffer(context, script.encode()) != 0
    finally:
        library.nft_ctx_output_set_flags(context, flags)
    error = library.nft_ctx_get_error_buffer(context) or b""
    output = library.nft_ctx_get_output_buffer(context) or b""
    return failed, error.decode(errors="replace"), output.decode(errors="replace")


def close(netns_path: str | None) -> None:
    """Release the namespace's libnftables context, if one was made."""
    context = _contexts.pop(netns_path, None)
    library = _libnftables()
    if context is not None and library is not None:
        library.nft_ctx_free(context)


def list_ruleset(netns_path: str | None) -> str:
    import subprocess

    result = call_in_netns(
        netns_path,
        lambda: subprocess.run(["nft", "list", "ruleset"], capture_output=True, check=True),
    )
    return result.stdout.decode()
