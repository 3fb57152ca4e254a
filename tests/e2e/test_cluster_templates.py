"""Clusters made from [cluster_templates] end to end: `fastmesh run` with real backends, a real etcd and real client
connections on 127.0.0.1. A name the naming table reaches gets a cluster whose discovery the template fills in; a
name written under the template's etcd prefix gets one without any rule naming it; the number made is bounded and
a made cluster nothing names any more is removed after idle_timeout; a file template makes a cluster from a file."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fastmesh._testbase.admin import admin_json, wait_for
from fastmesh._testbase.chaos import Tally, run_load
from fastmesh._testbase.configs import USERS_ROUTE, http_listener, process_keys
from fastmesh._testbase.discovery_servers import Etcd, missing
from fastmesh._testbase.http_backend import HttpBackend, start_http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun, replace_file
from tests.e2e.test_naming import wait_answers_from

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0


def config(web: int, admin: int, naming: str, template: str) -> str:
    return process_keys(admin) + http_listener(web) + USERS_ROUTE + f"""[clusters.fixed]
endpoints = ["127.0.0.1:1"]
[naming]
{naming}
{template}
"""


def endpoint(b: HttpBackend) -> dict[str, Any]:
    return {"address": b.address, "weight": 1}


@pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
def test_etcd_template_makes_named_and_listed_clusters_bounded_and_removes_idle_ones(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(3, "b")
        etcd = Etcd(tmp_path)
        etcd.start()
        etcd.put("/naming/table", "/svc/users => /cluster/users-v1")
        etcd.put("/services/users-v1/a", endpoint(b[0]))
        web, admin = free_ports(2)
        template = f"""[cluster_templates."users-*"]
discovery = {{ kind = "etcd", endpoints = ["{etcd.address}"], prefix = "/services/{{name}}/" }}
balancer = "least_request"
max_clusters = 2
idle_timeout = "1s"
"""
        run = AsyncRun(tmp_path, config(web, admin, f'source = {{ kind = "etcd", endpoints = ["{etcd.address}"], '
                                                    f'key = "/naming/table" }}', template))
        try:
            await run.start(r"ready: 2 worker\(s\) serving")
            # Named by the table: made, its discovery filled in from the template, traffic flows to it.
            await wait_answers_from(web, "b-0")
            clusters = await admin_json(admin, "/clusters")
            assert clusters["users-v1"]["template"] == "users-*", clusters["users-v1"]
            assert clusters["users-v1"]["discovery"]["target"] == "/services/users-v1/"
            cfg = await admin_json(admin, "/config")
            assert cfg["clusters"]["users-v1"]["balancer"] == "least_request"
            # Written under the prefix, named by nothing: made all the same, so the table can send to it.
            etcd.put("/services/users-v2/a", endpoint(b[1]))

            async def made(name: str) -> Any:
                return name in await admin_json(admin, "/clusters")
            await wait_for("users-v2 made", lambda: made("users-v2"))
            etcd.put("/naming/table", "/svc/users => /cluster/users-v2")
            await wait_answers_from(web, "b-1")
            # Bounded: a third name waits while two are made.
            etcd.put("/services/users-v3/a", endpoint(b[2]))

            async def refused() -> Any:
                return (await admin_json(admin, "/naming"))["templates"]["users-*"]["refused"] == 1
            await wait_for("users-v3 refused", refused)
            assert "users-v3" not in await admin_json(admin, "/clusters")
            assert "template users-* has made max_clusters = 2 already" in run.log()
            # users-v1: no rule names it and its keys are gone: removed after idle_timeout, and users-v3 takes
            # its place.
            etcd.delete("/services/users-v1/a")
            removed_at = time.monotonic()

            async def swapped() -> Any:
                names = await admin_json(admin, "/clusters")
                return "users-v1" not in names and "users-v3" in names
            await wait_for("users-v1 removed and users-v3 made", swapped)
            assert time.monotonic() - removed_at >= 0.9
            view = await admin_json(admin, "/naming")
            assert view["templates"]["users-*"]["clusters"] == ["users-v2", "users-v3"], view["templates"]
            assert view["templates"]["users-*"]["removed"] == 1
            shown = (await admin_json(admin, "/dashboard/data"))["naming"]["templates"]["users-*"]
            assert shown["clusters"] == ["users-v2", "users-v3"] and shown["refused"] == 1, shown
            etcd.put("/naming/table", "/svc/users => /cluster/users-v3")
            await wait_answers_from(web, "b-2")
            assert "config reloaded (" not in run.log()
        finally:
            await run.stop()
            etcd.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


def test_file_template_makes_the_cluster_a_rule_names_from_its_file(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        (tmp_path / "eps").mkdir()
        (tmp_path / "eps" / "users-a.json").write_text(json.dumps([endpoint(b[0])]))
        web, admin = free_ports(2)
        template = """[cluster_templates."users-*"]
