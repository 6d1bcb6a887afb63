"""keelnet's userspace data plane: a MAC-learning switch with VXLAN tunnel endpoints.

A :class:`Switch` works in one host network namespace (the caller's by default). Its
ports are TAP devices handed to sandboxes (``add_tap``), AF_PACKET sockets on existing
interfaces (``add_packet_port``), and VXLAN tunnel endpoints on UDP (``add_vtep``) that
talk to other keelnet switches or to Linux vxlan devices. Each port belongs to one VNI;
frames never cross VNIs. Forwarding runs on Rust threads; Python is never in the packet
path and the GIL is released while the switch starts, stops or opens ports.

    with Switch(netns="kn-h1") as sw:
        sw.add_vtep("192.0.2.1")
        sw.add_tap("web", vni=42, sandbox="kn-web", mtu=1450)
        sw.add_peer(42, "192.0.2.2")
        ...

Leaving the ``with`` block stops the switch and closes every port (TAP devices vanish).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from keelnet import _core
from keelnet.errors import InvalidRequest, KernelError
from keelnet.kernel import iptables_compat
from keelnet.kernel.namespaces import iproute, netns_path

__all__ = ["DROP_REASONS", "ISOLATIONS", "Switch"]

#: The reasons a drop is counted under in ``stats()``.
DROP_REASONS = (
    "truncated",
    "malformed",
    "oversized",
    "invalid_source",
    "unknown_vni",
    "unknown_peer",
    "bad_vxlan",
    "no_vtep",
    "hairpin",
    "segmentation",
    "tx_error",
    "port_gone",
    "isolated",
    "spoofed_mac",
    "spoofed_ip",
    "spoofed_arp",
    "spoofed_nd",
    "tagged",
)

#: Forwarding rules of a TAP port (``add_tap(isolation=...)``).
ISOLATIONS = ("open", "vepa", "private")


def _vni(vni: int) -> int:
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= 0xFFFFFF:
        raise InvalidRequest(f"VNI must be an integer in 0..16777215, not {vni!r}")
    return vni


def _tunnel_taps_left(path: str | None) -> bool:
    """Whether any VTEP's tunnel TAP (of any switch) still exists in the namespace."""
    with iproute(path) as ipr:
        return any(
            link.get_attr("IFLA_IFNAME", "").startswith(iptables_compat.VTEP_TAPS.rstrip("+"))
            for link in ipr.get_links()
        )


