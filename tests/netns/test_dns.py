"""The embedded DNS server: names between sandboxes, as Docker's 127.0.0.11.

Lookups go through the system's own tools inside the sandboxes (`getent`, busybox
`nslookup`, Python's `getaddrinfo`: the C library reading the resolv.conf keelnet wrote)
and through raw queries. The upstream server is a dnsmasq the test runs in the lab's
outside namespace; the lab host's resolv.conf names only it, so no query leaves the
test's namespaces.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslab import (
    BIG_COUNT,
    BIG_NAME,
    OUTSIDE_IP,
    OUTSIDE_NAME,
    RESOLVER,
    Upstream,
    addresses,
    ask,
    big_addresses,
    dnsmasq,
    query_bytes,
)
from netlab import HOST_ADDRESS, HOST_UPLINK, Lab

import keelnet
from keelnet import dns
from keelnet import sandbox as sandboxes
from keelnet.errors import DataplaneError, InvalidRequest
from keelnet.kernel.namespaces import call_in_netns, iproute, netns_path

pytestmark = pytest.mark.netns

NXDOMAIN, SERVFAIL = 3, 2


@pytest.fixture
def upstream(lab: Lab, tmp_path: Path) -> Iterator[Upstream]:
    with dnsmasq(lab.outside, tmp_path) as server:
        yield server


def run(host: keelnet.Host, sandbox: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in the sandbox as `keelnet sandbox exec` runs it (with its resolv.conf)."""
    return sandboxes.exec_in(
        host.sandbox(sandbox).path, argv, capture_output=True, text=True, timeout=30
    )


def getent(host: keelnet.Host, sandbox: str, *args: str) -> list[str]:
    result = run(host, sandbox, "getent", *args)
    return result.stdout.split() if result.returncode == 0 else []


def pair(host: keelnet.Host, lab: Lab, network: str = "front") -> tuple[str, str]:
    host.create_network(network, subnet="10.91.0.0/24")
    a, b = lab.name("a"), lab.name("b")
    for name in (a, b):
        host.create_sandbox(name)
    host.connect(network, a, aliases=["web"])
    host.connect(network, b)
    return a, b


def test_names_and_aliases_resolve_with_the_systems_tools(host: keelnet.Host, lab: Lab) -> None:
    a, b = pair(host, lab)
    ip_a = host.endpoints("front")[0].ip
    assert ip_a is not None
    conf = dns.resolv_conf_path(b).read_text()
    assert "nameserver 127.0.0.11" in conf.splitlines()
    assert "options ndots:0" in conf.splitlines()
    assert getent(host, b, "hosts", a)[:2] == [ip_a, a]
    assert getent(host, b, "hosts", "web")[0] == ip_a
    assert getent(host, b, "hosts", "web.front")[0] == ip_a
    lookup = run(host, b, "busybox", "nslookup", "web")
    assert lookup.returncode == 0, lookup.stdout + lookup.stderr
    assert f"Address: {ip_a}" in lookup.stdout
    script = f"import socket; print(socket.getaddrinfo({a!r}, 80, socket.AF_INET)[0][4][0])"
    python = run(host, b, "python3", "-c", script)
    assert python.stdout.strip() == ip_a, python.stderr
    # The name works where an address did: a ping by name gets its reply.
    assert run(host, b, "busybox", "ping", "-c1", "-W2", a).returncode == 0


def test_names_are_seen_only_on_shared_networks(host: keelnet.Host, lab: Lab) -> None:
    a, _b = pair(host, lab)
    host.create_network("back", subnet="10.92.0.0/24")
    c, both = lab.name("c"), lab.name("both")
    host.create_sandbox(c)
    host.create_sandbox(both)
    ip_c = host.connect("back", c).ip
    host.connect("front", both)
    host.connect("back", both)
    assert getent(host, c, "hosts", a) == []
    assert getent(host, a, "hosts", c) == []
    assert getent(host, c, "hosts", "web") == []
    answer = ask(netns_path(c), "web")
    assert answer is not None and answer.rcode == NXDOMAIN
    # `name.network` of a network the asker is not on is not its scope either.
    assert getent(host, c, "hosts", f"{a}.front") == []
    assert getent(host, both, "hosts", a)[0] == host.endpoints("front")[0].ip
    assert getent(host, both, "hosts", c)[0] == ip_c


