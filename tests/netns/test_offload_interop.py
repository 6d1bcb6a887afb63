"""Software segmentation and coalescing against the kernel's own TCP segmentation.

A TCP stream crosses a veth underlay between two throwaway namespaces with TSO off on the
sender, so the kernel's software GSO cuts its super-frames into wire frames. Those frames,
captured as they leave, are coalesced by keelnet (checksums verified) and segmented again:
the result must be the kernel's frames byte for byte, and the payload the stream sent.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading

import pytest
from packetlab import (
    ETH_P_ALL,
    ETHTOOL_STSO,
    UNDERLAY,
    Underlay,
    ethtool_set,
    netns,
    save_fuzz_seed,
    underlay_fixture,  # noqa: F401  (provides `underlay`)
)
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from keelnet.packet import coalesce, segment

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("offload interop tests need root (namespaces, veth)", allow_module_level=True)

PACKET_OUTGOING = 4
PORT = 5201
STREAM_BYTES = 400_000


def capture_stream(lab: Underlay, family: int) -> tuple[list[bytes], bytes]:
    """Sends STREAM_BYTES from a to b over TCP; returns the data frames a sent, in sending
    order (resends included), and the bytes b received."""
    inet = socket.AF_INET6 if family == 6 else socket.AF_INET
    server_address = UNDERLAY[family][1]
    with netns(lab.b):
        listener = socket.socket(inet, socket.SOCK_STREAM)
    with netns(lab.a):
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        client = socket.socket(inet, socket.SOCK_STREAM)
    received = bytearray()
    try:
        capture.bind((lab.dev_a, 0))
        capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        capture.settimeout(0.5)
        listener.bind((server_address, PORT))
        listener.listen(1)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                while chunk := connection.recv(1 << 16):
                    received.extend(chunk)

        server = threading.Thread(target=serve)
        server.start()
        client.connect((server_address, PORT))
        client.sendall(secrets.token_bytes(STREAM_BYTES))
        client.shutdown(socket.SHUT_WR)
        server.join(timeout=10)
        frames = []
        while True:
            try:
                frame, address = capture.recvfrom(1 << 16)
            except TimeoutError:
                break
            if address[2] != PACKET_OUTGOING:
                continue
            packet = Ether(frame)
            if TCP in packet and packet[TCP].dport == PORT and len(packet[TCP].payload) > 0:
                frames.append(frame)
        return frames, bytes(received)
    finally:
        for sock in (capture, client, listener):
            sock.close()


@pytest.mark.parametrize("family", [4, 6])
def test_coalesce_then_segment_reproduces_the_kernels_frames(
    underlay: Underlay, family: int
) -> None:
    with netns(underlay.a):
        ethtool_set(underlay.dev_a, ETHTOOL_STSO, 0)
    frames, received = capture_stream(underlay, family)
    assert len(received) == STREAM_BYTES
    assert len(frames) > STREAM_BYTES // 65536, "the stream was captured"
    # Three consecutive kernel segments, length-prefixed as the gro_coalesce target reads.
    seed = b"".join(len(frame).to_bytes(2, "little") + frame for frame in frames[:3])
    save_fuzz_seed("gro_coalesce", f"kernel_tcp{family}", seed)
    save_fuzz_seed("parse_ethernet", f"kernel_tcp{family}", frames[0])
    merged = coalesce(frames)
    assert len(merged) < len(frames), "segments were coalesced"
    resegmented: list[bytes] = []
    for super_frame, segment_size in merged:
        resegmented.extend(segment(super_frame, segment_size) if segment_size else [super_frame])
    # Byte for byte, IP IDs, sequence numbers, flags and checksums included.
    assert resegmented == frames
    assert tcp_stream(frames, IPv6 if family == 6 else IP) == received


def tcp_stream(frames: list[bytes], ip_layer: type[IP] | type[IPv6]) -> bytes:
    """The bytes that the data frames of one TCP stream carry, placed by sequence number.
    The capture holds every frame sent, in sending order: on a loaded machine that
    includes retransmissions (a loss probe, a timeout), which repeat earlier bytes out of
    order and must repeat them exactly."""
    first = Ether(frames[0])[ip_layer][TCP].seq  # the first frame sent is never a resend
    segments = []
    for frame in frames:
        tcp = Ether(frame)[ip_layer][TCP]
        segments.append(((tcp.seq - first) % (1 << 32), bytes(tcp.payload)))
    stream = bytearray()
    for offset, payload in sorted(segments):
        assert offset <= len(stream), f"no frame carried bytes {len(stream)}-{offset}"
        repeated = stream[offset : offset + len(payload)]
        assert payload[: len(repeated)] == repeated, f"a resend changed bytes from {offset}"
        stream += payload[len(repeated) :]
    return bytes(stream)
