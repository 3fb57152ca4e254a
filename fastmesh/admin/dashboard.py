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
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastmesh._core.stats import DURATION_BOUNDS, STATUS_CLASSES
from fastmesh._version import __version__
from fastmesh.dataplane.stats import Snapshot

if TYPE_CHECKING:
    from fastmesh.admin.server import AdminServer, Reply, Request

STATIC = Path(__file__).with_name("dashboard")      # index.html and the files it loads, shipped as package data
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
FIVE_XX = STATUS_CLASSES.index("5xx")
MATCH_KEYS = ("host", "path", "path_prefix", "path_regex", "methods", "headers")     # route conditions in /config


@dataclass
class Sample:
    """The counters the dashboard charts, as of one moment."""
    taken: float                                   # Unix seconds (the snapshot's time)
    listeners: dict[str, tuple[int, int, int]]     # listener -> (connections accepted, bytes in, bytes out)
    open: dict[str, int]                           # listener -> downstream connections open (a gauge)
    requests: dict[str, tuple[int, ...]]           # "listener" or "cluster" kind + name -> responses per status class
    durations: dict[str, tuple[int, ...]]          # cluster -> requests per duration bucket (not cumulative)
    upstream: dict[str, int]                       # cluster -> upstream connections opened


def take_sample(snap: Snapshot) -> Sample:
    """The dashboard's view of one merged snapshot."""
    rows = snap.listeners()
    listeners = {name: (row["accepted"], row["bytes_in"], row["bytes_out"]) for name, row in rows.items()}
    requests: dict[str, list[int]] = {}
    for listener, cluster, cls, value in snap.requests():
        i = STATUS_CLASSES.index(cls)
        for key in ("l:" + listener, "c:" + cluster):
            requests.setdefault(key, [0] * len(STATUS_CLASSES))[i] += value
    durations = {}
    for cluster, (buckets, _total, _count) in snap.durations().items():
        running = [count for _bound, count in buckets]
        durations[cluster] = tuple(b - a for a, b in zip([0, *running], running))
    upstream = {name: sum(e["connections"] for e in c["endpoints"]) for name, c in snap.clusters().items()}
    gauges = {name: row["active"] for name, row in rows.items()}
    return Sample(snap.taken, listeners, gauges, {k: tuple(v) for k, v in requests.items()}, durations, upstream)


