"""keelnet.packet without root: round trips, an independent dissector (scapy) on our
frames, our decapsulation of scapy-built frames, and MalformedPacket on bad input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from keelnet.errors import KeelnetError, MalformedPacket
from keelnet.packet import coalesce, decapsulate, encapsulate, segment

SRC_MAC = "02:aa:00:00:00:01"
DST_MAC = "02:bb:00:00:00:02"
UNDERLAYS = [("192.0.2.1", "198.51.100.2"), ("2001:db8::1", "2001:db8::2")]


def inner_frame(payload: bytes = b"keelnet", sport: int = 40000) -> bytes:
    frame = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / UDP(sport=sport, dport=53)
        / Raw(payload)
    )
    return bytes(frame)


@pytest.mark.parametrize(("src", "dst"), UNDERLAYS)
def test_scapy_reads_our_frame_field_by_field(src: str, dst: str) -> None:
    inner = inner_frame()
    frame = encapsulate(
        inner, vni=4242, src=src, dst=dst, src_mac=SRC_MAC, dst_mac=DST_MAC, src_port=50000
    )
    packet = Ether(frame)
    assert packet.src == SRC_MAC
    assert packet.dst == DST_MAC
    v6 = ":" in src
    ip = packet[IPv6] if v6 else packet[IP]
    assert ip.src == src
    assert ip.dst == dst
    if v6:
        assert packet.type == 0x86DD
        assert ip.nh == 17
        assert ip.hlim == 64
        assert ip.plen == 8 + 8 + len(inner)
    else:
        assert packet.type == 0x0800
        assert (ip.version, ip.ihl, ip.proto, ip.ttl) == (4, 5, 17, 64)
        assert ip.len == 20 + 8 + 8 + len(inner)
        assert ip.frag == 0
        # scapy recomputes the header checksum when the field is deleted: ours must match.
        recomputed = IP(bytes(ip))
        del recomputed.chksum
        assert IP(bytes(recomputed)).chksum == ip.chksum
    udp = packet[UDP]
    assert (udp.sport, udp.dport, udp.len) == (50000, 4789, 8 + 8 + len(inner))
    if v6:
        recomputed_udp = packet.copy()
        del recomputed_udp[UDP].chksum
        assert Ether(bytes(recomputed_udp))[UDP].chksum == udp.chksum != 0
    else:
        assert udp.chksum == 0  # Linux's default for VXLAN over IPv4
    vxlan = packet[VXLAN]
    assert vxlan.flags == 0x08
    assert vxlan.vni == 4242
    assert bytes(vxlan.payload) == inner


@pytest.mark.parametrize(("src", "dst"), UNDERLAYS)
def test_we_decapsulate_frames_scapy_built(src: str, dst: str) -> None:
    inner = inner_frame(b"from scapy")
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    built = Ether(src=SRC_MAC, dst=DST_MAC) / ip / UDP(sport=33333, dport=4789) / VXLAN(vni=77)
    frame = bytes(built / Raw(inner))
    decap = decapsulate(frame)
    assert (decap.vni, decap.src, decap.dst) == (77, src, dst)
    assert (decap.src_port, decap.dst_port) == (33333, 4789)
    assert (decap.src_mac, decap.dst_mac) == (SRC_MAC, DST_MAC)
    assert decap.inner == inner


def test_source_port_hashes_the_flow_into_the_kernel_range() -> None:
    ports = set()
    for sport in range(40000, 40064):
        frame = encapsulate(
            inner_frame(sport=sport),
            vni=1,
            src="192.0.2.1",
            dst="192.0.2.2",
            src_mac=SRC_MAC,
            dst_mac=DST_MAC,
        )
        again = encapsulate(
            inner_frame(sport=sport),
            vni=1,
            src="192.0.2.1",
            dst="192.0.2.2",
            src_mac=SRC_MAC,
            dst_mac=DST_MAC,
        )
        port = decapsulate(frame).src_port
        assert decapsulate(again).src_port == port, "one flow keeps one source port"
        assert 32768 <= port <= 60999
        ports.add(port)
    assert len(ports) > 48, "different flows spread over the range"


def test_custom_destination_port() -> None:
    frame = encapsulate(
        inner_frame(),
        vni=9,
        src="192.0.2.1",
        dst="192.0.2.2",
        src_mac=SRC_MAC,
        dst_mac=DST_MAC,
        dst_port=8472,
    )
    assert Ether(frame)[UDP].dport == 8472
    assert decapsulate(frame).dst_port == 8472
    with pytest.raises(MalformedPacket, match="not the VXLAN port"):
        decapsulate(frame, dst_port=4789)


@given(
    inner=st.binary(min_size=14, max_size=2000),
    vni=st.integers(0, 2**24 - 1),
    underlay=st.sampled_from(UNDERLAYS),
    src_port=st.none() | st.integers(0, 65535),
)
def test_encapsulate_then_decapsulate_is_identity(
    inner: bytes, vni: int, underlay: tuple[str, str], src_port: int | None
) -> None:
    src, dst = underlay
    frame = encapsulate(
        inner, vni=vni, src=src, dst=dst, src_mac=SRC_MAC, dst_mac=DST_MAC, src_port=src_port
    )
    decap = decapsulate(frame)
    assert decap.inner == inner
    assert decap.vni == vni
    assert ipaddress.ip_address(decap.src) == ipaddress.ip_address(src)
    if src_port is not None:
        assert decap.src_port == src_port


@given(st.binary(max_size=300))
def test_decapsulate_raises_only_malformed_packet(data: bytes) -> None:
    try:
        decapsulate(data)
    except MalformedPacket as error:
        assert str(error)


def good_frame(src: str = "192.0.2.1", dst: str = "192.0.2.2") -> bytearray:
    return bytearray(
        encapsulate(inner_frame(), vni=5, src=src, dst=dst, src_mac=SRC_MAC, dst_mac=DST_MAC)
    )


def corrupted(offset: int, value: int, frame: bytearray | None = None) -> bytes:
    frame = good_frame() if frame is None else frame
    frame[offset] = value
    return bytes(frame)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "Ethernet truncated"),
        (bytes(good_frame()[:40]), "truncated"),
        (corrupted(14 + 8, 1), "IPv4 checksum does not verify"),
        (bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP()), "not UDP"),
        (corrupted(42, 0x0C), "VXLAN flags"),
        (corrupted(49, 0x01), "reserved byte"),
        (corrupted(12, 0x88), "not supported"),
        (corrupted(70 + 20, 0xFF, good_frame("2001:db8::1", "2001:db8::2")), "UDP checksum"),
    ],
    ids=["empty", "cut", "ip-checksum", "tcp", "flags", "reserved", "ethertype", "udp-checksum"],
)
def test_malformed_frames_say_what_is_wrong(frame: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message) as raised:
        decapsulate(frame)
    assert isinstance(raised.value, KeelnetError)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"vni": 2**24}, "VNI"),
        ({"vni": -1}, "VNI"),
        ({"dst": "2001:db8::2"}, "different address families"),
        ({"src": "not-an-ip"}, "not an IP address"),
        ({"src_mac": "02:aa:00:00:00"}, "not a MAC address"),
        ({"dst_port": 70000}, "dst_port"),
        ({"inner": b"short"}, "truncated"),
    ],
)
def test_bad_encapsulation_arguments(arguments: dict[str, object], message: str) -> None:
    call: dict[str, object] = {
        "inner": inner_frame(),
        "vni": 1,
        "src": "192.0.2.1",
        "dst": "192.0.2.2",
        "src_mac": SRC_MAC,
        "dst_mac": DST_MAC,
    }
    call.update(arguments)
    inner = call.pop("inner")
    with pytest.raises(MalformedPacket, match=message):
        encapsulate(inner, **call)  # type: ignore[arg-type]


@pytest.mark.parametrize("v6", [False, True])
def test_segment_and_coalesce_invert_each_other(v6: bool) -> None:
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=7)
    payload = bytes(range(256)) * 20
    frame = bytes(Ether() / ip / TCP(sport=1, dport=2, seq=1000, flags="PA") / Raw(payload))
    pieces = segment(frame, 1000)
    assert len(pieces) == 6
    for index, piece in enumerate(pieces):
        packet = Ether(piece)
        tcp = packet[TCP]
        assert tcp.seq == 1000 + 1000 * index
        assert ("P" in str(tcp.flags)) == (index == len(pieces) - 1)
        # scapy recomputes the checksums when the fields are deleted: ours must match.
        recomputed = packet.copy()
        del recomputed[TCP].chksum
        if not v6:
            del recomputed[IP].chksum
            assert packet[IP].id == 7 + index
        assert Ether(bytes(recomputed)) == packet
    ((merged, segment_size),) = coalesce(pieces)
    assert segment_size == 1000
    assert merged == frame


def test_coalesce_rejects_corrupt_segments() -> None:
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A") / Raw(b"x" * 100))
    corrupt = bytearray(frame)
    corrupt[-1] ^= 0xFF
    with pytest.raises(MalformedPacket, match="TCP checksum"):
        coalesce([bytes(corrupt)])
    # Trusted (already verified elsewhere): a lone segment passes through untouched.
    assert coalesce([bytes(corrupt)], verify_checksums=False) == [(bytes(corrupt), 0)]
