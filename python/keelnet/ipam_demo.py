"""The IPAM part of `keelnet demo`: pools and subnet carving at work, with timings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from keelnet import errors
from keelnet.ipam import AddressPool, SubnetPools


def _per_call_ns(calls: int, body: Callable[[], None]) -> float:
    start = time.perf_counter_ns()
    body()
    return (time.perf_counter_ns() - start) / calls


def run_ipam_demo(print_: Callable[[str], None] = print) -> None:
    rows: list[tuple[str, str]] = []

    pools = SubnetPools()
    first, second = pools.request(), pools.request(avoid=["172.18.0.0/16"])
    v6 = pools.request(ipv6=True)
    rows.append(
        ("subnets from Docker's default pools", f"{first}, {second} (172.18/16 avoided), {v6}")
    )

    pool = AddressPool("10.0.0.0/8", gateway="10.0.0.1", serial=False)
    fill = 1_000_000

    def fill_body() -> None:
        allocate = pool.allocate
        for _ in range(fill):
            allocate()

    ns = _per_call_ns(fill, fill_body)
    rows.append((f"fill a /8 with {fill:,} addresses", f"{ns:.0f} ns per Python call"))

    rng = random.Random(1)
    offsets = list(range(2, fill + 2))
    rng.shuffle(offsets)
    addresses = [f"10.{o >> 16 & 255}.{o >> 8 & 255}.{o & 255}" for o in offsets]
    holes, live = addresses[: fill // 4], addresses[fill // 4 :]
    for address in holes:
        pool.release(address)
    rows.append(("release 25 % at random", f"{pool.used:,} in use, lowest free {pool.allocate()}"))

    churn = 100_000

    def churn_body() -> None:
        allocate, release = pool.allocate, pool.release
        for victim in live[:churn]:
            allocate()
            release(victim)

    ns = _per_call_ns(churn * 2, churn_body)
    rows.append(("allocate+release churn in that /8", f"{ns:.0f} ns per Python call"))

    blob = pool.to_bytes()
    back = AddressPool.from_bytes(blob)
    rows.append(("persist and restore", f"{len(blob):,} bytes, {back.used:,} in use after restore"))

    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    try:
        AddressPool.from_bytes(damaged)
        rows.append(("a damaged blob", "ACCEPTED (bug)"))
    except errors.CorruptState as error:
        rows.append(("a damaged blob", f"refused: {error}"))

    try:
        pool.allocate("10.0.0.1")
    except errors.AddressInUse as error:
        rows.append(("asking for the gateway", f"refused: {error}"))

    serial = AddressPool("192.0.2.0/29", serial=True)
    picks = [serial.allocate()]
    serial.release(picks[0])
    picks += [serial.allocate() for _ in range(5)]
    rows.append(("serial allocation (release, no reuse at once)", " ".join(picks)))

    width = max(len(what) for what, _ in rows)
    print_("IPAM")
    for what, found in rows:
        print_(f"  {what:<{width}}  {found}")
