"""Explain a request: which listener, route (and why each earlier route did not match), cluster and endpoint it
would get, and the time and retry budget it would have; for GET /explain and `fastmesh explain`.

It answers from the supervisor's view: the running config, the endpoint states merged from every worker's stats
block, and details only a worker holds (ejection end, slow start, latency estimate) asked of each worker over its
control channel. Which endpoint "would be picked" is a prediction (dataplane/explain.py says how it is made).
Without a running instance (`fastmesh explain CONFIG` when nothing answers) it explains from the config alone.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastmesh.admin.explain_tls import cluster_tls, listener_tls
from fastmesh.config.schema import GRPC_STATUS_NAMES, Cluster, Config, Listener, Route
from fastmesh.dataplane.explain import (
    HASHING, REPLAYABLE_METHODS, TIMEOUT_HEADER, cookie_in, predict, route, timeout_ms,
)
from fastmesh.dataplane.naming import OVERRIDE_HEADER, build_names, explain_service
from fastmesh.dataplane.stats import Snapshot
from fastmesh.plugins import registry

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
ELIGIBLE = ("up", "probing")        # merged endpoint states a balancer may pick
PREDICTION_NOTE = ("a prediction: the supervisor built this cluster's balancer from the endpoint states merged "
                   "over the workers; each worker has its own balancer (rotation position, random draws, "
                   "latency estimates), so the one that takes the request may choose another endpoint")

Describe = Callable[[list[str]], Awaitable[dict[int, dict[str, Any]]]]


class ExplainError(Exception):
    """A question explain cannot answer; status is the HTTP status GET /explain answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Question:
    """The request to explain."""
    method: str = "GET"
    host: str = ""                  # the Host header, port included when the URL has one
    target: str = "/"               # path and query
    headers: list[tuple[str, str]] = field(default_factory=list)
    listener: str | None = None     # by name; else by port (`port`, or the one in host)
    port: int | None = None
    client: str | None = None       # the client's IP, for source_ip hash keys


def parse_query(query: str) -> Question:
    """GET /explain's parameters: method, host, path, header=name:value (repeatable), listener, port, client."""
    q = Question()
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "method":
            q.method = value
        elif key == "host":
            q.host = value
        elif key == "path":
            q.target = value
        elif key == "header":
            name, sep, val = value.partition(":")
            if not sep:
                raise ExplainError(400, f"header={value!r}: expected name:value")
            q.headers.append((name.strip(), val.strip()))
        elif key == "listener":
            q.listener = value
        elif key == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ExplainError(400, f"port={value!r}: expected a port number")
            q.port = int(value)
        elif key == "client":
            q.client = value
        else:
            raise ExplainError(400, f"unknown parameter {key!r}; expected method, host, path, header, listener, "
                                    "port or client")
    return q


def live_clusters(cfg: Config, snap: Snapshot | None) -> dict[str, bool]:
    """Per cluster: whether it has an endpoint a balancer may pick (merged over the workers; without a running
    instance, whether it lists any endpoint). What a naming table's fallback and splits decide on."""
    if snap is None:
        return {name: bool(c.endpoints) for name, c in cfg.clusters.items()}
    merged = snap.clusters()
    return {name: any(e["state"] in ELIGIBLE for e in merged.get(name, {}).get("endpoints", []))
            for name in cfg.clusters}


async def explain_query(cfg: Config, query: str, snap: Snapshot, describe: Describe) -> dict[str, Any]:
    """GET /explain: the explanation with endpoint states from the running workers."""
    q = parse_query(query)
    out = explain(cfg, q, live_clusters(cfg, snap))
    cluster = out["cluster"]
    if cluster is not None:
        details = await describe([cluster["name"]])
        states = snap.clusters().get(cluster["name"])
        add_endpoints(out, cfg.clusters[cluster["name"]], states, details, q)
        out["view"] = f"the supervisor's, merged over {len(snap.workers)} worker(s)"
    return out


