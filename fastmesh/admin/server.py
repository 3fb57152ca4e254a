"""The admin HTTP server, in the supervisor: liveness, readiness, the effective config, cluster state, metrics,
reload (POST /reload), explain (GET /explain: where a request would go, admin/explain.py) and the loaded TLS
certificates (GET /tls: expiry, and how reloading their files went, as the workers report them).

This is not the data path: asyncio streams and the shared head parser (fastmesh/httpwire.py) are enough (GET and
HEAD, POST for /reload, keep-alive, no request bodies). Every answer except /metrics is JSON, errors included
({"error": ..., "message": ...}). Requests and replies are in admin/http.py, shared with the dashboard.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastmesh._version import __version__
from fastmesh.admin.dashboard import Dashboard
from fastmesh.admin.http import REASONS, Reply, Request, parse_request
from fastmesh.admin.metrics import (
    FILTER_COUNTS, OPENMETRICS_TYPE, PROMETHEUS_TYPE, SINK_COUNTS, SPAN_COUNTS, ProcessInfo, render, wants_openmetrics,
)
from fastmesh.admin.rates import stats_body
from fastmesh.config.load import config_to_dict
from fastmesh.config.schema import Config
from fastmesh.config.values import format_address
from fastmesh.dataplane.sockets import serving_socket
from fastmesh.dataplane.stats import Snapshot, WorkerStats
from fastmesh.digests import sha256
from fastmesh.httpwire import HeadError

log = logging.getLogger("fastmesh.admin")

MAX_HEAD = 16384            # bytes of request line + headers; more is refused with 431
IDLE_TIMEOUT = 30.0         # seconds a keep-alive connection may wait for its next request
POST_ONLY = frozenset({"/reload"})      # paths that change something: POST, never GET


class Workers(Protocol):
    """What the admin server reads from the supervisor (supervisor.Supervisor has these attributes)."""
    count: int                      # worker slots: the configured workers, or 1 (the supervisor) with workers = 0
    inline: bool                    # workers = 0: the supervisor serves itself, no worker process exists
    ready: set[int]                 # slots whose worker is serving now
    announced: bool                 # every worker has been ready at least once
    stopping: asyncio.Event         # shutdown has begun

    async def reload(self, trigger: str) -> tuple[int, dict[str, Any]]: ...      # (status, body) of a reload
    async def describe(self, clusters: list[str]) -> dict[int, dict[str, Any]]: ...   # worker -> endpoint details


class AdminServer:
    """Serves the admin API on cfg.admin's address until close()."""

    def __init__(self, cfg: Config, stats: WorkerStats, workers: Workers) -> None:
        self.cfg = cfg
        self.stats = stats
        self.workers = workers
        self.started = time.time()
        self.set_config(cfg)
        self.address = format_address(cfg.admin.host, cfg.admin.port)
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()
        self.plugin_totals = KeptTotals()       # the workers' Python-side counters (plugin_view)
        self.routes: dict[str, Callable[[Request], Reply | Awaitable[Reply]]] = {
            "/": self.index,
            "/live": self.live,
            "/ready": self.ready,
            "/config": self.config_dump,
            "/clusters": self.clusters,
            "/stats": self.stats_dump,
            "/metrics": self.metrics,
            "/reload": self.reload,
            "/explain": self.explain,
            "/naming": self.naming,
            "/tls": self.tls,
        }
        self.dashboard = Dashboard(self)
        self.routes.update(self.dashboard.routes())

    def set_config(self, cfg: Config) -> None:
        """The running config (at start and after each reload): /config, the hash in /metrics, explain. Its dict
        and hash are made when first asked for: a discovery update of 10,000 endpoints must not wait for them."""
        self.cfg = cfg
        self._config: dict[str, Any] | None = None
        self._config_hash = ""

    @property
    def config(self) -> dict[str, Any]:
        """The running config as /config shows it."""
        if self._config is None:
            self._config = config_to_dict(self.cfg)
        return self._config

    @property
    def config_hash(self) -> str:
        """A short hash of /config's canonical JSON (fastmesh_config_info)."""
        if not self._config_hash:
            canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode()
            self._config_hash = sha256(canonical).hexdigest()[:16]
        return self._config_hash

    @property
    def reload_history(self) -> Any:
        """Recent reloads, oldest first (None when the supervisor keeps no history)."""
        reloader = getattr(self.workers, "reloader", None)
        return reloader.history if reloader is not None else None

    async def start(self) -> None:
        """Bind and listen; OSError when the address is taken."""
        sock = serving_socket(self.cfg.admin.host, self.cfg.admin.port)
        if sock is not None:
            self.server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)
        else:
            self.server = await asyncio.start_server(self._serve, self.cfg.admin.host, self.cfg.admin.port,
                                                     limit=MAX_HEAD)
        log.info("admin server on http://%s/", self.address)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.connections):
                task.cancel()
            await self.server.wait_closed()
            self.server = None

    # ---- the connection loop ----

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            except asyncio.LimitOverrunError:
                await self._send(writer, None, Reply.error(431, f"the request head is over {MAX_HEAD} bytes"),
                                 keep_alive=False)
                return
            try:
                request = parse_request(head)
            except HeadError as exc:
                await self._send(writer, None, Reply.error(exc.status, str(exc)), keep_alive=False)
                return
            reply = await self.answer(request)
            keep_alive = request.keep_alive
            await self._send(writer, request, reply, keep_alive)
            if not keep_alive:
                return

    async def _send(self, writer: asyncio.StreamWriter, request: Request | None, reply: Reply,
                    keep_alive: bool) -> None:
        head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}",
                f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(reply.body)}",
                "Cache-Control: no-store",
                f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if request is None or request.method != "HEAD":
            data += reply.body
        writer.write(data)
        await writer.drain()

    async def answer(self, request: Request) -> Reply:
        """The reply to one parsed request (404 for unknown paths, 405 for a method the path does not take:
        POST on /reload, GET and HEAD everywhere else)."""
        path = request.path.rstrip("/") or "/"
        handler = self.routes.get(path)
        if handler is None:
            return Reply.error(404, f"no such path: {request.path}; try one of {', '.join(self.routes)}")
        allowed = ("POST",) if path in POST_ONLY else ("GET", "HEAD")
        if request.method not in allowed:
            return Reply.error(405, f"{request.method} is not allowed on {request.path}; use {allowed[0]}",
                               headers=(("Allow", ", ".join(allowed)),))
        try:
            reply = handler(request)
            return await reply if inspect.isawaitable(reply) else reply
        except Exception:                # a bug: say so in the log, answer with JSON, keep serving
            log.exception("admin: %s %s failed", request.method, request.path)
            return Reply.error(500, "internal error; see the fastmesh log")

    # ---- handlers ----

    def index(self, request: Request) -> Reply:
        return Reply.json(200, {"fastmesh": __version__, "paths": list(self.routes)})

    def live(self, request: Request) -> Reply:
        return Reply.json(200, {"live": True})

    def ready(self, request: Request) -> Reply:
        reasons = self.not_ready(self.stats.collect())
        if reasons:
            return Reply.json(503, {"ready": False, "error": REASONS[503], "status": 503,
                                    "message": "; ".join(reasons), "reasons": reasons})
        return Reply.json(200, {"ready": True})

    def not_ready(self, snap: Snapshot) -> list[str]:
        """Why the proxy is not ready: [] when listeners are bound and each cluster has an endpoint not known down."""
        reasons = []
        w = self.workers
        if w.stopping.is_set():
            reasons.append("shutting down")
        elif not w.announced or not w.ready:
            reasons.append(f"{len(w.ready)} of {w.count} workers serving: listeners not bound yet")
        for name, cluster in snap.clusters().items():
            if not any(e["healthy"] for e in cluster["endpoints"]):
                reasons.append(f"cluster {name}: every endpoint is down")
        return reasons

    def config_dump(self, request: Request) -> Reply:
        return Reply.json(200, self.config)

    async def clusters(self, request: Request) -> Reply:
        """Each cluster's endpoints and counters; a discovered cluster also shows its source's state, and one that
        originates TLS its client certificate (with its expiry) and trust files beside its handshake counts."""
        clusters = self.stats.collect().clusters()
        for name, state in self.discovery().items():
            if name in clusters:
                clusters[name]["discovery"] = state
        for name, view in (await self.tls_view())["clusters"].items():
            if name in clusters:
                clusters[name]["tls"] = {**clusters[name].get("tls", {}), **view}
        for name, cluster in self.cfg.clusters.items():
            if cluster.template is not None and name in clusters:
                clusters[name]["template"] = cluster.template
        return Reply.json(200, clusters)

    def rate_limits(self) -> list[dict[str, Any]]:
        """Per limited route, its counts over every worker (the supervisor maps the block the workers share)."""
        rates = getattr(self.workers, "rates", None)
        if rates is None:
            return []
        from fastmesh.dataplane.ratelimits import counts
        return counts(rates.block, self.cfg)

    async def tls(self, request: Request) -> Reply:
        """Every TLS listener's and cluster's certificates with their expiry, and how reloading their files went."""
        return Reply.json(200, await self.tls_view())

    async def tls_view(self) -> dict[str, dict[str, Any]]:
        """The workers' TLS contexts merged: per listener and per cluster, the certificates (as the first worker
        that answered has them), the reloads taken and refused over all workers, and each worker's refusal."""
        ask = getattr(self.workers, "tls_status", None)
        answers: dict[int, list[dict[str, Any]]] = await ask() if ask is not None else {}
        out: dict[str, dict[str, Any]] = {"listeners": {}, "clusters": {}}
        for n, contexts in sorted(answers.items()):
            for ctx in contexts:
                view = out[ctx["kind"] + "s"].setdefault(ctx["name"], {
                    "certificates": [], "files": [], "reloads": 0, "reload_failures": 0, "errors": {}})
                known = {c["cert"] for c in view["certificates"]}
                view["certificates"] += [c for c in ctx["certificates"] if c["cert"] not in known]
                view["files"] += [f for f in ctx["files"] if f not in view["files"]]
                view["reloads"] += ctx["reloads"]
                view["reload_failures"] += ctx["reload_failures"]
                if ctx["error"]:
                    view["errors"][f"w{n}"] = ctx["error"]
        for views in out.values():
            for view in views.values():
                # Flagged at the top: certificates served past their notAfter (dataplane/tls.py TlsWatch.expired).
                view["expired"] = [c["cert"] for c in view["certificates"] if c["expired"]]
        return out

    async def plugin_view(self) -> dict[str, Any]:
        """What the workers count in Python, summed over the workers (the shape admin/metrics.py FILTER_COUNTS
        describes): filters per (listener, plugin), span export, and records per sink, the supervisor's own event
        sinks included. Kept from going backwards when a worker restarts or reloads (KeptTotals)."""
        ask = getattr(self.workers, "plugin_counters", None)
        answers: dict[int, dict[str, Any]] = await ask() if ask is not None else {}
        for n, counted in answers.items():
            series: dict[tuple[str, ...], int] = {}
            for listener, entries in counted.get("filters", {}).items():
                for e in entries:
                    _add(series, ("filters", listener, e["plugin"]), e, FILTER_COUNTS)
            if counted.get("tracing"):
                _add(series, ("tracing",), counted["tracing"], SPAN_COUNTS)
            for sink in counted.get("sinks", ()):
                _add(series, ("sinks", sink["sink"], sink["plugin"]), sink, SINK_COUNTS)
            self.plugin_totals.update(f"w{n}", series, counted.get("pid", 0))
        events = getattr(self.workers, "events", None)
        series = {}
        for runner in getattr(events, "runners", ()):
            _add(series, ("sinks", runner.where, runner.name), runner.stats(), SINK_COUNTS)
        self.plugin_totals.update("supervisor", series)
        view: dict[str, Any] = {"filters": {}, "tracing": {}, "sinks": {}}
        for (kind, *labels, field), value in self.plugin_totals.totals().items():
            row = view[kind] if kind == "tracing" else view[kind].setdefault(tuple(labels), {})
            row[field] = value
        return view

    def discovery(self) -> dict[str, dict[str, Any]]:
        manager = getattr(self.workers, "discovery", None)
        return manager.status() if manager is not None else {}

    def naming(self, request: Request) -> Reply:
        """The naming table: its rules, its watched source's state, and how each service a route names resolves
        now (steps, the cluster taken, the share each cluster gets) with the endpoint states merged over the
        workers."""
        return Reply.json(200, self.naming_view(self.stats.collect()))

    def naming_view(self, snap: Snapshot) -> dict[str, Any]:
        from fastmesh.admin.explain import live_clusters
        from fastmesh.dataplane.naming import explain_service, services_of
        manager = getattr(self.workers, "discovery", None)
        alive = live_clusters(self.cfg, snap)
        return {"rules": list(self.cfg.naming.rules),
                "source": manager.naming_status() if manager is not None else None,
                "services": {s: explain_service(self.cfg, s, alive) for s in services_of(self.cfg)},
                "templates": manager.template_status() if manager is not None else {}}

    def stats_dump(self, request: Request) -> Reply:
        """Merged counters of listeners and clusters, HTTP responses by status class and request-duration
        histograms (admin/rates.py stats_body), for `fastmesh stat` and scripts."""
        snap = self.stats.collect()
        body = stats_body(snap)
        body["workers"] = {str(n): w for n, w in snap.worker_info().items()}
        body["single_process"] = self.workers.inline     # workers = 0: "workers" is the supervisor's own slot 0
        return Reply.json(200, body)

    async def reload(self, request: Request) -> Reply:
        """POST /reload: re-read the config file and apply it; answers when every worker has (or has not)."""
        status, body = await self.workers.reload("POST /reload")
        return Reply.json(status, body)

    async def explain(self, request: Request) -> Reply:
        """GET /explain?method=&host=&path=&header=name:value&listener=|port=: where such a request would go."""
        from fastmesh.admin.explain import ExplainError, explain_query
        try:
            data = await explain_query(self.cfg, request.query, self.stats.collect(), self.workers.describe)
        except ExplainError as exc:
            return Reply.error(exc.status, str(exc))
        return Reply.json(200, data)

    async def metrics(self, request: Request) -> Reply:
        om = wants_openmetrics(request.header("accept"))
        # Worker processes: with workers = 0 there are none (the supervisor's own data plane is not one of them;
        # whether it serves is what /ready and fastmesh_start_time_seconds tell).
        processes = not self.workers.inline
        info = ProcessInfo(__version__, self.started, self.config_hash, self.workers.count if processes else 0,
                           len(self.workers.ready) if processes else 0)
        manager = getattr(self.workers, "discovery", None)
        naming = {"source": manager.naming_status(), "templates": manager.template_status()} \
            if manager is not None else None
        return Reply(200, render(self.stats.collect(), info, om, self.discovery(), self.rate_limits(),
                                 await self.tls_view(), naming, await self.plugin_view()),
                     OPENMETRICS_TYPE if om else PROMETHEUS_TYPE)