def test_a_shared_alias_answers_all_in_rotating_order(host: keelnet.Host, lab: Lab) -> None:
    host.create_network("front", subnet="10.91.0.0/24")
    members = [lab.name(f"m{i}") for i in range(3)]
    for name in members:
        host.create_sandbox(name)
        host.connect("front", name, aliases=["pool"])
    expected = sorted(e.ip for e in host.endpoints("front") if e.ip)
    answers = [addresses(ask(host.sandbox(members[0]).path, "pool")) for _ in range(3)]
    for answer in answers:
        assert sorted(answer) == expected
    assert len({answer[0] for answer in answers}) == 3, answers
    first = answers[0]
    rotations = [first[i:] + first[:i] for i in range(3)]
    assert all(answer in rotations for answer in answers)


def test_reverse_lookups_answer_name_dot_network(host: keelnet.Host, lab: Lab) -> None:
    a, b = pair(host, lab)
    ip_a = host.endpoints("front")[0].ip
    assert ip_a is not None
    assert getent(host, b, "hosts", ip_a)[:2] == [ip_a, f"{a}.front"]
    lookup = run(host, b, "busybox", "nslookup", ip_a)
    assert f"{a}.front" in lookup.stdout, lookup.stdout + lookup.stderr


def test_unknown_local_names_get_nxdomain(host: keelnet.Host, lab: Lab) -> None:
    _a, b = pair(host, lab)
    path = host.sandbox(b).path
    for name in ("nosuch", "nosuch.front"):
        answer = ask(path, name)
        assert answer is not None
        assert (answer.rcode, answer.ancount, answer.qr) == (NXDOMAIN, 0, 1)
    lookup = run(host, b, "busybox", "nslookup", "nosuch")
    assert lookup.returncode != 0 and "NXDOMAIN" in lookup.stdout + lookup.stderr
    assert getent(host, b, "hosts", "nosuch") == []


def test_other_names_are_forwarded_to_the_hosts_upstream(
    host: keelnet.Host, lab: Lab, upstream: Upstream
) -> None:
    _a, b = pair(host, lab)
    assert getent(host, b, "hosts", OUTSIDE_NAME)[0] == OUTSIDE_IP
    answer = ask(host.sandbox(b).path, OUTSIDE_NAME, tcp=True)
    assert addresses(answer) == [OUTSIDE_IP]
    # Docker's rule: the host's resolv.conf servers are asked from the host namespace.
    assert any(f"{OUTSIDE_NAME} from {HOST_ADDRESS}" in line for line in upstream.queries())
    stats = host.resolver.stats() if host.resolver else {}
    assert stats["forwarded"] >= 2 and stats["failed"] == 0


def test_sandboxes_only_on_internal_networks_get_no_forwarding(
    host: keelnet.Host, lab: Lab, upstream: Upstream
) -> None:
    host.create_network("inside", subnet="10.93.0.0/24", internal=True)
    lone, peer = lab.name("lone"), lab.name("peer")
    for name in (lone, peer):
        host.create_sandbox(name)
        host.connect("inside", name)
    before = len(upstream.queries())
    answer = ask(host.sandbox(lone).path, OUTSIDE_NAME)
    assert answer is not None and answer.rcode == SERVFAIL
    assert len(upstream.queries()) == before
    assert getent(host, lone, "hosts", peer) != []  # local names still answer


def test_large_answers_fall_back_to_tcp(host: keelnet.Host, lab: Lab, upstream: Upstream) -> None:
    _a, b = pair(host, lab)
    path = host.sandbox(b).path
    # The C library asks over UDP (512 bytes), gets TC, asks again over TCP.
    lines = run(host, b, "getent", "ahostsv4", BIG_NAME).stdout.splitlines()
    assert {line.split()[0] for line in lines} == set(big_addresses())
    # An EDNS client with room: the upstream's UDP answer is cut at 512 bytes, so the
    # resolver must have asked it again over TCP to answer whole over UDP.
    answer = ask(path, BIG_NAME, edns=4096)
    assert answer is not None and not answer.tc
    assert sorted(addresses(answer)) == sorted(big_addresses())
    # Without EDNS the client's limit is 512: TC set, the records that fit.
    small = ask(path, BIG_NAME)
    assert small is not None and small.tc and 0 < len(addresses(small)) < BIG_COUNT