def quantile(q: float, counts: tuple[int, ...] | list[int]) -> float | None:
    """The q-quantile in seconds of per-bucket counts over DURATION_BOUNDS (+Inf last), interpolated linearly in
    its bucket as Prometheus' histogram_quantile does; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count > 0 and running + count >= rank:
            if i >= len(DURATION_BOUNDS):
                return DURATION_BOUNDS[-1]          # in the +Inf bucket: the largest bound is all we know
            lower = DURATION_BOUNDS[i - 1] if i else 0.0
            return lower + (DURATION_BOUNDS[i] - lower) * (rank - running) / count
        running += count
    return DURATION_BOUNDS[-1]


def _delta(new: tuple[int, ...] | None, old: tuple[int, ...] | None) -> list[int] | None:
    if new is None or old is None:
        return None
    return [max(0, a - b) for a, b in zip(new, old)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def http_point(new: Sample, old: Sample, key: str, clusters: list[str]) -> dict[str, float | None]:
    """Responses/s, success share (non-5xx, 0..1) and p50/p99 latency (ms) between two samples for one listener
    or cluster (key); latency from the histograms of `clusters` (none: latency unknown)."""
    dt = new.taken - old.taken
    classes = _delta(new.requests.get(key), old.requests.get(key))
    total = sum(classes) if classes else 0
    merged: list[int] | None = None
    for cluster in clusters:
        d = _delta(new.durations.get(cluster), old.durations.get(cluster))
        if d is not None:
            merged = d if merged is None else [a + b for a, b in zip(merged, d)]
    return {
        "rps": round(total / dt, 3) if dt > 0 else None,
        "success": round(1 - classes[FIVE_XX] / total, 5) if classes and total else None,
        "p50": _ms(quantile(0.5, merged)) if merged else None,
        "p99": _ms(quantile(0.99, merged)) if merged else None,
    }


def tcp_point(new: Sample, old: Sample, listener: str) -> dict[str, float | None]:
    """Connections/s and bytes/s each way between two samples for one listener, and its connections open at the
    later one."""
    dt = new.taken - old.taken
    d = _delta(new.listeners.get(listener), old.listeners.get(listener))
    opened = new.open.get(listener)
    if d is None or dt <= 0:
        return {"cps": None, "in": None, "out": None, "open": opened}
    return {"cps": round(d[0] / dt, 3), "in": round(d[1] / dt, 1), "out": round(d[2] / dt, 1), "open": opened}


def upstream_point(new: Sample, old: Sample, cluster: str) -> dict[str, float | None]:
    """Upstream connections opened per second: what a cluster that only tcp listeners use is charted by."""
    dt = new.taken - old.taken
    if cluster not in new.upstream or cluster not in old.upstream or dt <= 0:
        return {"cps": None}
    return {"cps": round(max(0, new.upstream[cluster] - old.upstream[cluster]) / dt, 3)}


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
        self.samples.append(take_sample(snap))
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


class Dashboard:
    """The dashboard's routes on one AdminServer, and the history of samples they chart."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.history = History()
        self.files = {p.name: p.read_bytes() for p in sorted(STATIC.iterdir()) if p.suffix in TYPES}

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
        from fastmesh.admin.server import Reply
        headers = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"))
        return Reply(200, self.files[name], TYPES[Path(name).suffix], headers)

    def data(self, request: Request) -> Reply:
        from fastmesh.admin.server import Reply
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
            "workers": {"configured": workers.count, "serving": len(workers.ready)},
            "restarts": snap.restarts,
            "reloads": self._reloads(snap),
            "listeners": self._listeners(snap),
            "clusters": self._clusters(snap),
            "routes": routes(server.config),
        }

    def _listeners(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Per listener: its counters now, and its chart series (http: requests; tcp: connections and bytes)."""
        http_pairs = [(r.listener, r.cluster) for r in snap.layout.requests]
        owners: dict[str, set[str]] = {}
        for listener, cluster in http_pairs:
            owners.setdefault(cluster, set()).add(listener)
        addresses = {lst["name"]: lst.get("listen") for lst in self.server.config.get("listeners", [])}
        out = []
        for name, row in snap.listeners().items():
            item: dict[str, Any] = {"name": name, "protocol": row["protocol"], "cluster": row["cluster"],
                                    "address": addresses.get(name), "active": row["active"],
                                    "accepted": row["accepted"], "failed": row["failed"]}
            if row["protocol"] == "tcp":
                item["kind"] = "tcp"
                item.update(self.history.series(functools.partial(tcp_point, listener=name)))
            else:
                mine = [c for lst, c in http_pairs if lst == name]
                # Latency is kept per cluster: a listener's is exact only when no other listener shares its clusters.
                own = all(owners.get(c) == {name} for c in mine)
                item["kind"] = "http"
                item["latency_own"] = own
                point = functools.partial(http_point, key="l:" + name, clusters=mine if own else [])
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


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each http listener's route table from the /config dict: conditions, cluster and edits per route."""
    out = []
    for lst in config.get("listeners", []):
        if lst.get("protocol") != "http":
            continue
        table = []
        for route in lst.get("routes", []):
            table.append({"match": {k: route[k] for k in MATCH_KEYS if k in route},
                          "cluster": route.get("cluster"),
                          "edits": {k: v for k, v in route.items() if k not in MATCH_KEYS and k != "cluster"}})
        out.append({"listener": lst["name"], "default": lst.get("cluster"), "routes": table})
    return out
