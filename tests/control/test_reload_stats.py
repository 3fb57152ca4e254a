"""Counters across a reload that changes their layout: blocks of two layouts add up by name, nothing still
configured goes backwards (before, during and after the worker moves its counters), old blocks fold into the
retired totals, and a real Proxy adopts the block the supervisor offers (real sockets, a real backend)."""
from __future__ import annotations

import asyncio
import os

import pytest

from fastmesh import Proxy
from fastmesh._core.stats import HEADER, LISTENER_FIELDS, StatsBlock
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port
from fastmesh.config.load import loads_config
from fastmesh.dataplane import stats as stats_mod
from fastmesh.dataplane.stats import StatsLayout, WorkerStats, map_block, reload_block

BEFORE = """
[[listeners]]
name = "a"
listen = "127.0.0.1:1"
cluster = "one"
[[listeners]]
name = "b"
listen = "127.0.0.1:2"
cluster = "one"
[clusters.one]
endpoints = ["127.0.0.1:10", "127.0.0.1:11"]
"""
# "b" is gone, "c" is new, and cluster one lost an endpoint and gained another.
AFTER = """
[[listeners]]
name = "c"
listen = "127.0.0.1:3"
cluster = "one"
[[listeners]]
name = "a"
listen = "127.0.0.1:1"
cluster = "one"
[clusters.one]
endpoints = ["127.0.0.1:11", "127.0.0.1:12"]
"""


def slot(layout: StatsLayout, listener: str, name: str) -> int:
    ls = next(ls for ls in layout.listeners if ls.name == listener)
    return ls.offset + LISTENER_FIELDS.index(name)


def test_blocks_of_two_layouts_add_up_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = StatsLayout(loads_config(BEFORE)), StatsLayout(loads_config(AFTER))
    stats = WorkerStats(old)
    try:
        b1 = StatsBlock.map(stats.fd_for(0), old.size)      # what the worker maps
        b1[HEADER["pid"]] = 4242
        b1[slot(old, "a", "accepted")] = 10
        b1[slot(old, "b", "accepted")] = 3
        one = old.clusters["one"]
        b1[one.field("retries")] = 2
        b1[one.endpoint_field("opened") + 1] = 7             # 127.0.0.1:11
        b1[one.endpoint_field("state") + 1] = 1              # down, in the old block...
        b1[one.endpoint_field("seen") + 1] = 50              # ...as of t=50
        b1[slot(old, "a", "active")] = 1                     # a connection still open there
        assert stats.relayout(new) and not stats.relayout(StatsLayout(loads_config(AFTER)))
        snap = stats.collect()                               # the worker has not adopted the new block yet
        assert snap.listeners()["a"]["accepted"] == 10 and set(snap.listeners()) == {"a", "c"}
        eps = {e["address"]: e for e in snap.clusters()["one"]["endpoints"]}
        assert eps["127.0.0.1:11"]["connections"] == 7 and eps["127.0.0.1:11"]["state"] == "down"
        assert eps["127.0.0.1:12"]["connections"] == 0

        # The reload: frozen while the worker moves a's counters into the new block, as attach_stats does.
        stats.freeze(0)
        b2 = StatsBlock.map(stats.fd_for(0), new.size)
        b2[HEADER["pid"]] = 4242
        for name in ("accepted", "active"):
            b2[slot(new, "a", name)] += b1[slot(old, "a", name)]
            b1[slot(old, "a", name)] = 0
            during = stats.collect().listeners()["a"]
            assert (during["accepted"], during["active"]) == (10, 1)        # neither twice nor missing
        b2[new.clusters["one"].endpoint_field("seen")] = 60                 # the new cluster: :11 up at t=60
        stats.thaw(0)
        snap = stats.collect()
        assert (snap.listeners()["a"]["accepted"], snap.listeners()["a"]["active"]) == (10, 1)
        assert snap.clusters()["one"]["retries"] == 2                        # still in the old block
        eps = {e["address"]: e for e in snap.clusters()["one"]["endpoints"]}
        assert eps["127.0.0.1:11"]["connections"] == 7 and eps["127.0.0.1:11"]["state"] == "up"

        # The old block: nothing open there, so after FOLD_QUIET it joins the retired totals.
        monkeypatch.setattr(stats_mod, "FOLD_QUIET", 0.0)
        stats.collect()
        stats.collect()
        assert len(stats.slots[0]) == 1
        b2[slot(new, "a", "accepted")] += 1
        snap = stats.collect()
        assert snap.listeners()["a"]["accepted"] == 11 and snap.clusters()["one"]["retries"] == 2

        # The worker exits: its counters stay in the totals, its gauges go.
        stats.retire(0)
        snap = stats.collect()
        assert (snap.listeners()["a"]["accepted"], snap.listeners()["a"]["active"]) == (11, 0)
    finally:
        stats.close()