def explain_offline(cfg: Config, q: Question) -> dict[str, Any]:
    """The explanation from the config alone: endpoint states unknown (the prediction takes every one as up)."""
    out = explain(cfg, q)
    if out["cluster"] is not None:
        add_endpoints(out, cfg.clusters[out["cluster"]["name"]], None, {}, q)
    out["view"] = "the config only (no running instance answered): endpoint states are unknown"
    return out


def explain(cfg: Config, q: Question, alive: dict[str, bool] | None = None) -> dict[str, Any]:
    """Listener, routes, naming, cluster and policy for q; endpoints are added by add_endpoints. `alive`: which
    clusters have an endpoint up (live_clusters; None: from the config alone)."""
    lst, chosen_by = pick_listener(cfg, q)
    raw = request_head(q)
    out: dict[str, Any] = {
        "request": {"method": q.method, "host": q.host, "target": q.target,
                    "headers": [f"{n}: {v}" for n, v in q.headers]},
        "listener": {"name": lst.name, "address": lst.address, "protocol": lst.protocol, "chosen_by": chosen_by},
    }
    terminated = listener_tls(lst)
    if terminated is not None:
        out["listener"]["tls"] = terminated
    if lst.protocol != "http":
        out["routing"] = {"note": "a tcp listener relays every connection to its cluster: method, host, path and "
                                  "headers play no part", "routes": []}
        cluster_name: str | None = lst.cluster
        out["outcome"] = f"relayed to cluster {cluster_name}"
        if lst.service is not None:
            # Resolved per connection at accept, like a route's service (no per-request override on tcp).
            naming = explain_service(cfg, lst.service, alive if alive is not None else live_clusters(cfg, None))
            if naming["shares"] and len(naming["shares"]) > 1:
                naming["cluster"] = max(naming["shares"], key=lambda c: naming["shares"][c])
            naming["override_note"] = None
            out["naming"] = naming
            cluster_name = naming["cluster"]
            out["routing"]["note"] = ("a tcp listener relays every connection to the cluster its service resolves "
                                      "to when the connection is accepted: method, host, path and headers play no "
                                      "part")
            out["outcome"] = (f"each connection is relayed to service {lst.service} and the naming table to a "
                              f"cluster (most connections: {cluster_name})" if cluster_name is not None else
                              f"service {lst.service} names no cluster: connections are closed at accept")
    else:
        try:
            seen = route(lst, list(cfg.clusters), raw, build_names(cfg))
        except ValueError as exc:
            raise ExplainError(400, f"the request head is not valid HTTP/1.1: {exc}") from None
        rows = routes_table(lst, seen, q)
        chosen = seen["chosen"]
        cluster_name = seen["rows"][chosen]["cluster"] if chosen >= 0 else None
        service = seen["rows"][chosen].get("service") if chosen >= 0 else None
        if service is not None:
            out["naming"] = naming_steps(cfg, lst, service, q, alive if alive is not None else live_clusters(cfg, None))
            cluster_name = out["naming"]["cluster"]
        out["routing"] = {"host": seen["host"], "path": seen["path"], "routes": rows,
                          "matched": chosen if chosen >= 0 else None, "upstream_target": seen["target"]}
        if chosen >= 0:
            out["filters"] = filters_passed(lst, chosen)
            limit = lst.routes[chosen].rate_limit if chosen < len(lst.routes) else None
            if limit is not None:
                out["rate_limit"] = {"limit": limit.text(), "rate": limit.rate, "per_seconds": limit.per,
                                     "burst": limit.burst, "key": limit.key or "route", "buckets": limit.buckets,
                                     "workers": cfg.worker_count()}
        if chosen < 0:
            out["outcome"] = "no route matches: the proxy answers 404 (fastmesh-error: no route)"
        else:
            label = "the listener's default cluster" if rows[chosen]["default"] else f"route {chosen}"
            via = f"service {service} and the naming table to " if service is not None else ""
            if cluster_name is None:
                out["outcome"] = f"{label} sends it to service {service}, which names no cluster: 503 no endpoints"
            else:
                out["outcome"] = f"{label} sends it to {via}cluster {cluster_name} as {q.method} {seen['target']}"
    out["cluster"] = None if cluster_name is None else {"name": cluster_name,
                                                        "balancer": cfg.clusters[cluster_name].balancer,
                                                        "protocol": cfg.clusters[cluster_name].protocol}
    originated = cluster_tls(cfg.clusters[cluster_name], lst.protocol) if cluster_name is not None else None
    if originated is not None:
        out["cluster"]["tls"] = originated
    out["policy"] = (policy(lst, cfg.clusters[cluster_name], q, cfg.worker_count()) if cluster_name is not None
                     else None)
    return out


