"""Discovery updates applied in place, end to end: `fastmesh run` (2 workers) with a watched endpoint file and real
backends on loopback. Endpoints added and removed under keep-alive load lose no request and the workers are not
reloaded; pooled connections to endpoints that stay are kept; a removed endpoint's request in flight completes;
a lower-priority tier serves only while the preferred one has no eligible endpoint."""
from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh._testbase.admin import admin_json
from fastmesh._testbase.chaos import Tally, run_load
from fastmesh._testbase.http_backend import HttpBackend, start_http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun, replace_file

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0                 # seconds any one expected change may take
CLIENTS = 4                 # keep-alive clients of the load
SETTLE = 0.5                # seconds after an update by which no request goes to a removed endpoint any more
STREAK = 100                # answers in a row from one backend that show every worker sends there


def config(web: int, admin: int) -> str:
    return f"""
workers = 2
drain_timeout = "3s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "users"
[clusters.users]
discovery = {{ kind = "file", path = "users.json" }}
"""


def write(path: Path, endpoints: list[dict[str, Any]]) -> None:
    """Replace the endpoint file atomically (what a deploy tool does)."""
    replace_file(path, json.dumps(endpoints))


async def wait_endpoints(admin: int, wanted: dict[str, str]) -> None:
    """Wait until /clusters shows exactly these endpoints of cluster users in these states."""
    deadline = time.monotonic() + WAIT
    while True:
        users = (await admin_json(admin, "/clusters"))["users"]
        if {e["address"]: e["state"] for e in users["endpoints"]} == wanted:
            return
        assert time.monotonic() < deadline, f"/clusters: {users['endpoints']}"
        await asyncio.sleep(0.05)