def test_local_answers_are_capped_to_udp_with_tc(lab: Lab) -> None:
    """The resolver alone (as an overlay watcher would feed it): a name with 100
    endpoints, served to one namespace."""
    box = lab.name("box")
    sandboxes.create(box)
    path = netns_path(box)
    with dns.Resolver(netns_path(lab.host)) as resolver:
        resolver.set_network("n1", "wide")
        for i in range(100):
            resolver.set_endpoint("n1", f"e{i}", [f"host{i}", "many"], f"10.94.0.{i + 2}")
        resolver.attach(box, path, ["n1"])
        udp = ask(path, "many")
        assert udp is not None and udp.tc and 0 < len(addresses(udp)) < 100
        assert len(query_bytes("many")) < 512
        tcp = ask(path, "many", tcp=True)
        assert tcp is not None and not tcp.tc and len(addresses(tcp)) == 100
        assert addresses(ask(path, "host7")) == ["10.94.0.9"]
        resolver.detach(box)
        assert resolver.sandboxes() == []


def test_upstreams_are_reached_from_the_namespace_their_rule_names(
    lab: Lab, tmp_path: Path
) -> None:
    """Docker's rule: the host's servers from the host namespace, explicit ones from the
    sandbox's. A server on the sandbox's own loopback tells the two apart."""
    box = lab.name("box")
    sandboxes.create(box)
    path = netns_path(box)
    with dns.Resolver(netns_path(lab.host)) as resolver, dnsmasq(box, tmp_path, "127.0.0.53"):
        resolver.set_network("n1", "wide")
        resolver.attach(box, path, ["n1"])
        resolver.set_upstreams([("127.0.0.53", 53, False)])
        assert addresses(ask(path, OUTSIDE_NAME)) == [OUTSIDE_IP]
        assert addresses(ask(path, OUTSIDE_NAME, tcp=True)) == [OUTSIDE_IP]
        # From the host namespace nothing listens on 127.0.0.53: SERVFAIL, at once.
        resolver.set_upstreams([("127.0.0.53", 53, True)])
        answer = ask(path, OUTSIDE_NAME)
        assert answer is not None and answer.rcode == SERVFAIL
        assert resolver.stats()["failed"] == 1


def test_disconnect_removes_the_name_and_connect_brings_it_back(
    host: keelnet.Host, lab: Lab
) -> None:
    a, b = pair(host, lab)
    path = host.sandbox(b).path
    host.disconnect("front", a)
    answer = ask(path, a)
    assert answer is not None and answer.rcode == NXDOMAIN
    assert getent(host, b, "hosts", "web") == []
    # No DNS network left for `a`: its file and sockets are gone.
    assert not dns.resolv_conf_path(a).exists()
    assert ask(host.sandbox(a).path, b, timeout=0.5) is None
    ip = host.connect("front", a, aliases=["web2"]).ip
    assert addresses(ask(path, "web2")) == [ip]  # the very next query sees it
    host.remove_sandbox(a)
    assert not dns.resolv_conf_path(a).exists()
    assert addresses(ask(path, "web2")) == []


@pytest.mark.parametrize("driver", ["macvlan", "ipvlan"])
def test_macvlan_and_ipvlan_sandboxes_resolve_each_other(
    host: keelnet.Host, lab: Lab, driver: str
) -> None:
    # ipvlan runs in userspace where the kernel has no ipvlan module (as here).
    host.create_network(
        "lan",
        driver=driver,
        subnet="192.0.2.0/24",
        gateway=HOST_ADDRESS,
        ip_range="192.0.2.128/25",
        options={"parent": HOST_UPLINK},
    )
    a, b = lab.name("a"), lab.name("b")
    for name in (a, b):
        host.create_sandbox(name)
    ip_a = host.connect("lan", a, aliases=["printer"]).ip
    host.connect("lan", b)
    assert getent(host, b, "hosts", "printer")[0] == ip_a
    assert run(host, b, "busybox", "ping", "-c1", "-W2", a).returncode == 0