discovery = { kind = "file", path = "eps/{name}.json" }
"""
        run = AsyncRun(tmp_path, config(web, admin, 'rules = ["/svc/users => /cluster/users-a | /cluster/fixed"]',
                                        template))
        try:
            await run.start(r"ready: 2 worker\(s\) serving")
            await wait_answers_from(web, "b-0")
            clusters = await admin_json(admin, "/clusters")
            assert clusters["users-a"]["template"] == "users-*"
            (tmp_path / "eps" / "next.json").write_text(json.dumps([endpoint(b[1])]))
            (tmp_path / "eps" / "next.json").rename(tmp_path / "eps" / "users-a.json")
            await wait_answers_from(web, "b-1")
            explained = await admin_json(admin, "/naming")
            assert explained["services"]["users"]["cluster"] == "users-a", explained["services"]
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


def test_a_made_cluster_that_still_carries_traffic_is_not_removed_as_idle(tmp_path: Path) -> None:
    """users-a is made because the table names it; the table moves on, so nothing names it and (a file template)
    no source lists it, but requests a fastmesh-naming override steers there keep flowing: it stays, past several
    idle_timeouts, and goes idle_timeout after the last of them."""
    async def main() -> None:
        b = await start_http_backends(2, "b")
        (tmp_path / "eps").mkdir()
        (tmp_path / "eps" / "users-a.json").write_text(json.dumps([endpoint(b[1])]))
        table = tmp_path / "naming.dtab"
        table.write_text("/svc/users => /cluster/users-a\n")
        web, admin = free_ports(2)
        run = AsyncRun(tmp_path, process_keys(admin) + http_listener(web) + "trust_naming = true\n" + USERS_ROUTE + f"""
[clusters.home]
endpoints = ["{b[0].address}"]
[naming]
rules = ["/svc/users => /cluster/home"]
source = {{ kind = "file", path = "naming.dtab" }}
[cluster_templates."users-*"]
discovery = {{ kind = "file", path = "eps/{{name}}.json" }}
idle_timeout = "1s"
""")
        steered = Tally()
        done = asyncio.Event()
        load: asyncio.Task[Tally] | None = None
        try:
            await run.start(r"ready: 2 worker\(s\) serving")
            await wait_answers_from(web, "b-1")
            override = {"fastmesh-naming": "/svc/users => /cluster/users-a"}
            load = asyncio.create_task(run_load("127.0.0.1", web, clients=1, seconds=4 * WAIT, headers=override,
                                                tally=steered, pause=0.02, until=done))
            replace_file(table, "/svc/users => /cluster/home\n")
            await wait_answers_from(web, "b-0")             # the table no longer names users-a
            # Nothing names users-a now, nor lists it: only its traffic keeps it. Three idle_timeouts of it.
            watched_from = len(steered.answered_at)
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                assert "users-a" in await admin_json(admin, "/clusters"), "a made cluster carrying traffic was removed"
                await asyncio.sleep(0.1)
            assert {backend for _, backend in steered.answered_at[watched_from:]} == {"b-1"}
            assert len(steered.answered_at) - watched_from > 20
            assert steered.failed == 0, steered.failures
            done.set()
            await load
            stopped = time.monotonic()

            async def removed() -> Any:
                return "users-a" not in await admin_json(admin, "/clusters")
            await wait_for("users-a removed once its traffic stopped", removed)
            assert time.monotonic() - stopped >= 0.9
            assert "carried no traffic for" in run.log()
            assert (await admin_json(admin, "/naming"))["templates"]["users-*"]["removed"] == 1
        finally:
            done.set()
            if load is not None and not load.done():
                await asyncio.wait([load], timeout=WAIT)
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())
