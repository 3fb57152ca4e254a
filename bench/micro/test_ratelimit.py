"""Micro-benchmark of a rate-limit check: what a request on a limited route adds, measured in a C loop.

RateLimit.take_many(keys, COUNT) does COUNT token takes (the hash of the key, the probe, one compare-and-swap on
the bucket's word and a counter add; a clock read each) over the keys in turn:
  - pass:    one key whose bucket never runs dry (the common case)
  - refuse:  one key whose bucket is empty (a client being limited: no CAS, one counter add)
  - spread:  10,000 keys in a table of 16,384 buckets (a busy edge keyed by client address)
  - flood:   100,000 keys through a table of 1,024 (every take claims an entry, most evict one)
Routes without a limit pay none of this: one pointer test per request in the exchange.
Run: pytest bench/micro/test_ratelimit.py -o addopts="" (per-check ns in extra_info)
"""
import pytest

from fastmesh._core.ratelimit import RateBlock, ident_of, interval_of

COUNT = 200_000
CASES = {
    # name: (rate per second, burst, buckets, keys)
    "pass": (1_000_000_000, 1_000_000, 1024, [b"10.0.0.1"]),
    "refuse": (1, 1, 1024, [b"10.0.0.1"]),
    "spread": (1_000, 100, 16_384, [f"10.{i >> 8 & 255}.{i & 255}.1".encode() for i in range(10_000)]),
    "flood": (1, 1, 1024, [f"flood-{i}".encode() for i in range(100_000)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rate_limit_check(benchmark, name):
    rate, burst, buckets, keys = CASES[name]
    interval = interval_of(rate, 1.0)
    block = RateBlock([(ident_of(name), buckets, interval, burst * interval)], 42)
    limit = block.limit(ident_of(name), "client_ip", "", name)
    limit.take_many(keys, 10)
    benchmark(limit.take_many, keys, COUNT)
    benchmark.extra_info["ns_per_check"] = round(benchmark.stats.stats.median / COUNT * 1e9, 1)
    benchmark.extra_info["counts"] = limit.counts()
