"""VXLAN interoperability with the Linux kernel, inside throwaway namespaces.

Two namespaces `kn-vxa-*` and `kn-vxb-*` are joined by a veth underlay (192.0.2.0/24 and
2001:db8::/64). The kernel's own vxlan device is the reference implementation:
- frames a kernel vxlan device sends are captured (AF_PACKET) on the peer and decoded by
  our `decapsulate`;
- frames our `encapsulate` builds are injected (AF_PACKET) towards a kernel vxlan device,
  which must deliver the inner datagram to a socket behind it.
(Our encoding is also checked field by field against scapy in tests/test_packet.py.)
Nothing leaves the namespaces the test made; both are deleted afterwards, also on failure.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

import pytest
from packetlab import (
    ETH_P_ALL,
    UNDERLAY,
    Underlay,
    ip,
    mac_of,
    netns,
    save_fuzz_seed,
    underlay_fixture,  # noqa: F401  (provides `underlay`)
)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from keelnet.errors import MalformedPacket
from keelnet.packet import decapsulate, encapsulate

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("VXLAN interop tests need root (namespaces, veth, vxlan)", allow_module_level=True)

VNI = 4242
OVERLAY = ("10.42.0.1", "10.42.0.2")
OVERLAY_PEER_MAC = "02:4b:4e:00:00:02"


def add_kernel_vxlan(namespace: str, family: int, local_index: int, *flags: str) -> str:
    """A kernel vxlan device `kn-vx<family>` with VNI 4242 on port 4789, addressed in
    the overlay; returns its name."""
    local, remote = UNDERLAY[family][local_index], UNDERLAY[family][1 - local_index]
    device = f"kn-vx{family}"
    ip(
        "-n",
        namespace,
        "link",
        "add",
        device,
        "type",
        "vxlan",
        "id",
        str(VNI),
        "local",
        local,
        "remote",
        remote,
        "dstport",
        "4789",
        "nolearning",
        *flags,
    )
    ip("-n", namespace, "addr", "add", f"{OVERLAY[local_index]}/24", "dev", device)
    ip("-n", namespace, "link", "set", device, "up")
    return device


def capture_vxlan(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    """The first frame on `sock` that decapsulates and carries `marker`."""
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        try:
            decap = decapsulate(frame)
        except MalformedPacket:
            continue  # neighbour discovery and other underlay noise
        if marker in decap.inner:
            return frame
    raise AssertionError("no VXLAN frame with the marker was captured")


def inject_and_receive(
    underlay: Underlay, frame: bytes, port: int, *, timeout: float
) -> tuple[bytes, tuple[str, int]]:
    """Send `frame` raw out of host a's underlay device; return the datagram a UDP socket
    on b's overlay address and `port` receives (TimeoutError when none arrives)."""
    with netns(underlay.b):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns(underlay.a):
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        receiver.bind((OVERLAY[1], port))
        receiver.settimeout(timeout)
        injector.bind((underlay.dev_a, 0))
        injector.send(frame)
        return receiver.recvfrom(2048)
    finally:
        receiver.close()
        injector.close()


