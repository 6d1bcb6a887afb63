"""A minimal synchronous rtnetlink client for the connect hot path.

pyroute2 costs ~0.5 ms of Python per request; a connect needs about ten, and the goal is
5 ms for all of it. This module encodes the handful of messages a connect sends (veth
creation, link settings, addresses, default routes) by hand and sends them in batches,
one acknowledgement each. Everything else keeps using pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from keelnet.kernel.namespaces import call_in_netns

_NLMSG_ERROR = 2
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_NEWROUTE, _RTM_DELROUTE = 16, 18, 20, 24, 25
_F_REQUEST, _F_ACK, _F_REPLACE, _F_EXCL, _F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_GROUP, _IFLA_NET_NS_FD = 18, 20, 27, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_NODAD = 0x02
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RTN_UNICAST, _RT_SCOPE_LINK, _RT_SCOPE_NOWHERE = 254, 3, 1, 253, 255
_IFF_UP = 0x1
_NLA_F_NESTED = 0x8000
_SO_NETNS_COOKIE = 71


class RtnlError(OSError):
    """The kernel refused a request; `errno` says why."""


@dataclass(frozen=True)
class Request:
    kind: int
    flags: int
    body: bytes


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _string(value: str) -> bytes:
    return value.encode() + b"\0"


def _ifinfo(index: int = 0, up: bool | None = None) -> bytes:
    """An ifinfomsg that brings the link up (True), down (False) or leaves it (None)."""
    flags = _IFF_UP if up else 0
    change = 0 if up is None else _IFF_UP
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class Rtnl:
    """One NETLINK_ROUTE socket in one namespace (opened there, usable from anywhere)."""

    def __init__(self, netns_path: str | None = None) -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, 0))
            return sock

        self._sock = call_in_netns(netns_path, open_socket)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def netns_cookie(self) -> int:
        """The namespace's cookie: unique among the namespaces of one boot, never reused
        (SO_NETNS_COOKIE, Linux >= 5.14)."""
        (cookie,) = struct.unpack(
            "=Q", self._sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
        )
        return int(cookie)

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, requests: Sequence[Request]) -> list[bytes]:
        """Send the requests in one datagram; raise on the first refusal, else the replies."""
        sequences, chunks = [], []
        for request in requests:
            self._seq += 1
            sequences.append(self._seq)
            header = struct.pack(
                "=IHHII", 16 + len(request.body), request.kind, request.flags, self._seq, 0
            )
            chunks.append(header + request.body)
        self._sock.send(b"".join(chunks))
        pending, replies, failure = set(sequences), [], None
        while pending:
            data = self._sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    pending.discard(seq)
                    if code != 0 and failure is None:
                        failure = RtnlError(-code, os.strerror(-code))
                elif seq in pending:
                    replies.append(data[offset + 16 : offset + length])
                    pending.discard(seq)  # a GET answers with the object itself
                offset += (length + 3) & ~3
        if failure is not None:
            raise failure
        return replies

    # --- requests ------------------------------------------------------------------------

    def link_index(self, ifname: str) -> int | None:
        request = Request(
            _RTM_GETLINK, _F_REQUEST, _ifinfo() + _attr(_IFLA_IFNAME, _string(ifname))
        )
        try:
            (reply,) = self.run([request])
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        (index,) = struct.unpack_from("=i", reply, 4)
        return int(index)


def add_veth(
    ifname: str,
    *,
    master: int,
    peer_ifname: str,
    peer_netns_fd: int | None,
    peer_mac: str,
    mtu: int | None,
    group: int,
) -> Request:
    """Create a veth pair, the host end up, the peer straight inside another namespace
    (`peer_netns_fd`; None: beside the host end, for someone else to move).

    Both ends are in device group `group` from the instant they exist (the kernel
    applies IFLA_GROUP at creation, an alias only later): the owner's mark.
    The peer stays down: opening it before its partner exists fails with ENOTCONN.
    """
    size = _attr(_IFLA_MTU, struct.pack("=I", mtu)) if mtu else b""
    where = (
        b"" if peer_netns_fd is None else _attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    )
    mark = _attr(_IFLA_GROUP, struct.pack("=I", group))
    peer = (
        _ifinfo()
        + _attr(_IFLA_IFNAME, _string(peer_ifname))
        + where
        + _attr(_IFLA_ADDRESS, _mac(peer_mac))
        + size
        + mark
    )
    create = (
        _ifinfo(up=True)
        + _attr(_IFLA_IFNAME, _string(ifname))
        + _attr(_IFLA_MASTER, struct.pack("=I", master))
        + size
        + mark
        + _nested(
            _IFLA_LINKINFO,
            _attr(_IFLA_INFO_KIND, _string("veth")),
            _nested(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer)),
        )
    )
    return Request(_RTM_NEWLINK, _F_REQUEST | _F_ACK | _F_CREATE | _F_EXCL, create)


def set_link(
    ifname: str, *, alias: str | None = None, up: bool | None = None, group: int | None = None
) -> Request:
    body = _ifinfo(up=up) + _attr(_IFLA_IFNAME, _string(ifname))
    if alias is not None:
        body += _attr(_IFLA_IFALIAS, _string(alias))
    if group is not None:
        body += _attr(_IFLA_GROUP, struct.pack("=I", group))
    return Request(_RTM_NEWLINK, _F_REQUEST | _F_ACK, body)


def add_address(index: int, address: str, prefix_length: int) -> Request:
    parsed = ipaddress.ip_address(address)
    family = socket.AF_INET6 if parsed.version == 6 else socket.AF_INET
    flags = _IFA_F_NODAD if parsed.version == 6 else 0  # usable at once, no DAD wait
    body = struct.pack("=BBBBI", family, prefix_length, flags, 0, index)
    body += _attr(_IFA_LOCAL, parsed.packed) + _attr(_IFA_ADDRESS, parsed.packed)
    return Request(_RTM_NEWADDR, _F_REQUEST | _F_ACK | _F_CREATE | _F_EXCL, body)


def add_default_route(
    index: int, gateway: str | None, *, version: int = 4, replace: bool = False
) -> Request:
    """A default route via `gateway`, or straight out of the device when it is None;
    `replace`: in place of the default route there is (the sandbox keeps one)."""
    if gateway is not None:
        version = ipaddress.ip_address(gateway).version
    return add_route(index, "::/0" if version == 6 else "0.0.0.0/0", gateway, replace=replace)


def add_route(
    index: int, destination: str, next_hop: str | None, *, replace: bool = False
) -> Request:
    """A route to `destination` via `next_hop`, or straight out of the device (None)."""
    network = ipaddress.ip_network(destination, strict=False)
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    scope = 0 if next_hop else _RT_SCOPE_LINK
    body = struct.pack(
        "=BBBBBBBBI",
        family,
        network.prefixlen,
        0,
        0,
        _RT_TABLE_MAIN,
        _RTPROT_BOOT,
        scope,
        _RTN_UNICAST,
        0,
    )
    if network.prefixlen:
        body += _attr(_RTA_DST, network.network_address.packed)
    if next_hop is not None:
        body += _attr(_RTA_GATEWAY, ipaddress.ip_address(next_hop).packed)
    body += _attr(_RTA_OIF, struct.pack("=I", index))
    flags = _F_REQUEST | _F_ACK | _F_CREATE | (_F_REPLACE if replace else 0)
    return Request(_RTM_NEWROUTE, flags, body)


def delete_default_route(index: int, *, version: int) -> Request:
    """Remove the default route of `version` out of the device `index` (ESRCH: none)."""
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, _RT_TABLE_MAIN, 0, _RT_SCOPE_NOWHERE, 0, 0)
    body += _attr(_RTA_OIF, struct.pack("=I", index))
    return Request(_RTM_DELROUTE, _F_REQUEST | _F_ACK, body)


# --- bridge ports ------------------------------------------------------------------------

_RTM_NEWNEIGH, _RTM_DELNEIGH = 28, 29
_IFLA_INFO_SLAVE_KIND, _IFLA_INFO_SLAVE_DATA = 4, 5
_IFLA_BRPORT_LEARNING, _IFLA_BRPORT_UNICAST_FLOOD, _IFLA_BRPORT_ISOLATED = 8, 9, 33
_NDA_DST, _NDA_LLADDR = 1, 2
_NTF_SELF, _NTF_MASTER, _NTF_STICKY = 0x02, 0x04, 0x40
_NUD_NOARP, _NUD_PERMANENT = 0x40, 0x80


def set_bridge_port(ifname: str, *, learning: bool, unicast_flood: bool, isolated: bool) -> Request:
    """A bridge port's settings (`ip link set IFNAME type bridge_slave learning …`)."""
    data = b"".join(
        _attr(kind, struct.pack("=B", int(value)))
        for kind, value in (
            (_IFLA_BRPORT_LEARNING, learning),
            (_IFLA_BRPORT_UNICAST_FLOOD, unicast_flood),
            (_IFLA_BRPORT_ISOLATED, isolated),
        )
    )
    body = _ifinfo() + _attr(_IFLA_IFNAME, _string(ifname))
    body += _nested(
        _IFLA_LINKINFO,
        _attr(_IFLA_INFO_SLAVE_KIND, _string("bridge")),
        _nested(_IFLA_INFO_SLAVE_DATA, data),
    )
    return Request(_RTM_NEWLINK, _F_REQUEST | _F_ACK, body)