async def wait_traffic(tally: Tally, since: float, names: set[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not names <= {b for t, b in tally.answered_at if t > since}:
        assert time.monotonic() < deadline, f"answers since: {sorted({b for t, b in tally.answered_at if t > since})}"
        await asyncio.sleep(0.05)


def backends_since(tally: Tally, since: float) -> set[str]:
    return {b for t, b in tally.answered_at if t > since}


async def started(tmp: Path, endpoints: list[dict[str, Any]]) -> tuple[AsyncRun, Path, int, int]:
    eps = tmp / "users.json"
    write(eps, endpoints)
    web, admin = free_ports(2)
    run = AsyncRun(tmp, config(web, admin), WAIT)
    await run.start(r"ready: 2 worker\(s\) serving")
    return run, eps, web, admin


async def stop_all(run: AsyncRun, backends: list[HttpBackend]) -> None:
    await run.stop()
    for b in backends:
        await b.stop()


def test_endpoints_added_and_removed_under_load_lose_no_request_and_keep_pooled_connections(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(4, "b")
        run, eps, web, admin = await started(tmp_path, [{"address": b[0].address}, {"address": b[1].address}])
        try:
            await wait_endpoints(admin, {b[0].address: "up", b[1].address: "up"})
            tally = Tally()
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=CLIENTS, seconds=8.0, tally=tally))
            await wait_traffic(tally, time.monotonic(), {"b-0", "b-1"})
            await asyncio.sleep(0.5)
            steps = [[b[1], b[2]], [b[2], b[3], b[0]], [b[3]], [b[3], b[1]]]
            kept_connection_used = False
            for n, step in enumerate(steps, start=1):
                before = {x.name: {r.connection for r in x.received} for x in b}
                write(eps, [{"address": x.address} for x in step])
                await wait_endpoints(admin, {x.address: "up" for x in step})
                await run.wait_log(r"discovery update applied by 2 worker\(s\)", n)
                switched = time.monotonic()
                await asyncio.sleep(SETTLE)
                marks = {x.name: len(x.received) for x in b}
                await wait_traffic(tally, switched + SETTLE, {x.name for x in step})
                assert backends_since(tally, switched + SETTLE) <= {x.name for x in step}
                # An endpoint listed before and after keeps its pooled connections: requests after the update
                # arrive on connections opened before it (a rebuilt pool would have closed them all).
                for x in step:
                    if before[x.name]:
                        later = {r.connection for r in x.received[marks[x.name]:]}
                        kept_connection_used |= bool(later & before[x.name])
            await load
            assert tally.failed == 0, tally.failures
            assert tally.ok > 100 and all(tally.by_backend[x.name] for x in b)
            assert kept_connection_used
            log = run.log()
            assert "config reloaded" not in log and "restarting" not in log    # applied in place, not reloaded
            assert log.count("discovery update applied by 2 worker(s)") == len(steps)
            assert "private block" not in log       # workers count into the blocks the supervisor reads
            counted = (await admin_json(admin, "/clusters"))["users"]
            assert [e["address"] for e in counted["endpoints"]] == [b[3].address, b[1].address]
            assert counted["upstream_connections"] > 0
            # A worker started now (after the updates) gets the same endpoint slots, holes included: it counts
            # into the supervisor's block and serves the current set.
            pid = int((await admin_json(admin, "/stats"))["workers"]["0"]["pid"])
            os.kill(pid, signal.SIGKILL)
            await run.wait_log(r"w0 \(pid \d+\) ready", 2)
            after = Tally()
            await run_load("127.0.0.1", web, clients=CLIENTS, seconds=1.0, tally=after)
            assert after.failed == 0 and set(after.by_backend) == {"b-3", "b-1"}, after
            assert "not shared" not in run.log() and "private block" not in run.log()
        finally:
            await stop_all(run, b)
    asyncio.run(main())


def test_a_removed_endpoints_request_in_flight_completes(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        run, eps, web, admin = await started(tmp_path, [{"address": b[0].address}])
        try:
            await wait_endpoints(admin, {b[0].address: "up"})
            async with httpx.AsyncClient(timeout=10) as client:
                slow = asyncio.create_task(client.get(f"http://127.0.0.1:{web}/slow?ms=2500"))
                deadline = time.monotonic() + WAIT
                while not b[0].requests:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                write(eps, [{"address": b[1].address}])
                await wait_endpoints(admin, {b[1].address: "up"})
                await run.wait_log(r"discovery update applied by 2 worker\(s\)")
                assert not slow.done()
                for _ in range(10):                     # new requests: only the endpoint now listed
                    r = await client.get(f"http://127.0.0.1:{web}/")
                    assert r.status_code == 200 and r.headers["x-backend"] == "b-1"
                answer = await slow
            assert answer.status_code == 200 and answer.text == "slept 2500 ms\n"
            assert answer.headers["x-backend"] == "b-0"
        finally:
            await stop_all(run, b)
    asyncio.run(main())


async def wait_streak(tally: Tally, since: int, backend: str, run: int = STREAK) -> int:
    """Wait until `run` answers in a row (in the order the clients got them, from index `since` of answered_at on)
    all came from `backend`; the index where that run starts. Ordering, not timing: a client whose loop is late
    on a loaded machine stamps its answers late, and with two workers each one re-admits an endpoint on its own
    probe, so only a run spanning every client's answers shows that all of them are served by `backend`."""
    deadline = time.monotonic() + WAIT
    begun, k = since, since
    while True:
        answers = tally.answered_at
        while k < len(answers):
            if answers[k][1] != backend:
                begun = k + 1
            elif k + 1 - begun >= run:
                return begun
            k += 1
        assert time.monotonic() < deadline, f"no {run} answers in a row from {backend}: " \
                                            f"{collections.Counter(b for _, b in answers[since:])}"
        await asyncio.sleep(0.02)


def test_a_lower_priority_tier_serves_only_while_the_preferred_one_has_no_eligible_endpoint(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        run, eps, web, admin = await started(tmp_path, [{"address": b[0].address, "priority": 10},
                                                        {"address": b[1].address, "priority": 20}])
        done = asyncio.Event()
        load: asyncio.Task[Tally] | None = None
        try:
            await wait_endpoints(admin, {b[0].address: "up", b[1].address: "standby"})
            tally = Tally()
            # The load runs until the test has seen every stage (bounded by `seconds`), not for a fixed time
            # that a slow machine could use up before the last stage.
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=CLIENTS, seconds=4 * WAIT, tally=tally,
                                                until=done))
            await wait_streak(tally, 0, "b-0")
            port = b[0].port
            before = len(tally.answered_at)
            assert "b-1" not in {backend for _, backend in tally.answered_at[:before]}, "the standby tier served"
            await b[0].stop()                           # the preferred tier's only endpoint goes away
            failover = await wait_streak(tally, before, "b-1")
            await b[0].start(port)                      # back: its re-admission probe connects, it takes over
            back = await wait_streak(tally, failover + STREAK, "b-0")
            done.set()
            await load
            assert back > failover
            # Requests the stopped backend's aborted connections held are retried, on the standby tier.
            assert tally.failed == 0, tally.failures
            assert tally.ok > 3 * STREAK
        finally:
            done.set()
            if load is not None and not load.done():
                await asyncio.wait([load], timeout=WAIT)
            await stop_all(run, b)
    asyncio.run(main())


def test_update_endpoints_in_an_embedded_proxy_keeps_and_closes_pooled_connections() -> None:
    """Proxy.update_endpoints (what a worker runs per update), in this process: a kept endpoint's idle pooled
    connection serves the next request; a removed endpoint's idle one is closed at once; a compacted set (no
    longer extending the slots) rebuilds the cluster and keeps its endpoints' state. In a debug build the
    teardown checks that no connection object outlived the test."""
    from fastmesh.config.schema import Endpoint
    from fastmesh.proxy import Proxy

    async def get(client: httpx.AsyncClient, web: int) -> str:
        r = await client.get(f"http://127.0.0.1:{web}/")
        assert r.status_code == 200
        return r.headers["x-backend"]

    async def main() -> None:
        b = await start_http_backends(3, "b")
        web = free_ports(1)[0]
        toml = (f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{web}"\nprotocol = "http"\ncluster = "c"\n'
                f'[clusters.c]\nendpoints = ["{b[0].address}", "{b[1].address}"]\n')
        ep = [Endpoint("127.0.0.1", x.port) for x in b]
        try:
            async with Proxy.from_toml(toml) as proxy, httpx.AsyncClient() as client:
                assert {await get(client, web) for _ in range(4)} == {"b-0", "b-1"}
                assert b[0].active == 1 and b[1].active == 1            # one pooled connection each
                changes = await proxy.update_endpoints({"c": ([ep[1], ep[2]], (0,))})   # b0 out, b2 in
                assert changes["clusters_updated"] == ["c"] and changes["clusters"] == []
                for _ in range(50):
                    if b[0].active == 0:
                        break
                    await asyncio.sleep(0.02)
                assert b[0].active == 0                                 # its idle connection closed
                connections = b[1].connections
                assert {await get(client, web) for _ in range(6)} == {"b-1", "b-2"}
                assert b[1].connections == connections                  # the kept one's connection reused
                cluster = proxy._clusters["c"]
                assert cluster.slots == 3 and cluster.live_count == 2
                # Compacted slots: a new cluster, the endpoints' state carried over.
                cluster.set_health(2, False)
                await proxy.update_endpoints({"c": ([ep[2], ep[1]], ())})
                rebuilt = proxy._clusters["c"]
                assert rebuilt is not cluster and rebuilt.slots == 2
                assert {e["address"]: e["healthy"] for e in rebuilt.endpoints()} == {b[2].address: False,
                                                                                     b[1].address: True}
                assert {await get(client, web) for _ in range(4)} == {"b-1"}
        finally:
            for x in b:
                await x.stop()
    asyncio.run(main())
