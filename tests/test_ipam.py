"""keelnet.ipam from Python: the API, its errors, and hypothesis against a model."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keelnet import errors
from keelnet.ipam import AddressPool, SubnetPools


def test_allocate_lowest_free_skips_reserved() -> None:
    pool = AddressPool("10.0.0.0/29", gateway="10.0.0.1", reserved=["10.0.0.3"])
    assert pool.size == 4
    assert [pool.allocate() for _ in range(4)] == ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert pool.used == 4
    with pytest.raises(errors.PoolExhausted, match=r"10\.0\.0\.0/29"):
        pool.allocate()
    pool.release("10.0.0.5")
    assert not pool.contains("10.0.0.5")
    assert pool.allocate() == "10.0.0.5"
    assert pool.reserved == {
        "10.0.0.0": "network",
        "10.0.0.1": "gateway",
        "10.0.0.3": "auxiliary",
        "10.0.0.7": "broadcast",
    }


def test_serial_round_robin() -> None:
    pool = AddressPool("192.0.2.0/29", serial=True)
    first = pool.allocate()
    pool.release(first)
    assert pool.allocate() == "192.0.2.2", "a released address is not reused at once"
    assert [pool.allocate() for _ in range(4)] == [f"192.0.2.{i}" for i in range(3, 7)]
    assert pool.allocate() == first, "serial wraps round to the range start"


def test_ip_range_and_specific_addresses() -> None:
    pool = AddressPool("10.1.0.0/16", ip_range="10.1.200.0/30", gateway="10.1.0.1")
    assert [pool.allocate() for _ in range(4)] == [f"10.1.200.{i}" for i in range(4)]
    with pytest.raises(errors.PoolExhausted, match=r"ip_range 10\.1\.200\.0/30"):
        pool.allocate()
    assert pool.allocate("10.1.7.7") == "10.1.7.7"
    assert pool.ip_range == "10.1.200.0/30" and pool.gateway == "10.1.0.1"


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.0.0.8/31", ["10.0.0.8", "10.0.0.9"]),
        ("10.0.0.9/32", ["10.0.0.9"]),
        ("fd00::/127", ["fd00::", "fd00::1"]),
        ("fd00::/126", ["fd00::1", "fd00::2", "fd00::3"]),
    ],
)
def test_edge_prefixes(subnet: str, expected: list[str]) -> None:
    pool = AddressPool(subnet)
    assert pool.size == len(expected)
    assert [pool.allocate() for _ in expected] == expected
    with pytest.raises(errors.PoolExhausted):
        pool.allocate()


def test_largest_pools() -> None:
    v4 = AddressPool("10.0.0.0/8")
    assert v4.size == 2**24 - 2
    assert v4.allocate("10.255.255.254") == "10.255.255.254"
    v6 = AddressPool("fd00:1::/64")
    assert v6.size == 2**64 - 1
    top = "fd00:1::ffff:ffff:ffff:ffff"
    assert v6.allocate(top) == top and top in v6
    assert v6.allocate() == "fd00:1::1"


@pytest.mark.parametrize(
    ("args", "error", "says"),
    [
        (("banana",), errors.InvalidSubnet, "banana"),
        (("10.0.0.0",), errors.InvalidSubnet, "no prefix length"),
        (("10.0.0.1/24",), errors.InvalidSubnet, "did you mean 10.0.0.0/24"),
        (("10.0.0.0/33",), errors.InvalidSubnet, "10.0.0.0/33"),
        (("10.0.0.0/7",), errors.InvalidSubnet, "too large"),
        (("fd00::/63",), errors.InvalidSubnet, "too large"),
    ],
)
def test_bad_subnets(args: tuple[str], error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        AddressPool(*args)


def test_bad_configurations() -> None:
    with pytest.raises(errors.AddressOutOfRange, match=r"gateway 10\.9\.0\.1"):
        AddressPool("10.0.0.0/24", gateway="10.9.0.1")
    with pytest.raises(errors.AddressInUse, match="network address"):
        AddressPool("10.0.0.0/24", gateway="10.0.0.0")
    with pytest.raises(errors.InvalidSubnet, match="not inside subnet"):
        AddressPool("10.0.0.0/24", ip_range="10.0.1.0/28")
    with pytest.raises(errors.InvalidAddress, match="not an IP address"):
        AddressPool("10.0.0.0/24", gateway="ten")
    with pytest.raises(errors.AddressOutOfRange, match="family"):
        AddressPool("10.0.0.0/24", reserved=["fd00::1"])


def test_bad_addresses() -> None:
    pool = AddressPool("10.0.0.0/24", gateway="10.0.0.1")
    pool.allocate("10.0.0.5")
    with pytest.raises(errors.AddressInUse, match=r"10\.0\.0\.5 is already allocated"):
        pool.allocate("10.0.0.5")
    with pytest.raises(errors.AddressInUse, match="gateway"):
        pool.allocate("10.0.0.1")
    with pytest.raises(errors.AddressOutOfRange, match=r"outside subnet 10\.0\.0\.0/24"):
        pool.allocate("10.0.1.5")
    with pytest.raises(errors.InvalidAddress):
        pool.release("not-an-address")
    pool.release("10.0.0.5")
    with pytest.raises(errors.AddressNotAllocated, match="released twice"):
        pool.release("10.0.0.5")
    with pytest.raises(errors.AddressInUse, match="cannot be released"):
        pool.release("10.0.0.1")
    assert not pool.contains("192.0.2.1")
    for error in (errors.AddressInUse, errors.AddressNotAllocated, errors.InvalidAddress):
        assert issubclass(error, errors.KeelnetError)


def test_bytes_round_trip_and_corruption() -> None:
    pool = AddressPool("fd00:7::/64", gateway="fd00:7::1", serial=True)
    got = [pool.allocate() for _ in range(100)] + [pool.allocate("fd00:7::dead:beef")]
    pool.release(got[10])
    blob = pool.to_bytes()
    back = AddressPool.from_bytes(blob)
    assert back.to_bytes() == blob
    assert (back.used, back.size, back.serial, back.gateway) == (100, pool.size, True, "fd00:7::1")
    assert all(back.contains(a) for a in got if a != got[10]) and not back.contains(got[10])
    assert back.allocate() == pool.allocate()
    for damaged in (
        blob[:-1],
        blob[:5],
        b"",
        b"KNAP" + blob[4:5] + b"\x00" * 20,
        bytes([blob[0] ^ 1]) + blob[1:],
    ):
        with pytest.raises(errors.CorruptState):
            AddressPool.from_bytes(damaged)
    future = bytearray(blob)
    future[4] = 99
    with pytest.raises(errors.CorruptState, match="version 99"):
        AddressPool.from_bytes(bytes(future))


def test_subnet_pools_defaults_and_exhaustion() -> None:
    pools = SubnetPools()
    assert pools.request() == "172.17.0.0/16"
    assert pools.request(avoid=["172.18.0.0/24", "172.19.128.0/17"]) == "172.20.0.0/16"
    v6 = ipaddress.ip_network(pools.request(ipv6=True))
    assert v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd00::/8"))
    small = SubnetPools([("10.10.0.0/23", 24), {"base": "10.20.0.0/24", "size": 24}])
    assert [small.request() for _ in range(3)] == ["10.10.0.0/24", "10.10.1.0/24", "10.20.0.0/24"]
    with pytest.raises(errors.PoolExhausted, match="fully subnetted"):
        small.request()
    small.release("10.10.1.0/24")
    with pytest.raises(errors.AddressNotAllocated):
        small.release("10.10.1.0/24")
    assert SubnetPools.from_bytes(small.to_bytes()).request() == "10.10.1.0/24"
    with pytest.raises(errors.PoolExhausted, match="IPv6"):
        small.request(ipv6=True)
    with pytest.raises(errors.InvalidSubnet, match="overlap"):
        SubnetPools([("10.0.0.0/8", 16), ("10.1.0.0/16", 24)])
    with pytest.raises(errors.InvalidSubnet, match="size"):
        SubnetPools([("10.0.0.0/8", 4)])
    with pytest.raises(errors.InvalidSubnet):
        small.request(avoid=["nonsense"])


# --- hypothesis against a model --------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.none()),
        st.tuples(st.just("alloc"), st.integers(0, 63)),
        st.tuples(st.just("release"), st.integers(0, 63)),
        st.tuples(st.just("roundtrip"), st.none()),
    ),
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, serial=st.booleans(), prefix=st.sampled_from([26, 27, 28, 30, 31, 32]))
def test_pool_against_model(ops: list[tuple[str, int | None]], serial: bool, prefix: int) -> None:
    net = ipaddress.ip_network(f"198.51.100.0/{prefix}")
    pool = AddressPool(str(net), serial=serial)
    hosts = list(net) if prefix >= 31 else list(net)[1:-1]
    allocated: set[str] = set()
    cursor = 0
    for op, arg in ops:
        if op == "alloc" and arg is None:
            free = [str(h) for h in hosts if str(h) not in allocated]
            if serial:
                later = [str(h) for h in hosts[cursor:] if str(h) not in allocated]
                free = later or free
            if not free:
                with pytest.raises(errors.PoolExhausted):
                    pool.allocate()
                continue
            got = pool.allocate()
            assert got == free[0]
            allocated.add(got)
            cursor = (hosts.index(ipaddress.ip_address(got)) + 1) % len(hosts)
        elif op == "alloc":
            address = str(net.network_address + (arg or 0) % net.num_addresses)
            if address in allocated or ipaddress.ip_address(address) not in hosts:
                with pytest.raises(errors.AddressInUse):
                    pool.allocate(address)
            else:
                assert pool.allocate(address) == address
                allocated.add(address)
        elif op == "release":
            address = str(net.network_address + (arg or 0) % net.num_addresses)
            if address in allocated:
                pool.release(address)
                allocated.discard(address)
            else:
                with pytest.raises((errors.AddressNotAllocated, errors.AddressInUse)):
                    pool.release(address)
        else:
            pool = AddressPool.from_bytes(pool.to_bytes())
        assert pool.used == len(allocated)
    assert all(pool.contains(a) for a in allocated)
