"""Hot reload of a real `fastmesh run` (2 workers) under keep-alive load: 10 reloads, alternating SIGHUP and
POST /reload, change routes, endpoints and listeners, plus one invalid config; no request fails, new routes reach
their new backend, listeners open and close, counters never go backwards and /metrics counts 10 ok and 1 failed."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh._testbase.configs import http_listener, process_keys
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun

pytestmark = pytest.mark.timeout(180)

WAIT = 15.0             # seconds any one expected event may take
CLIENTS = 8             # keep-alive clients during the reloads
PAUSE = 0.3             # seconds between reloads (10 reloads: the load runs about 4 s)


def config(i: int, web: int, side: int, admin: int, b: list[HttpBackend]) -> str:
    """Version i: /v goes to a pair of backends that moves with i, /new{i} (a new route each time) to one
    backend, and the tcp listener "side" exists in even versions only."""
    a, c = b[i % 4], b[(i + 1) % 4]
    text = process_keys(admin) + http_listener(web) + f"""
cluster = "default"
[[listeners.routes]]
path_prefix = "/v"
cluster = "versioned"
[[listeners.routes]]
path_prefix = "/new{i}"
cluster = "fresh"
"""
    if i % 2 == 0:
        text += f'[[listeners]]\nname = "side"\nlisten = "127.0.0.1:{side}"\ncluster = "default"\n'
    text += f"""