def test_changes_of_shape_with_no_reader_keep_few_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery updates change the shape again and again while nothing reads the counters: the blocks the worker
    moved on from are folded as the changes come, so the slot keeps a few blocks, not one per update."""
    monkeypatch.setattr(stats_mod, "FOLD_QUIET", 0.0)
    layouts = [StatsLayout(loads_config(BEFORE)), StatsLayout(loads_config(AFTER))]
    stats = WorkerStats(layouts[0])
    try:
        accepted = 0
        for update in range(40):
            layout = stats.layout
            block = StatsBlock.map(stats.fd_for(0), layout.size)         # the worker adopts the newest block...
            block[HEADER["pid"]] = 4242
            block[slot(layout, "a", "accepted")] += 1                     # ...and counts there
            accepted += 1
            assert stats.relayout(layouts[(update + 1) % 2])
            assert len(stats.slots[0]) <= 3, update
        block = StatsBlock.map(stats.fd_for(0), stats.layout.size)
        block[HEADER["pid"]] = 4242
        assert stats.collect().listeners()["a"]["accepted"] == accepted    # nothing lost in the folding
    finally:
        stats.close()


def test_an_old_block_with_an_upstream_connection_open_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last endpoint's open-connection gauge alone keeps an old block from being folded; once it is back to
    zero the block is folded, and what it counted stays in the totals."""
    monkeypatch.setattr(stats_mod, "FOLD_QUIET", 0.0)
    old, new = StatsLayout(loads_config(BEFORE)), StatsLayout(loads_config(AFTER))
    stats = WorkerStats(old)
    try:
        b1 = StatsBlock.map(stats.fd_for(0), old.size)
        b1[HEADER["pid"]] = 4242
        one = old.clusters["one"]
        last = one.endpoint_field("active") + one.count - 1
        b1[last] = 1                                         # an upstream connection still open there
        b1[one.endpoint_field("opened") + one.count - 1] = 4
        stats.relayout(new)
        b2 = StatsBlock.map(stats.fd_for(0), new.size)
        b2[HEADER["pid"]] = 4242
        for _ in range(3):
            stats.collect()
        assert len(stats.slots[0]) == 2
        b1[last] = 0                                         # it closed
        stats.collect()
        stats.collect()
        assert len(stats.slots[0]) == 1
        eps = {e["address"]: e for e in stats.collect().clusters()["one"]["endpoints"]}
        assert eps["127.0.0.1:11"]["connections"] == 4       # (the last endpoint of BEFORE)
    finally:
        stats.close()


def test_reload_block_adopts_only_a_block_of_the_new_shape() -> None:
    old, new = StatsLayout(loads_config(BEFORE)), StatsLayout(loads_config(AFTER))
    stats = WorkerStats(old)
    try:
        current = stats_mod.open_block(old, os.dup(stats.fd_for(0)))
        assert current.shared and current[HEADER["pid"]] == os.getpid()
        same = map_block(os.dup(stats.fd_for(0)))
        assert reload_block(old, old, current, same) is current          # the very memory: kept
        stats.relayout(new)
        offered = map_block(os.dup(stats.fd_for(0)))
        adopted = reload_block(new, old, current, offered)
        assert adopted is offered and adopted[HEADER["started"]] == current[HEADER["started"]]
        private = reload_block(new, old, current, None)                  # no block offered: a private one
        assert not private.shared and new.matches(private)
        assert reload_block(old, old, current, None) is current           # same shape: keep counting there
    finally:
        stats.close()


def test_proxy_reload_keeps_counting_into_the_offered_block() -> None:
    """A real Proxy: connections counted before a reload that adds a listener stay counted after it."""
    async def main() -> None:
        async with HttpBackend("b") as backend:
            p1, p2 = free_port(), free_port()
            first = (f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{p1}"\nprotocol = "http"\n'
                     f'cluster = "app"\n[clusters.app]\nendpoints = ["{backend.address}"]\n')
            second = first + f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{p2}"\ncluster = "app"\n'
            stats = WorkerStats(StatsLayout(loads_config(first)))
            try:
                async with Proxy.from_toml(first, stats_fd=os.dup(stats.fd_for(0))) as proxy:
                    for _ in range(3):
                        await _get(p1)
                    assert stats.collect().listeners()["web"]["accepted"] == 3
                    stats.relayout(StatsLayout(loads_config(second)))
                    stats.freeze(0)
                    await proxy.reload(loads_config(second), stats_block=map_block(os.dup(stats.fd_for(0))))
                    stats.thaw(0)
                    await _get(p1)
                    await _get(p2)
                    listeners = stats.collect().listeners()
                    assert listeners["web"]["accepted"] == 4 and listeners["raw"]["accepted"] == 1
                    # Answers counted in the old block and in the new one (raw is a tcp relay: not counted).
                    assert sum(v for _, _, cls, v in stats.collect().requests() if cls == "2xx") == 4
            finally:
                stats.close()

    asyncio.run(main())


async def _get(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.read()
    writer.close()
    # Wait until the proxy has counted the connection's end (it counts when it sees the close).
    await asyncio.sleep(0.05)
