"""/metrics of a real `fastmesh run` with 2 workers, parsed with prometheus_client's own parsers: the counters
equal the traffic sent, summed over both workers, and stay monotonic when a worker is killed. Also the
rendering itself: both formats, HTTP families, escaping and Accept negotiation."""
from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from fastmesh._core.stats import DURATION_BOUNDS, HEADER, LISTENER_FIELDS, STATUS_CLASSES
from fastmesh._version import __version__
from fastmesh.admin.metrics import ProcessInfo, render, wants_openmetrics
from fastmesh.config.load import loads_config
from fastmesh.dataplane.stats import Snapshot, StatsLayout
from tests.control import test_admin
from tests.control.test_admin import WAIT, EchoBackend, Start, exchange, wait_for

# The real `fastmesh run` and backends of test_admin, as fixtures here too.
start = test_admin.start
backends = test_admin.backends

OM_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, openmetrics: bool = False) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels), parsed by prometheus_client."""
    parse = parse_openmetrics if openmetrics else parse_prometheus
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in parse(text) for s in family.samples}


def scrape(fm: Any, openmetrics: bool = False) -> Samples:
    status, headers, body = fm.request("GET", "/metrics", headers={"Accept": OM_ACCEPT} if openmetrics else {})
    assert status == 200
    if openmetrics:
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert body.endswith(b"# EOF\n")
    else:
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples(body.decode(), openmetrics)


def send_traffic(port: int, sizes: list[int]) -> int:
    """One connection per size, each echoing that many bytes; the bytes sent (= the bytes received)."""
    for i, size in enumerate(sizes):
        payload = bytes([65 + i % 26]) * size
        assert exchange(port, payload) == payload
    return sum(sizes)


L = (("listener", "front"),)
C = (("cluster", "web"),)
COUNTED = [("fastmesh_downstream_connections_total", L), ("fastmesh_downstream_received_bytes_total", L),
           ("fastmesh_downstream_sent_bytes_total", L), ("fastmesh_upstream_connections_total", C)]


def test_counters_equal_the_traffic_of_both_workers(start: Start, backends: Callable[[int], list[EchoBackend]]
                                                    ) -> None:
    pair = backends(2)
    fm = start({"web": [b.address for b in pair]})
    # Small messages go through the copy path; 300 KB ones fill the buffer and continue through splice.
    sizes = [10 * i + 1 for i in range(36)] + [300_000] * 4
    total = send_traffic(fm.port, sizes)

    def settled() -> Samples | None:
        got = scrape(fm)
        idle = (got[("fastmesh_downstream_connections_active", L)] == 0
                and got[("fastmesh_upstream_connections_active", C)] == 0)
        return got if idle and got[("fastmesh_downstream_connections_total", L)] == len(sizes) else None
    got = wait_for(settled, "every relay to close")
    for openmetrics in (False, True):
        got = scrape(fm, openmetrics)
        assert got[("fastmesh_downstream_connections_total", L)] == len(sizes)
        assert got[("fastmesh_downstream_received_bytes_total", L)] == total
        assert got[("fastmesh_downstream_sent_bytes_total", L)] == total
        assert got[("fastmesh_downstream_connections_failed_total", L)] == 0
        assert got[("fastmesh_upstream_connections_total", C)] == len(sizes)
        assert got[("fastmesh_retries_total", C)] == 0
        assert got[("fastmesh_outlier_ejections_total", C)] == 0
        assert got[("fastmesh_health_checks_total", (("cluster", "web"), ("result", "ok")))] == 0
        for b in pair:
            ep = (("cluster", "web"), ("endpoint", b.address))
            assert got[("fastmesh_endpoint_healthy", ep)] == 1
            assert got[("fastmesh_upstream_connect_failures_total", ep)] == 0
        assert got[("fastmesh_workers", ())] == 2 and got[("fastmesh_workers_ready", ())] == 2
        assert got[("fastmesh_worker_restarts_total", ())] == 0
        assert got[("fastmesh_config_reloads_total", (("result", "failed"),))] == 0
        assert got[("fastmesh_build_info", (("version", __version__),))] == 1
        assert 0 <= got[("fastmesh_event_loop_lag_seconds", (("worker", "0"),))] < 5
        assert 0 <= got[("fastmesh_event_loop_lag_seconds", (("worker", "1"),))] < 5
        assert abs(got[("fastmesh_start_time_seconds", ())] - time.time()) < 120
        (config_hash,) = [dict(k[1])["hash"] for k in got if k[0] == "fastmesh_config_info"]
        assert re.fullmatch(r"[0-9a-f]{16}", config_hash)
    # The sum really is over both workers: each took part of the connections (SO_REUSEPORT spreads them).
    status, stats = fm.get_json("/stats")
    per_worker = [w["connections"] for w in stats["workers"].values()]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker) and sum(per_worker) == len(sizes)


def test_killed_worker_does_not_make_totals_go_backwards(start: Start,
                                                         backends: Callable[[int], list[EchoBackend]]) -> None:
    (b,) = backends(1)
    fm = start({"web": [b.address]})
    first = send_traffic(fm.port, [100] * 20)
    status, stats = fm.get_json("/stats")
    victim = stats["workers"]["0"]["pid"]
    before = wait_for(lambda: (got := scrape(fm))[("fastmesh_downstream_connections_total", L)] == 20 and got,
                      "20 connections counted")
    os.kill(victim, signal.SIGKILL)
    # Scrape all through the restart: no counted total may ever shrink.
    last = before
    deadline = time.monotonic() + WAIT
    while True:
        got = scrape(fm)
        for key in COUNTED:
            assert got[key] >= last[key], (key, got[key], last[key])
        last = got
        workers = fm.get_json("/stats")[1]["workers"]
        if got[("fastmesh_worker_restarts_total", ())] == 1 and workers.get("0", {}).get("pid") not in (None, victim):
            break
        assert time.monotonic() < deadline, "the killed worker was not restarted"
        time.sleep(0.05)
    fm.wait_log(r"w0 \(pid \d+\) ready", 2)
    for key in COUNTED:
        assert last[key] == before[key]
    second = send_traffic(fm.port, [50] * 10)
    after = wait_for(lambda: (got := scrape(fm))[("fastmesh_downstream_connections_total", L)] == 30 and got,
                     "30 connections counted")
    assert after[("fastmesh_downstream_received_bytes_total", L)] == first + second
    assert after[("fastmesh_upstream_connections_total", C)] == 30
    assert after[("fastmesh_worker_restarts_total", ())] == 1


# ---- rendering, without processes ----

HTTP_CONFIG = """
[[listeners]]
name = "api"
listen = "127.0.0.1:1"
cluster = "app"
[clusters.app]
endpoints = ["127.0.0.1:2"]
"""


def _http_snapshot() -> Snapshot:
    cfg = loads_config(HTTP_CONFIG)
    cfg.listeners[0].protocol = "http"          # an http listener gets request counters and a histogram
    layout = StatsLayout(cfg)
    block = layout.new_block()
    req = layout.requests[0].offset
    for status in (200, 200, 201, 404, 503):
        block.count_status(req, status)
    for seconds in (0.0002, 0.003, 0.003, 0.7, 30.0):
        block.observe(layout.durations["app"].offset, seconds)
    return Snapshot.of_block(layout, block)


INFO = ProcessInfo(version='1.0 "quoted" \\ back\nslash', started=1700000000.5, config_hash="abc", workers=1,
                   workers_ready=1)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_http_families_render_and_parse(openmetrics: bool) -> None:
    got = samples(render(_http_snapshot(), INFO, openmetrics).decode(), openmetrics)
    key = (("cluster", "app"), ("code_class", "{}"), ("listener", "api"))
    counts = {cls: got[("fastmesh_requests_total", tuple((k, v.format(cls)) for k, v in key))]
              for cls in STATUS_CLASSES}
    assert counts == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    buckets = {float(dict(labels)["le"]): v for (name, labels), v in got.items()
               if name == "fastmesh_request_duration_seconds_bucket"}
    assert sorted(buckets) == [*DURATION_BOUNDS, float("inf")]
    assert buckets[0.0005] == 1 and buckets[0.005] == 3 and buckets[1.0] == 4 and buckets[float("inf")] == 5
    assert got[("fastmesh_request_duration_seconds_count", (("cluster", "app"),))] == 5
    assert got[("fastmesh_request_duration_seconds_sum", (("cluster", "app"),))] == pytest.approx(30.7062)
    # Label values are escaped so that the parser gets them back exactly.
    assert got[("fastmesh_build_info", (("version", INFO.version),))] == 1


def test_tcp_only_config_has_no_http_series() -> None:
    text = render(Snapshot.of_block(StatsLayout(loads_config(HTTP_CONFIG)), StatsLayout(loads_config(HTTP_CONFIG))
                                    .new_block()), INFO).decode()
    assert "fastmesh_requests_total" not in text and "fastmesh_request_duration_seconds" not in text
    assert "fastmesh_downstream_connections_total{listener=\"api\"} 0" in text


@pytest.mark.parametrize("accept, expected", [
    ("", False),
    ("*/*", False),
    ("text/plain", False),
    ("application/openmetrics-text", True),
    (OM_ACCEPT, True),
    ("application/openmetrics-text;version=0.0.1;q=0.3,text/plain;version=0.0.4;q=0.5", False),
    ("application/openmetrics-text; q=0", False),
    ("application/json, application/openmetrics-text;q=0.9", True),
])
def test_accept_negotiation(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_connection_limit_families_render_and_parse(openmetrics: bool) -> None:
    """The listener's limited and paused counters and each worker's connection limit, from their slots."""
    layout = StatsLayout(loads_config(HTTP_CONFIG))
    block = layout.new_block()
    listener = layout.listeners[0].offset
    block[listener + LISTENER_FIELDS.index("limited")] = 511
    block[listener + LISTENER_FIELDS.index("paused")] = 3
    block[HEADER["pid"]] = 4242
    block[HEADER["max_connections"]] = 89
    got = samples(render(Snapshot.of_block(layout, block), INFO, openmetrics).decode(), openmetrics)
    assert got[("fastmesh_downstream_connections_limited_total", (("listener", "api"),))] == 511
    assert got[("fastmesh_downstream_accept_paused_total", (("listener", "api"),))] == 3
    assert got[("fastmesh_worker_max_connections", (("worker", "0"),))] == 89


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_plugin_and_proxy_protocol_families_render_and_parse(openmetrics: bool) -> None:
    """PROXY protocol counts from the listener's slots (only for a listener that saw the gate); filters, span export
    and sinks from the view AdminServer.plugin_view sums."""
    layout = StatsLayout(loads_config(HTTP_CONFIG))
    block = layout.new_block()
    listener = layout.listeners[0].offset
    plain = samples(render(Snapshot.of_block(layout, block), INFO, openmetrics).decode(), openmetrics)
    assert not [name for name, _ in plain if "proxy_protocol" in name or "filter" in name or "sink" in name]
    block[listener + LISTENER_FIELDS.index("proxy_protocol_passed")] = 7
    block[listener + LISTENER_FIELDS.index("proxy_protocol_refused_timeout")] = 2
    auth_counts = {"calls": 9, "answers": 4, "errors": 1, "timeouts": 2, "slow": 3}
    plugins = {"filters": {("api", "pkg.mod:Auth"): auth_counts},
               "tracing": {"exported": 30, "dropped": 5, "failed_exports": 1},
               "sinks": {("event_sinks[0]", "pkg.mod:Sink"): {"written": 12, "dropped": 3, "errors": 1}}}
    got = samples(render(Snapshot.of_block(layout, block), INFO, openmetrics, plugins=plugins).decode(), openmetrics)
    api = (("listener", "api"),)
    assert got[("fastmesh_proxy_protocol_passed_total", api)] == 7
    assert got[("fastmesh_proxy_protocol_refused_total", (*api, ("reason", "timeout")))] == 2
    assert got[("fastmesh_proxy_protocol_refused_total", (*api, ("reason", "not_proxy")))] == 0
    auth = (*api, ("plugin", "pkg.mod:Auth"))
    assert [got[(f"fastmesh_filter_{n}_total", auth)] for n in ("calls", "answered", "errors", "timeouts", "slow")] \
        == [9, 4, 1, 2, 3]
    assert [got[(f"fastmesh_tracing_spans_{n}_total", ())] for n in ("exported", "dropped", "export_failures")] == \
        [30, 5, 1]
    sink = (("plugin", "pkg.mod:Sink"), ("sink", "event_sinks[0]"))
    assert [got[(f"fastmesh_sink_{n}_total", sink)] for n in ("records_written", "records_dropped", "write_errors")] \
        == [12, 3, 1]


def test_kept_totals_carry_a_reset_and_a_silent_worker() -> None:
    """A worker's Python-side counts restart from zero after a restart or reload: the sum must not go backwards,
    nor drop when a worker misses one scrape."""
    from fastmesh.admin.server import KeptTotals
    kept = KeptTotals()
    calls = ("filters", "api", "p", "calls")
    kept.update("w0", {calls: 10})
    kept.update("w1", {calls: 5})
    assert kept.totals() == {calls: 15}
    kept.update("w0", {calls: 3})           # w0 restarted: its 10 are carried
    assert kept.totals() == {calls: 18}
    kept.update("w0", {calls: 4})           # w1 did not answer this time: its 5 stay
    assert kept.totals() == {calls: 19}
    kept.update("w1", {calls: 6})
    assert kept.totals() == {calls: 20}
    kept.update("w0", {calls: 7}, pid=99)   # a new process in w0's slot, already past w0's 4: all 7 are new
    assert kept.totals() == {calls: 27}
