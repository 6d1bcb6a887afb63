"""Checks of what callers hand a Host: types, addresses, subnets, ports, MACs.

Each check refuses with a specific KeelnetError saying what was wrong and what to use, so
bad input from the Python API fails the same way as from the CLI: before anything is made.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from keelnet.errors import InvalidAddress, InvalidRequest, InvalidSubnet

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
#: A DNS name as keelnet's DNS server takes one: dot-separated labels of 1-63 letters,
#: digits, '_' or '-', 253 characters at most.
DNS_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*")
#: Address blocks no network can use: they mean something else to every host.
_SPECIAL = {
    ipaddress.ip_network(block): meaning
    for block, meaning in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address)"),
        ("::/128", "the unspecified address (::)"),
        ("::1/128", "loopback (::1)"),
        ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("ff00::/8", "multicast (ff00::/8)"),
    )
}
#: The longest prefix of a network whose gateway sits on a host device: room for the
#: gateway and at least one endpoint besides the network and broadcast addresses.
_LONGEST_PREFIX = {4: 30, 6: 126}


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, not {value!r}")
    return value


def text_list(value: object, what: str) -> list[str]:
    """None, one string, or a sequence of strings, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest(f"{what} must be a string or a list of strings, not {value!r}")


def string_map(value: object, what: str) -> dict[str, str]:
    """A mapping of strings (other scalars are written as strings, as the CLI would)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a mapping of strings, not {value!r}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str | int | float | bool):
            raise InvalidRequest(f"{what}: {key!r}={item!r} is not a string pair")
        result[key] = str(item)
    return result


def ip_version(address: object, what: str = "IP address") -> int:
    """4 or 6 for an IP address string."""
    try:
        return ipaddress.ip_address(text(address, what)).version
    except ValueError:
        raise InvalidAddress(f"invalid {what} {address!r}") from None


def port(value: object, what: str) -> int:
    """A TCP/UDP port number (an int; a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidRequest(f"invalid {what} {value!r}: must be an integer 1-65535")
    return value


def mac(value: object) -> str:
    """A unicast MAC address that is not all zeros, lowercased."""
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise InvalidRequest(
            f"invalid MAC address {value!r}: use six hex octets, 02:42:ac:11:00:02"
        )
    octets = bytes(int(part, 16) for part in value.split(":"))
    if octets[0] & 1 or not any(octets):
        raise InvalidRequest(
            f"MAC address {value} is {'multicast' if octets[0] & 1 else 'all zeros'}: an "
            "interface needs a unicast address"
        )
    return value.lower()


def aliases(value: object) -> tuple[str, ...]:
    """Network-scoped names of an endpoint (DNS names: letters, digits, '_', '.', '-')."""
    if isinstance(value, str):
        raise InvalidRequest(f"aliases must be a list of names, not the string {value!r}")
    names = text_list(value, "aliases")
    for name in names:
        if not DNS_NAME.fullmatch(name):
            raise InvalidRequest(
                f"invalid alias {name!r}: not a DNS name (dot-separated labels of 1-63 "
                "letters, digits, '_' or '-', 253 characters at most)"
            )
    return tuple(names)


def subnet(value: str, *, gateway_on_host: bool) -> IPNetwork:
    """A subnet a network can use: not one of the special blocks; with room for a gateway
    and endpoints where the gateway sits on a host device (a bridge)."""
    try:
        net = ipaddress.ip_network(text(value, "subnet"), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidSubnet(
                f"invalid subnet {value!r}: give an address and a prefix length, such as "
                "10.1.2.0/24"
            ) from None
        raise InvalidSubnet(f"{value} has host bits set: did you mean {loose}?") from None
    for block, meaning in _SPECIAL.items():
        if net.version == block.version and net.overlaps(block):
            raise InvalidSubnet(f"subnet {net} overlaps {meaning}: use a unicast private range")
    longest = _LONGEST_PREFIX[net.version]
    if gateway_on_host and net.prefixlen > longest:
        raise InvalidSubnet(
            f"subnet {net} leaves no room for a gateway and endpoints: use a /{longest} or "
            "a larger one"
        )
    return net


def by_family(values: list[str], what: str, *, network: bool) -> dict[int, str]:
    """`values` (gateways, or IP ranges with `network`) by IP version, one of each."""
    found: dict[int, str] = {}
    for value in values:
        try:
            parsed = ipaddress.ip_network(value, strict=False) if network else None
            version = parsed.version if parsed else ipaddress.ip_address(value).version
        except ValueError:
            raise InvalidSubnet(f"invalid {what} {value!r}") from None
        if version in found:
            raise InvalidSubnet(f"more than one IPv{version} {what} given")
        found[version] = value
    return found
