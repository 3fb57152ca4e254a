"""`fastmesh stat`: tables of listeners and clusters (requests/s, success rate, p50/p99 latency, connections/s,
bytes/s, open connections, endpoints up) from a running instance's admin server, once or refreshed (--watch).

The rates come from two GET /stats answers `--interval` seconds apart, computed by admin/rates.py (the
dashboard's arithmetic) from the counters and duration histograms those answers carry."""
from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any, TextIO

from fastmesh.admin.rates import http_pairs, http_point, latency_clusters, take_sample

DEFAULT_ADMIN = "127.0.0.1:9990"
TIMEOUT = 5.0       # seconds for one admin request


class StatError(Exception):
    """The admin server could not be read; the message says why, for the user."""


def main(admin: str | None, config: str | None, watch: bool, interval: float, out: TextIO = sys.stdout) -> int:
    """Entry point of `fastmesh stat`; returns the exit code."""
    try:
        address = admin_address(admin, config)
        previous = fetch(address)
        while True:
            time.sleep(interval)
            current = fetch(address)
            table = render(previous, current)
            if watch:
                out.write("\x1b[H\x1b[2J")       # home + clear, like watch(1)
            out.write(table)
            out.flush()
            if not watch:
                return 0
            previous = current
    except StatError as exc:
        print(f"fastmesh stat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def admin_address(admin: str | None, config: str | None) -> tuple[str, int]:
    """(host, port) of the admin server: --admin, else the config's [admin] listen, else the default."""
    from fastmesh.config.load import load_config
    from fastmesh.config.values import parse_address
    from fastmesh.errors import ConfigError
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise StatError(str(exc)) from None
        host, port = cfg.admin.host, cfg.admin.port
    else:
        try:
            host, port = parse_address(admin or DEFAULT_ADMIN)
        except ValueError as exc:
            raise StatError(f"--admin: expected {exc}, got {admin!r}") from None
    # A wildcard listen address is reached through loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


def fetch(address: tuple[str, int]) -> dict[str, Any]:
    """GET /stats from the admin server, parsed."""
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/stats", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise StatError(f"cannot reach the admin server at {where}: {exc.strerror or exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise StatError(f"the admin server at {where} answered {response.status} to GET /stats")
    try:
        data: dict[str, Any] = json.loads(body)
    except ValueError:
        raise StatError(f"the admin server at {where} did not answer with JSON") from None
    return data


def render(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Two /stats answers -> the tables (rates are the change between them per second): http listeners by
    requests, tcp listeners by connections and bytes, then clusters by both; each table only when it has rows.
    Every cell is one word, so the columns split on whitespace; the widest table, clusters, fits 100 columns
    with names up to about 18 characters."""
    old, new = take_sample(before), take_sample(after)
    seconds = max(new.taken - old.taken, 1e-6)
    pairs = http_pairs(after)

    def rate(old_row: dict[str, Any] | None, new_row: dict[str, Any], key: str) -> str:
        return f"{_per_second(old_row, new_row, key, seconds):.1f}"

    http = [["LISTENER", "PROTOCOL", "CLUSTER", "RPS", "SUCCESS", "P50", "P99", "CONN/S", "ACTIVE"]]
    tcp = [["LISTENER", "PROTOCOL", "CLUSTER", "CONN/S", "ACTIVE", "FAILED/S", "IN/S", "OUT/S"]]
    shared = []
    for name, row in after["listeners"].items():
        before_row = before["listeners"].get(name)
        if row["protocol"] == "tcp":
            # A service listener: the clusters its connections were resolved to (most first), else its service.
            went = sorted((n, c) for c, n in row.get("clusters", {}).items() if n)[::-1]
            target = row["cluster"] or _names([c for _n, c in went]) or \
                (f"service:{row['service']}" if row.get("service") else "-")
            tcp.append([name, row["protocol"], target, rate(before_row, row, "accepted"),
                        str(row["active"]), rate(before_row, row, "failed"),
                        _bytes(_per_second(before_row, row, "bytes_in", seconds)),
                        _bytes(_per_second(before_row, row, "bytes_out", seconds))])
            continue
        clusters = [c for lst, c in pairs if lst == name] or [row["cluster"] or "-"]
        own = latency_clusters(pairs, name)
        if own is None:
            shared.append(name)
        point = http_point(new, old, "l:" + name, own or [])
        http.append([name, row["protocol"], _names(clusters), *_http_cells(point),
                     rate(before_row, row, "accepted"), str(row["active"])])
    text = "\n".join(_table(rows, 3) for rows in (http, tcp) if len(rows) > 1)
    http_clusters = {c for _lst, c in pairs}
    rows = [["CLUSTER", "UP/TOTAL", "RPS", "SUCCESS", "P50", "P99", "CONN/S", "ACTIVE", "RETRIES/S",
             "CONNFAIL/S"]]
    for name, c in after["clusters"].items():
        before_c = before["clusters"].get(name)
        cells = ["-"] * 4
        if name in http_clusters:
            cells = _http_cells(http_point(new, old, "c:" + name, [name]))
        rows.append([name, f"{c['endpoints_up']}/{len(c['endpoints'])}", *cells,
                     rate(before_c, c, "upstream_connections"), str(c["upstream_active"]),
                     rate(before_c, c, "retries"), rate(before_c, c, "connect_failures")])
    text += "\n" + _table(rows, 1)
    if shared:
        text += (f"\nno P50/P99 for {', '.join(shared)}: it shares a cluster with another listener and "
                 "durations are kept per cluster\n")
    workers = after.get("workers", {})
    if workers:
        lag = max(w["lag"] for w in workers.values())
        serving = "one process serves (workers = 0)" if after.get("single_process") else \
            f"{len(workers)} worker(s) serving"
        text += f"\n{serving}; event-loop lag up to {lag * 1000:.1f} ms\n"
    return text


def _http_cells(point: dict[str, float | None]) -> list[str]:
    """RPS, SUCCESS (non-5xx share; "-" without a response in the interval), P50 and P99 of one http_point.
    The latencies are interpolated linearly within their histogram bucket (as Prometheus' histogram_quantile),
    so they are estimates with the buckets' resolution, not measured values."""
    rps, success = point["rps"], point["success"]
    return [f"{rps or 0:.1f}", "-" if success is None else f"{success * 100:.1f}%",
            _latency(point["p50"]), _latency(point["p99"])]


def _latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms"
    return f"{ms / 1000:.2f}s"


def _names(clusters: list[str]) -> str:
    """The clusters an http listener sends to, default first; past two, only how many more."""
    return ",".join(clusters[:2]) + (f",+{len(clusters) - 2}" if len(clusters) > 2 else "")


def _per_second(old: dict[str, Any] | None, new: dict[str, Any], key: str, seconds: float) -> float:
    return max(0, new[key] - (old or {}).get(key, 0)) / seconds


def _table(rows: list[list[str]], text_columns: int) -> str:
    """Columns padded to their widest cell; the first text_columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            numeric = r > 0 and i >= text_columns
            cells.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _bytes(per_second: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if per_second < 1024 or unit == "GiB":
            return f"{per_second:.0f}{unit}" if unit == "B" else f"{per_second:.1f}{unit}"
        per_second /= 1024
    return ""   # not reached
