"""The userspace switch on one test host: TAP and AF_PACKET ports, VNIs, learning and
ageing, ARP suppression, drops by reason, life cycle and failing devices.

Every test builds its own namespaces (`kn-dp…`) and removes them, also on failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dplab import (
    DpLab,
    EchoServer,
    address,
    dp_lab,
    echo_transfer,
    mac_of,
    neighbour_mac,
    ping,
    send_udp,
    sh,
)
from nettools import wait_until
from packetlab import netns

from keelnet import errors
from keelnet.dataplane import DROP_REASONS, Switch

if os.geteuid() != 0:
    pytest.skip("data plane tests need root (namespaces, TAP devices)", allow_module_level=True)

VNI = 42
NET = "198.51.100.{}"


@pytest.fixture
def lab() -> Iterator[DpLab]:
    with dp_lab() as the_lab:
        yield the_lab


def tap_sandbox(sw: Switch, lab: DpLab, number: int, *, vni: int = VNI, mtu: int = 1450) -> str:
    """Sandbox `s<number>` on TAP port `p<number>` with 198.51.100.<number>/24."""
    sandbox = lab.sandbox(f"s{number}")
    sw.add_tap(f"p{number}", vni=vni, sandbox=sandbox, mtu=mtu)
    address(sandbox, "eth0", f"{NET.format(number)}/24")
    return sandbox


@pytest.mark.parametrize("workers", [1, 2])
def test_tap_to_tap_ping_and_tcp_are_byte_exact(lab: DpLab, workers: int) -> None:
    host = lab.host(1)
    with Switch(netns=host, workers=workers) as sw:
        s1 = tap_sandbox(sw, lab, 1)
        s2 = tap_sandbox(sw, lab, 2)
        assert sh("cat", "/sys/class/net/eth0/mtu", netns=s1).strip() == "1450"
        assert ping(s1, NET.format(2))
        assert ping(s2, NET.format(1))
        with EchoServer(s2, NET.format(2)):
            assert echo_transfer(s1, NET.format(2), 8_000_000)
        stats = sw.stats()
        assert stats["running"]
        # 8 MB each way crossed both ports (super-frames count as one packet).
        assert stats["ports"]["p1"]["rx"]["bytes"] > 8_000_000
        assert stats["ports"]["p2"]["tx"]["bytes"] > 8_000_000
        assert stats["ports"]["p2"]["rx"]["bytes"] > 8_000_000
        assert sum(stats["drops"].values()) == 0
        assert set(stats["drops"]) == set(DROP_REASONS)
        entries = {entry["mac"]: entry for entry in sw.fdb(VNI)}
        assert entries[mac_of(s1, "eth0")]["port"] == "p1"
        assert entries[mac_of(s2, "eth0")]["port"] == "p2"
        # A TAP's MAC is static from the moment the port exists: never learned elsewhere.
        assert entries[mac_of(s1, "eth0")]["static"] and entries[mac_of(s2, "eth0")]["static"]


def test_a_multi_queue_tap_spreads_flows_over_its_queues(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host, workers=2) as sw:
        s1 = lab.sandbox("s1")
        sw.add_tap("p1", vni=VNI, sandbox=s1, mtu=1450, queues=2)
        address(s1, "eth0", f"{NET.format(1)}/24")
        s2 = tap_sandbox(sw, lab, 2)
        details = sh("ip", "-d", "link", "show", "eth0", netns=s1)
        assert "multi_queue" in details and "numqueues 2" in details
        with EchoServer(s2, NET.format(2)), ThreadPoolExecutor(max_workers=8) as pool:
            # 16 flows: all on one queue by chance has a probability of 2 / 2^16.
            transfers = pool.map(lambda _: echo_transfer(s1, NET.format(2), 300_000), range(16))
            assert all(transfers)
        queue_rx = sw.stats()["ports"]["p1"]["queue_rx"]
        assert len(queue_rx) == 2 and all(count > 0 for count in queue_rx), queue_rx
        assert sw.stats()["ports"]["p2"]["queue_rx"] == [sw.stats()["ports"]["p2"]["rx"]["packets"]]
    sw = Switch(netns=host)
    try:
        with pytest.raises(errors.InvalidRequest, match="queues"):
            sw.add_tap("p", vni=VNI, queues=17)
    finally:
        sw.close()


def test_mac_and_mtu_are_set_on_the_sandbox_interface(lab: DpLab) -> None:
    host = lab.host(1)
    sandbox = lab.sandbox("s1")
    with Switch(netns=host) as sw:
        sw.add_tap("p1", vni=VNI, sandbox=sandbox, ifname="web0", mac="02:42:c6:33:64:01", mtu=1400)
        assert mac_of(sandbox, "web0") == "02:42:c6:33:64:01"
        assert sh("cat", "/sys/class/net/web0/mtu", netns=sandbox).strip() == "1400"
        assert "UP" in sh("ip", "-br", "link", "show", "web0", netns=sandbox)
        assert sw.stats()["ports"]["p1"]["mac"] == "02:42:c6:33:64:01"
    # Closing the switch removed the device.
    assert "web0" not in sh("ip", "-br", "link", netns=sandbox)


def test_vnis_are_isolated(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host) as sw:
        s1 = tap_sandbox(sw, lab, 1, vni=10)
        tap_sandbox(sw, lab, 2, vni=10)
        s3 = tap_sandbox(sw, lab, 3, vni=20)
        assert ping(s1, NET.format(2))
        assert not ping(s1, NET.format(3), timeout=1)
        assert not ping(s3, NET.format(1), timeout=1)
        stats = sw.stats()
        # Nothing of VNI 10 (ARP broadcasts included) was written to VNI 20's port.
        assert stats["ports"]["p3"]["tx"]["packets"] == 0
        assert stats["ports"]["p3"]["rx"]["packets"] > 0
        assert {entry["mac"] for entry in sw.fdb(20)} == {mac_of(s3, "eth0")}
        assert mac_of(s3, "eth0") not in {entry["mac"] for entry in sw.fdb(10)}
        assert stats["vnis"][10]["ports"] == ["p1", "p2"]
        assert stats["vnis"][20]["ports"] == ["p3"]


def test_learned_macs_age_out_and_port_macs_stay(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host, fdb_max_age=1.0) as sw:
        s1 = tap_sandbox(sw, lab, 1)
        s2 = tap_sandbox(sw, lab, 2)
        assert ping(s1, NET.format(2))
        ports = {mac_of(s1, "eth0"), mac_of(s2, "eth0")}
        # s1 also speaks for a MAC behind it (the port has no port security).
        behind = "02:42:c6:33:64:77"
        frame = bytes.fromhex("ffffffffffff" + behind.replace(":", "") + "88b5") + bytes(46)
        with netns(s1):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind(("eth0", 0))
            sock.send(frame)
        assert wait_until(lambda: behind in {entry["mac"] for entry in sw.fdb(VNI)})
        assert wait_until(lambda: behind not in {entry["mac"] for entry in sw.fdb(VNI)}, timeout=6)
        assert sw.stats()["fdb"]["aged_out"] >= 1
        assert {entry["mac"] for entry in sw.fdb(VNI)} == ports


def test_arp_suppression_answers_for_known_addresses(lab: DpLab) -> None:
    host = lab.host(1)
    remote_mac = "02:42:c6:33:64:63"
    with Switch(netns=host, arp_suppression=True) as sw:
        sw.add_vtep("192.0.2.1")
        s1 = tap_sandbox(sw, lab, 1)
        sw.add_peer(VNI, "192.0.2.2", mac=remote_mac, ip=NET.format(99))
        assert {"mac": remote_mac, "port": None, "remote": "192.0.2.2", "static": True} in sw.fdb(
            VNI
        )
        before = sw.stats()["vnis"][VNI]
        # Any datagram to .99 makes s1 resolve it first.
        send_udp(s1, NET.format(1), NET.format(99), 9, [b"resolve me"])
        assert wait_until(lambda: neighbour_mac(s1, NET.format(99)) == remote_mac)
        after = sw.stats()["vnis"][VNI]
        assert after["arp_suppressed"] == before["arp_suppressed"] + 1
        # The request was answered here, not flooded to the peer.
        assert after["flooded"] == before["flooded"]
        # Local sandboxes are snooped too: s2's request for s1 is answered by the switch.
        s2 = tap_sandbox(sw, lab, 2)
        assert ping(s2, NET.format(1))
        assert neighbour_mac(s2, NET.format(1)) == mac_of(s1, "eth0")
        assert sw.stats()["vnis"][VNI]["arp_suppressed"] >= 2


def _vxlan(vni: int, inner: bytes, flags: int = 0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + inner


def _inner_frame(src: str, dst: str = "ff:ff:ff:ff:ff:ff", size: int = 60) -> bytes:
    from scapy.layers.l2 import Ether

    frame = bytes(Ether(src=src, dst=dst, type=0x88B5))
    return frame + bytes(size - len(frame))


def test_malformed_and_foreign_vxlan_is_dropped_and_counted(lab: DpLab) -> None:
    h1, h2, h3 = lab.host(1), lab.host(2), lab.host(3)
    with Switch(netns=h1) as sw:
        sw.add_vtep("192.0.2.1")
        s1 = tap_sandbox(sw, lab, 1)
        tap_sandbox(sw, lab, 2)
        sw.add_peer(VNI, "192.0.2.2")
        assert ping(s1, NET.format(2))  # s1's MAC is known: the oversized frame is unicast
        good = _inner_frame("02:00:00:00:00:02")
        send_udp(h3, "192.0.2.3", "192.0.2.1", 4789, [_vxlan(VNI, good)])  # not a peer
        send_udp(
            h2,
            "192.0.2.2",
            "192.0.2.1",
            4789,
            [
                _vxlan(99, good),  # a VNI this switch does not serve
                _vxlan(VNI, good, flags=0x0C),  # reserved flag bit
                b"\x08\0\0",  # shorter than a VXLAN header
                _vxlan(VNI, good[:10]),  # inner frame cut short
                _vxlan(VNI, _inner_frame("01:00:5e:00:00:01")),  # group source MAC
                _vxlan(VNI, _inner_frame("02:00:00:00:00:03", dst=mac_of(s1, "eth0"), size=3000)),
            ],
        )
        expected = {
            "unknown_peer": 1,
            "unknown_vni": 1,
            "bad_vxlan": 1,
            "truncated": 2,
            "invalid_source": 1,
            "oversized": 1,
        }
        assert wait_until(lambda: sum(sw.stats()["drops"].values()) >= sum(expected.values()))
        drops = sw.stats()["drops"]
        assert {reason: drops[reason] for reason in expected} == expected
        assert sum(drops.values()) == sum(expected.values())
        # None of those MACs were learned; the switch keeps forwarding.
        assert all(entry["mac"] != "02:00:00:00:00:02" for entry in sw.fdb(VNI))
        assert ping(s1, NET.format(2))
        # A valid frame from the configured peer is accepted and learned.
        send_udp(h2, "192.0.2.2", "192.0.2.1", 4789, [_vxlan(VNI, good)])
        assert wait_until(lambda: any(e["mac"] == "02:00:00:00:00:02" for e in sw.fdb(VNI)))
        assert sw.stats()["vteps"][0]["drops"]["unknown_peer"] == 1


def test_bad_frames_from_a_sandbox_are_dropped_and_counted(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host) as sw:
        s1 = tap_sandbox(sw, lab, 1)
        tap_sandbox(sw, lab, 2)
        script = (
            "import socket\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind(('eth0', 0))\n"
            "s.send(bytes.fromhex('ffffffffffff' '010203040506' '88b5') + bytes(46))\n"
            "s.send(bytes.fromhex('ffffffffffff' '000000000000' '88b5') + bytes(46))\n"
        )
        sh("python3", "-c", script, netns=s1)
        assert wait_until(lambda: sw.stats()["ports"]["p1"]["drops"]["invalid_source"] == 2)
        assert sw.stats()["ports"]["p2"]["tx"]["packets"] == 0
        assert ping(s1, NET.format(2))
        assert sw.stats()["drops"]["invalid_source"] == 2


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_and_start_leak_no_descriptors_or_threads(lab: DpLab, workers: int) -> None:
    host = lab.host(1)
    s1, s2 = lab.sandbox("s1"), lab.sandbox("s2")
    fds, threads = _fds(), _threads()
    sw = Switch(netns=host, workers=workers)
    try:
        sw.add_vtep("192.0.2.1")
        sw.add_tap("p1", vni=VNI, sandbox=s1, mtu=1450)
        sw.add_tap("p2", vni=VNI, sandbox=s2, mtu=1450)
        address(s1, "eth0", f"{NET.format(1)}/24")
        address(s2, "eth0", f"{NET.format(2)}/24")
        for _ in range(3):
            sw.start()
            assert sw.running
            assert _threads() == threads + workers
            assert ping(s1, NET.format(2))
            sw.stop()
            assert not sw.running
            assert _threads() == threads
        # Stopped: nothing forwards.
        assert not ping(s1, NET.format(2), timeout=0.5)
    finally:
        sw.close()
    assert _fds() == fds
    assert _threads() == threads
    assert "eth0" not in sh("ip", "-br", "link", netns=s1)


def test_a_port_deleted_under_traffic_is_removed_and_the_rest_forward(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host) as sw:
        s1 = tap_sandbox(sw, lab, 1)
        s2 = tap_sandbox(sw, lab, 2)
        s3 = tap_sandbox(sw, lab, 3)
        assert ping(s1, NET.format(2))
        assert ping(s1, NET.format(3))
        blast = (
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "end = time.time() + 3\n"
            "while time.time() < end:\n"
            f"    s.sendto(bytes(1000), ('{NET.format(2)}', 9))\n"
        )
        sender = subprocess.Popen(["ip", "netns", "exec", s1, "python3", "-c", blast])
        try:
            assert wait_until(lambda: sw.stats()["ports"]["p2"]["tx"]["packets"] > 100)
            sh("ip", "link", "del", "eth0", netns=s2)
            assert wait_until(lambda: "p2" not in sw.stats()["ports"])
        finally:
            sender.wait(timeout=10)
        stats = sw.stats()
        assert [removed["name"] for removed in stats["removed_ports"]] == ["p2"]
        assert stats["removed_ports"][0]["error"]
        assert all(entry["port"] != "p2" for entry in sw.fdb(VNI))
        assert ping(s1, NET.format(3))
        with EchoServer(s3, NET.format(3)):
            assert echo_transfer(s1, NET.format(3), 1_000_000)


def test_packet_port_switches_an_existing_veth(lab: DpLab) -> None:
    host = lab.host(1)
    with Switch(netns=host) as sw:
        s1 = tap_sandbox(sw, lab, 1)
        s4 = lab.sandbox("s4")
        sh(
            "ip",
            "link",
            "add",
            "vp4",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1450",
            "netns",
            s4,
            netns=host,
        )
        sh("ip", "link", "set", "vp4", "up", netns=host)
        address(s4, "eth0", f"{NET.format(4)}/24")
        sw.add_packet_port("vp4", vni=VNI)
        assert sw.stats()["ports"]["vp4"]["kind"] == "packet"
        assert ping(s1, NET.format(4))
        assert ping(s4, NET.format(1))
        with EchoServer(s4, NET.format(4)):
            assert echo_transfer(s1, NET.format(4), 4_000_000)
        entries = {entry["mac"]: entry["port"] for entry in sw.fdb(VNI)}
        assert entries[mac_of(s4, "eth0")] == "vp4"
        vp4 = sw.stats()["ports"]["vp4"]
        assert vp4["queue_rx"] == [vp4["rx"]["packets"]]
        # A link flap is not a vanished device: the port stays and forwards again.
        sh("ip", "link", "set", "vp4", "down", netns=host)
        sh("ip", "link", "set", "vp4", "up", netns=host)
        assert "vp4" in sw.stats()["ports"]
        assert ping(s1, NET.format(4), timeout=5)
        assert sw.stats()["removed_ports"] == []


def test_bad_requests_raise_keelnet_errors(lab: DpLab) -> None:
    host = lab.host(1)
    s1 = lab.sandbox("s1")
    with Switch(netns=host) as sw:
        sw.add_tap("p1", vni=VNI, sandbox=s1)
        with pytest.raises(errors.Conflict):
            sw.add_tap("p1", vni=VNI, sandbox=s1, ifname="eth1")
        with pytest.raises(errors.InvalidRequest):
            sw.add_tap("p9", vni=1 << 24, sandbox=s1)
        with pytest.raises(errors.InvalidRequest):
            sw.add_peer(VNI, "not-an-address")
        with pytest.raises(errors.NotFound):
            sw.remove_port("nope")
        with pytest.raises(errors.NotFound):
            sw.remove_peer(VNI, "192.0.2.77")
        with pytest.raises(errors.DataplaneError) as missing:
            sw.add_tap("p2", vni=VNI, sandbox=f"{lab.prefix}-no-such-ns")
        assert missing.value.errno == 2
        with pytest.raises(errors.DataplaneError) as taken:
            sw.add_tap("p3", vni=VNI, sandbox=s1)  # eth0 exists there
        assert taken.value.errno == 17
        with pytest.raises(errors.DataplaneError) as no_address:
            sw.add_vtep("203.0.113.9")  # not an address of the host
        assert no_address.value.errno == 99
        # Failed calls left nothing behind.
        assert list(sw.stats()["ports"]) == ["p1"]
        assert sh("ip", "-br", "link", netns=host).count("kn-tap") == 0
        sw.remove_port("p1")
        assert "eth0" not in sh("ip", "-br", "link", netns=s1)
    with pytest.raises(errors.DataplaneError):
        Switch(netns=f"{lab.prefix}-absent")
    time.sleep(0)