@pytest.mark.parametrize(
    ("family", "udp_checksum"),
    [(4, False), (4, True), (6, True)],
    ids=["ipv4-no-udp-csum", "ipv4-udp-csum", "ipv6"],
)
def test_we_decode_what_the_kernel_sends(
    underlay: Underlay, family: int, udp_checksum: bool
) -> None:
    flags = [] if family == 6 else ["udpcsum" if udp_checksum else "noudpcsum"]
    device = add_kernel_vxlan(underlay.a, family, 0, *flags)
    # The peer's overlay MAC is static so the kernel sends the datagram at once (no ARP).
    ip("-n", underlay.a, "neigh", "add", OVERLAY[1], "lladdr", OVERLAY_PEER_MAC, "dev", device)
    with netns(underlay.b):
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    marker = secrets.token_bytes(16)
    try:
        capture.bind((underlay.dev_b, 0))
        capture.settimeout(0.2)
        with netns(underlay.a), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(marker, (OVERLAY[1], 9999))
        frame = capture_vxlan(capture, marker, time.monotonic() + 5)
    finally:
        capture.close()
    decap = decapsulate(frame)
    name = f"kernel_ipv{family}{'_udpcsum' if udp_checksum else ''}"
    save_fuzz_seed("vxlan_decap", name, frame)
    save_fuzz_seed("parse_ethernet", name, frame)
    assert decap.vni == VNI
    assert (decap.src, decap.dst) == (UNDERLAY[family][0], UNDERLAY[family][1])
    assert decap.dst_port == 4789
    assert decap.src_mac == mac_of(underlay.a, underlay.dev_a)
    assert decap.dst_mac == mac_of(underlay.b, underlay.dev_b)
    inner = Ether(decap.inner)
    assert inner.src == mac_of(underlay.a, device)
    assert inner.dst == OVERLAY_PEER_MAC
    assert (inner[IP].src, inner[IP].dst) == OVERLAY
    assert inner[UDP].dport == 9999
    assert bytes(inner[UDP].payload) == marker
    # The kernel's UDP checksum state is what we expect (zero only over IPv4 without udpcsum).
    outer = Ether(frame)
    assert (outer[UDP].chksum != 0) == udp_checksum
    # Our own encapsulation of the same inner frame is the kernel's, byte for byte, apart
    # from the IPv4 ID and the (hash-chosen) source port.
    ours = bytearray(
        encapsulate(
            decap.inner,
            vni=VNI,
            src=decap.src,
            dst=decap.dst,
            src_mac=decap.src_mac,
            dst_mac=decap.dst_mac,
            src_port=decap.src_port,
        )
    )
    theirs = bytearray(frame)
    if family == 4:
        for copy in (ours, theirs):
            copy[14 + 4 : 14 + 6] = b"\0\0"  # identification
            copy[14 + 10 : 14 + 12] = b"\0\0"  # header checksum (covers the ID)
            copy[14 + 6] &= ~0x40  # DF: the kernel sets it only with `df set`
            copy[14 + 26 : 14 + 28] = b"\0\0"  # UDP checksum, optional over IPv4
        assert ours[14 + 8] == 64 and theirs[14 + 8] in (64, 255)  # TTL: kernel may inherit
        ours[14 + 8] = theirs[14 + 8]
    else:
        assert ours[14 + 7] == 64
        ours[14 + 7] = theirs[14 + 7]  # hop limit (the kernel's default may differ)
        ours[14:18] = theirs[14:18]  # traffic class / flow label (the kernel sets one)
    assert bytes(ours) == bytes(theirs)


@pytest.mark.parametrize("family", [4, 6])
def test_kernel_delivers_what_we_encapsulate(underlay: Underlay, family: int) -> None:
    device = add_kernel_vxlan(underlay.b, family, 1)
    marker = secrets.token_bytes(16)
    inner = bytes(
        Ether(src="02:4b:4e:00:00:01", dst=mac_of(underlay.b, device))
        / IP(src=OVERLAY[0], dst=OVERLAY[1], ttl=64)
        / UDP(sport=12345, dport=7777)
        / Raw(marker)
    )
    frame = encapsulate(
        inner,
        vni=VNI,
        src=UNDERLAY[family][0],
        dst=UNDERLAY[family][1],
        src_mac=mac_of(underlay.a, underlay.dev_a),
        dst_mac=mac_of(underlay.b, underlay.dev_b),
    )
    data, source = inject_and_receive(underlay, frame, 7777, timeout=3)
    assert data == marker
    assert source == (OVERLAY[0], 12345)
    if family == 6:
        # Sanity: the frame we injected was IPv6 all along.
        assert IPv6 in Ether(frame)


def test_kernel_drops_what_we_corrupt(underlay: Underlay) -> None:
    """A wrong VNI must not be delivered: the kernel checks what we claim to encode."""
    device = add_kernel_vxlan(underlay.b, 4, 1)
    inner = bytes(
        Ether(src="02:4b:4e:00:00:01", dst=mac_of(underlay.b, device))
        / IP(src=OVERLAY[0], dst=OVERLAY[1])
        / UDP(sport=12345, dport=7778)
        / Raw(b"wrong vni")
    )
    frame = encapsulate(
        inner,
        vni=VNI + 1,
        src=UNDERLAY[4][0],
        dst=UNDERLAY[4][1],
        src_mac=mac_of(underlay.a, underlay.dev_a),
        dst_mac=mac_of(underlay.b, underlay.dev_b),
    )
    with pytest.raises(TimeoutError):
        inject_and_receive(underlay, frame, 7778, timeout=0.5)
