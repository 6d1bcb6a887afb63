"""ipvlan emulated in userspace, for kernels without the ``ipvlan`` module.

An :class:`Ipvlan` opens an AF_PACKET socket on a parent interface of a host namespace;
each sandbox gets a TAP device (a "slave") carrying the parent's MAC address. Frames
from the wire are handed to the slave that owns their destination IP; whatever a
sandbox sends leaves with the parent's MAC. ``mode="l2"`` passes broadcast and
multicast (the sandboxes answer ARP and NDP themselves, with the parent's MAC);
``mode="l3"`` passes none and hands every packet not for another slave to the host's
routing (slaves should be ``NOARP`` with a device default route, as Docker sets them).
With ``vlan`` (l2 only), frames leave ``parent`` with that 802.1Q tag and only frames
carrying it are taken in: the emulation of a parent like ``eth1.10``.
Forwarding runs on a Rust thread; Python is never in the packet path.

    with Ipvlan("eth1", netns="kn-h1") as plane:
        plane.add_slave("web", sandbox="kn-web", addresses=["192.0.2.130"])

Leaving the ``with`` block stops forwarding and closes every TAP (the devices vanish).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from keelnet import _core
from keelnet.dataplane import Engine
from keelnet.errors import InvalidRequest

__all__ = ["DROP_REASONS", "MODES", "Ipvlan"]

MODES = ("l2", "l3")
#: The reasons a drop is counted under in ``stats()["drops"]``.
DROP_REASONS = (
    "truncated",
    "malformed",
    "multicast",
    "no_slave",
    "not_routable",
    "tx_error",
    "port_gone",
    "spoofed_mac",
    "spoofed_ip",
    "spoofed_arp",
    "spoofed_nd",
    "tagged",
)


class Ipvlan(Engine[_core.Ipvlan]):
    """An emulated ipvlan on ``parent`` of the host namespace ``netns`` (None: the
    caller's), in ``mode`` l2 or l3, tagging VLAN ``vlan`` on the wire if given."""

    def __init__(
        self, parent: str, *, netns: str | None = None, mode: str = "l2", vlan: int | None = None
    ) -> None:
        if mode not in MODES:
            raise InvalidRequest(f"ipvlan mode {mode!r}: use one of {', '.join(MODES)}")
        if vlan is not None and not (isinstance(vlan, int) and 1 <= vlan <= 4094):
            raise InvalidRequest(f"VLAN id {vlan!r}: use 1-4094")
        self.netns = netns
        self.parent = parent
        self.mode = mode
        self.vlan = vlan
        self._core = _core.Ipvlan(netns, parent, mode, vlan)

    @property
    def parent_mac(self) -> str:
        """The MAC address every slave carries."""
        return self._core.parent_mac

    def add_slave(
        self,
        name: str,
        *,
        sandbox: str,
        addresses: Sequence[str],
        ifname: str = "eth0",
        mtu: int | None = None,
        port_security: bool = False,
    ) -> None:
        """Create a TAP in the host namespace, move it into ``sandbox`` (a netns name or
        path) as ``ifname``, up, with the parent's MAC; frames for ``addresses`` go to
        it. Addresses and routes inside the sandbox are the caller's to set. With
        ``port_security`` the slave sends only from ``addresses`` (give it its link-local
        one too) and the parent's MAC, ARP and neighbour discovery included (see
        ``Switch.add_tap``); the rest is dropped and counted (``spoofed_*``, ``tagged``)."""
        parsed = []
        for address in addresses:
            try:
                parsed.append(str(ipaddress.ip_address(address)))
            except ValueError:
                raise InvalidRequest(f"{address!r} is not an IP address") from None
        self._core.add_slave(name, sandbox, ifname, parsed, mtu, port_security)

    def remove_slave(self, name: str) -> None:
        """Remove a slave; its TAP vanishes. An unknown name raises NotFound."""
        self._core.remove_slave(name)

    def stats(self) -> dict[str, Any]:
        """Counters: ``wire_rx``/``wire_tx`` (the parent), ``for_host`` (frames for the
        parent's own addresses), ``slaves`` (by name: ``ifname``, ``addresses``, ``rx``,
        ``tx``, ``failed``), ``drops`` (by reason, see :data:`DROP_REASONS`),
        ``parent_failed``, ``running``, ``parent``, ``parent_mac``, ``mode``, ``vlan``."""
        return self._core.stats()
