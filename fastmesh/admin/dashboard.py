"""The admin dashboard: serves the page's static files and /dashboard/data (rates, success share and latency
quantiles computed from a short history of merged stats snapshots, endpoint states, routes and reloads).

Samples are taken when a page polls (at most one per MIN_GAP seconds), not by a timer: the supervisor does no
work for a dashboard nobody watches and there is no task to stop. A gap longer than MAX_GAP starts the history
afresh, so no rate averages over minutes nobody watched. Samples are kept by listener and cluster name, so the
charts go on across a reload; a name that is new has no rate until its second sample.
"""
from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from fastmesh._version import __version__
# The arithmetic is shared with `fastmesh stat` (admin/rates.py); quantile stays importable from here for the tests.
from fastmesh.admin.rates import quantile  # noqa: F401
from fastmesh.admin.rates import (
    Sample, http_point, latency_clusters, stats_body, take_sample, tcp_point, upstream_point,
)
from fastmesh.admin.http import Reply, Request
from fastmesh.dataplane.stats import Snapshot, WorkerStats

# index.html and the files it loads, shipped as package data
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
WINDOW = 180.0          # seconds of history the charts show
MIN_GAP = 0.5           # seconds between two samples, however many pages poll
MAX_GAP = 10.0          # seconds without a poll after which the history starts again
NOW_WINDOW = 5.0        # the headline numbers are rates over about this many seconds (steadier than one step)
HISTORY = int(WINDOW / MIN_GAP) + 2                 # samples kept: enough for WINDOW at the fastest sampling
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads nothing from elsewhere; this makes the browser hold it to that.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
RELOADS_SHOWN = 8       # recent reloads listed (the page has room for about this many)
MATCH_KEYS = ("host", "path", "path_prefix", "path_regex", "methods", "headers")     # route conditions in /config


class Workers(Protocol):
    """The worker counts the dashboard shows."""
    @property
    def count(self) -> int: ...
    @property
    def ready(self) -> set[int]: ...
    @property
    def inline(self) -> bool: ...      # workers = 0: the supervisor serves, in slot 0 of `ready`


class Served(Protocol):
    """What the dashboard reads from the admin server it is part of (server.AdminServer has these)."""
    @property
    def stats(self) -> WorkerStats: ...
    @property
    def workers(self) -> Workers: ...
    @property
    def started(self) -> float: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def reload_history(self) -> Any: ...


