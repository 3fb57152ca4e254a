"""Naming end to end: `fastmesh run` sends routes' logical names to clusters through the naming table, with real
backends and real client connections on 127.0.0.1: a canary split holds its weights over 10,000 requests, the
fallback takes over while the primary cluster's endpoints are all down, a table rewritten in a watched file re-routes
every worker without a reload or a failed request, an override field steers a trusted listener only, and two
instances watching one etcd key converge on a new table within a second."""
from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path

import pytest

from fastmesh._testbase.admin import admin_json
from fastmesh._testbase.chaos import Client, Tally, run_load
from fastmesh._testbase.configs import USERS_ROUTE, http_listener, process_keys
from fastmesh._testbase.discovery_servers import Etcd, missing
from fastmesh._testbase.http_backend import HttpBackend, start_http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun, replace_file

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0                 # seconds any one expected change may take


def config(web: int, admin: int, backends: list[HttpBackend], naming: str, workers: int = 2,
           extra: str = "", clusters: tuple[str, ...] = ("v1", "v2", "legacy")) -> str:
    tables = "\n".join(f'[clusters.{name}]\nendpoints = ["{b.address}"]\n{extra if name == "v1" else ""}'
                       for name, b in zip(clusters, backends))
    return process_keys(admin, workers) + http_listener(web) + USERS_ROUTE + f"""{tables}
[naming]
{naming}
"""


