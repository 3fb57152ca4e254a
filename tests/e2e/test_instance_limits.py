"""Circuit-breaker limits hold for the whole instance: `fastmesh run` with two workers against a slow backend.

Each test starts a real `fastmesh run` (two worker processes sharing the listener with SO_REUSEPORT) in front of
a ChaosBackend on 127.0.0.1, opens many client connections (the kernel spreads them over both workers) and sends
one request on each at once. Run with `-s` to see the measured numbers (`limits:` lines).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from fastmesh._testbase.chaos import ChaosBackend, Client
from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import AsyncRun

pytestmark = pytest.mark.timeout(90)

DELAY = 1.5         # seconds the backend holds each request: every request of a burst arrives while some are held


def report(what: str, **numbers: object) -> None:
    print(f"\nlimits: {what}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def config(backend: str, limits: str, port: int, admin: int, workers: int = 2) -> str:
    return f"""
workers = {workers}
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
protocol = "http"
listen = "127.0.0.1:{port}"
cluster = "api"
[clusters.api]
endpoints = ["{backend}"]
outlier = false
limits = {{ {limits} }}
"""


def admin_json(admin: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
        return json.loads(resp.read())


async def burst(port: int, n: int) -> tuple[list[tuple[int, str | None]], list[Client]]:
    """n connections opened first, then one GET on each at once: (status, fastmesh-error) per request."""
    clients = [Client("127.0.0.1", port, timeout=10.0) for _ in range(n)]
    await asyncio.gather(*(c._connection() for c in clients))
    answers = await asyncio.gather(*(c.get("/") for c in clients))
    return [(r.status, r.header("fastmesh-error")) for r in answers], clients


async def connections_per_worker(admin: int) -> list[int]:
    workers = await asyncio.to_thread(admin_json, admin, "/stats")
    return [int(w["connections"]) for w in workers["workers"].values()]


def test_max_requests_holds_for_the_instance(tmp_path: Path) -> None:
    """workers = 2, max_requests = 5, 20 requests at once against a backend holding each 1.5 s: at most 5 reach
    the backend (per worker it would be up to 10); the rest get 503 overloaded at once, and both workers served."""
    async def main() -> None:
        port, admin = free_port(), free_port()
        async with ChaosBackend("slow", delay=DELAY) as backend:
            run = AsyncRun(tmp_path, config(backend.address, "max_requests = 5", port, admin))
            await run.start()
            try:
                t0 = time.monotonic()
                answers, clients = await burst(port, 20)
                took = time.monotonic() - t0
                ok = sum(s == 200 for s, _ in answers)
                refused = sum(a == (503, "overloaded") for a in answers)
                spread = await connections_per_worker(admin)
                report("max_requests=5, 2 workers, 20 at once", admitted=ok, refused=refused,
                       backend_saw=backend.requests, per_worker_connections=spread, took=f"{took:.2f}s")
                assert ok + refused == 20, answers
                assert 1 <= ok <= 5 and backend.requests == ok
                assert len(spread) == 2 and min(spread) >= 1    # both workers took part of the burst
                # Nothing leaked: once the burst is over, 5 may go through again at once.
                again, more = await burst(port, 5)
                assert [s for s, _ in again] == [200] * 5, again
                for c in clients + more:
                    c.close()
            finally:
                await run.stop()

    asyncio.run(main())


def test_max_connections_and_no_queue_hold_for_the_instance(tmp_path: Path) -> None:
    """workers = 2, max_connections = 3, max_pending = 0 ("no queue"): of 12 requests at once, at most 3 get a
    connection (the backend sees at most 3), every other one is refused at once, none waits."""
    async def main() -> None:
        port, admin = free_port(), free_port()
        async with ChaosBackend("slow", delay=DELAY) as backend:
            run = AsyncRun(tmp_path, config(backend.address, "max_connections = 3, max_pending = 0", port, admin))
            await run.start()
            try:
                t0 = time.monotonic()
                clients = [Client("127.0.0.1", port, timeout=10.0) for _ in range(12)]
                await asyncio.gather(*(c._connection() for c in clients))
                started = time.monotonic()
                refused_at: list[float] = []

                async def one(c: Client) -> tuple[int, str | None]:
                    r = await c.get("/")
                    if r.status == 503:
                        refused_at.append(time.monotonic() - started)
                    return r.status, r.header("fastmesh-error")

                answers = await asyncio.gather(*(one(c) for c in clients))
                ok = sum(s == 200 for s, _ in answers)
                report("max_connections=3 max_pending=0, 2 workers, 12 at once", admitted=ok,
                       backend_connections=backend.connections, slowest_refusal=f"{max(refused_at):.3f}s",
                       took=f"{time.monotonic() - t0:.2f}s")
                assert 1 <= ok <= 3 and backend.connections <= 3, (answers, backend.connections)
                assert all(a == (503, "overloaded") for a in answers if a[0] != 200), answers
                assert max(refused_at) < DELAY          # refused at once, not after waiting for a connection
                for c in clients:
                    c.close()
            finally:
                await run.stop()

    asyncio.run(main())


def test_a_killed_worker_gives_its_slots_back(tmp_path: Path) -> None:
    """workers = 2, max_requests = 4: a worker is SIGKILLed while it holds requests in flight; once the supervisor
    has restarted it, the whole limit is free again (its slots did not leak)."""
    async def main() -> None:
        port, admin = free_port(), free_port()
        async with ChaosBackend("slow", delay=DELAY) as backend:
            run = AsyncRun(tmp_path, config(backend.address, "max_requests = 4", port, admin))
            await run.start()
            try:
                clients = [Client("127.0.0.1", port, timeout=10.0) for _ in range(8)]
                await asyncio.gather(*(c._connection() for c in clients))
                pending = [asyncio.ensure_future(c.get("/")) for c in clients]
                deadline = time.monotonic() + 10
                while backend.requests < 4:
                    assert time.monotonic() < deadline, "the burst never filled the limit"
                    await asyncio.sleep(0.01)
                pids = [int(p) for p in re.findall(r"w0 started \(pid (\d+)\)", run.log())]
                os.kill(pids[-1], signal.SIGKILL)
                await asyncio.gather(*pending, return_exceptions=True)
                await run.wait_log(r"w0 \(pid \d+\) ready", 2)
                before = backend.requests
                again, more = await burst(port, 4)
                report("worker killed holding slots", admitted_after_restart=sum(s == 200 for s, _ in again))
                assert [s for s, _ in again] == [200] * 4, again
                assert backend.requests == before + 4
                for c in clients + more:
                    c.close()
            finally:
                await run.stop()

    asyncio.run(main())


def test_a_reload_keeps_the_count_of_requests_under_way(tmp_path: Path) -> None:
    """workers = 2, max_requests = 4 with 4 requests held; a reload raises it to 6 (the cluster is rebuilt): the
    4 still under way count against the new limit, so of 6 more requests at once only 2 are admitted."""
    async def main() -> None:
        port, admin = free_port(), free_port()
        async with ChaosBackend("slow", delay=2 * DELAY) as backend:
            run = AsyncRun(tmp_path, config(backend.address, "max_requests = 4", port, admin))
            await run.start()
            try:
                held = [Client("127.0.0.1", port, timeout=10.0) for _ in range(4)]
                await asyncio.gather(*(c._connection() for c in held))
                under_way = [asyncio.ensure_future(c.get("/")) for c in held]
                deadline = time.monotonic() + 10
                while backend.requests < 4:
                    assert time.monotonic() < deadline, "the first requests never reached the backend"
                    await asyncio.sleep(0.01)
                run.config.write_text(config(backend.address, "max_requests = 6", port, admin))
                request = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
                answer = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request, timeout=10).read()))
                assert answer["result"] == "ok" and answer["changes"]["clusters_changed"] == ["api"], answer
                answers, more = await burst(port, 6)
                ok = sum(s == 200 for s, _ in answers)
                report("reload 4 -> 6 with 4 under way", admitted=ok)
                assert 1 <= ok <= 2 and backend.requests == 4 + ok, answers
                assert [r.status for r in await asyncio.gather(*under_way)] == [200] * 4
                for c in held + more:
                    c.close()
            finally:
                await run.stop()

    asyncio.run(main())
