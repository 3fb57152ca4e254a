"""The rate-limit buckets, driven directly: refill, burst, fixed-point edges, eviction, two processes sharing one."""
from __future__ import annotations

import os
import time

import pytest

from fastmesh._core.ratelimit import (
    MAX_TOLERANCE, TICKS_PER_SECOND, RateBlock, ident_of, interval_of, retry_after, table_size,
)


def limit(rate: int, per: float, burst: int, entries: int = 64, kind: str = "route", name: str = "",
          block: RateBlock | None = None):
    interval = interval_of(rate, per)
    ident = ident_of(f"{rate}/{per}/{burst}/{entries}")
    block = block or RateBlock([(ident, entries, interval, burst * interval)], 12345)
    return block.limit(ident, kind, name, f"{rate}/{per} burst {burst}")


def test_exactly_the_burst_passes_then_the_wait_is_one_token() -> None:
    r = limit(10, 1.0, 10)
    waits = [r.take_key(b"k") for _ in range(12)]
    assert waits[:10] == [0] * 10
    # The 11th waits for one token: 100 ms at 10/s (less the few microseconds the loop took).
    assert 0 < waits[10] <= TICKS_PER_SECOND // 10
    assert waits[10] > TICKS_PER_SECOND // 10 - TICKS_PER_SECOND // 100
    assert retry_after(waits[10]) == 1
    assert r.counts() == {"passed": 10, "limited": 2, "evicted": 0}


def test_a_bucket_refills_at_the_rate() -> None:
    r = limit(20, 1.0, 2)                       # a token every 50 ms
    assert [r.take_key("a") for _ in range(2)] == [0, 0]
    assert r.take_key("a") > 0
    time.sleep(0.06)
    assert r.take_key("a") == 0                 # one token came back ...
    assert r.take_key("a") > 0                  # ... only one
    time.sleep(0.25)
    assert [r.take_key("a") for _ in range(3)][:2] == [0, 0]    # full again: never more than the burst


def test_keys_have_their_own_buckets() -> None:
    r = limit(1, 60.0, 2)
    assert [r.take_key("alice") for _ in range(3)][2] > 0
    assert [r.take_key("bob") for _ in range(2)] == [0, 0]
    assert r.take_key("") == 0                  # the empty key is a key like the others


def test_fixed_point_edges() -> None:
    # 3/s: 1 s / 3 is no whole number of nanoseconds; in 1/16 ns the rounding loses under 1 ns per second.
    assert abs(3 * interval_of(3, 1.0) - TICKS_PER_SECOND) < 3
    assert interval_of(1, 3600.0) == 3600 * TICKS_PER_SECOND
    # A wait is rounded up to whole seconds, at least 1, at most a day.
    assert retry_after(1) == 1
    assert retry_after(TICKS_PER_SECOND) == 1
    assert retry_after(TICKS_PER_SECOND + 1) == 2
    assert retry_after(10**30 % 2**64) == 86400
    r = limit(1, 3600.0, 1)
    assert r.take_key("x") == 0
    assert retry_after(r.take_key("x")) == 3600
    r = limit(1, 60.0, 10)
    for _ in range(10):
        assert r.take_key("x") == 0
    assert retry_after(r.take_key("x")) == 60
    with pytest.raises(ValueError):             # burst x interval past 2^62 is refused at build time
        RateBlock([(1, 64, interval_of(1, 3600.0), MAX_TOLERANCE)], 1)
    with pytest.raises(ValueError):             # tables are a power of two entries
        RateBlock([(1, 100, 10, 10)], 1)


def test_a_flood_of_keys_stays_in_the_table() -> None:
    r = limit(1, 3600.0, 5, entries=16)
    for i in range(5000):
        r.take_key(f"client-{i}")
    assert r.keys_held() <= 16
    assert r.counts()["evicted"] > 4900         # each new key evicts a bucket still owing tokens
    assert r.counts()["passed"] == 5000         # a key seen once has a full bucket


def test_full_buckets_are_taken_before_anything_is_evicted() -> None:
    r = limit(1000, 1.0, 1, entries=8)          # a bucket is full again 1 ms after its request
    for i in range(8):
        r.take_key(f"k{i}")
    time.sleep(0.01)
    for i in range(8, 40):
        r.take_key(f"k{i}")
        time.sleep(0.002)
    assert r.counts()["evicted"] == 0


def test_the_limited_key_survives_a_flood_of_one_time_keys() -> None:
    # An eviction takes the bucket closest to full: a key seen once owes one token, a drained one owes three, so
    # a flood of new keys cannot hand the drained key a full bucket.
    r = limit(1, 3600.0, 3, entries=64)
    for _ in range(3):
        assert r.take_key("busy") == 0
    for i in range(5000):
        r.take_key(f"flood-{i}")
    assert r.counts()["evicted"] > 4900
    assert r.take_key("busy") > 0


def test_the_block_is_one_per_instance_shared_by_processes() -> None:
    """Two processes (fork) hammer one key of a shared block: exactly the burst passes over both."""
    interval = interval_of(1, 3600.0)
    ident = ident_of("shared")
    fd = os.memfd_create("test-rates", os.MFD_CLOEXEC)
    try:
        supervisor = RateBlock.create(fd, [(ident, 64, interval, 2000 * interval)], 99)
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                try:
                    mine = RateBlock.attach(fd).limit(ident, "route", "", "")
                    passed = sum(1 for _ in range(3000) if mine.take_key(b"") == 0)
                    os._exit(0 if passed <= 2000 else 1)
                except BaseException:
                    os._exit(2)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        counts = supervisor.limit(ident, "route", "", "").counts()
        assert counts == {"passed": 2000, "limited": 4000, "evicted": 0}
    finally:
        os.close(fd)


def test_carry_over_keeps_the_tables_of_unchanged_limits() -> None:
    a, b = ident_of("kept"), ident_of("changed")
    i = interval_of(1, 60.0)
    old = RateBlock([(a, 64, i, 2 * i), (b, 64, i, 2 * i)], 7)
    for ident in (a, b):
        lim = old.limit(ident, "route", "", "")
        lim.take_key("k")
        lim.take_key("k")
    new = RateBlock([(ident_of("added"), 32, i, i), (a, 64, i, 2 * i), (ident_of("changed2"), 64, i, 3 * i)], 7)
    assert new.carry_over(old) == [a]
    assert new.limit(a, "route", "", "").take_key("k") > 0          # still empty: its buckets came along
    assert new.limit(a, "route", "", "").counts()["passed"] == 2
    assert new.limit(ident_of("changed2"), "route", "", "").take_key("k") == 0
    assert new.limit(b, "route", "", "") is None
    with pytest.raises(ValueError):
        RateBlock([], 8).carry_over(old)


def test_attach_checks_the_memory() -> None:
    fd = os.memfd_create("test-rates", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 8 * 8)
        with pytest.raises(ValueError):
            RateBlock.attach(fd)
        RateBlock.create(fd, [(5, 8, 10, 10)], 1)
        os.ftruncate(fd, (8 + table_size(8) - 1) * 8)
        with pytest.raises(ValueError):
            RateBlock.attach(fd)
    finally:
        os.close(fd)
