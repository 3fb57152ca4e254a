"""The data-plane half of explain: ask a listener's compiled router about one request head, read a live cluster's
endpoint details (in a worker), and predict a pick from merged endpoint states (in the supervisor).

The prediction builds the cluster's core objects afresh in the supervisor and feeds them what the workers
published (which endpoints are out, requests in flight, latency estimates): it is what a worker with that view
would do, not what a particular worker will do (each has its own round-robin position and random draws).

The request rules explain applies are the core's own, re-exported here for the control plane: which methods a
failed try may replay, the deadline header and which values of it count, how a cookie key is read.
"""
from __future__ import annotations

import time
from typing import Any

from fastmesh._core.balance.factory import HASHING
from fastmesh._core.balance.hashing import hash_key
from fastmesh._core.cluster import Cluster
from fastmesh._core.naming import Names
from fastmesh._core.exchange import REPLAYABLE_METHODS, TIMEOUT_HEADER, cookie_in, timeout_ms
from fastmesh._core.router import request_parts
from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.dataplane.clusters import build_cluster
from fastmesh.dataplane.routes import build_router

MAX_ACTIVE_FED = 10_000     # requests in flight fed to a predicting balancer, at most (a bound on the work)

__all__ = ["HASHING", "REPLAYABLE_METHODS", "TIMEOUT_HEADER", "cookie_in", "timeout_ms", "route", "endpoint_details",
           "predict"]


def route(listener: ListenerConfig, clusters: list[str], raw_head: bytes, names: Names | None = None
          ) -> dict[str, Any]:
    """How the listener's router sees raw_head: per route {"route", "cluster", "matched", "failed"} (the last
    row is the listener's default cluster, if it has one), the route taken (-1: none), the host and path it
    matched on, and the target sent upstream. ValueError for a head the parser refuses."""
    router = build_router(listener, clusters, names)
    rows = router.explain(raw_head)
    chosen = router.match_request(raw_head)
    host, path, _ = request_parts(raw_head)
    target = router.target_for(raw_head, chosen) if chosen >= 0 else None
    return {"rows": rows, "chosen": chosen, "host": host.decode("latin-1"), "path": path.decode("latin-1"),
            "target": target.decode("latin-1") if target is not None else None}


def endpoint_details(cluster: Cluster) -> list[dict[str, Any]]:
    """A worker's view of each endpoint of a core Cluster: what the shared stats block does not carry."""
    now = time.monotonic()          # the clock the core's ejection times are on (CLOCK_MONOTONIC)
    balancer = cluster.balancer
    shares = balancer.ramp_shares()
    costs = balancer.costs() if hasattr(balancer, "costs") else None
    out = []
    for e in cluster.endpoints():
        i = e["index"]
        until = e["ejected_until"]
        out.append({
            "address": e["address"],
            "state": e["state"],
            "eligible": e["eligible"],
            "healthy": e["healthy"],
            "ejected_for": round(max(0.0, until - now), 3) if until is not None else None,
            "ejections": e["ejections"],
            "consecutive_failures": e["consecutive_failures"],
            "active": e["active"],
            "slow_start": round(shares[i], 3) if shares[i] < 1.0 else None,
            "latency_ms": round(costs[i] * 1000.0, 3) if costs is not None else None,
        })
    return out


def predict(cfg: ClusterConfig, endpoints: list[dict[str, Any]], key: bytes | None, draws: int = 1000
            ) -> dict[str, Any]:
    """The endpoint a worker would most likely pick with this view of the endpoints (each: "eligible",
    "active", "latency_ms" or None), and the share of `draws` picks each endpoint gets. `key` is the request's
    consistent-hash key (hashing balancers: then the pick is certain) or None."""
    cluster = build_cluster(cfg)
    balancer = cluster.balancer
    fed = 0
    for i, ep in enumerate(endpoints):
        if not ep["eligible"]:
            cluster.set_health(i, False)        # out of the balancer, as any reason to be out would make it
        for _ in range(max(0, min(int(ep.get("active") or 0), MAX_ACTIVE_FED - fed))):
            balancer.start(i)
            fed += 1
        if ep.get("latency_ms") is not None:
            balancer.observe_py(i, ep["latency_ms"] / 1000.0, 200)
    hashing = cfg.balancer in HASHING
    keyed = hashing and key is not None
    if keyed:
        assert key is not None
        pick = balancer.pick_hashed(hash_key(key))
        if pick < 0:
            pick = cluster.pick(-1)     # no endpoint up: the fail-open rotation
        counts = {pick: draws}
    else:
        counts = {}
        for _ in range(draws):
            i = cluster.pick(-1)
            counts[i] = counts.get(i, 0) + 1
        # The most likely endpoint (the lowest index among equals): one draw would only show a random one.
        pick = max(sorted(counts), key=lambda i: counts[i], default=-1)
    addresses = [e["address"] for e in endpoints]
    return {
        "endpoint": addresses[pick] if 0 <= pick < len(addresses) else None,
        "keyed": keyed,
        "fail_open": bool(endpoints) and not any(e["eligible"] for e in endpoints),
        "shares": {addresses[i]: round(n / draws, 3) for i, n in sorted(counts.items()) if 0 <= i < len(addresses)},
    }