class History:
    """The samples of the last WINDOW seconds, and the series and headline values computed from them."""

    def __init__(self) -> None:
        self.samples: collections.deque[Sample] = collections.deque(maxlen=HISTORY)

    def add(self, snap: Snapshot) -> None:
        """Add snap to the history unless the last sample is too recent; restart it after a gap."""
        last = self.samples[-1] if self.samples else None
        if last is not None and 0 <= snap.taken - last.taken < MIN_GAP:
            return
        if last is not None and not 0 <= snap.taken - last.taken <= MAX_GAP:
            self.samples.clear()
        self.samples.append(take_sample(stats_body(snap)))
        while self.samples[0].taken < snap.taken - WINDOW - MIN_GAP:
            self.samples.popleft()

    def series(self, point: Callable[[Sample, Sample], dict[str, float | None]]) -> dict[str, Any]:
        """{"series": one point per step of the history, "now": the same over the last NOW_WINDOW seconds}."""
        samples = list(self.samples)
        series: dict[str, list[Any]] = {"t": []}
        for old, new in zip(samples, samples[1:]):
            series["t"].append(round(new.taken, 3))
            for key, value in point(new, old).items():
                series.setdefault(key, []).append(value)
        now = None
        if len(samples) >= 2:
            newest = samples[-1]
            base = next((s for s in samples if s.taken >= newest.taken - NOW_WINDOW and s is not newest),
                        samples[-2])
            now = point(newest, base)
        return {"series": series, "now": now}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Dashboard:
    """The dashboard's routes on one AdminServer, and the history of samples they chart."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.history = History()
        self.files = {name: _read(os.path.join(STATIC, name)) for name in sorted(os.listdir(STATIC))
                      if os.path.splitext(name)[1] in TYPES}

    def routes(self) -> dict[str, Callable[[Request], Reply]]:
        """Path -> handler, for the admin server's table."""
        out: dict[str, Callable[[Request], Reply]] = {"/dashboard": self.page, "/dashboard/data": self.data}
        for name in self.files:
            if name != "index.html":
                out[f"/dashboard/{name}"] = self.static
        return out

    # ---- handlers ----

    def page(self, request: Request) -> Reply:
        return self._file("index.html")

    def static(self, request: Request) -> Reply:
        return self._file(request.path.rstrip("/").rsplit("/", 1)[1])

    def _file(self, name: str) -> Reply:
        headers = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"))
        return Reply(200, self.files[name], TYPES[os.path.splitext(name)[1]], headers)

    def data(self, request: Request) -> Reply:
        return Reply.json(200, self.build(self.server.stats.collect()))

    # ---- the data ----

    def build(self, snap: Snapshot) -> dict[str, Any]:
        """The whole /dashboard/data answer for this snapshot (which is sampled first)."""
        self.history.add(snap)
        server = self.server
        workers = server.workers
        return {
            "time": snap.taken,
            "window": WINDOW,
            "version": __version__,
            "uptime": round(time.time() - server.started, 1),
            "config_hash": server.config_hash,
            "workers": worker_counts(workers),
            "restarts": snap.restarts,
            "reloads": self._reloads(snap),
            "listeners": self._listeners(snap),
            "clusters": self._clusters(snap),
            "routes": routes(server.config),
            "naming": server.naming_view(snap) if hasattr(server, "naming_view") else None,
        }

    def _listeners(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Per listener: its counters now, and its chart series (http: requests; tcp: connections and bytes)."""
        pairs = [(r.listener, r.cluster) for r in snap.layout.requests]
        addresses = {lst["name"]: lst.get("listen") for lst in self.server.config.get("listeners", [])}
        out = []
        for name, row in snap.listeners().items():
            item: dict[str, Any] = {"name": name, "protocol": row["protocol"], "cluster": row["cluster"],
                                    "address": addresses.get(name), "active": row["active"],
                                    "accepted": row["accepted"], "failed": row["failed"]}
            if "service" in row:
                item["service"] = row["service"]        # a logical name: the card shows it where a cluster would be
            if "clusters" in row:
                item["clusters"] = row["clusters"]      # a tcp service listener's connections per resolved cluster
            if row["protocol"] == "tcp":
                item["kind"] = "tcp"
                item.update(self.history.series(functools.partial(tcp_point, listener=name)))
            else:
                # Latency is kept per cluster: a listener's is exact only when no other listener shares its clusters.
                own = latency_clusters(pairs, name)
                item["kind"] = "http"
                item["latency_own"] = own is not None
                point = functools.partial(http_point, key="l:" + name, clusters=own or [])
                item.update(self.history.series(point))
            out.append(item)
        return out

    def _clusters(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Per cluster: its counters and endpoints now, and its chart series (requests when an http listener
        sends to it, else upstream connections)."""
        http_clusters = {r.cluster for r in snap.layout.requests}
        out = []
        for name, c in snap.clusters().items():
            item = {k: c[k] for k in ("balancer", "retries", "failed", "ejections", "checks_ok", "checks_failed",
                                      "upstream_active", "upstream_connections", "connect_failures",
                                      "endpoints_up")}
            item["name"] = name
            item["endpoints"] = [{k: e[k] for k in ("address", "weight", "state", "active", "connections",
                                                    "connect_failures", "workers")} for e in c["endpoints"]]
            if name in http_clusters:
                item["kind"] = "http"
                item.update(self.history.series(functools.partial(http_point, key="c:" + name, clusters=[name])))
            else:
                item["kind"] = "tcp"
                item.update(self.history.series(functools.partial(upstream_point, cluster=name)))
            out.append(item)
        return out

    def _reloads(self, snap: Snapshot) -> dict[str, Any]:
        """Reload counters and, when the server keeps one, its list of recent reloads (newest last)."""
        history = getattr(self.server, "reload_history", None)
        counts = snap.reloads           # keyed "ok"/"failed" ("success"/"failure" before reloads existed)
        return {"ok": counts.get("ok", counts.get("success", 0)),
                "failed": counts.get("failed", counts.get("failure", 0)),
                "history": list(history)[-RELOADS_SHOWN:] if history is not None else None}


def worker_counts(workers: Workers) -> dict[str, Any]:
    """The header's worker counts. With workers = 0 no worker process exists (0 configured, 0 serving, as
    /metrics counts them): `single_process` says the supervisor serves itself, `process_serving` whether it does."""
    if workers.inline:
        return {"configured": 0, "serving": 0, "single_process": True, "process_serving": bool(workers.ready)}
    return {"configured": workers.count, "serving": len(workers.ready), "single_process": False}


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each http listener's route table from the /config dict: conditions, cluster and edits per route."""
    out = []
    for lst in config.get("listeners", []):
        if lst.get("protocol") != "http":
            continue
        table = []
        for route in lst.get("routes", []):
            row = {"match": {k: route[k] for k in MATCH_KEYS if k in route}, "cluster": route.get("cluster"),
                   "edits": {k: v for k, v in route.items() if k not in MATCH_KEYS and k not in ("cluster", "service")}}
            if "service" in route:
                row["service"] = route["service"]           # a logical name: the naming panel shows where it goes
            table.append(row)
        default = lst.get("cluster") or (f"service {lst['service']}" if lst.get("service") else None)
        out.append({"listener": lst["name"], "default": default, "routes": table})
    return out
