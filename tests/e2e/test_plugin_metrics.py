"""Filter plugins, the PROXY protocol gate, span export and sinks in /metrics of a real `fastmesh run` with 2 workers:
each series equals what the test sent, summed over the workers (the gate's counts through the shared stats block,
the Python-side counts asked of each worker over the control link), and a killed worker's share stays in the sums.
Parsed with prometheus_client's parser."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun
from tests.e2e.test_tracing import otlp_receiver

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0
T = "fastmesh._testbase.plugins"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(admin: int) -> tuple[Samples, str]:
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(f"http://127.0.0.1:{admin}/metrics", timeout=5)).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_prometheus(text) for s in f.samples}
    return samples, text


async def get(port: int, path: str, header: bytes = b"PROXY TCP4 10.9.8.7 127.0.0.1 40000 80\r\n") -> int:
    """One GET on its own connection, after `header`; the answer's status, or 0 when the proxy closed the
    connection without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(header + f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_filters_proxy_protocol_spans_and_sinks_summed_over_two_workers(tmp_path: Path) -> None:
    async def main() -> None:
        with otlp_receiver() as receiver:
            async with HttpBackend("one") as backend:
                web, admin = free_ports(2)
                run = AsyncRun(tmp_path, f"""
workers = 2
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[tracing]
export = {{ endpoint = "{receiver.url}", interval = "50ms" }}
[[event_sinks]]
plugin = "{T}:Memory"
interval = "50ms"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "web"
proxy_protocol = true
tracing = {{ start = true }}
filters = [{{ plugin = "{T}:Reply", config = {{ path = "/deny", status = 403 }} }}]
[[listeners.log_sinks]]
plugin = "{T}:Memory"
interval = "50ms"
[[listeners.log_sinks]]
plugin = "{T}:Memory"
config = {{ fail = true }}
interval = "50ms"
[[listeners.routes]]
path_prefix = "/boom/"
cluster = "web"
filters = [{{ plugin = "{T}:Raise" }}]
[[listeners.routes]]
path_prefix = "/hang/"
cluster = "web"
filters = [{{ plugin = "{T}:Wait", config = {{ ms = -1 }}, timeout = "200ms" }}]
[[listeners.routes]]
path_prefix = "/"
cluster = "web"
[clusters.web]
endpoints = ["{backend.address}"]
""")
                await run.start(r"ready: 2 worker\(s\) serving")
                try:
                    await check(web, admin, receiver)
                    await killed_worker_keeps_its_share(web, admin)
                finally:
                    await run.stop()
    asyncio.run(main())


async def check(web: int, admin: int, receiver) -> None:
    # Connections land on either worker (SO_REUSEPORT); the series are the sums whichever took them.
    statuses = await asyncio.gather(*[get(web, "/ok") for _ in range(6)], *[get(web, "/deny") for _ in range(3)],
                                    *[get(web, "/boom/x") for _ in range(4)], *[get(web, "/hang/x") for _ in range(2)])
    assert statuses == [200] * 6 + [403] * 3 + [500] * 4 + [504] * 2
    refused = await asyncio.gather(*[get(web, "/ok", b"") for _ in range(3)],
                                   *[get(web, "/ok", b"PROXY TCP4 nonsense here\r\n") for _ in range(2)])
    assert refused == [0] * 5
    answered = 15

    def edge(plugin: str) -> tuple[tuple[str, str], ...]:
        return (("listener", "edge"), ("plugin", f"{T}:{plugin}"))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        s, text = await scrape(admin)
        sinks = {labels: v for (name, labels), v in s.items() if name == "fastmesh_sink_records_written_total"}
        logged = [v for labels, v in sinks.items() if ("sink", "listeners.edge.log_sinks[0]") in labels]
        exported = s.get(("fastmesh_tracing_spans_exported_total", ()), 0)
        failed = s.get(("fastmesh_sink_records_dropped_total", (("plugin", f"{T}:Memory"),
                                                                ("sink", "listeners.edge.log_sinks[1]"))))
        if logged == [answered] and exported and exported == len(receiver.spans()) and failed == answered:
            break
        assert loop.time() < deadline, text
        await asyncio.sleep(0.1)

    # Filters, per (listener, plugin): every request passed the listener's Reply filter.
    assert s[("fastmesh_filter_calls_total", edge("Reply"))] == answered
    assert s[("fastmesh_filter_answered_total", edge("Reply"))] == 3
    assert s[("fastmesh_filter_errors_total", edge("Reply"))] == 0
    assert s[("fastmesh_filter_calls_total", edge("Raise"))] == 4
    assert s[("fastmesh_filter_errors_total", edge("Raise"))] == 4
    assert s[("fastmesh_filter_calls_total", edge("Wait"))] == 2
    assert s[("fastmesh_filter_timeouts_total", edge("Wait"))] == 2
    assert s[("fastmesh_filter_answered_total", edge("Wait"))] == 0
    assert "# HELP fastmesh_filter_errors_total " in text and "# TYPE fastmesh_filter_calls_total counter" in text

    # PROXY protocol: every answered request came with a header; the rest were refused by reason.
    assert s[("fastmesh_proxy_protocol_passed_total", (("listener", "edge"),))] == answered
    assert s[("fastmesh_proxy_protocol_refused_total", (("listener", "edge"), ("reason", "not_proxy")))] == 3
    assert s[("fastmesh_proxy_protocol_refused_total", (("listener", "edge"), ("reason", "malformed")))] == 2
    assert s[("fastmesh_proxy_protocol_refused_total", (("listener", "edge"), ("reason", "timeout")))] == 0

    # Spans: what the collector received, none dropped, no failed export.
    assert s[("fastmesh_tracing_spans_exported_total", ())] == len(receiver.spans())
    assert s[("fastmesh_tracing_spans_dropped_total", ())] == 0
    assert s[("fastmesh_tracing_spans_export_failures_total", ())] == 0

    # Sinks: the working log sink took every record, the failing one dropped them all; the supervisor's event sink
    # (labelled by its config key) took the workers' start events at least.
    failing = (("plugin", f"{T}:Memory"), ("sink", "listeners.edge.log_sinks[1]"))
    assert s[("fastmesh_sink_records_written_total", failing)] == 0
    assert s[("fastmesh_sink_write_errors_total", failing)] >= 1
    assert s[("fastmesh_sink_records_dropped_total", (("plugin", f"{T}:Memory"),
                                                      ("sink", "listeners.edge.log_sinks[0]")))] == 0
    assert s[("fastmesh_sink_records_written_total", (("plugin", f"{T}:Memory"), ("sink", "event_sinks[0]")))] >= 2


async def killed_worker_keeps_its_share(web: int, admin: int) -> None:
    """A worker killed and restarted starts counting from zero: the sums keep what it had counted."""
    calls = ("fastmesh_filter_calls_total", (("listener", "edge"), ("plugin", f"{T}:Reply")))
    before, _ = await scrape(admin)
    async with httpx.AsyncClient(trust_env=False) as client:
        workers = (await client.get(f"http://127.0.0.1:{admin}/stats", timeout=5)).json()["workers"]
        victim = workers["0"]["pid"]
        os.kill(victim, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            s, text = await scrape(admin)
            assert s[calls] >= before[calls], text              # never backwards, even mid-restart
            workers = (await client.get(f"http://127.0.0.1:{admin}/stats", timeout=5)).json()["workers"]
            if s[("fastmesh_workers_ready", ())] == 2 and workers.get("0", {}).get("pid") not in (None, victim):
                break
            assert loop.time() < deadline, "the killed worker was not restarted"
            await asyncio.sleep(0.1)
    statuses = await asyncio.gather(*[get(web, "/deny") for _ in range(4)])
    assert statuses == [403] * 4
    after, _ = await scrape(admin)
    answered = ("fastmesh_filter_answered_total", calls[1])
    assert after[calls] == before[calls] + 4 and after[answered] == before[answered] + 4
