"""ipvlan emulated by the userspace data plane (this kernel has no ipvlan module).

The lab's underlay 192.0.2.0/24 is the parent's segment: the host's uplink (the parent)
is .1, the outside host .2. l2 sandboxes take 192.0.2.128/25 on that segment; l3
sandboxes live in 198.51.100.0/24 and 203.0.113.0/24, routed by the host, which the
outside host reaches through routes via .1.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netlab import (
    HOST_ADDRESS,
    HOST_ADDRESS6,
    HOST_UPLINK,
    OUTSIDE_ADDRESS,
    OUTSIDE_ADDRESS6,
    Lab,
    kernel_state,
    store_state,
)
from nettools import TcpServer, WatcherScript, ping, tcp_request, wait_until
from test_agent import agent, keelnet_cli  # noqa: F401 (agent: a fixture used by name)

import keelnet
from keelnet import errors, sandbox
from keelnet.dataplane_ipvlan import Ipvlan
from keelnet.kernel import nftables
from keelnet.kernel.namespaces import iproute, netns_path

SUBNET, GATEWAY, RANGE = "192.0.2.0/24", "192.0.2.1", "192.0.2.128/25"
L3_SUBNET_A, L3_SUBNET_B = "198.51.100.0/24", "203.0.113.0/24"
USERSPACE = {"parent": HOST_UPLINK, "dataplane": "userspace"}
IFA_F_DADFAILED = 0x08  # linux/if_addr.h

# Captures what crosses the outside host's eth0 (both directions) until stdin closes or
# the time is up, then prints one JSON object per frame.
_SNIFF = textwrap.dedent(
    """
    import json, select, socket, struct, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("eth0", 0))
    print("ready", flush=True)
    frames = []
    deadline = time.time() + float(sys.argv[1])
    while time.time() < deadline:
        ready, _, _ = select.select([s, sys.stdin], [], [], 0.1)
        if sys.stdin in ready:
            break
        if s not in ready:
            continue
        data, meta = s.recvfrom(65535)
        mac = lambda b: ":".join("%02x" % x for x in b)
        kind = struct.unpack("!H", data[12:14])[0]
        frame = {"dst": mac(data[0:6]), "src": mac(data[6:12]), "type": kind,
                 "outgoing": meta[2] == socket.PACKET_OUTGOING}
        if kind == 0x0806:
            frame["op"] = struct.unpack("!H", data[20:22])[0]
            frame["sender_mac"] = mac(data[22:28])
            frame["sender_ip"] = socket.inet_ntoa(data[28:32])
        elif kind == 0x0800:
            frame["ip_src"] = socket.inet_ntoa(data[26:30])
            frame["ip_dst"] = socket.inet_ntoa(data[30:34])
        frames.append(frame)
    print(json.dumps(frames), flush=True)
    """
)


class Sniffer(WatcherScript):
    """Frames seen on the outside host's eth0 while the `with` block runs."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns, _SNIFF, "20")

    @property
    def frames(self) -> list[dict[str, Any]]:
        return self.result or []

    def arriving(self) -> list[dict[str, Any]]:
        """Frames the outside host received (sent by the keelnet host)."""
        return [f for f in self.frames if not f["outgoing"]]


def _link(netns: str, ifname: str) -> dict[str, Any] | None:
    with iproute(netns_path(netns)) as ipr:
        for link in ipr.link("dump"):
            if link.get("ifname") == ifname:
                return {
                    "mac": link.get("address"),
                    "noarp": bool(link["flags"] & 0x80),
                    "kind": link.get(("linkinfo", "kind")),
                }
    return None


def _neighbour(netns: str, address: str) -> str | None:
    with iproute(netns_path(netns)) as ipr:
        for entry in ipr.neigh("dump"):
            if entry.get("dst") == address and entry.get("lladdr"):
                return str(entry.get("lladdr"))
    return None


