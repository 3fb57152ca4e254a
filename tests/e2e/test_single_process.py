"""`workers = 0`, end to end: `fastmesh run` serves from the supervisor process itself (no worker is started), its
admin server answers /metrics and /clusters, SIGHUP swaps in a new config and keeps the running one when the file
is bad, discovery updates reach the data plane, and SIGTERM lets a request in flight finish before it exits 0."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fastmesh._testbase.http_backend import http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import env, fastmesh_argv, replace_file, running

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
READY = r"ready: serving .* in this process"


def config(web: int, admin: int, cluster: str, workers: str = "0") -> str:
    return f"""
workers = {workers}
drain_timeout = "5s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "users"
[clusters.users]
{cluster}
"""


def listed(*addresses: str) -> str:
    return "endpoints = [" + ", ".join(f'"{a}"' for a in addresses) + "]"


async def admin_get(admin: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{admin}{path}", timeout=5)


async def backend_of(web: int, path: str = "/") -> str:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{web}{path}", timeout=5)
    assert resp.status_code == 200, (resp.status_code, resp.headers)
    return resp.headers["x-backend"]


def children(pid: int) -> list[str]:
    """The pids of pid's child processes (Linux: /proc/PID/task/*/children)."""
    kids: list[str] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += f.read().split()
    return kids


def test_one_process_serves_traffic_and_the_admin_endpoints(tmp_path: Path) -> None:
    async def main() -> None:
        web, admin = free_ports(2)
        async with (http_backends(2, "b") as b,
                    running(tmp_path, config(web, admin, listed(b[0].address, b[1].address)), READY, wait=WAIT) as run):
            assert run.proc is not None
            seen = {await backend_of(web) for _ in range(6)}
            assert seen == {"b-0", "b-1"}
            # No worker: the supervisor itself serves, and has no child process.
            assert children(run.proc.pid) == []
            assert "started (pid" not in run.log()
            stats = (await admin_get(admin, "/stats")).json()
            assert [int(w["pid"]) for w in stats["workers"].values()] == [run.proc.pid]
            assert stats["single_process"] is True
            # `fastmesh stat` says so plainly rather than counting the supervisor as a worker.
            stat = await asyncio.to_thread(subprocess.run, fastmesh_argv("stat", "--admin", f"127.0.0.1:{admin}",
                                                                         "--interval", "0.3"),
                                           env=env(), capture_output=True, text=True, timeout=60)
            assert stat.returncode == 0, stat.stderr
            assert "one process serves (workers = 0); event-loop lag" in stat.stdout, stat.stdout
            assert "worker(s) serving" not in stat.stdout
            metrics = (await admin_get(admin, "/metrics")).text
            counted = [line for line in metrics.splitlines()
                       if line.startswith("fastmesh_requests_total{") and 'listener="web"' in line]
            assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= 6, counted
            # workers = 0: no worker process is configured or serving (the supervisor serves; /ready says so).
            gauges = dict(line.split(" ", 1) for line in metrics.splitlines() if line.startswith("fastmesh_workers"))
            assert (gauges["fastmesh_workers"], gauges["fastmesh_workers_ready"]) == ("0", "0"), gauges
            assert "private block" not in run.log() and "not shared" not in run.log()
            clusters = (await admin_get(admin, "/clusters")).json()
            assert {e["address"]: e["state"] for e in clusters["users"]["endpoints"]} == \
                {b[0].address: "up", b[1].address: "up"}
            assert (await admin_get(admin, "/ready")).status_code == 200
    asyncio.run(main())


def test_sighup_swaps_the_config_and_keeps_the_running_one_when_the_file_is_bad(tmp_path: Path) -> None:
    async def main() -> None:
        web, admin = free_ports(2)
        async with (http_backends(2, "b") as b,
                    running(tmp_path, config(web, admin, listed(b[0].address)), READY, wait=WAIT) as run):
            assert run.proc is not None
            assert {await backend_of(web) for _ in range(3)} == {"b-0"}
            run.config.write_text(config(web, admin, listed(b[1].address)))
            run.proc.send_signal(signal.SIGHUP)
            await run.wait_log(r"config reloaded \(SIGHUP\) in [\d.]+ ms: applied by 1 worker")
            assert {await backend_of(web) for _ in range(3)} == {"b-1"}
            run.config.write_text(config(web, admin, 'endpoints = "not a list"'))
            run.proc.send_signal(signal.SIGHUP)
            await run.wait_log(r"reload \(SIGHUP\) failed: the config is not valid; the running config is unchanged")
            assert "fastmesh.toml: clusters.users.endpoints" in run.log()      # names the file and the key
            assert {await backend_of(web) for _ in range(3)} == {"b-1"}
            assert run.proc.returncode is None
            reloads = (await admin_get(admin, "/metrics")).text
            assert 'fastmesh_config_reloads_total{result="ok"} 1' in reloads
            assert 'fastmesh_config_reloads_total{result="failed"} 1' in reloads
    asyncio.run(main())


def test_discovery_updates_reach_the_data_plane(tmp_path: Path) -> None:
    async def main() -> None:
        web, admin = free_ports(2)
        eps = tmp_path / "users.json"
        async with http_backends(2, "b") as b:
            replace_file(eps, json.dumps([{"address": b[0].address}]))
            async with running(tmp_path, config(web, admin, 'discovery = { kind = "file", path = "users.json" }'),
                               READY, wait=WAIT) as run:
                assert {await backend_of(web) for _ in range(3)} == {"b-0"}
                replace_file(eps, json.dumps([{"address": b[1].address}]))
                await run.wait_log(r"discovery update applied by 1 worker\(s\)")
                assert {await backend_of(web) for _ in range(3)} == {"b-1"}
                clusters = (await admin_get(admin, "/clusters")).json()
                assert [e["address"] for e in clusters["users"]["endpoints"]] == [b[1].address]
                assert "config reloaded" not in run.log()       # applied in place, as workers do
    asyncio.run(main())


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    async def main() -> None:
        web, admin = free_ports(2)
        async with (http_backends(1, "b") as b,
                    running(tmp_path, config(web, admin, listed(b[0].address)), READY, wait=WAIT) as run):
            assert run.proc is not None
            slow = asyncio.create_task(backend_of(web, "/slow?ms=1500"))
            deadline = time.monotonic() + WAIT
            while not b[0].received:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            run.proc.send_signal(signal.SIGTERM)
            await run.wait_log(r"received SIGTERM")
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.ConnectError):         # no longer accepting
                await backend_of(web)
            assert await slow == "b-0"                      # ...but the request under way is answered
            assert await asyncio.wait_for(run.proc.wait(), WAIT) == 0
            assert "stopped without finishing the drain" not in run.log()
    asyncio.run(main())


@pytest.mark.parametrize(("workers", "code"), [("0", 0), ("-1", 1)])
def test_check_accepts_zero_workers_and_names_the_key_of_a_negative_count(tmp_path: Path, workers: str,
                                                                          code: int) -> None:
    path = tmp_path / "single.toml"
    path.write_text(config(1, 2, listed("127.0.0.1:3"), workers))
    done = subprocess.run(fastmesh_argv("check", str(path)), env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    if code == 0:
        assert "workers = 0" in done.stdout
    else:
        assert f'{path}: workers: expected a whole number >= 0 or "auto", got -1' in done.stderr