def _add(into: dict[tuple[str, ...], int], prefix: tuple[str, ...], counted: dict[str, Any],
         keys: tuple[str, ...]) -> None:
    """Add the counts of `keys` into the series prefix + (key,) (a worker may have two filters of one plugin)."""
    for key in keys:
        series = (*prefix, key)
        into[series] = into.get(series, 0) + int(counted.get(key, 0))


class KeptTotals:
    """Sums of counters whose sources reset: a worker's Python-side counts start again from zero when it restarts
    or reloads its plugins. Per (source, series) the last value seen is kept; when the source is a new process (its
    pid changed) all its last values, and when a value is lower than the last (a reload) that one, are carried into
    the series' totals. So the sum never goes backwards and a worker that does not answer one scrape keeps its
    share; only what was counted between the last scrape and a restart or reload is lost."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, tuple[str, ...]], int] = {}
        self.carried: dict[tuple[str, ...], int] = {}
        self.pids: dict[str, int] = {}

    def update(self, source: str, values: dict[tuple[str, ...], int], pid: int = 0) -> None:
        if self.pids.setdefault(source, pid) != pid:
            self.pids[source] = pid
            for key in [k for k in self.last if k[0] == source]:
                series = key[1]
                self.carried[series] = self.carried.get(series, 0) + self.last.pop(key)
        for series, value in values.items():
            last = self.last.get((source, series), 0)
            if value < last:
                self.carried[series] = self.carried.get(series, 0) + last
            self.last[(source, series)] = value

    def totals(self) -> dict[tuple[str, ...], int]:
        out = dict(self.carried)
        for (_, series), value in self.last.items():
            out[series] = out.get(series, 0) + value
        return out
