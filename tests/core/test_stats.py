"""Stats blocks and the layout: slots, shared mappings across processes, merging workers, monotonic retirement."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from array import array

import pytest

from fastmesh._core.reactor import Reactor
from fastmesh._core.stats import (
    DURATION_BOUNDS, HEADER, HEADER_SIZE, HISTOGRAM_SIZE, HISTOGRAM_SUM, LISTENER_FIELDS, STATUS_CLASSES, StatsBlock,
    cluster_size,
)
from fastmesh._core.tcp.splice import TcpProxy
from fastmesh.config.load import loads_config
from fastmesh.dataplane.clusters import build_cluster
from fastmesh.dataplane.stats import Snapshot, StatsLayout, WorkerStats, attach, open_block

CONFIG = """
[[listeners]]
name = "a"
listen = "127.0.0.1:1"
cluster = "one"
[[listeners]]
name = "b"
listen = "127.0.0.1:2"
cluster = "two"
[clusters.one]
endpoints = ["127.0.0.1:10", "127.0.0.1:11"]
[clusters.two]
endpoints = ["127.0.0.1:20", "[::1]:21", { address = "127.0.0.1:22", weight = 3 }]
"""


def layout(text: str = CONFIG) -> StatsLayout:
    return StatsLayout(loads_config(text))


# ---- the block ----

def test_private_block_slots() -> None:
    block = StatsBlock(HEADER_SIZE + 4)
    assert len(block) == HEADER_SIZE + 4 and not block.shared
    assert list(block.snapshot()) == [0] * len(block)
    block[HEADER_SIZE] = 2**64 - 1
    block[HEADER_SIZE + 3] = 7
    snap = block.snapshot()
    assert snap.typecode == "Q" and snap[HEADER_SIZE] == 2**64 - 1 and snap[HEADER_SIZE + 3] == 7
    with pytest.raises(IndexError):
        block[len(block)]
    block.clear()
    assert list(block.snapshot()) == [0] * len(block)


def test_add_to_sums_with_wraparound() -> None:
    block = StatsBlock(HEADER_SIZE + 2)
    block[0] = 99                          # header slots are not summed
    block[HEADER_SIZE] = 5
    block[HEADER_SIZE + 1] = 2**64 - 1     # a gauge at -1 in this block...
    out = array("Q", [0] * HEADER_SIZE + [1, 3])
    block.add_to(out)
    assert list(out) == [0] * HEADER_SIZE + [6, 2]     # ...nets out against +3 elsewhere
    with pytest.raises(ValueError):
        block.add_to(array("Q", [0]))


def test_any_set_looks_at_a_run_of_slots_only() -> None:
    block = StatsBlock(HEADER_SIZE + 10)
    block[0] = 1                                            # (a header slot)
    assert not block.any_set(HEADER_SIZE, 10) and not block.any_set(HEADER_SIZE + 3, 0)
    block[HEADER_SIZE + 9] = 2**64 - 1                      # a gauge at -1 is not zero either
    assert block.any_set(HEADER_SIZE, 10) and block.any_set(HEADER_SIZE + 9, 1)
    assert not block.any_set(HEADER_SIZE, 9)
    with pytest.raises(ValueError):
        block.any_set(HEADER_SIZE + 5, 6)                   # past the end: a layout bug, not False


def test_status_classes_and_histogram() -> None:
    block = StatsBlock(HEADER_SIZE + len(STATUS_CLASSES) + HISTOGRAM_SIZE)
    for status in (100, 200, 204, 301, 404, 499, 500, 599, 99, 600, 0):
        block.count_status(HEADER_SIZE, status)
    assert [block[HEADER_SIZE + i] for i in range(5)] == [1, 2, 1, 2, 2]
    hist = HEADER_SIZE + len(STATUS_CLASSES)
    for seconds in (0.0001, 0.0005, 0.0006, 0.3, 10.0, 11.0):
        block.observe(hist, seconds)
    counts = [block[hist + i] for i in range(len(DURATION_BOUNDS) + 1)]
    assert counts[0] == 2                                   # <= 0.5 ms, the bound itself included
    assert counts[1] == 1                                   # 0.6 ms in (0.5, 1] ms
    assert counts[DURATION_BOUNDS.index(0.5)] == 1          # 0.3 s in (0.25, 0.5]
    assert counts[DURATION_BOUNDS.index(10.0)] == 1 and counts[-1] == 1   # 11 s only in +Inf
    assert sum(counts) == 6
    assert block[hist + HISTOGRAM_SUM] == round((0.0001 + 0.0005 + 0.0006 + 0.3 + 10.0 + 11.0) * 1e9)


def test_region_bounds_are_checked() -> None:
    tcp = TcpProxy(Reactor(), build_cluster(loads_config(CONFIG).clusters["one"]), "x")
    with pytest.raises(ValueError):
        tcp.attach_stats(StatsBlock(HEADER_SIZE + len(LISTENER_FIELDS) - 1), HEADER_SIZE)
    with pytest.raises(ValueError):
        tcp.attach_stats(StatsBlock(HEADER_SIZE + 10), 0)          # the header is not a listener's


def test_shared_block_is_seen_by_another_process() -> None:
    fd = os.memfd_create("test-stats")
    try:
        lay = layout()
        block = lay.new_block(fd)
        assert block.shared and lay.matches(block)
        child = textwrap.dedent(f"""
            from fastmesh._core.stats import StatsBlock
            block = StatsBlock.map({fd}, {lay.size})
            assert block[{HEADER['layout']}] == {lay.key}
            block[{lay.listeners[1].offset}] += 41
            block[{lay.size - 1}] = 2**64 - 2
        """)
        subprocess.run([sys.executable, "-c", child], pass_fds=(fd,), check=True, timeout=30)
        assert block[lay.listeners[1].offset] == 41
        assert block[lay.size - 1] == 2**64 - 2
    finally:
        os.close(fd)


# ---- the layout ----

def test_layout_regions_tile_the_block() -> None:
    lay = layout()
    spans = [(ls.offset, len(LISTENER_FIELDS)) for ls in lay.listeners]
    spans += [(cs.offset, cluster_size(len(cs.endpoints))) for cs in lay.clusters.values()]
    position = HEADER_SIZE
    for offset, size in sorted(spans):
        assert offset == position
        position += size
    assert position == lay.size
    two = lay.clusters["two"]
    assert two.endpoints == ("127.0.0.1:20", "[::1]:21", "127.0.0.1:22") and two.weights == (1, 1, 3)
    assert two.endpoint_field("failures") + 2 < two.offset + cluster_size(3)
    assert lay.requests == () and lay.durations == {}        # no HTTP listener: no request slots


def test_layout_key_follows_names_and_shape() -> None:
    assert layout().key == layout().key
    assert layout().key != layout(CONFIG.replace('name = "b"', 'name = "c"')).key
    assert layout().key != layout(CONFIG.replace('"127.0.0.1:11"', '"127.0.0.1:12"')).key
    # Settings that move no slot keep the key: workers can share blocks across such edits.
    assert layout().key == layout("drain_timeout = \"3s\"\n" + CONFIG).key


def test_layout_counts_http_requests_per_listener_and_cluster() -> None:
    cfg = loads_config(CONFIG)
    cfg.listeners[0].protocol = "http"       # what an http listener adds, whichever way its config is written
    lay = StatsLayout(cfg)
    assert [(r.listener, r.cluster) for r in lay.requests] == [("a", "one")]
    assert list(lay.durations) == ["one"]
    assert lay.durations["one"].offset + HISTOGRAM_SIZE == lay.size


def test_open_block_refuses_a_block_of_another_layout() -> None:
    fd = os.memfd_create("test-stats")
    other = layout(CONFIG.replace('name = "b"', 'name = "c"'))
    other.new_block(fd)
    block = open_block(layout(), fd)              # closes fd
    assert not block.shared                       # a private block instead of offsets that mean other things
    assert block[HEADER["pid"]] == os.getpid()


# ---- core objects counting into a block ----

def test_attach_moves_counts_into_the_block() -> None:
    cfg = loads_config(CONFIG)
    lay = StatsLayout(cfg)
    block = lay.new_block()
    clusters = {name: build_cluster(c) for name, c in cfg.clusters.items()}
    tcp = {lst.name: TcpProxy(Reactor(), clusters[lst.cluster], lst.name) for lst in cfg.listeners}
    attach(lay, block, clusters, tcp)
    assert tcp["b"].accepted == 0 and tcp["b"].active == 0
    block[lay.listeners[1].offset + LISTENER_FIELDS.index("bytes_out")] = 1234
    assert tcp["b"].bytes_out == 1234
    eps = clusters["two"].endpoints()
    assert [e["state"] for e in eps] == ["up"] * 3 and all(e["connect_failures"] == 0 for e in eps)
    block[lay.clusters["two"].endpoint_field("failures") + 1] = 5
    block[lay.clusters["two"].endpoint_field("state") + 1] = 1
    eps = clusters["two"].endpoints()
    assert eps[1]["connect_failures"] == 5 and eps[1]["state"] == "down"


def test_counts_before_attach_live_in_a_private_block() -> None:
    cluster = build_cluster(loads_config(CONFIG).clusters["one"])
    tcp = TcpProxy(Reactor(), cluster, "a")
    assert [e["state"] for e in cluster.endpoints()] == ["up", "up"]
    assert (tcp.accepted, tcp.active, tcp.bytes_in) == (0, 0, 0)


# ---- merging workers ----

def _set(block: StatsBlock, slot: int, value: int) -> None:
    block[slot] = value


def test_merge_sums_workers_and_takes_the_latest_endpoint_state() -> None:
    lay = layout()
    stats = WorkerStats(lay)
    try:
        blocks = [StatsBlock.map(stats.fd_for(n), lay.size) for n in range(2)]
        accepted = lay.listeners[0].offset + LISTENER_FIELDS.index("accepted")
        active = lay.listeners[0].offset + LISTENER_FIELDS.index("active")
        one = lay.clusters["one"]
        for n, block in enumerate(blocks):
            block[HEADER["pid"]] = 1000 + n
            block[accepted] = 10 * (n + 1)
            block[active] = n + 1
        # Endpoint 0: w0 saw it fail at t=50, w1 connected at t=40 -> down. Endpoint 1: w0 failed at 50,
        # w1 connected at 60 -> up.
        for slot, values in ((0, (1, 50, 0, 40)), (1, (1, 50, 0, 60))):
            _set(blocks[0], one.endpoint_field("state") + slot, values[0])
            _set(blocks[0], one.endpoint_field("seen") + slot, values[1])
            _set(blocks[1], one.endpoint_field("state") + slot, values[2])
            _set(blocks[1], one.endpoint_field("seen") + slot, values[3])
        snap = stats.collect()
        assert snap.listeners()["a"]["accepted"] == 30 and snap.listeners()["a"]["active"] == 3
        eps = snap.clusters()["one"]["endpoints"]
        assert (eps[0]["state"], eps[0]["healthy"]) == ("down", False)
        assert (eps[1]["state"], eps[1]["healthy"]) == ("up", True)
        assert eps[0]["workers"] == {"0": "down", "1": "up"}
        assert snap.clusters()["two"]["endpoints_up"] == 3          # never seen: not known to be down
        assert {n: w["pid"] for n, w in snap.worker_info().items()} == {0: 1000, 1: 1001}
    finally:
        stats.close()


def test_retired_worker_keeps_totals_monotonic() -> None:
    lay = layout()
    stats = WorkerStats(lay)
    try:
        block = StatsBlock.map(stats.fd_for(0), lay.size)
        accepted = lay.listeners[0].offset + LISTENER_FIELDS.index("accepted")
        active = lay.listeners[0].offset + LISTENER_FIELDS.index("active")
        block[HEADER["pid"]] = 1
        block[accepted] = 7
        block[active] = 2
        before = stats.collect().listeners()["a"]
        stats.retire(0)                                 # the worker died: its open connections died with it
        assert block[accepted] == 0 and block[HEADER["pid"]] == 0 and block[HEADER["magic"]] != 0
        after = stats.collect().listeners()["a"]
        assert (before["accepted"], before["active"]) == (7, 2)
        assert (after["accepted"], after["active"]) == (7, 0)
        block[HEADER["pid"]] = 2                        # the next worker of the slot counts from zero
        block[accepted] = 3
        assert stats.collect().listeners()["a"]["accepted"] == 10
    finally:
        stats.close()


def test_snapshot_of_one_block() -> None:
    lay = layout()
    block = lay.new_block()
    block[lay.listeners[0].offset] = 4
    snap = Snapshot.of_block(lay, block)
    assert snap.listeners()["a"]["accepted"] == 4 and list(snap.worker_info()) == [0]
