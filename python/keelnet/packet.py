"""VXLAN encapsulation and decapsulation (RFC 7348), done by keelnet's Rust packet core.

For tools, tests and users who inspect overlay traffic; the data plane itself never goes
through Python. Malformed input raises :class:`keelnet.errors.MalformedPacket` with a
message saying what is wrong (which layer, which field).
"""

from __future__ import annotations

from keelnet import _core
from keelnet._core import Decapsulated

__all__ = ["Decapsulated", "coalesce", "decapsulate", "encapsulate", "segment"]

VXLAN_PORT = 4789
"""The IANA-assigned VXLAN UDP port."""


def encapsulate(
    inner: bytes,
    *,
    vni: int,
    src: str,
    dst: str,
    src_mac: str,
    dst_mac: str,
    dst_port: int = VXLAN_PORT,
    src_port: int | None = None,
) -> bytes:
    """Wrap the Ethernet frame ``inner`` in VXLAN and return the whole outer frame.

    The outer frame is Ethernet (``src_mac`` -> ``dst_mac``) + IPv4 or IPv6 (chosen by
    the family of ``src``/``dst``, which must match) + UDP + VXLAN with ``vni`` (0 to
    2**24 - 1). As a Linux vxlan device does: TTL 64, DF clear, the UDP source port
    taken from a hash of the inner flow in 32768-60999 unless ``src_port`` is given,
    no UDP checksum over IPv4, a computed one over IPv6.
    """
    return _core.encapsulate(
        inner,
        vni=vni,
        src=src,
        dst=dst,
        src_mac=src_mac,
        dst_mac=dst_mac,
        dst_port=dst_port,
        src_port=src_port,
    )


def decapsulate(frame: bytes, *, dst_port: int | None = None) -> Decapsulated:
    """Unwrap a VXLAN frame (starting at the outer Ethernet header).

    Checks every layer as a receiving VTEP does: IPv4 header checksum, lengths, no
    fragments, UDP checksum when present (required over IPv6), VXLAN I flag set and
    reserved bits clear, an inner frame of at least an Ethernet header. Any UDP port is
    accepted unless ``dst_port`` is given. Returns an object with ``vni``, ``src``,
    ``dst`` (outer addresses), ``src_port``, ``dst_port``, ``src_mac``, ``dst_mac``,
    ``ttl`` and ``inner`` (the inner frame, bytes).
    """
    return _core.decapsulate(frame, dst_port=dst_port)


def segment(frame: bytes, mss: int) -> list[bytes]:
    """Split a TCP super-frame (Ethernet + IPv4/IPv6 + TCP) into frames of at most ``mss``
    payload bytes, as the kernel's GSO does: IPv4 ID +1 and sequence number advanced per
    frame, FIN/PSH only on the last, CWR only on the first, all checksums computed."""
    return _core.segment(frame, mss)


def coalesce(frames: list[bytes], *, verify_checksums: bool = True) -> list[tuple[bytes, int]]:
    """Merge consecutive in-order TCP segments of one flow into super-frames, as GRO does.

    Returns ``(super_frame, segment_size)`` pairs, checksums complete; ``segment_size`` is
    the size to segment it back with (0 for a frame that stayed a single segment). A frame
    that cannot be coalesced at all (not TCP, SYN/RST, no payload, bad checksum when
    ``verify_checksums``) raises :class:`~keelnet.errors.MalformedPacket`.
    """
    return _core.coalesce(frames, verify_checksums=verify_checksums)