def filters_passed(lst: Listener, route: int) -> list[dict[str, Any]]:
    """The filter plugins a request taken by `route` passes, in order: the listener's, then the route's (the default
    cluster's catch-all, one past the routes, has the listener's only)."""
    own = lst.routes[route].filters if route < len(lst.routes) else []
    out = []
    for where, specs in ((f"listeners.{lst.name}.filters", lst.filters),
                         (f"listeners.{lst.name}.routes[{route}].filters", own)):
        for j, spec in enumerate(specs):
            found = registry.resolve(spec.plugin)
            out.append({"where": f"{where}[{j}]", "plugin": spec.plugin, "origin": found.origin,
                        "async": registry.is_async(found.obj, "filter"), "timeout": spec.timeout,
                        "failure_mode": spec.failure_mode, "run": spec.run,
                        "request": callable(getattr(found.obj, "on_request", None)),
                        "response": callable(getattr(found.obj, registry.RESPONSE_METHOD, None))})
    return out


def naming_steps(cfg: Config, lst: Listener, service: str, q: Question, alive: dict[str, bool]) -> dict[str, Any]:
    """The naming half of an explanation: each step of the service's resolution and the cluster it gives (the one
    most requests get when a split shares them out)."""
    override = next((v for k, v in q.headers if k.lower() == OVERRIDE_HEADER), None)
    note = None
    if override is not None and not lst.trust_naming:
        note = f"{OVERRIDE_HEADER} ignored and removed: listener {lst.name} has trust_naming = false"
        override = None
    try:
        out = explain_service(cfg, service, alive, override)
    except ValueError as exc:
        out = explain_service(cfg, service, alive)
        note = f"{OVERRIDE_HEADER} ignored (the table is used as it is): {exc}"
    if out["shares"] and len(out["shares"]) > 1:
        out["cluster"] = max(out["shares"], key=lambda c: out["shares"][c])
    out["override_note"] = note
    return out


def pick_listener(cfg: Config, q: Question) -> tuple[Listener, str]:
    """The listener the request arrives on, and how it was chosen."""
    listeners = ", ".join(f"{lst.name} on {lst.address}" for lst in cfg.listeners) or "none"
    if q.listener is not None:
        for lst in cfg.listeners:
            if lst.name == q.listener:
                return lst, f"listener={lst.name}"
        raise ExplainError(404, f"no listener named {q.listener!r} (listeners: {listeners})")
    port = q.port
    if port is None:
        m = re.fullmatch(r"(?:\[[^\]]*\]|[^:]*):(\d+)", q.host)
        port = int(m[1]) if m else None
    if port is not None:
        matches = [lst for lst in cfg.listeners if lst.port == port]
        if not matches:
            raise ExplainError(404, f"no listener on port {port} (listeners: {listeners})")
        return matches[0], f"port {port}"
    if len(cfg.listeners) == 1:
        return cfg.listeners[0], "the only listener"
    raise ExplainError(400, f"say which listener: listener=NAME, port=N or a port in host (listeners: {listeners})")


def request_head(q: Question) -> bytes:
    """The HTTP/1.1 request head the question describes; ExplainError for what no client could send."""
    if not TOKEN.fullmatch(q.method):
        raise ExplainError(400, f"method {q.method!r} is not an HTTP token")
    if not q.target.startswith("/") or any(c in q.target for c in " \r\n\t"):
        raise ExplainError(400, f"path {q.target!r}: expected an origin-form target starting with /")
    lines = [f"{q.method} {q.target} HTTP/1.1"]
    if q.host and not any(n.lower() == "host" for n, _ in q.headers):
        lines.append(f"Host: {q.host}")
    for name, value in q.headers:
        if not TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise ExplainError(400, f"header {name!r}: expected a token name and a value on one line")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ExplainError(400, "the request has characters outside Latin-1") from None


