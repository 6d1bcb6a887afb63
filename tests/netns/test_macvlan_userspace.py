"""macvlan on the userspace data plane (keelnet's switch on the parent): bridge, private
and vepa modes.

Same lab as the ipvlan tests: the parent's segment is 192.0.2.0/24, the outside host .2,
sandboxes in 192.0.2.128/25. Unlike ipvlan, every sandbox leaves with its own MAC.
"""

from __future__ import annotations

import socket
import struct
import textwrap
import time

import pytest
from netlab import HOST_UPLINK, OUTSIDE_ADDRESS, Lab, kernel_state, run_in, store_state
from nettools import TcpServer, WatcherScript, ping, tcp_request
from test_ipvlan_userspace import (
    GATEWAY,
    RANGE,
    SUBNET,
    Sniffer,
    _link,
    _neighbour,
    _open_fds,
    _send_raw,
)

import keelnet
from keelnet import errors
from keelnet.kernel import links

USERSPACE = {"parent": HOST_UPLINK, "dataplane": "userspace"}


def test_bridge_mode_sandboxes_use_their_own_macs(lab: Lab, host: keelnet.Host) -> None:
    fds = _open_fds()
    host.create_network(
        "mv", driver="macvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE, options=USERSPACE
    )
    assert host.inspect_network("mv")["DataPlane"] == "userspace"
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("mv", a, mac="02:42:c0:00:02:80")
    ep_b = host.connect("mv", b)
    assert _link(a, "eth0") == {"mac": "02:42:c0:00:02:80", "noarp": False, "kind": "tun"}
    assert ping(a, str(ep_b.ip))
    with Sniffer(lab.outside) as sniffer, TcpServer(a, "0.0.0.0", 7300, "mv-a"):
        assert tcp_request(lab.outside, str(ep_a.ip), 7300, "q") == (
            f"mv-a q from {OUTSIDE_ADDRESS}"
        )
    from_a = [f for f in sniffer.arriving() if f.get("ip_src") == ep_a.ip]
    assert from_a and {f["src"] for f in from_a} == {ep_a.mac}
    assert _neighbour(lab.outside, str(ep_a.ip)) == ep_a.mac
    with TcpServer(lab.outside, "0.0.0.0", 7301, "out"):
        assert tcp_request(b, OUTSIDE_ADDRESS, 7301, "m") == f"out m from {ep_b.ip}"
    host.disconnect("mv", a)
    host.disconnect("mv", a)
    assert _link(a, "eth0") is None
    with pytest.raises(errors.NetworkInUse):  # b is still on it
        host.remove_network("mv")
    host.disconnect("mv", b)
    host.remove_network("mv")
    host.remove_network("mv")
    assert _open_fds() == fds  # the switch, its AF_PACKET port and the TAPs are closed


def test_refused_options_leave_nothing(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir), _open_fds()
    with pytest.raises(errors.InvalidOption, match="passthru needs the kernel"):
        host.create_network(
            "mv", driver="macvlan", options={**USERSPACE, "macvlan_mode": "passthru"}
        )
    with pytest.raises(errors.InvalidOption, match="VLAN id must be 1-4094"):
        host.create_network("mv", driver="macvlan", options={**USERSPACE, "parent": "kn-up0.5000"})
    with pytest.raises(errors.MissingParentInterface):
        host.create_network("mv", driver="macvlan", options={**USERSPACE, "parent": "kn-nope0"})
    assert (kernel_state(lab.host), store_state(lab.state_dir), _open_fds()) == before


