"""Link, address and route helpers over pyroute2, plus kernel feature probes.

Every link keelnet creates is marked as its store's (`keelnet.kernel.ownership`), so
cleanup only ever touches objects that are provably ours.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from keelnet.errors import InvalidName, InvalidRequest, KernelError, KernelFeatureMissing
from keelnet.kernel.namespaces import iproute

if TYPE_CHECKING:
    from keelnet.kernel.ownership import Owner

_IFA_F_NODAD = 0x02
#: The link a kernel feature probe creates and deletes at once; the name is reserved.
PROBE_LINK = "kn-probe"
#: This process's own network namespace (the host's, for a Host of no named namespace).
OWN_NETNS = "/proc/self/ns/net"
_probed: dict[tuple[str | None, str], bool] = {}
#: Interface names keelnet accepts: what the kernel takes (at most IFNAMSIZ - 1 bytes, no
#: '/', ':' or white space) less what is special to nftables or iptables ('"', '*',
#: '+', '\\') or to tools ('%' templates, a leading '-').
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def check_ifname(name: object, what: str, error: type[InvalidRequest] = InvalidName) -> str:
    """`name` when it is a usable interface name, else `error` saying why."""
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise error(
            f"{what} {name!r} is not a usable interface name: use 1-15 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    return name


def veth_host_end(endpoint_id: str) -> str:
    """The host-side end of an endpoint's veth: the endpoint id keeps it unique within
    IFNAMSIZ."""
    return f"kn-v{endpoint_id[:11]}"


def random_mac() -> str:
    """A random unicast, locally administered MAC (what Docker does since v28)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def endpoint_link(ipr: IPRoute, owner: Owner, network_id: str, endpoint_id: str) -> str | None:
    """The name of `owner`'s link serving the endpoint (whatever it was renamed to)."""
    wanted = owner.alias(network_id, endpoint_id)
    for link in ipr.link("dump"):
        if link.get("ifalias") == wanted:
            return str(link.get("ifname"))
    return None


def has_carrier(ipr: IPRoute, ifname: str) -> bool:
    """Whether the link has carrier (a TAP has none while no process holds it)."""
    index = link_index(ipr, ifname)
    if index is None:
        return False
    return bool(ipr.link("get", index=index)[0].get("carrier"))


def delete_link(ipr: IPRoute, ifname: str) -> None:
    """Delete a link by name; one that is already gone counts as deleted."""
    index = link_index(ipr, ifname)
    if index is None:
        return
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise KernelError(f"cannot delete link {ifname}: {exc}") from exc


def add_address(ipr: IPRoute, index: int, address: str, prefix_length: int) -> None:
    if ipaddress.ip_address(address).version == 6:
        # IFA_F_NODAD: usable at once instead of after duplicate address detection.
        ipr.addr(
            "add",
            index=index,
            address=address,
            prefixlen=prefix_length,
            family=socket.AF_INET6,
            flags=_IFA_F_NODAD,
        )
    else:
        ipr.addr("add", index=index, address=address, prefixlen=prefix_length)


def kind_supported(kind: str, netns_path: str | None = None) -> bool:
    """Whether the kernel knows link kind `kind`, probed without creating anything.

    The kernel resolves the kind (autoloading its module) before validating attributes, so
    a request missing its mandatory parent fails with EOPNOTSUPP only if the kind is unknown.
    """
    key = (netns_path, kind)
    if key in _probed:
        return _probed[key]
    with iproute(netns_path) as ipr:
        # A probe left by a process killed mid-probe would answer EEXIST for any kind.
        delete_link(ipr, PROBE_LINK)
        try:
            ipr.link("add", ifname=PROBE_LINK, kind=kind)
        except NetlinkError as exc:
            supported = bool(exc.code != errno.EOPNOTSUPP)
        else:  # the kind accepted a parentless link: it exists; remove the probe
            supported = True
            delete_link(ipr, PROBE_LINK)
    _probed[key] = supported
    return supported


def require_kind(
    netns_path: str | None, kind: str, module: str, what: str, alternative: str
) -> None:
    if not kind_supported(kind, netns_path):
        raise KernelFeatureMissing(what, module=module, alternative=alternative)


def netlink_error(action: str, exc: NetlinkError) -> KernelError:
    return KernelError(f"{action}: {exc.args[-1] if exc.args else exc}")


def open_netns_fd(netns_path: str) -> int:
    """An fd of the namespace, for IFLA_NET_NS_FD (creating links straight inside it)."""
    try:
        return os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        from keelnet.errors import SandboxNotFound

        raise SandboxNotFound(f"network namespace {netns_path} is gone") from None


def close_fd(fd: int) -> None:
    os.close(fd)