def conditions(route: Route) -> dict[str, Any]:
    """A route's match conditions, those it sets."""
    out: dict[str, Any] = {}
    for key in ("host", "path", "path_prefix", "path_regex"):
        if getattr(route, key) is not None:
            out[key] = getattr(route, key)
    if route.methods:
        out["methods"] = list(route.methods)
    if route.headers:
        out["headers"] = dict(route.headers)
    return out


def routes_table(lst: Listener, seen: dict[str, Any], q: Question) -> list[dict[str, Any]]:
    """One row per route, then the default: its conditions, and matched / why not / not reached."""
    rows = []
    for row in seen["rows"]:
        i = row["route"]
        default = i >= len(lst.routes)
        cond = {} if default else conditions(lst.routes[i])
        if seen["chosen"] >= 0 and i > seen["chosen"]:
            result, reason = "not reached", f"route {seen['chosen']} matched first"
        elif row["matched"]:
            result, reason = "matched", "the listener's default cluster" if default else "every condition holds"
        else:
            result, reason = "no match", why_not(row["failed"], lst.routes[i], seen, q)
        rows.append({"route": i, "default": default, "cluster": row["cluster"], "service": row.get("service"),
                     "conditions": cond,
                     "result": result, "reason": reason})
    return rows


def why_not(failed: str, route: Route, seen: dict[str, Any], q: Question) -> str:
    """The first condition the request fails, in words."""
    if failed == "host":
        want = route.host or ""
        if want.startswith("*."):
            return f"host {seen['host']!r} is not a subdomain of {want[2:]!r}"
        return f"host {seen['host']!r} is not {want!r}"
    if failed == "path":
        if route.path is not None and (route.path_prefix is None and route.path_regex is None):
            return f"path {seen['path']!r} is not {route.path!r}"
        if route.path_prefix is not None:
            return f"path {seen['path']!r} does not start with {route.path_prefix!r}"
        if route.path_regex is not None:
            return f"path {seen['path']!r} does not match /{route.path_regex}/"
        return f"path {seen['path']!r} does not match"
    if failed == "method":
        return f"method {q.method} is not one of {', '.join(route.methods)}"
    if failed.startswith("header "):
        name = failed[7:]
        want = next((v for k, v in route.headers.items() if k.lower() == name.lower()), "")
        got = [v for k, v in q.headers if k.lower() == name.lower()]
        return f"header {name}: expected {want!r}, got {', '.join(repr(v) for v in got) if got else 'none'}"
    return failed


def policy(lst: Listener, c: Cluster, q: Question, workers: int = 1) -> dict[str, Any]:
    """Connect, time and retry budget that would apply to the request. Limits and the retry budget hold for the
    whole instance (its `workers` processes count together); the adaptive limit is each worker's estimate,
    checked against the instance's requests in flight."""
    out: dict[str, Any] = {"connect_timeout": c.connect_timeout, "connect_attempts": c.connect_attempts}
    if lst.protocol != "http":
        out["idle_timeout"] = lst.idle_timeout
        return out
    per_try = c.per_try_timeout or c.response_timeout
    client_ms = next((v for k, v in q.headers if k.lower() == TIMEOUT_HEADER), None)
    deadline = c.timeout or None
    client: Any = None
    if client_ms is not None:
        ms = timeout_ms(client_ms.encode("latin-1", "replace"))
        if not lst.trust_headers:
            client = "ignored (trust_headers = false)"
        elif ms < 0:
            client = f"ignored (not 1 to 12 digits: {client_ms!r})"
        else:
            client = ms
            deadline = min(deadline or float("inf"), ms / 1000.0)
    r = c.retries
    out.update({
        "per_try_timeout": per_try,
        "per_try_timeout_from": "per_try_timeout" if c.per_try_timeout else "response_timeout",
        "timeout": c.timeout or None,
        "client_deadline_ms": client,
        "deadline": deadline,
        "retries": {"attempts": r.attempts, "on": list(r.on), "budget_percent": r.budget_percent,
                    "min_per_second": r.min_per_second, "backoff": r.backoff, "max_backoff": r.max_backoff,
                    "grpc_status": [GRPC_STATUS_NAMES[code] for code in r.grpc_status]},
        "retryable_method": q.method in REPLAYABLE_METHODS,
        "limits": {"max_connections": c.limits.max_connections, "max_pending": c.limits.max_pending,
                   "max_requests": c.limits.max_requests, "max_retries": c.limits.max_retries,
                   "adaptive": c.adaptive_concurrency is not None, "scope": "instance", "workers": workers},
    })
    return out