def _address(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidRequest(f"{what} {text!r} is not an IP address") from None


class _Core(Protocol):
    """What a Rust engine object offers for its life cycle."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def running(self) -> bool: ...


CoreT = TypeVar("CoreT", bound=_Core)


class Engine(Generic[CoreT]):
    """The life cycle of a forwarding engine (the switch, the ipvlan emulation): a Rust
    object that forwards on its own threads, started, stopped and closed from here, and a
    context manager (leaving the ``with`` block closes it)."""

    _core: CoreT

    def start(self) -> None:
        """Start forwarding on the worker thread(s) (no-op when running)."""
        self._core.start()

    def stop(self) -> None:
        """Stop forwarding and join the workers; ports stay (``start`` resumes)."""
        self._core.stop()

    def close(self) -> None:
        """Stop and close every port and descriptor (TAP devices vanish). A closed
        engine cannot be used again; closing twice is fine."""
        self._core.close()

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def running(self) -> bool:
        return self._core.running

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Switch(Engine[_core.Switch]):
    """A userspace switch working in the host namespace ``netns`` (None: the caller's).

    Options: ``learn_remote`` learns MACs seen in decapsulated traffic (like Linux
    vxlan); ``learn_peers`` accepts VXLAN from VTEPs that are not configured peers
    (off: dropped and counted as ``unknown_peer``); ``arp_suppression`` answers ARP
    requests from local ports for known IPv4 addresses; ``fdb_max_age`` is the MAC
    ageing time in seconds; ``coalesce`` re-assembles decapsulated TCP segments into
    super-frames before they reach a TAP (GRO); ``udp_gso`` sends the segments of a
    super-frame to a VTEP with one UDP GSO call; ``tunnel_gso`` hands super-frames to the
    host's stack whole instead, as UDP-tunnel GSO packets through one TAP per VTEP
    (``kn-vtepN``, Linux >= 6.17; used where the host forwards them, see ``add_vtep``);
    ``busy_poll_us`` is the most a worker
    polls for the next packet before sleeping when packets come back and forth within
    that time (request/response latency without thread wakeups; adaptive, and it yields
    the CPU to other tasks); None: the default (100 µs), 0: always sleep at once;
    ``workers`` is the number of forwarding threads (ports and VTEPs are dealt to them
    round-robin in the order added, each drained by its own worker; TAP reads and local
    writes run outside the engine lock).
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        learn_remote: bool = True,
        learn_peers: bool = False,
        arp_suppression: bool = False,
        fdb_max_age: float = 300.0,
        coalesce: bool = True,
        udp_gso: bool = True,
        tunnel_gso: bool = True,
        busy_poll_us: int | None = None,
        workers: int = 1,
    ) -> None:
        self.netns = netns
        self._netns_path = None if netns is None else netns_path(netns)
        self._tunnel_gso = tunnel_gso
        self._accepts_vtep_taps = False
        self._core = _core.Switch(
            netns,
            learn_remote=learn_remote,
            learn_peers=learn_peers,
            arp_suppression=arp_suppression,
            fdb_max_age=float(fdb_max_age),
            coalesce=coalesce,
            udp_gso=udp_gso,
            tunnel_gso=tunnel_gso,
            busy_poll_us=busy_poll_us,
            workers=workers,
        )

    def close(self) -> None:
        super().close()
        if self._accepts_vtep_taps and not _tunnel_taps_left(self._netns_path):
            self._accepts_vtep_taps = False
            iptables_compat.release_vtep_taps(self._netns_path)

    # --- ports ---------------------------------------------------------------------------

    def add_tap(
        self,
        name: str,
        *,
        vni: int,
        sandbox: str | None = None,
        ifname: str = "eth0",
        mac: str | None = None,
        mtu: int | None = None,
        isolation: str = "open",
        queues: int = 1,
        allowed_ips: Sequence[str] | None = None,
    ) -> None:
        """Add a TAP port ``name`` in ``vni``.

        With ``sandbox`` (a netns name or path) the device is created in the host
        namespace and moved there as ``ifname``; without, it stays in the host namespace
        under ``name``. ``mac`` and ``mtu`` are set before it comes up (over VXLAN, use
        an MTU 50 bytes below the underlay's: 1450 on a 1500 underlay).

        ``isolation`` (see :data:`ISOLATIONS`): an ``open`` port reaches every port; a
        ``vepa`` or ``private`` port reaches only open ports (the uplink, a gateway), so
        frames between two such ports leave through the open ports. A ``vepa`` port
        receives such frames when the outside switch reflects them back (hairpin); a
        ``private`` port never does (counted as ``isolated`` drops).

        ``queues`` (1-16) makes a multi-queue TAP: the sandbox's kernel spreads its flows
        over the queues, and a switch with several ``workers`` reads them in parallel
        (each queue belongs to one worker; ``stats()["ports"][name]["queue_rx"]`` counts
        frames per queue).

        ``allowed_ips`` turns port security on (OpenStack's port security, libvirt's
        clean-traffic): the port then sends only untagged frames from its own MAC, IPv4
        and IPv6 only from these addresses (give a sandbox on an IPv6 network its
        link-local address too), ARP only about itself, neighbour discovery only about its
        own addresses and MAC, and no router advertisements or redirects; what else it
        sends is dropped and counted (``spoofed_*`` and ``tagged`` drops). None: it may
        send anything (a sandbox that bridges or routes for others). Either way the
        port's MAC is a static FDB entry: frames from elsewhere never move it.
        """
        if isolation not in ISOLATIONS:
            raise InvalidRequest(f"isolation {isolation!r}: use one of {', '.join(ISOLATIONS)}")
        if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= 16:
            raise InvalidRequest(f"queues must be an integer in 1..16, not {queues!r}")
        device = ifname if sandbox is not None else name
        allowed = None
        if allowed_ips is not None:
            if isinstance(allowed_ips, str):
                raise InvalidRequest("allowed_ips is a list of addresses, not one string")
            allowed = [_address(text, "allowed address") for text in allowed_ips]
        self._core.add_tap(name, _vni(vni), sandbox, device, mac, mtu, isolation, queues, allowed)

    def add_packet_port(self, ifname: str, *, vni: int, vlan: int | None = None) -> None:
        """Switch the existing host interface ``ifname`` (a veth, a macvlan parent...) in
        ``vni`` through an AF_PACKET socket; the port is named ``ifname``. With ``vlan``
        (1-4094) the port is that 802.1Q VLAN of ``ifname``: frames leave tagged, and only
        frames of that VLAN come in (no VLAN device or 8021q module needed)."""
        if vlan is not None and (
            isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094
        ):
            raise InvalidRequest(f"VLAN id must be an integer in 1..4094, not {vlan!r}")
        self._core.add_packet_port(ifname, _vni(vni), vlan)

    def add_vtep(self, local: str, *, port: int = 4789) -> None:
        """Add a VXLAN tunnel endpoint on the local underlay address ``local``. One VTEP
        per address family sends; peers of the other family need a VTEP of theirs.

        Super-frames leave through a tunnel TAP (``stats()["vteps"][i]["tunnel_device"]``),
        which the host forwards to the underlay; where iptables drops forwarded packets by
        policy (a Docker host), a rule in DOCKER-USER accepts what keelnet's tunnel TAPs
        bring in (``iptables_compat.accept_vtep_taps``), removed when the last of them
        goes. Without UDP-tunnel GSO on TAP (Linux < 6.17) or with strict reverse-path
        filtering, super-frames are segmented here, and ``tunnel_error`` says why."""
        if not 0 < port < 65536:
            raise InvalidRequest(f"UDP port {port} is out of range")
        address = _address(local, "VTEP address")
        refused = None
        if self._tunnel_gso and not self._accepts_vtep_taps:
            try:
                self._accepts_vtep_taps = iptables_compat.accept_vtep_taps(self._netns_path)
            except KernelError as exc:
                refused = f"iptables drops forwarded packets and accepting them failed: {exc}"
        self._core.add_vtep(address, port, refused)

    def add_peer(
        self, vni: int, remote: str, *, mac: str | None = None, ip: str | None = None
    ) -> None:
        """Add the remote VTEP ``remote`` to ``vni``'s flood list (head-end replication).

        With ``mac``: a static FDB entry sending that MAC to ``remote``; with ``ip`` as
        well, an IPv4 → MAC binding used for ARP suppression.
        """
        self._core.add_peer(_vni(vni), _address(remote, "peer address"), mac, ip)

    def remove_port(self, name: str) -> None:
        """Remove a port; its TAP device disappears, its learned MACs are forgotten."""
        self._core.remove_port(name)

    def remove_peer(self, vni: int, remote: str, mac: str | None = None) -> None:
        """Remove the static entry ``mac`` behind ``remote``, or (without ``mac``) the
        peer itself with every FDB entry that points at it."""
        self._core.remove_peer(_vni(vni), _address(remote, "peer address"), mac)

    # --- state ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: ``ports`` (by name), ``vnis`` (by VNI), ``vteps``, ``drops`` (by
        reason, see :data:`DROP_REASONS`), ``removed_ports`` (failed devices, with the
        error), ``fdb`` and ``running``."""
        return self._core.stats()

    def fdb(self, vni: int) -> list[dict[str, Any]]:
        """The forwarding entries of ``vni``: ``mac``, ``port`` (local) or ``remote``
        (VTEP address), ``static``."""
        return self._core.fdb(_vni(vni))
