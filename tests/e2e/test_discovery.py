"""Discovery end to end: `fastmesh run` with 2 workers learns endpoints from a file, etcd and DNS SRV (real
servers on loopback ports), applies changes under keep-alive load without a reload or a failed request, and
keeps the last good set while the server is down (killed mid-load)."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh._testbase.admin import admin_json
from fastmesh._testbase.chaos import Tally, run_load
from fastmesh._testbase.configs import http_listener, process_keys
from fastmesh._testbase.discovery_servers import Dnsmasq, Etcd, missing
from fastmesh._testbase.http_backend import HttpBackend, start_http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun, replace_file

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0                 # seconds any one expected change may take
CLIENTS = 4                 # keep-alive clients of the load


def config(web: int, admin: int, discovery: str) -> str:
    return process_keys(admin) + http_listener(web) + f"""
cluster = "users"
[clusters.users]
discovery = {discovery}
"""


async def wait_endpoints(admin: int, wanted: set[str]) -> dict[str, Any]:
    """Wait until /clusters lists exactly `wanted` for cluster users; its entry."""
    deadline = time.monotonic() + WAIT
    while True:
        users = (await admin_json(admin, "/clusters"))["users"]
        if {e["address"] for e in users["endpoints"]} == wanted:
            return dict(users)
        assert time.monotonic() < deadline, f"/clusters: {users}"
        await asyncio.sleep(0.05)


async def wait_traffic(tally: Tally, since: float, names: set[str]) -> None:
    """Wait until every backend in names has answered after `since` (monotonic)."""
    deadline = time.monotonic() + WAIT
    while not names <= {b for t, b in tally.answered_at if t > since}:
        assert time.monotonic() < deadline, f"answers since: {sorted({b for t, b in tally.answered_at if t > since})}"
        await asyncio.sleep(0.05)


def backends_since(tally: Tally, since: float) -> set[str]:
    return {b for t, b in tally.answered_at if t > since}


async def started(tmp: Path, discovery: str) -> tuple[AsyncRun, int, int]:
    web, admin = free_ports(2)
    run = AsyncRun(tmp, config(web, admin, discovery), WAIT)
    await run.start(r"ready: 2 worker\(s\) serving")
    return run, web, admin


async def stop_all(run: AsyncRun, backends: list[HttpBackend]) -> None:
    await run.stop()
    for b in backends:
        await b.stop()


def test_file_changes_reach_every_worker_under_load_without_a_failed_request(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        eps = tmp_path / "users.json"
        eps.write_text(json.dumps([{"address": b[0].address}]))
        run, web, admin = await started(tmp_path, '{ kind = "file", path = "users.json" }')
        try:
            await wait_endpoints(admin, {b[0].address})
            tally = Tally()
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=CLIENTS, seconds=4.0, tally=tally))
            await asyncio.sleep(1.0)
            replace_file(eps, json.dumps([{"address": b[1].address}, {"address": b[2].address, "weight": 2}]))
            users = await wait_endpoints(admin, {b[1].address, b[2].address})
            switched = time.monotonic()
            await run.wait_log(r"discovery update applied by 2 worker\(s\)")
            await wait_traffic(tally, switched, {"b-1", "b-2"})
            eps.write_text("{broken")
            deadline = time.monotonic() + WAIT
            while not (await admin_json(admin, "/clusters"))["users"]["discovery"]["errors"].get("parse"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await load
            assert tally.failed == 0, tally.failures
            assert "b-0" not in backends_since(tally, switched + 0.5)
            assert tally.by_backend["b-1"] and tally.by_backend["b-2"]
            state = (await admin_json(admin, "/clusters"))["users"]["discovery"]
            assert state["kind"] == "file" and state["endpoints"] == 2 and "invalid JSON" in state["last_error"]
            assert users["discovery"]["last_update"] > 0
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{admin}/metrics")).text
            # The write above is not atomic: inotify may show it half-written first, which fails to parse too.
            assert re.search(r'^fastmesh_discovery_errors_total\{cluster="users",kind="file",error="parse"\} [12]$',
                             metrics, re.MULTILINE), metrics
            assert re.search(r'^fastmesh_discovery_endpoints\{cluster="users",kind="file"\} 2$', metrics, re.MULTILINE)
            assert "config reloaded (" not in run.log()          # no reload of the file took place
        finally:
            await stop_all(run, b)
    asyncio.run(main())


@pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
def test_etcd_killed_mid_load_keeps_the_last_good_set_and_the_watch_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        etcd = Etcd(tmp_path)
        etcd.start()
        etcd.put("/services/users/b0", {"address": b[0].address})
        etcd.put("/services/users/b1", {"address": b[1].address, "weight": 2})
        run, web, admin = await started(
            tmp_path, f'{{ kind = "etcd", endpoints = ["{etcd.address}"], prefix = "/services/users/" }}')
        try:
            await wait_endpoints(admin, {b[0].address, b[1].address})
            tally = Tally()
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=CLIENTS, seconds=5.0, tally=tally))
            await asyncio.sleep(1.0)
            etcd.stop(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.sleep(1.5)
            assert backends_since(tally, killed) == {"b-0", "b-1"}       # the last good set, both workers
            etcd.start()
            etcd.put("/services/users/b2", {"address": b[2].address})
            await wait_endpoints(admin, {b[0].address, b[1].address, b[2].address})
            back = time.monotonic()
            await wait_traffic(tally, back, {"b-2"})
            await load
            assert tally.failed == 0, tally.failures
            state = (await admin_json(admin, "/clusters"))["users"]["discovery"]
            assert state["watch_restarts"] >= 1 and state["errors"].get("connect", 0) >= 1, state
        finally:
            await stop_all(run, b)
            etcd.stop()
    asyncio.run(main())


@pytest.mark.skipif(missing("dnsmasq") is not None, reason=str(missing("dnsmasq")))
def test_dns_srv_server_killed_mid_load_keeps_the_last_good_set(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        dns = Dnsmasq(tmp_path)
        dns.set_hosts({"users.svc.test": ["127.0.0.1"]})
        dns.set_srv("_users._tcp.svc.test", [("users.svc.test", b[0].port, 0, 1), ("users.svc.test", b[1].port, 0, 1),
                                             ("users.svc.test", b[2].port, 1, 1)])
        dns.start()
        run, web, admin = await started(
            tmp_path, f'{{ kind = "dns_srv", name = "_users._tcp.svc.test", resolvers = ["127.0.0.1:{dns.port}"], '
                      f'min_ttl = "200ms", timeout = "300ms" }}')
        try:
            # Both tiers are endpoints; the priority 1 one stands by while priority 0 has an eligible endpoint.
            users = await wait_endpoints(admin, {b[0].address, b[1].address, b[2].address})
            assert users["discovery"]["standby"] == [f"users.svc.test:{b[2].port} (priority 1)"]
            assert {e["address"]: e["state"] for e in users["endpoints"]} == {
                b[0].address: "up", b[1].address: "up", b[2].address: "standby"}
            tally = Tally()
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=CLIENTS, seconds=4.0, tally=tally))
            await asyncio.sleep(1.0)
            dns.proc.kill() if dns.proc is not None else None
            killed = time.monotonic()
            await load
            assert tally.failed == 0, tally.failures
            assert backends_since(tally, killed + 1.0) == {"b-0", "b-1"}
            state = (await admin_json(admin, "/clusters"))["users"]["discovery"]
            assert sum(state["errors"].values()) >= 2 and state["endpoints"] == 3, state
            assert {e["address"] for e in (await admin_json(admin, "/clusters"))["users"]["endpoints"]} == {
                b[0].address, b[1].address, b[2].address}
        finally:
            await stop_all(run, b)
            dns.stop()
    asyncio.run(main())