def add_static_fdb(port_index: int, mac: str, *, exclusive: bool = False) -> Request:
    """A static, sticky FDB entry of the port's bridge (`bridge fdb add MAC dev PORT master
    static sticky`): never aged, and never moved by a frame from another port. An entry
    for the MAC on another port moves here, unless `exclusive` (then EEXIST)."""
    body = struct.pack(
        "=BxxxiHBB", socket.AF_BRIDGE, port_index, _NUD_NOARP, _NTF_MASTER | _NTF_STICKY, 0
    )
    body += _attr(_NDA_LLADDR, _mac(mac))
    flags = _F_REQUEST | _F_ACK | _F_CREATE | (_F_EXCL if exclusive else 0)
    return Request(_RTM_NEWNEIGH, flags, body)


def delete_fdb(port_index: int, mac: str) -> Request:
    """Delete the bridge's FDB entry for `mac` if it is on this port (ENOENT otherwise)."""
    body = struct.pack("=BxxxiHBB", socket.AF_BRIDGE, port_index, 0, _NTF_MASTER, 0)
    body += _attr(_NDA_LLADDR, _mac(mac))
    return Request(_RTM_DELNEIGH, _F_REQUEST | _F_ACK, body)


_IFLA_AF_SPEC, _IFLA_INET6_ADDR_GEN_MODE = 26, 8
ADDR_GEN_MODE_EUI64 = 0