[clusters.default]
endpoints = ["{b[0].address}"{f', "{b[1].address}"' if i % 3 == 0 else ""}]
[clusters.versioned]
endpoints = ["{a.address}", "{c.address}"]
[clusters.fresh]
endpoints = ["{b[i % 4].address}"]
"""
    return text


class Running(AsyncRun):
    """The `fastmesh run` this test started (its log in a file); stop() ends it and any worker left, by pid."""

    def __init__(self, tmp: Path, text: str, admin: int) -> None:
        super().__init__(tmp, text, WAIT)
        self.admin = admin

    async def start(self, ready: str = r"ready: 2 worker\(s\) serving") -> None:
        await super().start(ready)


def metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except ConnectionRefusedError:
        return False


def test_reloads_under_load_across_workers(tmp_path: Path) -> None:
    async def main() -> None:
        backends = [await HttpBackend(f"b{i}").start() for i in range(4)]
        web, side, admin = free_ports(3)
        fm = Running(tmp_path, config(0, web, side, admin, backends), admin)
        try:
            await fm.start()
            await scenario(fm, backends, web, side, admin)
        finally:
            await fm.stop()
            for b in backends:
                await b.stop()

    asyncio.run(main())


async def scenario(fm: Running, backends: list[HttpBackend], web: int, side: int, admin: int) -> None:
    stop = asyncio.Event()
    done = {"ok": 0}
    failed: list[Any] = []

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=10) as http:
            while not stop.is_set():
                path = "/v/x" if n % 2 else "/plain"
                try:
                    resp = await http.get(path)
                except httpx.HTTPError as exc:
                    failed.append((path, repr(exc)))
                    continue
                if resp.status_code == 200:
                    done["ok"] += 1
                else:
                    failed.append((path, resp.status_code, resp.headers.get("fastmesh-error")))

    adm = httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=WAIT)
    probe = httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=10)
    clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    latencies: dict[str, list[float]] = {"SIGHUP": [], "POST": []}
    began = time.monotonic()
    try:
        await asyncio.sleep(PAUSE)
        scraped = (await adm.get("/metrics")).text
        for i in range(1, 11):
            text = config(i, web, side, admin, backends)
            fm.config.write_text(text)
            if i % 2:
                t0 = time.monotonic()
                assert fm.proc is not None
                fm.proc.send_signal(signal.SIGHUP)
                (m,) = (await fm.wait_log(r"config reloaded \(SIGHUP\) in ([\d.]+) ms: applied by 2 worker",
                                          (i + 1) // 2))[-1:]
                latencies["SIGHUP"].append(float(m[1]))
                assert time.monotonic() - t0 < WAIT
            else:
                resp = await adm.post("/reload")
                body = resp.json()
                assert resp.status_code == 200, body
                assert body["workers"] == {"w0": "applied", "w1": "applied"}
                assert body["changes"]["listeners_added"] == ["side"], body
                latencies["POST"].append(body["took_ms"])
            # The new route reaches its backend at once (and a keep-alive connection sees it too).
            resp = await probe.get(f"/new{i}/x")
            assert resp.status_code == 200 and resp.headers["x-backend"] == f"b{i % 4}", resp.headers
            assert accepts(side) == (i % 2 == 0), f"listener side after version {i}"
            # Counters of listeners and clusters that still exist never go backwards.
            now = (await adm.get("/metrics")).text
            for name, labels in (("fastmesh_downstream_connections_total", 'listener="web"'),
                                 ("fastmesh_requests_total", 'listener="web",cluster="default",code_class="2xx"'),
                                 ("fastmesh_requests_total", 'listener="web",cluster="versioned",code_class="2xx"')):
                assert metric(now, name, labels) >= metric(scraped, name, labels), (i, name, labels)
            scraped = now
            if i == 5:
                fm.config.write_text(text.replace('path_prefix = "/v"', 'path_prefx = "/v"'))
                resp = await adm.post("/reload")
                body = resp.json()
                assert resp.status_code == 400, body
                assert any("path_prefx: unknown key" in e for e in body["errors"]), body
                assert "listeners[0].routes[0].path_prefx: unknown key" in fm.log()
                assert (await probe.get("/new5/x")).headers["x-backend"] == "b1"     # the old config runs on
            await asyncio.sleep(PAUSE)
        stop.set()
        await asyncio.gather(*clients)
        elapsed = time.monotonic() - began
        final = (await adm.get("/metrics")).text
        shown = (await adm.get("/config")).json()
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await adm.aclose()
        await probe.aclose()
    assert failed == [], failed[:10]
    assert done["ok"] > 200, done
    assert metric(final, "fastmesh_config_reloads_total", 'result="ok"') == 10
    assert metric(final, "fastmesh_config_reloads_total", 'result="failed"') == 1
    assert [lst["name"] for lst in shown["listeners"]] == ["web", "side"]
    assert shown["listeners"][0]["routes"][1]["path_prefix"] == "/new10"
    # Version 10: /v goes to b2 and b3; the default cluster to b0 and b1 (10 % 3 != 0: b0 only).
    before = [b.requests for b in backends]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}") as http:
        for _ in range(8):
            assert (await http.get("/v/y")).status_code == 200
    grew = [b.requests - n for b, n in zip(backends, before)]
    assert grew[0] == grew[1] == 0 and grew[2] + grew[3] == 8, grew
    every = latencies["SIGHUP"] + latencies["POST"]
    print(f"\nreload-live: {done['ok']} requests by {CLIENTS} keep-alive clients in {elapsed:.1f}s, "
          f"{len(failed)} failed; "
          f"10 reloads + 1 invalid; reload latency median {statistics.median(every):.1f} ms, max {max(every):.1f} ms "
          f"(SIGHUP {', '.join(f'{x:.1f}' for x in latencies['SIGHUP'])}; "
          f"POST {', '.join(f'{x:.1f}' for x in latencies['POST'])})")


def test_worker_that_does_not_answer_is_reported_and_replaced(tmp_path: Path) -> None:
    """A stopped (hung) worker: POST /reload answers 504 naming it once the other has applied the config, and the
    supervisor replaces it with a worker that runs the new config."""
    async def main() -> None:
        backends = [await HttpBackend(f"b{i}").start() for i in range(4)]
        web, side, admin = free_ports(3)
        fm = Running(tmp_path, config(0, web, side, admin, backends), admin)
        hung = None
        try:
            await fm.start()
            (m,) = await fm.wait_log(r"w1 started \(pid (\d+)\)")
            hung = int(m[1])
            os.kill(hung, signal.SIGSTOP)
            fm.config.write_text(config(1, web, side, admin, backends))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=30) as adm:
                resp = await adm.post("/reload")
                body = resp.json()
                assert resp.status_code == 504, body
                assert body["failed_workers"] == ["w1"] and body["workers"]["w0"] == "applied", body
                assert "w1 did not apply the new config (no answer in time): restarting" in body["message"]
                os.kill(hung, signal.SIGCONT)
                await fm.wait_log(rf"w1 \(pid {hung}\) stopped to be replaced")
                await fm.wait_log(r"w1 \(pid \d+\) ready", 2)
                final = (await adm.get("/metrics")).text
            assert metric(final, "fastmesh_config_reloads_total", 'result="failed"') == 1
            assert re.search(r"^fastmesh_worker_restarts_total 0$", final, re.MULTILINE)   # replaced, not crashed
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}") as http:
                for _ in range(8):              # new connections: both workers, the new config in each
                    resp = await http.get("/new1/x", headers={"connection": "close"})
                    assert resp.status_code == 200 and resp.headers["x-backend"] == "b1"
        finally:
            if hung is not None:
                try:
                    os.kill(hung, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            await fm.stop()
            for b in backends:
                await b.stop()

    asyncio.run(main())