def _parent_mac(lab: Lab) -> str:
    found = _link(lab.host, HOST_UPLINK)
    assert found is not None
    return str(found["mac"])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _route_outside_to(lab: Lab, subnet: str) -> None:
    with iproute(netns_path(lab.outside)) as ipr:
        prefix, length = subnet.split("/")
        ipr.route("add", dst=prefix, dst_len=int(length), gateway=HOST_ADDRESS)


@pytest.fixture
def l2(lab: Lab, host: keelnet.Host) -> Iterator[str]:
    host.create_network(
        "iv", driver="ipvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE, options=USERSPACE
    )
    yield "iv"


def test_l2_outside_and_sandboxes_reach_each_other(lab: Lab, host: keelnet.Host, l2: str) -> None:
    assert host.inspect_network(l2)["DataPlane"] == "userspace"
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect(l2, a)
    ep_b = host.connect(l2, b)
    assert (ep_a.ip, ep_b.ip) == ("192.0.2.128", "192.0.2.129")
    # Like a kernel ipvlan slave: the sandbox's interface has the parent's MAC.
    parent_mac = _parent_mac(lab)
    assert _link(a, "eth0") == {"mac": parent_mac, "noarp": False, "kind": "tun"}
    assert ping(lab.outside, str(ep_a.ip))
    assert ping(a, str(ep_b.ip))
    with TcpServer(a, "0.0.0.0", 7200, "sandbox-a"):
        assert tcp_request(lab.outside, str(ep_a.ip), 7200, "hi") == (
            f"sandbox-a hi from {OUTSIDE_ADDRESS}"
        )
        assert tcp_request(b, str(ep_a.ip), 7200, "hey") == f"sandbox-a hey from {ep_b.ip}"
    # On the wire as itself (no NAT), from the parent's MAC.
    with TcpServer(lab.outside, "0.0.0.0", 7201, "out"):
        assert tcp_request(b, OUTSIDE_ADDRESS, 7201, "m") == f"out m from {ep_b.ip}"
    assert _neighbour(lab.outside, str(ep_b.ip)) == parent_mac


def test_l2_frames_and_arp_replies_carry_the_parent_mac(
    lab: Lab, host: keelnet.Host, l2: str
) -> None:
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect(l2, a)
    parent_mac = _parent_mac(lab)
    assert ep.mac == parent_mac  # ipvlan has no MAC of its own
    containers = host.inspect_network(l2)["Containers"]
    assert [c["MacAddress"] for c in containers.values()] == [parent_mac]
    assert _neighbour(lab.outside, str(ep.ip)) is None  # the outside host must ask
    with Sniffer(lab.outside) as sniffer, TcpServer(a, "0.0.0.0", 7202, "a"):
        assert tcp_request(lab.outside, str(ep.ip), 7202, "x") == f"a x from {OUTSIDE_ADDRESS}"
    from_sandbox = [
        f for f in sniffer.arriving() if f.get("ip_src") == ep.ip or f.get("sender_ip") == ep.ip
    ]
    arp_replies = [f for f in from_sandbox if f["type"] == 0x0806 and f["op"] == 2]
    assert arp_replies, sniffer.frames
    assert all(f["sender_mac"] == parent_mac for f in arp_replies)
    assert any(f["type"] == 0x0800 for f in from_sandbox)
    assert {f["src"] for f in from_sandbox} == {parent_mac}
    assert _neighbour(lab.outside, str(ep.ip)) == parent_mac