def set_addr_gen_mode(ifname: str, mode: int) -> Request:
    """How the kernel makes the link's IPv6 link-local address (`addr_gen_mode`), taken
    into account when the link comes up; EAFNOSUPPORT from a kernel without IPv6."""
    inet6 = _nested(socket.AF_INET6, _attr(_IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", mode)))
    body = _ifinfo() + _attr(_IFLA_IFNAME, _string(ifname)) + _nested(_IFLA_AF_SPEC, inet6)
    return Request(_RTM_NEWLINK, _F_REQUEST | _F_ACK, body)


# --- overlay peers -----------------------------------------------------------------------


def neighbour(index: int, ip: str, mac: str, *, add: bool) -> Request:
    """A permanent neighbour entry `ip` → `mac` on the device (add or replace; or delete)."""
    parsed = ipaddress.ip_address(ip)
    family = socket.AF_INET6 if parsed.version == 6 else socket.AF_INET
    body = struct.pack("=BxxxiHBB", family, index, _NUD_PERMANENT, 0, 0)
    body += _attr(_NDA_DST, parsed.packed) + _attr(_NDA_LLADDR, _mac(mac))
    return _neigh_request(body, add=add)


def vxlan_fdb(index: int, mac: str, remote: str, *, add: bool) -> Request:
    """A vxlan device's own forwarding entry `mac` → remote VTEP (add/replace, or delete)."""
    body = struct.pack("=BxxxiHBB", socket.AF_BRIDGE, index, _NUD_PERMANENT, _NTF_SELF, 0)
    body += _attr(_NDA_LLADDR, _mac(mac)) + _attr(_NDA_DST, ipaddress.ip_address(remote).packed)
    return _neigh_request(body, add=add)


def _neigh_request(body: bytes, *, add: bool) -> Request:
    if add:
        return Request(_RTM_NEWNEIGH, _F_REQUEST | _F_ACK | _F_CREATE | _F_REPLACE, body)
    return Request(_RTM_DELNEIGH, _F_REQUEST | _F_ACK, body)
