"""Naming in /metrics of a real `fastmesh run` with 2 workers: resolutions per service by outcome and overrides by
result (counted in the workers' core, summed by the supervisor) equal the requests sent; the watched table's source
(last update, rules, errors by kind, watch restarts) and the cluster templates are there too. The listener sends
to its service without any route. Parsed with
prometheus_client's parser."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from fastmesh._testbase.chaos import Client
from fastmesh._testbase.configs import http_listener, process_keys
from fastmesh._testbase.http_backend import start_http_backends
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun
from tests.e2e.test_naming import wait_answers_from

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(admin: int) -> Samples:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{admin}/metrics", timeout=5)).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_prometheus(text) for s in f.samples}


async def send(port: int, n: int, headers: dict[str, str] | None = None) -> dict[int, int]:
    """n GETs on one keep-alive connection; answers by status."""
    client = Client("127.0.0.1", port)
    got: dict[int, int] = {}
    try:
        for _ in range(n):
            status = (await client.get("/", headers)).status
            got[status] = got.get(status, 0) + 1
    finally:
        client.close()
    return got


def resolutions(s: Samples, outcome: str) -> float:
    return s.get(("fastmesh_naming_resolutions_total", (("outcome", outcome), ("service", "users"))), 0)


def test_naming_series_count_resolutions_overrides_the_watched_source_and_templates(tmp_path: Path) -> None:
    async def main() -> None:
        b = await start_http_backends(2, "b")
        table = tmp_path / "naming.dtab"
        table.write_text("/svc/users => /cluster/v1\n")
        (tmp_path / "eps").mkdir()
        (tmp_path / "eps" / "made-a.json").write_text(json.dumps([{"address": b[1].address}]))
        web, admin = free_ports(2)
        run = AsyncRun(tmp_path, process_keys(admin) + http_listener(web) + f"""
trust_naming = true
service = "users"                   # a listener's own service: every request, no route
[clusters.v1]
endpoints = ["{b[0].address}"]
[naming]
rules = ["/svc/users => /cluster/v1 | /cluster/made-a"]
source = {{ kind = "file", path = "naming.dtab", interval = "100ms" }}
[cluster_templates."made-*"]
discovery = {{ kind = "file", path = "eps/{{name}}.json" }}
""")
        try:
            await run.start(r"ready: 2 worker\(s\) serving")
            await wait_answers_from(web, "b-0")
            before = await scrape(admin)
            assert await send(web, 50) == {200: 50}
            # `|` past a name that is no cluster: a fallback, per request.
            table.write_text("/svc/users => /cluster/gone | /cluster/v1 | /cluster/made-a\n")
            await wait_for_rules(admin, ["/svc/users => /cluster/gone | /cluster/v1 | /cluster/made-a"])
            mid = await scrape(admin)
            assert await send(web, 30) == {200: 30}
            # `!`: no cluster.
            table.write_text("/svc/users => !\n")
            await wait_for_rules(admin, ["/svc/users => !"])
            assert await send(web, 20) == {503: 20}
            # Overrides on the trusted listener: one that compiles (accepted), one that does not (refused).
            assert await send(web, 10, {"fastmesh-naming": "/svc/users => /cluster/v1"}) == {200: 10}
            assert await send(web, 5, {"fastmesh-naming": "/svc/users => ("}) == {503: 5}
            # A table that does not parse: counted by kind, the last good one stays.
            table.write_text("/svc/users => cluster/v1\n")
            deadline = time.monotonic() + WAIT
            while True:
                after = await scrape(admin)
                if after.get(("fastmesh_naming_source_errors_total", (("error", "parse"), ("kind", "file")))):
                    break
                assert time.monotonic() < deadline, "the parse error was never counted"
                await asyncio.sleep(0.05)
            chosen = resolutions(after, "chosen") - resolutions(before, "chosen")
            assert resolutions(mid, "chosen") - resolutions(before, "chosen") == 50
            assert resolutions(after, "fallback") - resolutions(mid, "fallback") == 30
            assert resolutions(after, "none") == 20 + 5
            assert chosen == 50 + 10
            assert after[("fastmesh_naming_overrides_total", (("result", "accepted"),))] == 10
            assert after[("fastmesh_naming_overrides_total", (("result", "refused"),))] == 5
            assert after[("fastmesh_naming_rules", (("kind", "file"),))] == 1
            assert abs(after[("fastmesh_naming_source_last_update_time_seconds", (("kind", "file"),))]
                       - time.time()) < 60
            assert ("fastmesh_naming_source_watch_restarts_total", (("kind", "file"),)) in after
            assert after[("fastmesh_cluster_template_clusters", (("template", "made-*"),))] == 1
            assert after[("fastmesh_cluster_template_refused_total", (("template", "made-*"),))] == 0
        finally:
            await run.stop()
            for x in b:
                await x.stop()
    asyncio.run(main())


async def wait_for_rules(admin: int, rules: list[str]) -> None:
    """Until the running table is `rules` (the workers have it: /naming shows the config they all applied)."""
    deadline = time.monotonic() + WAIT
    async with httpx.AsyncClient() as client:
        while (await client.get(f"http://127.0.0.1:{admin}/naming", timeout=5)).json()["rules"] != rules:
            assert time.monotonic() < deadline, f"the table never became {rules}"
            await asyncio.sleep(0.02)
