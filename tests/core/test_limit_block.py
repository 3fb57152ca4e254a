"""The instance-wide limit counters, driven directly: two mappings of one memfd stand for two workers."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fastmesh._core.limits import LimitBlock, private_cell
from fastmesh._core.policy import RetryBudget


@pytest.fixture
def two_workers() -> Iterator[tuple[LimitBlock, LimitBlock, LimitBlock]]:
    """The supervisor's block for 2 worker slots and each worker's mapping of it."""
    fd = os.memfd_create("test-limits", os.MFD_CLOEXEC)
    try:
        supervisor = LimitBlock.create(fd, 8, 2)
        yield supervisor, LimitBlock.attach(fd, 0), LimitBlock.attach(fd, 1)
    finally:
        os.close(fd)


def test_a_limit_holds_over_both_workers(two_workers) -> None:
    _, w0, w1 = two_workers
    a, b = w0.cell("api"), w1.cell("api")
    assert a.shared and a.workers == 2
    taken = [a.take_py("requests", 5) for _ in range(3)] + [b.take_py("requests", 5) for _ in range(4)]
    assert taken == [True] * 5 + [False] * 2          # 3 in w0, then only 2 more in w1
    assert a.counts()["requests"] == b.counts()["requests"] == 5
    a.give_py("requests")
    assert b.take_py("requests", 5) and not b.take_py("requests", 5)


def test_zero_means_none(two_workers) -> None:
    _, w0, _ = two_workers
    cell = w0.cell("api")
    assert not cell.take_py("pending", 0)
    assert cell.counts()["pending"] == 0


def test_clusters_have_their_own_cells_found_again_by_name(two_workers) -> None:
    _, w0, w1 = two_workers
    assert w0.cell("api").take_py("connections", 1)
    assert w1.cell("web").take_py("connections", 1)     # another cluster: its own count
    again = w1.cell("api")                               # a reload rebuilding "api" finds the same cell
    assert again.counts()["connections"] == 1 and not again.take_py("connections", 1)


def test_a_dead_workers_region_is_cleared_without_touching_the_others(two_workers) -> None:
    supervisor, w0, w1 = two_workers
    a, b = w0.cell("api"), w1.cell("api")
    for _ in range(3):
        assert a.take_py("requests", 4)
    assert b.take_py("requests", 4) and not b.take_py("requests", 4)
    supervisor.clear_worker(0)                          # w0 was killed holding 3
    assert b.counts()["requests"] == 1
    assert [b.take_py("requests", 4) for _ in range(4)] == [True, True, True, False]


def test_a_full_block_finds_no_cell_for_a_new_name() -> None:
    block = LimitBlock(2)
    assert block.cell("a") is not None and block.cell("b") is not None
    assert block.cell("c") is None
    assert block.cell("a") is not None                  # names it has keep their cells


def test_attach_refuses_memory_that_is_not_a_limits_block() -> None:
    fd = os.memfd_create("test-not-limits", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError):
            LimitBlock.attach(fd, 0)
        LimitBlock.create(fd, 4, 2)
        with pytest.raises(ValueError):
            LimitBlock.attach(fd, 2)                    # no region for a third worker
    finally:
        os.close(fd)


def test_the_retry_budget_is_the_instances(two_workers) -> None:
    """Requests deposited in one worker pay for retries in the other; the floor counts once, not per worker."""
    _, w0, w1 = two_workers
    b0 = RetryBudget(0.2, 1.0, 10.0, w0.cell("api"))
    b1 = RetryBudget(0.2, 1.0, 10.0, w1.cell("api"))
    for i in range(100):
        b0.deposit_at(100.0 + i * 0.01)
    allowed = sum(b1.withdraw_at(101.0) for _ in range(20)) + sum(b0.withdraw_at(101.0) for _ in range(20))
    assert allowed == 30                                # 0.2 * 100 + 1 * 10, over both workers
    assert b1.window_requests == 100 and b1.window_retries == 30
    assert b0.exhausted + b1.exhausted == 10


def test_a_private_cell_counts_alone() -> None:
    a, b = private_cell("api"), private_cell("api")
    assert not a.shared and a.workers == 1
    assert a.take_py("retries", 1) and not a.take_py("retries", 1)
    assert b.take_py("retries", 1)