def test_l3_routes_between_subnets_and_sends_no_broadcast(lab: Lab, host: keelnet.Host) -> None:
    options = {**USERSPACE, "ipvlan_mode": "l3"}
    host.create_network("l3a", driver="ipvlan", subnet=L3_SUBNET_A, options=options)
    host.create_network("l3b", driver="ipvlan", subnet=L3_SUBNET_B, options=options)
    _route_outside_to(lab, L3_SUBNET_A)
    _route_outside_to(lab, L3_SUBNET_B)
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("l3a", a)
    ep_b = host.connect("l3b", b)
    # Docker's l3: no gateway, a connected default route out of the interface, NOARP.
    assert ep_a.gateway is None
    with iproute(netns_path(a)) as ipr:
        defaults = [r for r in ipr.route("dump", family=2) if r["dst_len"] == 0]
    assert len(defaults) == 1 and defaults[0].get("gateway") is None
    assert _link(a, "eth0") == {"mac": _parent_mac(lab), "noarp": True, "kind": "tun"}
    with Sniffer(lab.outside) as sniffer:
        assert ping(a, str(ep_b.ip))  # between subnets, on one parent
        assert ping(lab.outside, str(ep_a.ip))
        with TcpServer(lab.outside, "0.0.0.0", 7203, "out"):
            assert tcp_request(b, OUTSIDE_ADDRESS, 7203, "l3") == f"out l3 from {ep_b.ip}"
        # A broadcast from the sandbox (its ARP is off, so send one by hand).
        sandbox.exec_in(
            netns_path(a),
            [
                sys.executable,
                "-c",
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
                "s.sendto(b'x', ('255.255.255.255', 9))",
            ],
            check=True,
            timeout=10,
        )
    arriving = sniffer.arriving()
    assert any(f.get("ip_src") == ep_b.ip for f in arriving)
    # Nothing of the sandboxes' is broadcast or multicast (the host's own ARP may be).
    sandboxes = {ep_a.ip, ep_b.ip}
    from_sandboxes = [
        f for f in arriving if f.get("ip_src") in sandboxes or f.get("sender_ip") in sandboxes
    ]
    assert from_sandboxes
    assert not [f for f in from_sandboxes if int(f["dst"].split(":")[0], 16) & 1]
    assert host.inspect_network("l3a")["DataPlane"] == "userspace"


def _link_locals(netns: str) -> list[tuple[str, int]]:
    """(address, flags) of the IPv6 link-local addresses on eth0."""
    with iproute(netns_path(netns)) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        return [
            (str(a.get("address")), int(a.get("IFA_FLAGS")))
            for a in ipr.addr("dump", family=10, index=index)
            if str(a.get("address")).startswith("fe80:")
        ]


def test_l2_dual_stack_answers_ndp_with_the_parent_mac(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "iv6",
        driver="ipvlan",
        subnet=[SUBNET, "2001:db8:1::/64"],
        gateway=[GATEWAY, "2001:db8:1::1"],
        ip_range=[RANGE, "2001:db8:1::100/120"],
        ipv6=True,
        options=USERSPACE,
    )
    a, b = lab.name("a"), lab.name("b")
    host.create_sandbox(a)
    host.create_sandbox(b)
    ep_a = host.connect("iv6", a)
    ep_b = host.connect("iv6", b)
    assert (ep_a.ipv6, ep_b.ipv6) == ("2001:db8:1::100", "2001:db8:1::101")
    assert ping(lab.outside, str(ep_a.ipv6))
    assert ping(b, str(ep_a.ipv6))
    with TcpServer(a, "::", 7204, "a6"):
        assert tcp_request(lab.outside, str(ep_a.ipv6), 7204, "v6") == (
            f"a6 v6 from {OUTSIDE_ADDRESS6}"
        )
    assert _neighbour(lab.outside, str(ep_a.ipv6)) == _parent_mac(lab)
    # Same MAC everywhere, yet one link-local each, none failing duplicate detection.
    locals_a, locals_b = _link_locals(a), _link_locals(b)
    assert len(locals_a) == len(locals_b) == 1 and locals_a[0][0] != locals_b[0][0]
    assert not (locals_a[0][1] | locals_b[0][1]) & IFA_F_DADFAILED


