"""The admin dashboard in real headless Chromium: `fastmesh run` (2 workers) in front of backends this test starts,
one answering 503 until outlier detection ejects it; the page must chart the traffic, show the ejection and the
route table, and log no console error.

With FASTMESH_DASHBOARD_PNG=docs/dashboard.png the test also runs a longer, varied load and saves a 1280x800
screenshot there (the picture in README.md); without it the screenshot only goes to the test's tmp_path.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import READY, Run
from fastmesh.admin import dashboard
from fastmesh.config.load import loads_config
from fastmesh.dataplane.stats import Snapshot, StatsLayout

WAIT = 20.0             # seconds any one expected event may take before the test fails
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = os.environ.get("FASTMESH_DASHBOARD_PNG")
SHOWCASE_SECONDS = 45.0  # varied load before the README screenshot, so its charts have a shape

pytestmark = [
    pytest.mark.timeout(180 if SCREENSHOT else 90),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed "
                       "(ci/test.sh installs it with apt-get when run as root)"),
]


# ---- backends: a good HTTP backend and one answering 503 to everything, on a loop in their own thread ----

async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")           # GET only: no body to read
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nx-backend: bad\r\n\r\nbusy\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class Backends:
    """The good backend (fastmesh's test HttpBackend: /slow, /status, echo) and the 503 one, started and stopped."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.good = HttpBackend("good")
        self._run(self.good.start())
        self.bad_server = self._run(asyncio.start_server(_answer_503, "127.0.0.1", 0))
        self.bad = f"127.0.0.1:{self.bad_server.sockets[0].getsockname()[1]}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def close(self) -> None:
        self._run(self.good.stop())
        self.bad_server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


# ---- a real `fastmesh run` ----

class Running(Run):
    """`fastmesh run` with an http listener (a route to "api", the rest to "web") and a tcp listener."""

    def __init__(self, tmp_path: Path, backends: Backends) -> None:
        self.http_port, self.tcp_port, self.admin_port = free_ports(3)
        super().__init__(tmp_path, f"""
workers = 2
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{self.admin_port}"

[[listeners]]
name = "web"
listen = "127.0.0.1:{self.http_port}"
protocol = "http"
cluster = "web"
[[listeners.routes]]
path_prefix = "/api/"
methods = ["GET", "HEAD"]
cluster = "api"
add_request_headers = {{ x-via = "dashboard-test" }}

[[listeners]]
name = "raw"
listen = "127.0.0.1:{self.tcp_port}"
protocol = "tcp"
cluster = "api"

[clusters.web]
endpoints = ["{backends.good.address}", "{backends.bad}"]
outlier = {{ consecutive_failures = 3, base_ejection = "30s" }}

[clusters.api]
endpoints = ["{backends.good.address}"]
balancer = "least_request"
""", WAIT)
        self.wait_log(READY)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=WAIT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)


# ---- traffic ----

class Traffic:
    """Requests through both listeners from a thread until stop(): a few per new connection, so both workers get
    some; `showcase` varies the pace and mixes in slow answers, for a screenshot with something to see."""

    def __init__(self, fm: Running, showcase: bool = False) -> None:
        self.fm = fm
        self.showcase = showcase
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            n += 1
            paths = ["/", "/api/items", "/", f"/slow?ms={5 + n % 4 * 10 if self.showcase else 1}"]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.fm.http_port, timeout=WAIT)
                for path in paths:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    self.sent += 1
                conn.close()
                if n % 4 == 0:                      # the tcp listener relays to the same backend
                    raw = http.client.HTTPConnection("127.0.0.1", self.fm.tcp_port, timeout=WAIT)
                    raw.request("GET", "/api/raw", headers={"Connection": "close"})
                    raw.getresponse().read()
                    raw.close()
            except OSError as exc:
                self.errors.append(repr(exc))
            # About 100 requests/s, swinging between ~30 and ~200 in the showcase.
            pace = 0.04
            if self.showcase:
                pace = 0.02 + 0.06 * (1 + math.sin((time.monotonic() - started) / 6)) / 2
            self.stopping.wait(pace)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(WAIT)


@pytest.fixture
def fastmesh(tmp_path: Path) -> Iterator[Running]:
    backends = Backends()
    try:
        fm = Running(tmp_path, backends)
        try:
            yield fm
        finally:
            fm.stop()
    finally:
        backends.close()