async def count_backends(port: int, requests: int, clients: int = 4, headers: dict[str, str] | None = None
                         ) -> Tally:
    """`requests` GETs over `clients` keep-alive connections, back to back; what answered them."""
    tally = Tally()

    async def one(n: int) -> None:
        client = Client("127.0.0.1", port)
        try:
            for _ in range(n):
                tally.sent += 1
                t0 = time.monotonic()
                tally.record(await client.get("/", headers), time.monotonic() - t0)
        finally:
            client.close()
    await asyncio.gather(*(one(requests // clients) for _ in range(clients)))
    return tally


async def wait_answers_from(port: int, name: str, headers: dict[str, str] | None = None) -> float:
    """Poll until 20 answers in a row come from backend `name`; the monotonic time the first of them was sent."""
    deadline = time.monotonic() + WAIT
    client = Client("127.0.0.1", port)
    try:
        streak, since = 0, 0.0
        while streak < 20:
            assert time.monotonic() < deadline, f"backend {name} never took over"
            sent = time.monotonic()
            got = (await client.get("/", headers)).header("x-backend")
            if got == name:
                since = since if streak else sent
                streak += 1
            else:
                streak = 0
            await asyncio.sleep(0.002)
        return since
    finally:
        client.close()


def test_canary_split_holds_its_weights_over_10000_requests(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        web, admin = free_ports(2)
        run = AsyncRun(tmp_path, config(web, admin, b, 'rules = ["/svc/users => 0.9 * /cluster/v1 & '
                                                       '0.1 * /cluster/v2 | /cluster/legacy"]'))
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            tally = await count_backends(web, 10_000, clients=8)
            assert tally.failed == 0, tally.failures
            share = {name: tally.by_backend[name] / 10_000 for name in ("b-0", "b-1", "b-2")}
            print(f"naming: canary split over 10,000 requests: v1 {share['b-0']:.4f}, v2 {share['b-1']:.4f}, "
                  f"legacy {share['b-2']:.4f}")
            assert abs(share["b-0"] - 0.9) <= 0.03 and abs(share["b-1"] - 0.1) <= 0.03 and share["b-2"] == 0
            view = await admin_json(admin, "/naming")
            shares = view["services"]["users"]["shares"]
            assert shares == {"v1": pytest.approx(0.9, abs=0.02), "v2": pytest.approx(0.1, abs=0.02)}
            panel = (await admin_json(admin, "/dashboard/data"))["naming"]
            assert panel["rules"] == view["rules"] and panel["services"]["users"]["shares"] == shares
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


def test_fallback_takes_over_while_the_primary_cluster_is_down_and_gives_back_when_it_returns(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        web, admin = free_ports(2)
        checks = ('health_check = { type = "tcp", interval = "100ms", timeout = "100ms", unhealthy = 1, '
                  'healthy = 1, jitter = "0%" }')
        run = AsyncRun(tmp_path, config(web, admin, b, 'rules = ["/svc/users => /cluster/v1 | /cluster/legacy"]',
                                        extra=checks, clusters=("v1", "legacy")))
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            first = await count_backends(web, 200)
            assert first.failed == 0 and set(first.by_backend) == {"b-0"}, first
            port = b[0].port
            await b[0].stop()                                  # every endpoint of v1 is down
            await wait_answers_from(web, "b-1")
            await asyncio.sleep(1.0)        # ten check intervals: every worker has found v1 down by now
            during = await count_backends(web, 400)
            assert during.failed == 0 and set(during.by_backend) == {"b-1"}, (during.failures, during.by_backend)
            view = await admin_json(admin, "/naming")
            assert view["services"]["users"]["cluster"] == "legacy"
            assert any("cluster v1 has no endpoint up: skipped" in s for s in view["services"]["users"]["steps"])
            explained = await admin_json(admin, f"/explain?host=127.0.0.1:{web}&path=/")
            assert explained["cluster"]["name"] == "legacy" and "fallback" in "\n".join(explained["naming"]["steps"])
            await HttpBackend("b-0").start(port)             # v1 is back: it takes the traffic again
            await wait_answers_from(web, "b-0")
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


def test_a_table_rewritten_in_a_watched_file_reroutes_every_worker_without_a_reload_or_a_lost_request(
        tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        table = tmp_path / "naming.dtab"
        table.write_text("# users go to v1\n/svc/users => /cluster/v1\n")
        web, admin = free_ports(2)
        run = AsyncRun(tmp_path, config(web, admin, b, 'source = { kind = "file", path = "naming.dtab" }'))
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            await wait_answers_from(web, "b-0")
            tally = Tally()
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=4, seconds=4.0, tally=tally))
            await asyncio.sleep(1.0)
            replace_file(table, "/svc => /cluster\n/svc/users => /cluster/v2 | /cluster/legacy\n")
            changed = time.monotonic()
            await run.wait_log(r"discovery update applied by 2 worker\(s\) .*naming table changed")
            took = await wait_answers_from(web, "b-1") - changed
            table.write_text("/svc/users => cluster/v1\n")   # not a table: the last good one stays
            deadline = time.monotonic() + WAIT
            while not (await admin_json(admin, "/naming"))["source"]["last_error"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await load
            assert tally.failed == 0, tally.failures
            late = {name for t, name in tally.answered_at if t > changed + took + 0.5}
            assert late == {"b-1"}, late
            view = await admin_json(admin, "/naming")
            assert view["rules"] == ["/svc => /cluster", "/svc/users => /cluster/v2 | /cluster/legacy"]
            assert "naming.dtab: rule 0 ('/svc/users => cluster/v1'): column 15: destination: expected a path " \
                   "starting with '/'" in view["source"]["last_error"]
            assert "config reloaded (" not in run.log()
            print(f"naming: file rewritten -> every answer from the new cluster after {took * 1000:.0f} ms; "
                  f"{tally.sent} requests, 0 failed")
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


def test_override_field_steers_on_a_trusted_listener_and_is_stripped_on_an_untrusted_one(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        edge, inner, admin = free_ports(3)
        text = f"""
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
{http_listener(edge, "edge")}{USERS_ROUTE}
{http_listener(inner, "inner")}trust_naming = true
{USERS_ROUTE}[clusters.v1]
endpoints = ["{b[0].address}"]
[clusters.v2]
endpoints = ["{b[1].address}"]
[naming]
rules = ["/svc/users => /cluster/v1"]
"""
        run = AsyncRun(tmp_path, text)
        await run.start(r"ready: 1 worker\(s\) serving")
        steer = {"fastmesh-naming": "/svc/users => /cluster/v2"}
        try:
            for port, backend, passed in ((edge, "b-0", False), (inner, "b-1", True)):
                client = Client("127.0.0.1", port)
                try:
                    for _ in range(20):
                        answer = await client.get("/echo", steer)
                        assert answer.header("x-backend") == backend
                        names = [k.lower() for k, _ in json.loads(answer.body)["headers"]]
                        assert ("fastmesh-naming" in names) is passed
                    assert (await client.get("/echo")).header("x-backend") == "b-0"
                finally:
                    client.close()
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


@pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
def test_two_instances_watching_one_etcd_key_converge_within_a_second(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        etcd = Etcd(tmp_path)
        etcd.start()
        etcd.put("/naming/users", "/svc/users => /cluster/v1")
        runs, webs = [], []
        try:
            for i in range(2):
                web, admin = free_ports(2)
                folder = tmp_path / f"fm{i}"
                folder.mkdir()
                run = AsyncRun(folder, config(web, admin, b, f'source = {{ kind = "etcd", endpoints = '
                                                             f'["{etcd.address}"], key = "/naming/users" }}'))
                await run.start(r"ready: 2 worker\(s\) serving")
                runs.append(run)
                webs.append(web)
            for web in webs:
                await wait_answers_from(web, "b-0")
            took = []
            for table, backend in (("/svc/users => /cluster/v2", "b-1"), ("/svc/users => /cluster/legacy", "b-2")):
                put = time.monotonic()
                etcd.put("/naming/users", table)
                seen = await asyncio.gather(*(wait_answers_from(web, backend) for web in webs))
                took.append(max(seen) - put)
            print("naming: two instances on one etcd key, a write until both route by it: "
                  + ", ".join(f"{t * 1000:.0f} ms" for t in took))
            assert max(took) < 1.0, took
            counts = collections.Counter(r.log().count("naming table: 1 rule(s) from etcd") for r in runs)
            assert counts == {3: 2}, counts
        finally:
            for run in runs:
                await run.stop()
            etcd.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


async def wait_status(port: int, status: int, error: str) -> None:
    """Poll until 20 answers in a row are `status` with `fastmesh-error: error`."""
    deadline = time.monotonic() + WAIT
    client = Client("127.0.0.1", port)
    try:
        streak = 0
        while streak < 20:
            assert time.monotonic() < deadline, f"never {status} {error}"
            got = await client.get("/")
            streak = streak + 1 if (got.status, got.header("fastmesh-error")) == (status, error) else 0
            await asyncio.sleep(0.002)
    finally:
        client.close()


@pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
def test_tilde_bang_and_parentheses_in_a_table_changed_live_in_etcd(tmp_path: Path) -> None:
    """`~` falls through to the next branch and the earlier rules, `!` stops there (503 no endpoints although an
    earlier rule names a live cluster), parentheses group a fallback inside a split: each table written to etcd
    while clients keep their connections, every answer as the table says."""
    async def main() -> None:
        b = await start_http_backends(3, "b")
        etcd = Etcd(tmp_path)
        etcd.start()
        etcd.put("/naming/users", "/svc/users => /cluster/legacy")
        web, admin = free_ports(2)
        run = AsyncRun(tmp_path, config(web, admin, b, f'source = {{ kind = "etcd", endpoints = '
                                                       f'["{etcd.address}"], key = "/naming/users" }}'))
        try:
            await run.start(r"ready: 2 worker\(s\) serving")
            await wait_answers_from(web, "b-2")
            etcd.put("/naming/users", "/svc/users => /cluster/legacy\n/svc/users => ~ | /cluster/v1")
            await wait_answers_from(web, "b-0")                   # ~ fell through to the next branch
            etcd.put("/naming/users", "/svc/users => /cluster/legacy; /svc/users => ~")
            await wait_answers_from(web, "b-2")                   # ...and to the earlier rule
            etcd.put("/naming/users", "/svc/users => /cluster/legacy; /svc/users => /cluster/gone | !")
            await wait_status(web, 503, "no endpoints")           # ! stopped before the earlier rule
            view = await admin_json(admin, "/naming")
            assert view["rules"] == ["/svc/users => /cluster/legacy", "/svc/users => /cluster/gone | !"], view
            etcd.put("/naming/users", "/svc/users => 0.5 * (/cluster/gone | /cluster/v2) & 0.5 * /cluster/v1 | !")
            deadline = time.monotonic() + WAIT
            while True:
                tally = await count_backends(web, 400)
                if (set(tally.by_backend) == {"b-0", "b-1"} and not tally.failed) or time.monotonic() > deadline:
                    break                                 # (the first load may meet the `!` table still)
            assert tally.failed == 0, tally.failures
            assert set(tally.by_backend) == {"b-0", "b-1"}, tally.by_backend
            share = tally.by_backend["b-1"] / 400
            assert 0.35 < share < 0.65, tally.by_backend          # gone's half went to v2 inside the parentheses
            assert "config reloaded (" not in run.log()
        finally:
            await run.stop()
            etcd.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())
