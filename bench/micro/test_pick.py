"""Micro-benchmark of Balancer.pick for each algorithm over 3 and 1,000 endpoints, measured in a C loop.

bench_picks(COUNT) runs COUNT picks (each with request_start, and request_end of the pick made 64
earlier) without returning to Python, so a round's time / COUNT is the C cost of one pick plus its
two counter events. bench_hash_picks(COUNT) runs COUNT keyed picks (pick_hash on pseudo-random keys)
with no counter events: the lookup alone. ewma is measured with costs already observed (random
latencies), so its comparisons see real, distinct costs. ns_per_pick lands in extra_info.
Run: pytest bench/micro --benchmark-only
"""
import random

import pytest

from fastmesh._core.balance.factory import ALGORITHMS, HASHING, make_balancer

COUNT = 100_000

# Equal weights take each algorithm's fast path; mixed weights the general one.
SHAPES = {
    "3-equal": [1, 1, 1],
    "3-weighted": [1, 2, 3],
    "1000-equal": [1] * 1000,
    "1000-weighted": [1 + i % 10 for i in range(1000)],
}


def prepared(name, shape):
    b = make_balancer(name, SHAPES[shape], seed=1)
    if name == "ewma":
        rng = random.Random(1)
        b.set_now(1000.0)
        for i in range(b.size):
            b.observe_py(i, rng.uniform(0.001, 0.050), 200)
        b.set_now(1001.0)
    return b


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_pick(benchmark, name, shape):
    b = prepared(name, shape)
    benchmark.extra_info["picks_per_round"] = COUNT
    misses = benchmark(b.bench_picks, COUNT)
    assert misses == 0
    benchmark.extra_info["ns_per_pick"] = round(benchmark.stats.stats.median / COUNT * 1e9, 2)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(HASHING))
def test_pick_hash(benchmark, name, shape):
    b = prepared(name, shape)
    benchmark.extra_info["picks_per_round"] = COUNT
    misses = benchmark(b.bench_hash_picks, COUNT)
    assert misses == 0
    benchmark.extra_info["ns_per_pick"] = round(benchmark.stats.stats.median / COUNT * 1e9, 2)