def wait_for(check: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


# ---- tests ----

def test_quantiles_and_rates_from_samples() -> None:
    """The arithmetic behind the charts, on a real stats block: rates over two samples, the non-5xx share,
    histogram quantiles interpolated in their bucket; a sample too soon is skipped, a long gap restarts."""
    assert dashboard.quantile(0.5, [0] * 15) is None
    # 10 observations in (1 ms, 2.5 ms]: the median is halfway through that bucket.
    assert dashboard.quantile(0.5, [0, 0, 10] + [0] * 12) == pytest.approx(0.00175)
    assert dashboard.quantile(0.99, [0] * 14 + [3]) == 10.0           # the +Inf bucket: the largest bound

    layout = StatsLayout(loads_config(
        '[[listeners]]\nname = "web"\nlisten = "127.0.0.1:1"\nprotocol = "http"\ncluster = "c"\n'
        '[clusters.c]\nendpoints = ["127.0.0.1:2"]\n'))
    block = layout.new_block()
    (pair,) = layout.requests
    histogram = layout.durations["c"].offset
    history = dashboard.History()

    def sample_at(t: float) -> None:
        snap = Snapshot.of_block(layout, block)
        snap.taken = t
        history.add(snap)
    sample_at(1000.0)
    for i in range(90):
        block.count_status(pair.offset, 200)
        block.observe(histogram, 0.004)
    for i in range(10):
        block.count_status(pair.offset, 503)
        block.observe(histogram, 0.2)
    sample_at(1000.2)                                                  # under MIN_GAP: not kept
    assert len(history.samples) == 1
    sample_at(1002.0)
    old, new = history.samples
    point = dashboard.http_point(new, old, "l:web", ["c"])
    assert point["rps"] == 50.0 and point["success"] == 0.9
    assert 2.5 < point["p50"] <= 5.0 and 100.0 < point["p99"] <= 250.0   # ms, in the buckets observed
    assert dashboard.http_point(new, old, "c:c", ["c"]) == point
    sample_at(1002.0 + dashboard.MAX_GAP + 1)                           # nobody polled for a while: start again
    assert len(history.samples) == 1


def test_dashboard_files_and_data(fastmesh: Running) -> None:
    """The page and its assets are served with their types and a CSP; /dashboard/data has rates after traffic."""
    status, headers, body = fastmesh.get("/dashboard")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"] and b"/dashboard/dashboard.js" in body
    # Everything the page refers to is served by the admin server itself: no other host is named.
    for asset in re.findall(rb'(?:src|href)="([^"]+)"', body):
        assert asset.startswith(b"/dashboard/") or asset == b"data:,", asset
        if asset.startswith(b"/"):
            status, headers, _ = fastmesh.get(asset.decode())
            assert status == 200, asset
            assert headers["content-type"].startswith(("text/javascript", "text/css")), (asset, headers)
    assert fastmesh.get("/dashboard/")[0] == 200
    assert fastmesh.get("/dashboard/nope.js")[0] == 404

    first = fastmesh.get_json("/dashboard/data")
    assert [lst["name"] for lst in first["listeners"]] == ["web", "raw"]
    assert first["routes"] == [{"listener": "web", "default": "web", "routes": [
        {"match": {"path_prefix": "/api/", "methods": ["GET", "HEAD"]}, "cluster": "api",
         "edits": {"add_request_headers": {"x-via": "dashboard-test"}}}]}]
    traffic = Traffic(fastmesh)
    try:
        time.sleep(1.2)                 # two samples at least MIN_GAP apart, with traffic between them
        data = fastmesh.get_json("/dashboard/data")
    finally:
        traffic.stop()
    assert traffic.sent > 0 and not traffic.errors, traffic.errors
    web, raw = data["listeners"]
    assert web["kind"] == "http" and web["now"]["rps"] > 0 and web["series"]["t"]
    assert web["now"]["p50"] is not None and web["now"]["p50"] <= web["now"]["p99"]
    assert web["latency_own"] is True          # web and api serve only this http listener
    assert raw["kind"] == "tcp" and set(raw["now"]) == {"cps", "in", "out", "open"}
    clusters = {c["name"]: c for c in data["clusters"]}
    assert clusters["web"]["now"]["rps"] > 0 and clusters["api"]["now"]["rps"] > 0
    assert data["workers"] == {"configured": 2, "serving": 2, "single_process": False}
    assert data["reloads"]["ok"] == 0 and data["reloads"]["failed"] == 0 and len(data["config_hash"]) == 16


def test_dashboard_in_chromium(fastmesh: Running, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
    console: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.goto(f"http://127.0.0.1:{fastmesh.admin_port}/dashboard")
            # The first sample is taken before any traffic, so the 503s land inside a charted step.
            page.wait_for_selector("body[data-updated]", timeout=WAIT * 1000)

            traffic = Traffic(fastmesh, showcase=bool(SCREENSHOT))
            try:
                def bad_ejected() -> bool:
                    bad = fastmesh.get_json("/clusters")["web"]["endpoints"][1]     # as configured
                    return all(state == "ejected" for state in bad["workers"].values())
                wait_for(bad_ejected, "outlier detection to eject the 503 endpoint")
                if SCREENSHOT:
                    time.sleep(SHOWCASE_SECONDS)
                check_page(page, fastmesh)
                page.screenshot(path=str(tmp_path / "dashboard.png"))
                if SCREENSHOT:
                    page.screenshot(path=SCREENSHOT)
            finally:
                traffic.stop()
        finally:
            browser.close()
    assert traffic.statuses.get(503, 0) >= 1 and traffic.statuses.get(200, 0) > 0, traffic.statuses
    assert not traffic.errors, traffic.errors
    assert console == []


def check_page(page: Any, fm: Running) -> None:
    """What a person would look for: traffic in numbers and lines, the ejected endpoint, the route table."""
    web = page.locator('.card[data-kind="listener"][data-name="web"]')
    page.wait_for_function(
        """() => {
            const card = document.querySelector('.card[data-kind="listener"][data-name="web"]');
            const rps = parseFloat(card.querySelector('.value[data-metric="rps"]').textContent.replace(/,/g, ''));
            const points = +card.querySelector('svg.chart[data-metric="rps"]').dataset.points;
            return rps > 0 && points >= 2;
        }""", timeout=WAIT * 1000)
    assert float(web.locator('.value[data-metric="rps"]').inner_text().replace(",", "")) > 0
    # The chart drew a line through its points, and the latency tile shows p50 / p99 in numbers.
    assert web.locator('svg.chart[data-metric="rps"] path.line').count() >= 1
    assert re.fullmatch(r"[\d.,]+ / [\d.,]+", web.locator('.value[data-metric="latency"]').inner_text())
    cluster = page.locator('.card[data-kind="cluster"][data-name="web"]')
    assert int(cluster.locator('svg.chart[data-metric="success"]').get_attribute("data-points") or 0) >= 2
    raw = page.locator('.card[data-kind="listener"][data-name="raw"]')
    assert raw.locator('.value[data-metric="cps"]').count() == 1 and raw.locator(".badge").text_content() == "tcp"

    # The 503 endpoint is ejected in the table (from the first poll after the workers ejected it), the good one up.
    endpoints = fm.get_json("/clusters")["web"]["endpoints"]
    good, bad = endpoints[0]["address"], endpoints[1]["address"]
    page.wait_for_selector(f'#endpoints tr[data-cluster="web"][data-address="{bad}"] .state[data-state="ejected"]',
                           timeout=WAIT * 1000)
    web_rows = page.locator('#endpoints tr[data-cluster="web"]')
    assert web_rows.count() == 2
    states = {web_rows.nth(i).get_attribute("data-address"): web_rows.nth(i).locator(".state").inner_text()
              for i in range(2)}
    assert states == {good: "up", bad: "ejected"}, states

    routes = page.locator('#routes .routes[data-listener="web"]')
    assert "prefix /api/" in routes.inner_text() and "→ api" in routes.inner_text()
    assert "otherwise" in routes.inner_text() and "→ web" in routes.inner_text()
    assert page.locator("#config-hash").inner_text() == fm.get_json("/dashboard/data")["config_hash"]
    assert "live" in page.locator("#status").inner_text()


# ---- workers = 0: the supervisor serves ----

class OneProcess(Run):
    """`fastmesh run` with workers = 0 (the supervisor serves) and one http listener to the good backend."""

    def __init__(self, tmp_path: Path, backends: Backends) -> None:
        self.http_port, self.admin_port = free_ports(2)
        super().__init__(tmp_path, f"""
workers = 0
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{self.admin_port}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{self.http_port}"
protocol = "http"
cluster = "web"
[clusters.web]
endpoints = ["{backends.good.address}"]
""", WAIT)
        self.wait_log(r"ready: serving .* in this process")

    get = Running.get
    get_json = Running.get_json


def test_dashboard_with_workers_0_says_one_process_serves(tmp_path: Path) -> None:
    backends = Backends()
    try:
        fm = OneProcess(tmp_path, backends)
        try:
            # No worker process is configured or serving (as /metrics counts them): the supervisor serves itself.
            data = fm.get_json("/dashboard/data")
            assert data["workers"] == {"configured": 0, "serving": 0, "single_process": True,
                                       "process_serving": True}
            sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.goto(f"http://127.0.0.1:{fm.admin_port}/dashboard")
                    page.wait_for_selector("body[data-updated]", timeout=WAIT * 1000)
                    workers = page.locator("#workers")
                    assert workers.inner_text() == "none · one process serves"
                    assert "warn" not in (workers.get_attribute("class") or "")
                finally:
                    browser.close()
        finally:
            fm.stop()
    finally:
        backends.close()