def _outside_switch(lab: Lab, *, hairpin: bool) -> None:
    """Turns the outside host into an external switch: its eth0 (the parent's wire)
    becomes a port of a Linux bridge holding the outside address; with `hairpin`, the
    bridge sends frames back out of the port they came in on (what VEPA relies on)."""
    run_in(lab.outside, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0")
    run_in(lab.outside, "ip", "addr", "del", f"{OUTSIDE_ADDRESS}/24", "dev", "eth0")
    run_in(lab.outside, "ip", "link", "set", "eth0", "master", "br0")
    run_in(lab.outside, "ip", "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "br0")
    run_in(lab.outside, "ip", "link", "set", "br0", "up")
    hairpin_mode = "on" if hairpin else "off"
    run_in(lab.outside, "bridge", "link", "set", "dev", "eth0", "hairpin", hairpin_mode)


def _two_sandboxes(lab: Lab, host: keelnet.Host, mode: str) -> tuple[str, str, str]:
    """A macvlan network in `mode` with sandboxes a and b; returns their names and b's IP."""
    host.create_network(
        "mv",
        driver="macvlan",
        subnet=SUBNET,
        gateway=GATEWAY,
        ip_range=RANGE,
        options={**USERSPACE, "macvlan_mode": mode},
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    host.connect("mv", a)
    ep_b = host.connect("mv", b)
    return a, b, str(ep_b.ip)


@pytest.mark.parametrize("hairpin", [True, False])
def test_private_sandboxes_never_reach_each_other(
    lab: Lab, host: keelnet.Host, hairpin: bool
) -> None:
    _outside_switch(lab, hairpin=hairpin)
    a, b, b_ip = _two_sandboxes(lab, host, "private")
    assert ping(a, OUTSIDE_ADDRESS)
    assert ping(b, OUTSIDE_ADDRESS)
    with Sniffer(lab.outside) as sniffer:
        assert not ping(a, b_ip)
    # With hairpin the outside switch did send a's ARP requests back: keelnet dropped them.
    reflected = [f for f in sniffer.frames if f["outgoing"] and f.get("op") == 1]
    assert bool(reflected) == hairpin
    with TcpServer(lab.outside, "0.0.0.0", 7302, "out"):
        assert tcp_request(a, OUTSIDE_ADDRESS, 7302, "p").startswith("out p from ")


def test_vepa_sandboxes_reach_each_other_through_the_outside_switch(
    lab: Lab, host: keelnet.Host
) -> None:
    _outside_switch(lab, hairpin=True)
    a, b, b_ip = _two_sandboxes(lab, host, "vepa")
    with Sniffer(lab.outside) as sniffer:
        assert ping(a, b_ip)
    # The echo went out on the wire and came back (hairpin), not across the switch.
    to_b = [f for f in sniffer.frames if f.get("ip_dst") == b_ip]
    assert any(not f["outgoing"] for f in to_b) and any(f["outgoing"] for f in to_b)
    with TcpServer(b, "0.0.0.0", 7303, "mv-b"):
        assert tcp_request(a, b_ip, 7303, "v").startswith("mv-b v from ")
    assert ping(a, OUTSIDE_ADDRESS)


def test_vepa_sandboxes_do_not_reach_each_other_without_hairpin(
    lab: Lab, host: keelnet.Host
) -> None:
    _outside_switch(lab, hairpin=False)
    a, b, b_ip = _two_sandboxes(lab, host, "vepa")
    with Sniffer(lab.outside) as sniffer:
        assert not ping(a, b_ip)
    assert not [f for f in sniffer.frames if f.get("ip_dst") == b_ip and f["outgoing"]]
    assert ping(a, OUTSIDE_ADDRESS)
    assert ping(b, OUTSIDE_ADDRESS)


def test_auto_keeps_the_kernel_macvlan_where_it_exists(lab: Lab, host: keelnet.Host) -> None:
    network = host.create_network("mv", driver="macvlan", options={"parent": HOST_UPLINK})
    assert network.dataplane == "kernel"


# A hand-built VLAN 10 host on the outside's eth0 (this kernel has no 8021q): it answers
# ARP and ICMP echo for its address only in frames whose tag (reported in PACKET_AUXDATA,
# the kernel strips it) is VLAN 10, replying with tagged frames. Prints the VLAN ids of the
# frames it saw from the sandbox's address.
_VLAN_PEER = textwrap.dedent(
    """
    import json, select, socket, struct, sys, time
    my_ip, my_mac, watch = socket.inet_aton(sys.argv[1]), bytes.fromhex("02000000a002"), sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
    s.bind(("eth0", 0))
    print("ready", flush=True)

    def checksum(data):
        data += b"\\0" * (len(data) % 2)
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    def send(dst, kind, payload):
        s.send(dst + my_mac + struct.pack("!HHH", 0x8100, 10, kind) + payload)

    seen = []
    deadline = time.time() + float(sys.argv[3])
    while time.time() < deadline:
        ready, _, _ = select.select([s, sys.stdin], [], [], 0.1)
        if sys.stdin in ready:
            break
        if s not in ready:
            continue
        data, ancillary, _, meta = s.recvmsg(65535, 64)
        if meta[2] == socket.PACKET_OUTGOING:
            continue
        vid = None
        for level, kind, value in ancillary:
            status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", value[:20])
            if level == 263 and kind == 8 and status & (1 << 4):
                vid = tci & 0xFFF
        kind = struct.unpack("!H", data[12:14])[0]
        if kind == 0x0806 and data[28:32] == socket.inet_aton(watch):
            seen.append(vid)
        if kind == 0x0800 and data[26:30] == socket.inet_aton(watch):
            seen.append(vid)
        if vid != 10:
            continue
        if kind == 0x0806 and data[20:22] == b"\\0\\1" and data[38:42] == my_ip:
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + my_mac + my_ip + data[22:32]
            send(data[6:12], 0x0806, arp)
        elif kind == 0x0800 and data[30:34] == my_ip and data[23] == 1 and data[34] == 8:
            ip_len = (data[14] & 15) * 4
            total = struct.unpack("!H", data[16:18])[0]
            header = bytearray(data[14 : 14 + ip_len])
            header[12:16], header[16:20] = data[30:34], data[26:30]
            icmp = bytearray(data[14 + ip_len : 14 + total])
            icmp[0], icmp[2:4] = 0, b"\\0\\0"
            icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
            send(data[6:12], 0x0800, bytes(header) + bytes(icmp))
    print(json.dumps(seen), flush=True)
    """
)


class VlanPeer(WatcherScript):
    """The hand-built VLAN 10 host at `address`, while the `with` block runs; `seen`: the
    VLAN ids of the frames about `watch` it received."""

    def __init__(self, netns: str, address: str, watch: str) -> None:
        super().__init__(netns, _VLAN_PEER, address, watch, "20")

    @property
    def seen(self) -> list[int | None]:
        return self.result or []


# Sandboxes get addresses from the bottom of the subnet; the outside hosts sit at the top.
VLAN_SUBNET, VLAN_PEER, VLAN_UNTAGGED = "203.0.113.0/24", "203.0.113.200", "203.0.113.201"


def test_a_vlan_parent_is_tagged_by_the_switch(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "mv10",
        driver="macvlan",
        subnet=VLAN_SUBNET,
        options={**USERSPACE, "parent": f"{HOST_UPLINK}.10"},
    )
    assert _link(lab.host, f"{HOST_UPLINK}.10") is None  # no VLAN device: tagged in userspace
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("mv10", a)
    with VlanPeer(lab.outside, VLAN_PEER, str(ep.ip)) as peer:
        assert ping(a, VLAN_PEER)
    assert peer.seen and set(peer.seen) == {10}, peer.seen
    # The untagged LAN on the same wire (the outside's own stack): no reach either way.
    run_in(lab.outside, "ip", "addr", "add", f"{VLAN_UNTAGGED}/24", "dev", "eth0")
    assert not ping(a, VLAN_UNTAGGED)
    assert not ping(lab.outside, str(ep.ip))
    host.disconnect("mv10", a)
    host.remove_network("mv10")


def test_auto_tags_a_vlan_parent_in_userspace_without_8021q(lab: Lab, host: keelnet.Host) -> None:
    if links.kind_supported("vlan", host.netns_path):
        pytest.skip("this kernel has 8021q: auto takes the kernel's VLAN device")
    host.create_network(
        "mv10", driver="macvlan", subnet=VLAN_SUBNET, options={"parent": f"{HOST_UPLINK}.10"}
    )
    assert host.inspect_network("mv10")["DataPlane"] == "userspace"
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("mv10", a)
    with VlanPeer(lab.outside, VLAN_PEER, str(ep.ip)) as peer:
        assert ping(a, VLAN_PEER)
    assert peer.seen and set(peer.seen) == {10}, peer.seen


def _arp_request(sender_ip: str, target_ip: str, vlan: int | None) -> bytes:
    sender_mac = bytes.fromhex("02000000a003")
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + sender_mac
    arp += socket.inet_aton(sender_ip) + bytes(6) + socket.inet_aton(target_ip)
    return b"\xff" * 6 + sender_mac + tag + b"\x08\x06" + arp


def test_an_untagged_parent_ignores_vlan_frames(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "mv", driver="macvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE, options=USERSPACE
    )
    b = lab.name("b")
    host.create_sandbox(b)
    ep = host.connect("mv", b)

    def replies_to(vlan: int | None) -> list[dict[str, object]]:
        with Sniffer(lab.outside) as sniffer:
            _send_raw(lab.outside, "eth0", _arp_request("192.0.2.77", str(ep.ip), vlan))
            time.sleep(0.5)  # time for an answer to come back
        return [f for f in sniffer.arriving() if f.get("op") == 2 and f["sender_ip"] == ep.ip]

    assert replies_to(10) == []  # VLAN 10's request is not the untagged LAN's
    assert replies_to(None)  # while the same request untagged is answered