def test_a_mac_address_of_its_own_is_refused(lab: Lab, host: keelnet.Host, l2: str) -> None:
    a = lab.name("a")
    host.create_sandbox(a)
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.InvalidOption, match="parent's MAC address"):
        host.connect(l2, a, mac="02:00:00:00:00:aa")
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before
    assert host.connect(l2, a, mac=_parent_mac(lab).upper()).mac == _parent_mac(lab)


def test_bad_input_leaves_nothing(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir), _open_fds()
    with pytest.raises(errors.MissingParentInterface):
        host.create_network("x", driver="ipvlan", options={**USERSPACE, "parent": "kn-nope0"})
    with pytest.raises(errors.MissingParentInterface):
        host.create_network("x", driver="ipvlan", options={"dataplane": "userspace"})
    with pytest.raises(errors.InvalidOption):
        host.create_network("x", driver="ipvlan", options={**USERSPACE, "ipvlan_mode": "l9"})
    with pytest.raises(errors.InvalidOption):
        host.create_network("x", driver="ipvlan", options={**USERSPACE, "dataplane": "fast"})
    with pytest.raises(errors.InvalidOption):  # VLAN ids are 1-4094
        host.create_network("x", driver="ipvlan", options={**USERSPACE, "parent": "kn-up0.5000"})
    assert (kernel_state(lab.host), store_state(lab.state_dir), _open_fds()) == before


def test_one_mode_per_parent(lab: Lab, host: keelnet.Host, l2: str) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.Conflict):
        host.create_network(
            "l3", driver="ipvlan", subnet=L3_SUBNET_A, options={**USERSPACE, "ipvlan_mode": "l3"}
        )
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before


def test_teardown_is_idempotent_and_closes_everything(lab: Lab, host: keelnet.Host) -> None:
    fds = _open_fds()
    network = host.create_network(
        "iv", driver="ipvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE, options=USERSPACE
    )
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("iv", a)
    assert ping(lab.outside, str(ep.ip))
    # The host's own stack is kept off the sandbox's packets, as kernel ipvlan does.
    steering = f"table netdev keelnet-ipvlan-{network.id[:12]}"
    ruleset = nftables.list_ruleset(netns_path(lab.host))
    assert steering in ruleset and f"ip daddr {ep.ip} drop" in ruleset
    host.disconnect("iv", a)
    host.disconnect("iv", a)
    assert _link(a, "eth0") is None
    assert not ping(lab.outside, str(ep.ip), timeout=0.3)
    host.remove_network("iv")
    host.remove_network("iv")
    assert steering not in nftables.list_ruleset(netns_path(lab.host))
    assert _open_fds() == fds  # the AF_PACKET socket, epoll, eventfd and TAPs are closed


def test_a_restarted_host_recreates_its_sandboxes_interfaces(lab: Lab) -> None:
    first = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    a = lab.name("a")
    try:
        first.create_network(
            "iv",
            driver="ipvlan",
            subnet=SUBNET,
            gateway=GATEWAY,
            ip_range=RANGE,
            options=USERSPACE,
        )
        first.create_sandbox(a)
        ep = first.connect("iv", a)
        assert ping(lab.outside, str(ep.ip))
    finally:
        first.close()
    # The process that ran the plane is gone (closed): its TAP vanished with it.
    assert _link(a, "eth0") is None
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as second:
        try:
            assert _link(a, "eth0") is not None
            assert ping(lab.outside, str(ep.ip))
            assert second.endpoints("iv")[0].ip == ep.ip
        finally:
            second.remove_sandbox(a)
            second.remove_network("iv")


# --- the emulation on its own (keelnet.dataplane_ipvlan) --------------------------------

