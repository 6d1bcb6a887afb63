"""Spoofing attacks from inside a sandbox, for the port security tests
(`test_spoofing.py`) and the figures of `benches/spoofing.py`.

A `SpoofLab` is one bridge network on one data plane of a test host (`lab.host`), with an
attacker sandbox, a victim and a bystander; an `OverlaySpoofLab` one overlay network
across two cluster hosts, the attacker and a neighbour on the first, the victim and the
bystander on the second (`OVERLAY_ATTACKS`). An attack is raw frames written to the
attacker's eth0 through an AF_PACKET socket opened inside its namespace; what they reach
is captured by AF_PACKET sockets in the other namespaces. A forged frame counts as
delivered when its signature (a marker payload, or the forged ARP/ND body) arrives where
it should not; so does legitimate traffic that a forgery redirects to the attacker.
After every attack a legitimate control packet goes the same way and must arrive: by
then the forged frames had every chance to arrive too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from clusterlab import Cluster, overlay_ns
from netlab import OUTSIDE_ADDRESS, Lab
from nettools import ping, wait_until
from packetlab import ETH_P_ALL, netns
from pyroute2.netlink.rtnl.ndmsg import NUD_NOARP, NUD_PERMANENT
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

import keelnet
from keelnet.dataplane import Switch
from keelnet.drivers import _port_security
from keelnet.drivers.overlay import OverlayPlane, mac_for
from keelnet.kernel import nftables_guard
from keelnet.kernel.namespaces import iproute, netns_path
from keelnet.model import Endpoint
from keelnet.store.etcd import ENDPOINTS, endpoint_record, vni_of

PORT = 9
BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "33:33:00:00:00:01"
FOREIGN_SOURCE = "203.0.113.66"  # TEST-NET-3: no keelnet subnet, routed nowhere
OTHER_SUBNET, OTHER_SOURCE = "10.67.0.0/24", "10.67.0.9"  # another keelnet network's
_PACKET_OUTGOING = 4
CONTROL_DEADLINE = 5.0  # generous: the machine is shared
SETTLE = 0.2  # for what may still be in flight on another path once the control arrived


class Capture:
    """Frames arriving on `ifname` in namespace `ns` (the ones it sends are ignored)."""

    def __init__(self, ns: str, ifname: str = "eth0") -> None:
        with netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    def count(self, signature: bytes) -> int:
        while True:
            try:
                data, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if address[2] != _PACKET_OUTGOING:
                self.frames.append(data)
        return sum(signature in frame for frame in self.frames)

    def wait_for(self, signature: bytes) -> bool:
        end = time.monotonic() + CONTROL_DEADLINE
        while time.monotonic() < end:
            if self.count(signature):
                return True
            time.sleep(0.01)
        return False


@contextlib.contextmanager
def capturing(places: list[tuple[str, str]]) -> Iterator[list[Capture]]:
    captures: list[Capture] = []
    try:
        for ns, ifname in places:
            captures.append(Capture(ns, ifname))
        yield captures
    finally:
        for capture in captures:
            capture.sock.close()


def send_raw(ns: str, frames: list[bytes], ifname: str = "eth0") -> None:
    """Write frames to `ifname` in namespace `ns` as they are (AF_PACKET). A frame the
    kernel drops on the way out (a netdev egress rule) is sent all the same."""
    with netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((ifname, 0))
        for frame in frames:
            try:
                sock.send(frame)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise


def send_udp(ns: str, destination: str, payload: bytes) -> None:
    """A legitimate UDP datagram from namespace `ns` (its kernel picks source and MACs)."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    with netns(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(payload, (destination, PORT))


def nft_counters(ns: str, family: str, table: str) -> dict[str, int]:
    """The named counters of an nftables table: name -> packets."""
    listing = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "counters", "table", family, table],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        item["counter"]["name"]: item["counter"]["packets"]
        for item in json.loads(listing)["nftables"]
        if "counter" in item
    }


def udp4(src_mac: str, dst_mac: str, src: str, dst: str, payload: bytes) -> bytes:
    frame = Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=PORT, dport=PORT)
    return bytes(frame / payload)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{octet:02x}" for octet in mac)


