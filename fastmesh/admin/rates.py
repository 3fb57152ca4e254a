"""Rates between two samples of the merged counters: requests/s, non-5xx share, p50/p99 latency, connections/s and
bytes/s. The dashboard (samples of snapshots it takes) and `fastmesh stat` (samples of GET /stats answers) both
compute them here, from the same plain form of a snapshot: stats_body()."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastmesh._core.stats import DURATION_BOUNDS, STATUS_CLASSES
from fastmesh.dataplane.stats import Snapshot

FIVE_XX = STATUS_CLASSES.index("5xx")


def stats_body(snap: Snapshot) -> dict[str, Any]:
    """One snapshot as JSON-ready data (GET /stats answers with this and "workers"): listeners, clusters,
    "requests" as listener -> cluster -> status class -> responses (http listeners only), and per cluster an http
    listener sends to, its request-duration histogram: "counts" per bucket (not cumulative) over "bounds" (upper
    bounds in seconds; the last count is of requests slower than the largest bound), "sum" (seconds), "count"."""
    requests: dict[str, dict[str, dict[str, int]]] = {}
    for listener, cluster, cls, value in snap.requests():
        requests.setdefault(listener, {}).setdefault(cluster, {})[cls] = value
    durations = {}
    for cluster, (buckets, seconds, count) in snap.durations().items():
        running = [n for _bound, n in buckets]
        durations[cluster] = {"counts": [b - a for a, b in zip([0, *running], running)], "sum": seconds,
                              "count": count}
    return {"time": snap.taken, "listeners": snap.listeners(), "clusters": snap.clusters(), "requests": requests,
            "bounds": list(DURATION_BOUNDS), "durations": durations}


@dataclass
class Sample:
    """The counters rates are computed from, as of one moment."""
    taken: float                                   # Unix seconds (the snapshot's time)
    listeners: dict[str, tuple[int, int, int]]     # listener -> (connections accepted, bytes in, bytes out)
    open: dict[str, int]                           # listener -> downstream connections open (a gauge)
    requests: dict[str, tuple[int, ...]]           # "l:" or "c:" + listener or cluster -> responses per status class
    durations: dict[str, tuple[int, ...]]          # cluster -> requests per duration bucket (not cumulative)
    upstream: dict[str, int]                       # cluster -> upstream connections opened
    bounds: tuple[float, ...] = DURATION_BOUNDS    # the histograms' bucket upper bounds, seconds (+Inf implied)


def take_sample(body: Mapping[str, Any]) -> Sample:
    """A Sample of one stats_body() (or a GET /stats answer parsed; one without HTTP counters has no requests)."""
    rows = body["listeners"]
    listeners = {name: (row["accepted"], row["bytes_in"], row["bytes_out"]) for name, row in rows.items()}
    requests: dict[str, list[int]] = {}
    for listener, clusters in body.get("requests", {}).items():
        for cluster, classes in clusters.items():
            for i, cls in enumerate(STATUS_CLASSES):
                for key in ("l:" + listener, "c:" + cluster):
                    requests.setdefault(key, [0] * len(STATUS_CLASSES))[i] += classes.get(cls, 0)
    durations = {cluster: tuple(h["counts"]) for cluster, h in body.get("durations", {}).items()}
    upstream = {name: c["upstream_connections"] for name, c in body["clusters"].items()}
    return Sample(body["time"], listeners, {name: row["active"] for name, row in rows.items()},
                  {k: tuple(v) for k, v in requests.items()}, durations, upstream,
                  tuple(body.get("bounds", DURATION_BOUNDS)))


def http_pairs(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(listener, cluster) for every cluster an http listener can send to, in layout order."""
    return [(listener, cluster) for listener, clusters in body.get("requests", {}).items() for cluster in clusters]


def latency_clusters(pairs: Iterable[tuple[str, str]], listener: str) -> list[str] | None:
    """The clusters whose histograms make up a listener's latency: all it sends to, when no other listener sends to
    any of them; None when one is shared (durations are kept per cluster, so the listener's own are unknown)."""
    pairs = list(pairs)
    mine = [c for lst, c in pairs if lst == listener]
    shared = any(c in mine for lst, c in pairs if lst != listener)
    return None if shared else mine


def quantile(q: float, counts: tuple[int, ...] | list[int], bounds: tuple[float, ...] = DURATION_BOUNDS
             ) -> float | None:
    """The q-quantile in seconds of per-bucket counts over bounds (+Inf last), interpolated linearly in its bucket
    as Prometheus' histogram_quantile does; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count > 0 and running + count >= rank:
            if i >= len(bounds):
                return bounds[-1]                   # in the +Inf bucket: the largest bound is all we know
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


def _delta(new: tuple[int, ...] | None, old: tuple[int, ...] | None) -> list[int] | None:
    if new is None or old is None:
        return None
    return [max(0, a - b) for a, b in zip(new, old)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def http_point(new: Sample, old: Sample, key: str, clusters: list[str]) -> dict[str, float | None]:
    """Responses/s, success share (non-5xx, 0..1; None without responses) and p50/p99 latency (ms) between two
    samples for one listener or cluster (key); latency from the histograms of `clusters` (none: latency unknown)."""
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
        "p50": _ms(quantile(0.5, merged, new.bounds)) if merged else None,
        "p99": _ms(quantile(0.99, merged, new.bounds)) if merged else None,
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