_SEND_RAW = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    for frame in sys.argv[2:]:
        s.send(bytes.fromhex(frame))
    """
)


def _send_raw(netns: str, ifname: str, *frames: bytes) -> None:
    sandbox.exec_in(
        netns_path(netns),
        [sys.executable, "-c", _SEND_RAW, ifname, *(f.hex() for f in frames)],
        check=True,
        timeout=10,
    )


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def test_malformed_frames_are_dropped_and_counted(lab: Lab) -> None:
    s = lab.name("s")
    sandbox.create(s)
    fds = _open_fds()
    with Ipvlan(HOST_UPLINK, netns=lab.host) as plane:
        plane.add_slave("s", sandbox=s, addresses=["192.0.2.140"])
        with iproute(netns_path(s)) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address="192.0.2.140", prefixlen=24)
        parent = _mac_bytes(plane.parent_mac)
        outside = bytes.fromhex("020000000002")
        ipv4_cut = parent + outside + b"\x08\x00" + b"\x45\x00\x00\x54" + b"\x00" * 6  # 20 < 84
        arp_cut = parent + outside + b"\x08\x06" + b"\x00\x01\x08\x00\x06"
        bad_version = parent + outside + b"\x08\x00" + b"\x65" + b"\x00" * 40
        _send_raw(lab.outside, "eth0", ipv4_cut, arp_cut, bad_version)
        # From the sandbox too: to the parent's MAC (another slave?) with a broken header.
        _send_raw(s, "eth0", parent + parent + b"\x86\xdd" + b"\x60" + b"\x00" * 10)
        assert wait_until(lambda: plane.stats()["drops"]["malformed"] == 4)
        assert ping(lab.outside, "192.0.2.140")  # still forwarding
        stats = plane.stats()
        assert stats["slaves"]["s"]["addresses"] == ["192.0.2.140"]
        assert stats["slaves"]["s"]["tx"]["packets"] >= 1
        assert stats["parent_failed"] is None
        with pytest.raises(errors.Conflict):  # an address belongs to one slave
            plane.add_slave("t", sandbox=s, ifname="eth1", addresses=["192.0.2.140"])
        with pytest.raises(errors.NotFound):
            plane.remove_slave("nobody")
    assert plane.closed and not plane.running
    plane.close()  # twice is fine
    assert _link(s, "eth0") is None
    assert _open_fds() == fds


def test_emulation_refuses_bad_arguments(lab: Lab) -> None:
    fds = _open_fds()
    with pytest.raises(errors.InvalidRequest):
        Ipvlan(HOST_UPLINK, netns=lab.host, mode="l9")
    with pytest.raises(errors.DataplaneError) as raised:
        Ipvlan("kn-nope0", netns=lab.host)
    assert raised.value.errno == errno.ENODEV
    with Ipvlan(HOST_UPLINK, netns=lab.host) as plane:
        with pytest.raises(errors.InvalidRequest):
            plane.add_slave("x", sandbox=lab.outside, addresses=["not-an-ip"])
        with pytest.raises(errors.InvalidRequest):
            plane.add_slave("x", sandbox=lab.outside, addresses=["224.0.0.1"])
    assert _open_fds() == fds


def test_a_sandbox_deleted_behind_keelnets_back(lab: Lab) -> None:
    """Its TAP vanishes with the namespace: the slave is marked failed (the worker does not
    spin on the dead descriptor), the others keep working, removal still succeeds."""
    gone, kept = lab.name("gone"), lab.name("kept")
    sandbox.create(gone)
    sandbox.create(kept)
    with Ipvlan(HOST_UPLINK, netns=lab.host) as plane:
        plane.add_slave("gone", sandbox=gone, addresses=["192.0.2.150"])
        plane.add_slave("kept", sandbox=kept, addresses=["192.0.2.151"])
        with iproute(netns_path(kept)) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address="192.0.2.151", prefixlen=24)
        sandbox.delete(netns_path(gone))
        assert wait_until(lambda: plane.stats()["slaves"]["gone"]["failed"] is not None)
        cpu_before = time.process_time()
        assert ping(lab.outside, "192.0.2.151")
        time.sleep(0.3)
        assert time.process_time() - cpu_before < 0.25  # no busy loop on the dead TAP
        plane.remove_slave("gone")
        assert list(plane.stats()["slaves"]) == ["kept"]


@pytest.mark.usefixtures("agent")
def test_cli_users_get_the_emulation_from_the_agent(lab: Lab) -> None:
    """Each `keelnet` command exits; the agent holds the plane, so the sandbox stays
    reachable between commands."""
    created = keelnet_cli(
        lab, "network", "create", "-d", "ipvlan", "--subnet", SUBNET, "--gateway", GATEWAY,
        "--ip-range", RANGE, "-o", f"parent={HOST_UPLINK}", "-o", "dataplane=userspace", "iv",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    a = lab.name("a")
    assert keelnet_cli(lab, "sandbox", "create", a).returncode == 0
    connected = keelnet_cli(lab, "network", "connect", "iv", a)
    assert connected.returncode == 0, connected.stderr
    assert ping(lab.outside, "192.0.2.128")
    inspected = keelnet_cli(lab, "network", "inspect", "iv")
    assert json.loads(inspected.stdout)[0]["DataPlane"] == "userspace"
    assert keelnet_cli(lab, "network", "disconnect", "iv", a).returncode == 0
    assert not ping(lab.outside, "192.0.2.128", timeout=0.3)
    assert keelnet_cli(lab, "sandbox", "rm", a).returncode == 0
    assert keelnet_cli(lab, "network", "rm", "iv").returncode == 0


def test_l3_routes_ipv6_through_the_host(lab: Lab, host: keelnet.Host) -> None:
    host.create_network(
        "l3v6",
        driver="ipvlan",
        subnet=[L3_SUBNET_A, "2001:db8:2::/64"],
        ipv6=True,
        options={**USERSPACE, "ipvlan_mode": "l3"},
    )
    with iproute(netns_path(lab.outside)) as ipr:
        ipr.route("add", dst="2001:db8:2::", dst_len=64, gateway=HOST_ADDRESS6)
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("l3v6", a)
    assert ep.ipv6 is not None and ep.ipv6_gateway is None
    assert ping(lab.outside, ep.ipv6)
    with TcpServer(lab.outside, "::", 7205, "out6"):
        assert tcp_request(a, OUTSIDE_ADDRESS6, 7205, "q") == f"out6 q from {ep.ipv6}"


_BULK_SERVER = textwrap.dedent(
    """
    import hashlib, socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7999)); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(20); digest = hashlib.sha256(); size = 0
    while chunk := c.recv(1 << 16):
        digest.update(chunk); size += len(chunk)
    print(size, digest.hexdigest(), flush=True)
    """
)
_BULK_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 7999), timeout=20)
    s.sendall(bytes(range(256)) * 32768); s.close()
    """
)
_BULK = bytes(range(256)) * 32768  # 8 MiB: TCP super-frames (GSO) in both directions