def random_macs(count: int, seed: int = 66) -> list[bytes]:
    """`count` distinct unicast, locally administered MACs."""
    rng = random.Random(seed)
    macs: set[bytes] = set()
    while len(macs) < count:
        octets = bytearray(rng.randbytes(6))
        octets[0] = (octets[0] & 0xFC) | 0x02
        macs.add(bytes(octets))
    return sorted(macs)


FLOOD_CHUNK = 256  # below the queues between a sandbox and the switch or bridge


def flood(lab: SpoofLab, macs: list[bytes], marker: bytes) -> int:
    """A broadcast frame from each of `macs` out of the attacker, paced so that every one
    reaches the bridge or switch (a chunk the receiving side did not count is sent again).
    Returns the frames sent."""
    template = udp4(lab.mac("attacker"), BROADCAST, lab.ip("attacker"), "10.66.0.255", marker)
    sent = 0
    with lab.attacker_rx() as received:
        for start in range(0, len(macs), FLOOD_CHUNK):
            chunk = [
                template[:6] + mac + template[12:] for mac in macs[start : start + FLOOD_CHUNK]
            ]
            for _ in range(5):
                target = received() + len(chunk)
                send_raw(lab.ns("attacker"), chunk)
                sent += len(chunk)
                if wait_until(lambda target=target: received() >= target, timeout=2, step=0.001):
                    break
            else:
                raise AssertionError("the flood does not get through to the bridge or switch")
    return sent


class Sandboxes(Protocol):
    """What an attack needs of a lab: its sandboxes by role, the gateway's addresses."""

    gateway_ip: str
    gateway_mac: str

    def ns(self, role: str) -> str: ...
    def ip(self, role: str) -> str: ...
    def mac(self, role: str) -> str: ...
    def place(self, role: str) -> tuple[str, str]: ...


Lab_ = TypeVar("Lab_", bound=Sandboxes)


class EndpointRoles:
    """A lab's sandboxes by role, from the endpoints their connects returned."""

    endpoints: dict[str, Endpoint]

    def ns(self, role: str) -> str:
        return self.endpoints[role].sandbox

    def ip(self, role: str) -> str:
        address = self.endpoints[role].ip
        assert address is not None
        return address

    def mac(self, role: str) -> str:
        return self.endpoints[role].mac


@dataclass
class Outcome:
    kind: str
    attempts: int
    delivered: int


