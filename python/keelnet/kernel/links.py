"""Link, address and route helpers over pyroute2, plus kernel feature probes.

Every link keelnet creates on the host side carries an ifalias `keelnet:<network id>[:<endpoint
id>]` so cleanup only ever touches objects that are provably ours.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from keelnet.errors import KernelError, KernelFeatureMissing
from keelnet.kernel.namespaces import iproute

ALIAS_PREFIX = "keelnet:"
_IFA_F_NODAD = 0x02
_probed: dict[tuple[str | None, str], bool] = {}


def alias_for(network_id: str, endpoint_id: str | None = None) -> str:
    return f"{ALIAS_PREFIX}{network_id}" + (f":{endpoint_id}" if endpoint_id else "")


def parse_alias(alias: str | None) -> tuple[str, str | None] | None:
    """(network id, endpoint id or None) of a keelnet ifalias, None for anything else."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX) :].split(":")
    return parts[0], (parts[1] if len(parts) > 1 else None)


def random_mac() -> str:
    """A random unicast, locally administered MAC (what Docker does since v28)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def owned_links(ipr: IPRoute) -> list[tuple[int, str, str, str | None]]:
    """(index, ifname, network id, endpoint id) for every link marked as keelnet's."""
    result = []
    for link in ipr.link("dump"):
        marker = parse_alias(link.get("ifalias"))
        if marker is not None:
            result.append((int(link["index"]), str(link.get("ifname")), marker[0], marker[1]))
    return result


def endpoint_link(ipr: IPRoute, network_id: str, endpoint_id: str) -> str | None:
    """The name of the link marked as the endpoint's (whatever it was renamed to)."""
    wanted = alias_for(network_id, endpoint_id)
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
    probe_name = "kn-probe"
    with iproute(netns_path) as ipr:
        try:
            ipr.link("add", ifname=probe_name, kind=kind)
        except NetlinkError as exc:
            supported = bool(exc.code != errno.EOPNOTSUPP)
        else:  # the kind accepted a parentless link: it exists; remove the probe
            supported = True
            delete_link(ipr, probe_name)
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
