"""Python-call cost of keelnet.ipam: allocate+release churn in a fragmented /8.

    nox -s bench   (or: pytest benches/test_ipam_bench.py --benchmark-enable)

The pool is a /8 filled to 12 M addresses with 25 % random holes; each round
allocates the lowest free address and releases a random allocated one, both
through the Python API (strings in, strings out). Reported per round: two calls.
"""

from __future__ import annotations

import itertools
import random

import pytest

from keelnet.ipam import AddressPool

ROUNDS = 20_000


@pytest.fixture(scope="module")
def fragmented_slash8() -> tuple[AddressPool, list[str]]:
    pool = AddressPool("10.0.0.0/8")
    allocated = [pool.allocate() for _ in range(12_000_000)]
    rng = random.Random(7)
    rng.shuffle(allocated)
    for address in allocated[-3_000_000:]:
        pool.release(address)
    del allocated[-3_000_000:]
    return pool, allocated


def test_churn_fragmented_slash8(benchmark, fragmented_slash8) -> None:  # type: ignore[no-untyped-def]
    pool, allocated = fragmented_slash8
    repeats = 5
    # Addresses to release, drawn at random (the list is shuffled) up front, each once.
    victims = iter(allocated[-ROUNDS * repeats :])

    def rounds() -> None:
        allocate, release = pool.allocate, pool.release
        for victim in itertools.islice(victims, ROUNDS):
            allocate()
            release(victim)

    benchmark.pedantic(rounds, rounds=repeats, iterations=1)
    per_call = benchmark.stats.stats.median / (ROUNDS * 2) * 1e9
    print(f"\nallocate+release churn, fragmented /8: {per_call:.0f} ns per call")