def _bulk(server: str, client: str, address: str) -> tuple[int, str]:
    process = sandbox.popen_in(
        netns_path(server), [sys.executable, "-c", _BULK_SERVER], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        sandbox.exec_in(
            netns_path(client), [sys.executable, "-c", _BULK_CLIENT, address], timeout=30
        )
        size, digest = process.stdout.readline().decode().split()
        return int(size), digest
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_bulk_tcp_arrives_intact(lab: Lab, host: keelnet.Host, mode: str) -> None:
    subnet = SUBNET if mode == "l2" else L3_SUBNET_A
    host.create_network(
        "iv",
        driver="ipvlan",
        subnet=subnet,
        ip_range=RANGE if mode == "l2" else None,
        options={**USERSPACE, "ipvlan_mode": mode},
    )
    if mode == "l3":
        _route_outside_to(lab, L3_SUBNET_A)
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("iv", a)
    expected = (len(_BULK), hashlib.sha256(_BULK).hexdigest())
    assert _bulk(lab.outside, a, OUTSIDE_ADDRESS) == expected
    assert _bulk(a, lab.outside, str(ep.ip)) == expected


# The outside host on VLAN 10 of the wire, by hand (this kernel has no 8021q module):
# tagged ARP and ICMP echo for the sandbox, then an untagged ARP that must go unanswered.
# Tags are read from PACKET_AUXDATA: the kernel takes them off before packet sockets.
_VLAN_PEER = textwrap.dedent(
    """
    import json, socket, struct, sys, time
    target, me, vid = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2]), 10
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("eth0", 0))
    s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
    mac = s.getsockname()[4]
    def checksum(b):
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF)
        return ~(t + (t >> 16)) & 0xFFFF
    def send(dst, kind, payload, tag=True):
        vlan = struct.pack("!HH", 0x8100, vid) if tag else b""
        s.send(dst + mac + vlan + struct.pack("!H", kind) + payload)
    def receive(want, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            s.settimeout(max(deadline - time.time(), 0.01))
            try:
                data, anc, _, _ = s.recvmsg(65535, 64)
            except (socket.timeout, TimeoutError):
                return None
            tag = None
            for level, kind, aux in anc:
                status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", aux[:20])
                if level == 263 and kind == 8 and status & 0x10:
                    tag = tci & 0xFFF
            found = want(data)
            if found is not None:
                return found, tag
        return None
    def arp_reply(d):
        if d[12:14] == b"\\x08\\x06" and d[20:22] == b"\\x00\\x02" and d[28:32] == target:
            return d[22:28].hex(":")
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + me + b"\\0" * 6 + target
    send(b"\\xff" * 6, 0x0806, arp)
    result = {"arp": receive(arp_reply, 2)}
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x6b6e, 1) + b"keelnet-vlan"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, me, target)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    dst = bytes.fromhex(result["arp"][0].replace(":", "")) if result["arp"] else b"\\xff" * 6
    send(dst, 0x0800, ip + icmp)
    def echo_reply(d):
        if d[12:14] == b"\\x08\\x00" and d[14 + 9] == 1 and d[34] == 0 and b"keelnet-vlan" in d:
            return d[6:12].hex(":")
    result["echo"] = receive(echo_reply, 2)
    send(b"\\xff" * 6, 0x0806, arp, tag=False)
    result["untagged"] = receive(arp_reply, 0.5)
    print(json.dumps(result))
    """
)


def test_l2_vlan_parent_is_tagged_in_userspace(lab: Lab, host: keelnet.Host) -> None:
    network = host.create_network(
        "iv10",
        driver="ipvlan",
        subnet="198.51.100.0/24",
        options={**USERSPACE, "parent": f"{HOST_UPLINK}.10"},
    )
    assert network.dataplane == "userspace"
    assert _link(lab.host, f"{HOST_UPLINK}.10") is None  # no VLAN device: tagged here
    a = lab.name("a")
    host.create_sandbox(a)
    ep = host.connect("iv10", a)
    peer = sandbox.exec_in(
        netns_path(lab.outside),
        [sys.executable, "-c", _VLAN_PEER, str(ep.ip), "198.51.100.250"],
        capture_output=True,
        timeout=20,
    )
    assert peer.returncode == 0, peer.stderr
    result = json.loads(peer.stdout)
    parent_mac = _parent_mac(lab)
    assert result["arp"] == [parent_mac, 10]  # answered on VLAN 10, with the parent's MAC
    assert result["echo"] == [parent_mac, 10]
    assert result["untagged"] is None  # the untagged LAN is another segment


def test_vlan_parent_in_l3_mode_is_refused(lab: Lab, host: keelnet.Host) -> None:
    before = kernel_state(lab.host), store_state(lab.state_dir)
    with pytest.raises(errors.InvalidOption):
        host.create_network(
            "iv10",
            driver="ipvlan",
            options={**USERSPACE, "parent": f"{HOST_UPLINK}.10", "ipvlan_mode": "l3"},
        )
    assert (kernel_state(lab.host), store_state(lab.state_dir)) == before