def add_endpoints(out: dict[str, Any], c: Cluster, states: dict[str, Any] | None,
                  details: dict[int, dict[str, Any]], q: Question) -> None:
    """The cluster's endpoints (merged states, with each worker's details) and the predicted pick."""
    endpoints = merge_endpoints(c, states, details)
    key, key_text = request_key(c, q)
    guess = predict(c, endpoints, key)
    guess["how"] = (f"{c.balancer} on {key_text}" if guess["keyed"] else
                    f"{c.balancer}, no {key_text} in the request: any endpoint" if c.balancer in HASHING else
                    c.balancer)
    if guess["fail_open"]:
        guess["how"] += "; no endpoint is eligible, so the proxy tries them in turn (fail open)"
    guess["note"] = PREDICTION_NOTE
    cluster = out["cluster"]
    cluster["endpoints"] = endpoints
    if c.balancer in HASHING:
        cluster["hash_key"] = c.hash_key or "source_ip"
    cluster["would_pick"] = guess


def merge_endpoints(c: Cluster, states: dict[str, Any] | None, details: dict[int, dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """Per endpoint: the merged state of the stats blocks plus the workers' details (ejection end: the latest;
    slow start: the lowest share; latency: the mean of the workers' estimates)."""
    merged = states["endpoints"] if states is not None else []
    out = []
    for i, e in enumerate(c.endpoints):
        address = f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}"
        base = merged[i] if i < len(merged) and merged[i]["address"] == address else None
        mine = [w[c.name][i] for w in details.values()
                if c.name in w and i < len(w[c.name]) and w[c.name][i]["address"] == address]
        state = base["state"] if base is not None else "unknown"
        ejected = [d["ejected_for"] for d in mine if d["ejected_for"] is not None]
        ramps = [d["slow_start"] for d in mine if d["slow_start"] is not None]
        latencies = [d["latency_ms"] for d in mine if d["latency_ms"] is not None]
        out.append({
            "address": address,
            "weight": e.weight,
            "state": state,
            "eligible": state in ELIGIBLE or state == "unknown",
            "active": base["active"] if base is not None else sum(d["active"] for d in mine),
            "connections": base["connections"] if base is not None else None,
            "connect_failures": base["connect_failures"] if base is not None else None,
            "ejected_for": max(ejected) if ejected else None,
            "slow_start": min(ramps) if ramps else None,
            "latency_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
            "consecutive_failures": max((d["consecutive_failures"] for d in mine), default=None),
            "workers": base["workers"] if base is not None else {},
        })
    return out


def request_key(c: Cluster, q: Question) -> tuple[bytes | None, str]:
    """The consistent-hash key the request carries for cluster c (None when it has none), and its name."""
    kind, _, name = (c.hash_key or "source_ip").partition(":")
    if kind == "source_ip":
        return (q.client.encode() if q.client else None), "source_ip (give client=IP)"
    if kind == "header":
        value = next((v for k, v in q.headers if k.lower() == name.lower()), None)
        return (value.encode("latin-1") if value is not None else None), f"header {name}"
    for k, v in q.headers:
        if k.lower() == "cookie":
            cookie = cookie_in(v.encode("latin-1", "replace"), name.encode("ascii"))
            if cookie is not None:
                return cookie, f"cookie {name}"
    return None, f"cookie {name}"
