"""Plugins under `fastmesh run` (a supervisor and two workers): a discovery plugin run once by the supervisor and
its sets fanned out to the workers, a filter in every worker, access records to a log sink and the supervisor's
events to an event sink, all from the worked examples (examples/plugins on PYTHONPATH); a reload that changes a
filter's config."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import AsyncRun

pytestmark = pytest.mark.timeout(90)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


async def wait_for(check, what: str, timeout: float = 15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_discovery_filter_and_sinks_under_fastmesh_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))
    registry: dict[str, list[str]] = {"web": []}
    served = {"count": 0}

    async def registry_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served["count"] += 1
        body = json.dumps(registry["web"]).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(registry_server, "127.0.0.1", 0)
        reg_port = server.sockets[0].getsockname()[1]
        port, admin = free_port(), free_port()
        async with server, HttpBackend("one") as one, HttpBackend("two") as two:
            registry["web"] = [one.address]
            text = f"""
workers = 2
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[[event_sinks]]
plugin = "mypkg.sinks:JsonLines"
config = {{ path = "{tmp_path / 'events.jsonl'}" }}
interval = "100ms"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
protocol = "http"
cluster = "web"
filters = [{{ plugin = "mypkg.auth:CheckToken", config = {{ tokens = {{ "s3cret" = "alice" }} }} }}]
[[listeners.log_sinks]]
plugin = "mypkg.sinks:JsonLines"
config = {{ path = "{tmp_path / 'requests.jsonl'}" }}
interval = "100ms"
[clusters.web.discovery]
kind = "plugin"
plugin = "mypkg.registry:HttpRegistry"
config = {{ url = "http://127.0.0.1:{reg_port}/services/web", interval = 0.1 }}
"""
            run = AsyncRun(tmp_path, text)
            await run.start()
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5,
                                             trust_env=False) as c:
                    auth = {"authorization": "Bearer s3cret"}
                    assert (await c.get("/echo")).status_code == 401
                    r = await c.get("/echo", headers=auth)
                    assert r.status_code == 200 and r.headers["x-backend"] == "one"
                    assert {k.lower(): v for k, v in r.json()["headers"]}["x-user"] == "alice"
                    # The registry moves the cluster: every worker follows (new connections land anywhere).
                    registry["web"] = [two.address]

                    async def moved() -> bool:
                        for _ in range(6):
                            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5,
                                                         trust_env=False) as fresh:
                                if (await fresh.get("/echo", headers=auth)).headers["x-backend"] != "two":
                                    return False
                        return True
                    for _ in range(100):
                        if await moved():
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError("the workers did not follow the registry")
                    # A reload that changes the filter's tokens: the old token stops working.
                    run.config.write_text(text.replace('"s3cret" = "alice"', '"n3w" = "bob"'))
                    async with httpx.AsyncClient(timeout=10, trust_env=False) as admin_client:
                        assert (await admin_client.post(f"http://127.0.0.1:{admin}/reload")).status_code == 200
                    assert (await c.get("/echo", headers=auth)).status_code == 401
                    r = await c.get("/echo", headers={"authorization": "n3w"})
                    assert r.status_code == 200 and {k.lower(): v for k, v in r.json()["headers"]}["x-user"] == "bob"
                records = await wait_for(lambda: len(lines(tmp_path / "requests.jsonl")) >= 3 and
                                         lines(tmp_path / "requests.jsonl"), "access records")
                first = records[0]
                assert first["status"] == 401 and first["listener"] == "edge" and first["cluster"] == "web"
                assert first["client"] == "127.0.0.1" and len(first["request_id"]) == 32 and first["error"] == ""
                assert first["time"][19] == "."          # milliseconds in the timestamp
                events = await wait_for(lambda: [e for e in lines(tmp_path / "events.jsonl") if e["event"] == "reload"]
                                        and lines(tmp_path / "events.jsonl"), "events")
                kinds = [e["event"] for e in events]
                assert kinds.count("worker_started") == 2 and "discovery" in kinds
                (reload,) = [e for e in events if e["event"] == "reload"]
                assert reload["result"] == "ok" and reload["trigger"]
                assert served["count"] >= 2
            finally:
                await run.stop()
    asyncio.run(main())