@dataclass
class SpoofLab(EndpointRoles):
    """One network on `dataplane` with sandboxes "attacker", "victim" and "bystander",
    and a second network "other" (whose subnet the attacker forges)."""

    lab: Lab
    host: keelnet.Host
    dataplane: str
    options: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    network: str = "spoof"

    def __post_init__(self) -> None:
        options = {"dataplane": self.dataplane, **self.options}
        subnets = ["10.66.0.0/24", "2001:db8:66::/64"]
        net = self.host.create_network(self.network, subnet=subnets, ipv6=True, options=options)
        self.host.create_network("other", subnet=OTHER_SUBNET, options=options)
        assert net.kernel_name is not None
        self.bridge, self.network_id = net.kernel_name, net.id
        v4, v6 = net.ipam_for(4), net.ipam_for(6)
        assert v4 is not None and v6 is not None and v4.gateway and v6.gateway
        self.gateway_ip, self.gateway_ip6 = v4.gateway, v6.gateway
        with iproute(netns_path(self.lab.host)) as ipr:
            self.gateway_mac = str(ipr.link("get", ifname=self.bridge)[0].get_attr("IFLA_ADDRESS"))
        for role in ("attacker", "victim", "bystander"):
            self.connect(role)

    def connect(self, role: str) -> Endpoint:
        name = self.lab.name(role[:6])
        self.host.create_sandbox(name)
        self.endpoints[role] = self.host.connect(self.network, name)
        return self.endpoints[role]

    def place(self, role: str) -> tuple[str, str]:
        """Where to watch `role`: a namespace and interface."""
        return (self.lab.outside, "eth0") if role == "outside" else (self.ns(role), "eth0")

    # --- what the bridge or the switch holds ---------------------------------------------

    def switch(self) -> Switch:
        plane = self.host._ctx.planes.get(self.network_id)
        assert plane is not None
        switch = getattr(plane, "switch")  # noqa: B009 (the plane is typed as a Protocol)
        assert isinstance(switch, Switch)
        return switch

    def fdb(self) -> dict[str, tuple[str, bool]]:
        """MAC -> (where frames for it go: a role, "gateway" or a port name; static)."""
        if self.dataplane == "userspace":
            ports = {ep.id: role for role, ep in self.endpoints.items()}
            ports[self.bridge] = "gateway"
            return {
                entry["mac"]: (ports.get(entry["port"], str(entry["port"])), entry["static"])
                for entry in self.switch().fdb(0)
            }
        ports = {ep.host_ifname: role for role, ep in self.endpoints.items()}
        found: dict[str, tuple[str, bool]] = {}
        with iproute(netns_path(self.lab.host)) as ipr:
            bridge = ipr.link_lookup(ifname=self.bridge)[0]
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            for entry in ipr.fdb("dump"):
                if entry.get_attr("NDA_MASTER") != bridge:
                    continue
                mac, name = str(entry.get_attr("NDA_LLADDR")), names.get(entry["ifindex"])
                if entry["state"] & NUD_PERMANENT:
                    # The bridge's own addresses; its ports' own MACs carry no traffic.
                    if mac == self.gateway_mac:
                        found[mac] = ("gateway", True)
                    continue
                found[mac] = (ports.get(name, str(name)), bool(entry["state"] & NUD_NOARP))
        return found

    @contextlib.contextmanager
    def attacker_rx(self) -> Iterator[Callable[[], int]]:
        """A function that counts frames the bridge or switch received from the attacker."""
        if self.dataplane == "userspace":
            port = self.endpoints["attacker"].id
            yield lambda: int(self.switch().stats()["ports"][port]["rx"]["packets"])
            return
        with iproute(netns_path(self.lab.host)) as ipr:
            index = ipr.link_lookup(ifname=self.endpoints["attacker"].host_ifname)[0]
            yield lambda: int(
                ipr.link("get", index=index)[0].get_attr("IFLA_STATS64")["rx_packets"]
            )

    def fdb_size(self) -> int:
        """Entries of the bridge's or the switch's forwarding table."""
        if self.dataplane == "userspace":
            return int(self.switch().stats()["fdb"]["entries"])
        out = subprocess.run(
            ["bridge", "-n", self.lab.host, "fdb", "show", "br", self.bridge],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return len(out.splitlines())

    def drops(self) -> dict[str, int]:
        """Port security drops by reason: the attacker's port on the switch, the bridge
        table's named counters on the kernel."""
        if self.dataplane == "userspace":
            drops = self.switch().stats()["ports"][self.endpoints["attacker"].id]["drops"]
        else:
            drops = nft_counters(self.lab.host, "bridge", "keelnet")
        return {reason: drops[reason] for reason in nftables_guard.REASONS}

    # --- running an attack ---------------------------------------------------------------

    def run(self, kind: str, count: int = 1) -> Outcome:
        return run(self, kind, ATTACKS[kind], count)


@dataclass(frozen=True)
class Attack(Generic[Lab_]):
    """`forge(lab, marker)`: one forged frame and its signature (the marker when it can
    carry one). `watch`: roles (or "outside") where the signature must not arrive.
    `follow_up(lab, marker)`: legitimate traffic the forgery would steal; the marker must
    not reach the attacker. `control(lab, marker)`: a legitimate packet along the same
    way, which must reach `control_at`."""

    forge: Callable[[Lab_, bytes], tuple[bytes, bytes]]
    watch: tuple[str, ...]
    control: Callable[[Lab_, bytes], None]
    control_at: str
    follow_up: Callable[[Lab_, bytes], None] | None = None
    icc: bool = True


def run(lab: Lab_, kind: str, attack: Attack[Lab_], count: int) -> Outcome:
    token = secrets.token_hex(4)
    forged_marker = f"kn-spoof-{kind}-{token}".encode()
    stolen_marker = f"kn-stolen-{kind}-{token}".encode()
    control_marker = f"kn-control-{kind}-{token}".encode()
    places = [lab.place(role) for role in (*attack.watch, attack.control_at, "attacker")]
    with capturing(places) as captures:
        *watched, at_control, at_attacker = captures
        frame, signature = attack.forge(lab, forged_marker)
        send_raw(lab.ns("attacker"), [frame] * count)
        if attack.follow_up is not None:
            attack.follow_up(lab, stolen_marker)
        attack.control(lab, control_marker)
        if not at_control.wait_for(control_marker):
            raise AssertionError(f"{kind}: the control packet never arrived; the lab is broken")
        time.sleep(SETTLE)
        delivered = sum(capture.count(signature) for capture in watched)
        delivered += at_attacker.count(stolen_marker)
    return Outcome(kind, count, delivered)


def _from_attacker_to(role: str) -> Callable[[Sandboxes, bytes], None]:
    return lambda lab, marker: send_udp(lab.ns("attacker"), lab.ip(role), marker)


def _from_host_to(role: str) -> Callable[[SpoofLab, bytes], None]:
    return lambda lab, marker: send_udp(lab.lab.host, lab.ip(role), marker)


def _gateway_mac(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """The gateway's MAC as source (to steal what sandboxes send to the gateway)."""
    frame = udp4(lab.gateway_mac, lab.mac("victim"), lab.gateway_ip, lab.ip("victim"), marker)
    return frame, marker


def _neighbour_mac(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """The victim's MAC (and address) as source (to steal the victim's traffic)."""
    frame = udp4(
        lab.mac("victim"), lab.mac("bystander"), lab.ip("victim"), lab.ip("bystander"), marker
    )
    return frame, marker


def _neighbour_ip(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """Its own MAC, the victim's address."""
    frame = udp4(
        lab.mac("attacker"), lab.mac("bystander"), lab.ip("victim"), lab.ip("bystander"), marker
    )
    return frame, marker


def _routed_from(source: str) -> Callable[[SpoofLab, bytes], tuple[bytes, bytes]]:
    """To the outside through the gateway, from a forged source (masquerade would hide it)."""

    def forge(lab: SpoofLab, marker: bytes) -> tuple[bytes, bytes]:
        frame = udp4(lab.mac("attacker"), lab.gateway_mac, source, OUTSIDE_ADDRESS, marker)
        return frame, marker

    return forge


def _arp_reply(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """ "The gateway's address is at my MAC", to the victim."""
    arp = ARP(
        op=2,
        hwsrc=lab.mac("attacker"),
        psrc=lab.gateway_ip,
        hwdst=lab.mac("victim"),
        pdst=lab.ip("victim"),
    )
    return bytes(Ether(src=lab.mac("attacker"), dst=lab.mac("victim")) / arp), bytes(arp)


def _gratuitous_arp(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """A gratuitous ARP claiming the victim's address, to everyone."""
    arp = ARP(
        op=1,
        hwsrc=lab.mac("attacker"),
        psrc=lab.ip("victim"),
        hwdst="00:00:00:00:00:00",
        pdst=lab.ip("victim"),
    )
    return bytes(Ether(src=lab.mac("attacker"), dst=BROADCAST) / arp), bytes(arp)


def _neighbour_advert(lab: SpoofLab, marker: bytes) -> tuple[bytes, bytes]:
    """An unsolicited, overriding NA: "the gateway's IPv6 address is at my MAC"."""
    source = _port_security.link_local(lab.mac("attacker"))
    icmp = ICMPv6ND_NA(tgt=lab.gateway_ip6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(
        lladdr=lab.mac("attacker")
    )
    packet = IPv6(src=source, dst="ff02::1", hlim=255) / icmp
    body = bytes(packet)[40:]
    return bytes(Ether(src=lab.mac("attacker"), dst=ALL_NODES) / packet), body


def _to_victim_through_gateway(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """Its own addresses, the victim's IP, the gateway's MAC: routed back into the bridge."""
    frame = udp4(lab.mac("attacker"), lab.gateway_mac, lab.ip("attacker"), lab.ip("victim"), marker)
    return frame, marker


def _seen_by(forge: Callable[[Sandboxes, bytes], tuple[bytes, bytes]], role: str) -> Attack[Any]:
    """An attack on `role`, with the attacker's own traffic to it as the control."""
    return Attack(forge, watch=(role,), control=_from_attacker_to(role), control_at=role)


def _to_outside(source: str) -> Attack[SpoofLab]:
    """Out through the gateway from a forged source, with a masqueraded control."""
    return Attack(
        _routed_from(source),
        watch=("outside",),
        control=lambda lab, marker: send_udp(lab.ns("attacker"), OUTSIDE_ADDRESS, marker),
        control_at="outside",
    )


ATTACKS: dict[str, Attack[SpoofLab]] = {
    "mac_gateway": Attack(
        _gateway_mac,
        watch=("victim",),
        follow_up=lambda lab, marker: send_udp(lab.ns("victim"), lab.gateway_ip, marker),
        control=_from_host_to("victim"),
        control_at="victim",
    ),
    "mac_neighbour": Attack(
        _neighbour_mac,
        watch=("bystander",),
        follow_up=_from_host_to("victim"),
        control=_from_host_to("victim"),
        control_at="victim",
    ),
    "ip_neighbour": _seen_by(_neighbour_ip, "bystander"),
    "ip_other_network": _to_outside(OTHER_SOURCE),
    "ip_foreign": _to_outside(FOREIGN_SOURCE),
    "arp_reply": _seen_by(_arp_reply, "victim"),
    "arp_gratuitous": _seen_by(_gratuitous_arp, "bystander"),
    "nd_advert": _seen_by(_neighbour_advert, "victim"),
    "icc_via_gateway": Attack(
        _to_victim_through_gateway,
        watch=("victim",),
        control=_from_host_to("victim"),
        control_at="victim",
        icc=False,
    ),
}


# --- overlay networks: the attacker's frames would cross VXLAN to another host ----------

OVERLAY_SUBNET = "10.0.66.0/24"
BEACON_IP = "10.0.66.250"  # a record that only marks a point in the store's history
CLAIM_IP = "10.0.66.249"  # the address of records claiming a local sandbox's MAC
OVERLAY_ROLES = {"attacker": 0, "neighbour": 0, "victim": 1, "bystander": 1}  # role -> host


@dataclass
class OverlaySpoofLab(EndpointRoles):
    """One overlay network over hosts `hosts[0]` (the attacker's and its "neighbour") and
    `hosts[1]` (the "victim" and the "bystander"), each on its own data plane. The
    gateway's MAC is the overlay bridge's of the first kernel host (a userspace host has
    none: its sandboxes leave through kn-gwbridge)."""

    cluster: Cluster
    hosts: tuple[keelnet.Host, keelnet.Host]
    options: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    network: str = "ovspoof"

    def __post_init__(self) -> None:
        first = self.hosts[0]
        net = first.create_network(
            self.network, driver="overlay", subnet=OVERLAY_SUBNET, options=self.options
        )
        self.network_id, self.vni = net.id, vni_of(net)
        v4 = net.ipam_for(4)
        assert v4 is not None and v4.gateway
        self.gateway_ip = v4.gateway
        for role, index in OVERLAY_ROLES.items():
            host = self.hosts[index]
            self.endpoints[role] = host.connect(self.network, self.cluster.sandbox(host, role))
        # Every host holds the others' endpoints once each sandbox reaches them all.
        for role, other in itertools.product(("attacker", "neighbour"), ("victim", "bystander")):
            reached = functools.partial(ping, self.ns(role), self.ip(other), 0.5)
            assert wait_until(reached, timeout=15), f"{role} does not reach {other}"
        kernel = [host for host in self.hosts if not self._switch_of(host)]
        self.gateway_mac = self._bridge_mac(kernel[0]) if kernel else ""

    def host(self, role: str) -> keelnet.Host:
        return self.hosts[OVERLAY_ROLES[role]]

    def place(self, role: str) -> tuple[str, str]:
        return self.ns(role), "eth0"

    def overlay_ns(self, host: keelnet.Host) -> str:
        assert host.netns is not None
        return overlay_ns(host.netns, self.network_id)

    def _switch_of(self, host: keelnet.Host) -> Switch | None:
        plane = host._ctx.planes.get(self.network_id)
        return plane.switch if isinstance(plane, OverlayPlane) else None

    def _bridge_mac(self, host: keelnet.Host) -> str:
        with iproute(netns_path(self.overlay_ns(host))) as ipr:
            link = ipr.link("get", ifname=f"kn-br{self.vni:06x}")[0]
            return str(link.get_attr("IFLA_ADDRESS"))

    def vtep(self, host: keelnet.Host) -> str:
        assert host.cluster is not None
        return host.cluster.vtep

    # --- what a host's bridge or switch holds --------------------------------------------

    def fdb(self, host: keelnet.Host) -> dict[str, tuple[str, bool]]:
        """The host's entries for local MACs: MAC -> (a role or a port name, static)."""
        switch = self._switch_of(host)
        if switch is not None:
            ports = {ep.id: role for role, ep in self.endpoints.items()}
            return {
                entry["mac"]: (ports.get(entry["port"], str(entry["port"])), entry["static"])
                for entry in switch.fdb(self.vni)
                if entry["remote"] is None
            }
        ports = {f"kn-v{ep.id[:11]}": role for role, ep in self.endpoints.items()}
        found: dict[str, tuple[str, bool]] = {}
        with iproute(netns_path(self.overlay_ns(host))) as ipr:
            bridge = ipr.link_lookup(ifname=f"kn-br{self.vni:06x}")[0]
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            for entry in ipr.fdb("dump"):
                if entry.get_attr("NDA_MASTER") != bridge or entry["state"] & NUD_PERMANENT:
                    continue  # a vxlan device's own entries; the bridge's own addresses
                mac, name = str(entry.get_attr("NDA_LLADDR")), names.get(entry["ifindex"])
                found[mac] = (ports.get(name, str(name)), bool(entry["state"] & NUD_NOARP))
        return found

    def drops(self) -> dict[str, int]:
        """Port security drops by reason on the attacker's host."""
        switch = self._switch_of(self.hosts[0])
        if switch is not None:
            drops = switch.stats()["ports"][self.endpoints["attacker"].id]["drops"]
        else:
            drops = nft_counters(self.overlay_ns(self.hosts[0]), "bridge", "keelnet")
        return {reason: drops[reason] for reason in nftables_guard.REASONS}

    def run(self, kind: str, count: int = 1) -> Outcome:
        return run(self, kind, OVERLAY_ATTACKS[kind], count)

    def claim(self, count: int = 3) -> Outcome:
        """Each host gets `count` VXLAN datagrams from the other's VTEP address carrying
        frames from one of its own sandboxes' MACs. Delivered counts the MACs that left
        their sandbox's port (or stopped being static) and the traffic for them that no
        longer reached them."""
        token = secrets.token_hex(4).encode()
        claimed, after = b"kn-claim-" + token, b"kn-after-claim-" + token
        failed = 0
        for target, role, witness, sender in _CLAIMS:
            with capturing([self.place(witness), self.place(role)]) as (at_witness, at_role):
                self._send_claim(target, role, claimed, count)
                if not at_witness.wait_for(claimed):
                    raise AssertionError("vxlan_claim: the datagrams never arrived; lab broken")
                send_udp(self.ns(sender), self.ip(role), after)
                failed += not at_role.wait_for(after)
            failed += self.fdb(self.hosts[target]).get(self.mac(role)) != (role, True)
        return Outcome("vxlan_claim", count * len(_CLAIMS), failed)

    def record_claims(self, count: int = 1) -> Outcome:
        """`count` pairs of endpoint records forged into etcd (`forge_record`) as the
        victim's host's: one claiming the neighbour's IP (with a MAC of its own), one its
        MAC. Delivered counts the times the attacker's sandbox then resolved the
        neighbour's address to another MAC, or its traffic to the neighbour went astray."""
        keys, failed = [], 0
        for n in range(count):
            own_mac = f"02:42:de:ad:{n >> 8:02x}:{n & 255:02x}"
            keys.append(self.forge_record(self.ip("neighbour"), own_mac))
            keys.append(self.forge_record(CLAIM_IP, self.mac("neighbour")))
            failed += not self.reaches("attacker", "neighbour")
        assert self.hosts[1].global_store is not None
        for key in keys:
            self.hosts[1].global_store.client.delete(key)
        return Outcome("forged_record", len(keys), failed)

    def reaches(self, sender: str, role: str) -> bool:
        """Whether `sender`, its neighbour cache flushed, resolves `role`'s address to its
        MAC and what it sends there arrives."""
        subprocess.run(
            ["ip", "netns", "exec", self.ns(sender), "ip", "neigh", "flush", "dev", "eth0"],
            check=True,
        )
        marker = f"kn-to-{role}-{secrets.token_hex(4)}".encode()
        with capturing([self.place(role)]) as (at_role,):
            send_udp(self.ns(sender), self.ip(role), marker)
            arrived = at_role.wait_for(marker)
        with iproute(netns_path(self.ns(sender))) as ipr:
            resolved = {
                str(entry.get_attr("NDA_DST")): str(entry.get_attr("NDA_LLADDR"))
                for entry in ipr.get_neighbours()
                if entry.get_attr("NDA_LLADDR")
            }
        return arrived and resolved.get(self.ip(role)) == self.mac(role)

    def forge_record(self, ip: str, mac: str) -> str:
        """Write a ready endpoint record of the victim's host claiming `ip` and `mac`
        straight into etcd, as anyone with access to the store can; wait until the
        attacker's host has seen it (it programs a record written after it). Returns the
        forged endpoint's key."""
        victims, here = self.hosts[1], self.hosts[0]
        assert victims.global_store is not None and here.cluster is not None
        client = victims.global_store.client
        keys = []
        for address, hardware in ((ip, mac), (BEACON_IP, None)):
            endpoint = Endpoint(
                address,
                None,
                hardware or mac_for(address),
                "eth0",
                None,
                id=secrets.token_hex(32),
                network_id=self.network_id,
                sandbox=f"forged-{address}",
            )
            keys.append(f"{ENDPOINTS}{self.network_id}/{endpoint.id}")
            owner = victims.global_store.host
            client.put(keys[-1], endpoint_record(endpoint, owner, self.vtep(victims), ready=True))
        beacon = keys[1].rpartition("/")[2]
        assert wait_until(
            lambda: beacon in {peer.id for peer in here.cluster.peers(self.network_id)},  # type: ignore[union-attr]
            timeout=10,
        ), "the attacker's host never programmed a record written after the forged one"
        client.delete(keys[1])
        return keys[0]

    def _send_claim(self, target: int, role: str, marker: bytes, count: int) -> None:
        sender, receiver = self.hosts[1 - target], self.hosts[target]
        assert sender.netns is not None
        inner = udp4(self.mac(role), BROADCAST, self.ip(role), "10.0.66.255", marker)
        datagram = bytes([0x08, 0, 0, 0, *self.vni.to_bytes(3, "big"), 0]) + inner
        with netns(sender.netns):
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with peer:
            peer.bind((self.vtep(sender), 0))
            for _ in range(count):
                peer.sendto(datagram, (self.vtep(receiver), 4789))


#: (host claimed at, the sandbox of it whose MAC is claimed, a sandbox there that sees the
#: claim arrive, a sandbox on the other host that then sends to the claimed one)
_CLAIMS = ((0, "neighbour", "attacker", "victim"), (1, "victim", "bystander", "neighbour"))


def _from_sandbox(sender: str, role: str) -> Callable[[Sandboxes, bytes], None]:
    return lambda lab, marker: send_udp(lab.ns(sender), lab.ip(role), marker)


def _local_mac(lab: Sandboxes, marker: bytes) -> tuple[bytes, bytes]:
    """The neighbour's MAC (a sandbox on the attacker's host) as source, to the victim
    (to steal what the victim sends the neighbour)."""
    frame = udp4(
        lab.mac("neighbour"), lab.mac("victim"), lab.ip("neighbour"), lab.ip("victim"), marker
    )
    return frame, marker


#: What a sandbox forges on an overlay network. Controls and follow-ups come from
#: sandboxes (the hosts reach no overlay address); forged ARP never leaves a kernel host
#: (its vxlan device answers requests itself and sends no ARP replies).
OVERLAY_ATTACKS: dict[str, Attack[OverlaySpoofLab]] = {
    "mac_gateway": Attack(
        _gateway_mac,
        watch=("victim",),
        follow_up=lambda lab, marker: send_udp(lab.ns("neighbour"), lab.gateway_ip, marker),
        control=_from_sandbox("neighbour", "victim"),
        control_at="victim",
    ),
    "mac_neighbour": Attack(
        _neighbour_mac,
        watch=("bystander",),
        follow_up=_from_sandbox("neighbour", "victim"),
        control=_from_sandbox("neighbour", "victim"),
        control_at="victim",
    ),
    "mac_local": Attack(
        _local_mac,
        watch=("victim",),
        follow_up=_from_sandbox("victim", "neighbour"),
        control=_from_sandbox("victim", "neighbour"),
        control_at="neighbour",
    ),
    "ip_neighbour": _seen_by(_neighbour_ip, "bystander"),
    "arp_reply": _seen_by(_arp_reply, "victim"),
    "arp_gratuitous": Attack(
        _gratuitous_arp,
        watch=("bystander", "neighbour"),
        control=_from_attacker_to("bystander"),
        control_at="bystander",
    ),
}