def test_no_dns_on_host_and_none_networks(host: keelnet.Host, lab: Lab) -> None:
    host.create_network("nothing", driver="none")
    box = lab.name("box")
    host.create_sandbox(box)
    host.connect("nothing", box)
    assert host.resolver is None
    assert not dns.resolv_conf_path(box).exists()


def test_a_restarted_host_serves_the_names_it_stored(lab: Lab) -> None:
    first = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    try:
        a, b = pair(first, lab)
        ip_a = first.endpoints("front")[0].ip
    finally:
        first.close()
    assert ask(netns_path(b), a, timeout=0.5) is None  # its resolver went with it
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as again:
        try:
            assert addresses(ask(again.sandbox(b).path, a)) == [ip_a]
            assert addresses(ask(again.sandbox(b).path, "web")) == [ip_a]
        finally:
            for name in (a, b):
                again.remove_sandbox(name)
            again.remove_network("front")


def _malformed(rng: random.Random) -> bytes:
    """A datagram no DNS server may answer: cut short, a response, a bad name."""
    valid = query_bytes(f"n{rng.randrange(1000)}.example")
    kind = rng.randrange(5)
    if kind == 0:  # shorter than a header
        return rng.randbytes(rng.randrange(12))
    if kind == 1:  # the question cut anywhere
        return valid[: rng.randrange(12, len(valid) - 1)]
    if kind == 2:  # a response (QR set), perhaps with garbage after
        return valid[:2] + bytes([valid[2] | 0x80]) + valid[3:] + rng.randbytes(rng.randrange(8))
    if kind == 3:  # a label running past the end
        return valid[:12] + bytes([63]) + rng.randbytes(rng.randrange(62))
    # a compression pointer to itself
    return (
        struct.pack("!6H", rng.randrange(65536), 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    )


def test_malformed_datagrams_get_no_answer_and_no_crash(host: keelnet.Host, lab: Lab) -> None:
    a, b = pair(host, lab)
    path = host.sandbox(b).path
    assert host.resolver is not None
    before = host.resolver.stats()["ignored"]
    rng = random.Random(13)
    sock = call_in_netns(path, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        sock.connect(RESOLVER)
        sock.setblocking(False)
        replies = 0
        for count in range(10_000):
            sock.send(_malformed(rng))
            if count % 500 == 499:  # let the resolver keep up (a full socket drops)
                sock.settimeout(0.05)
                try:
                    while sock.recv(65535):
                        replies += 1
                except (TimeoutError, BlockingIOError):
                    pass
                sock.setblocking(False)
        sock.settimeout(0.5)
        try:
            while sock.recv(65535):
                replies += 1
        except TimeoutError:
            pass
    assert replies == 0
    assert host.resolver.running
    assert host.resolver.stats()["ignored"] - before == 10_000
    assert addresses(ask(path, a)) == [host.endpoints("front")[0].ip]


def test_bad_names_are_refused_with_a_clear_error(host: keelnet.Host, lab: Lab) -> None:
    a, _b = pair(host, lab)
    host.create_sandbox(lab.name("c"))
    for bad in ("bad name", "a..b", "x" * 64, "dot.", "-" * 254):
        with pytest.raises(InvalidRequest, match="not a DNS name"):
            host.connect("front", lab.name("c"), aliases=["ok", bad])
    # Rolled back: not connected, no file.
    assert not host.store.endpoints(sandbox=lab.name("c"))
    assert not dns.resolv_conf_path(lab.name("c")).exists()
    assert os.path.exists(dns.resolv_conf_path(a))


def test_a_taken_dns_address_fails_the_connect_and_leaves_nothing(
    host: keelnet.Host, lab: Lab
) -> None:
    host.create_network("front", subnet="10.91.0.0/24")
    box = lab.name("box")
    host.create_sandbox(box)
    path = host.sandbox(box).path
    squatter = call_in_netns(path, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with squatter:
        squatter.bind(RESOLVER)
        with pytest.raises(DataplaneError, match="is taken") as caught:
            host.connect("front", box)
        assert caught.value.errno == errno.EADDRINUSE
    assert host.store.endpoints(sandbox=box) == []
    assert not dns.resolv_conf_path(box).exists()
    with iproute(path) as ipr:
        assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
    host.connect("front", box)  # free again: works
