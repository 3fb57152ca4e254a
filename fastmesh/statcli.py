"""`fastmesh stat`: a table of listeners and clusters (rates, open connections, endpoints up) from a running
instance's admin server, once or refreshed (--watch)."""
from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any, TextIO

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
    from fastmesh.config.load import load_config, parse_address
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
    """Two /stats samples -> the tables: rates are the change between them per second."""
    seconds = max(after["time"] - before["time"], 1e-6)

    def rate(old: dict[str, Any] | None, new: dict[str, Any], key: str) -> float:
        return max(0, new[key] - (old or {}).get(key, 0)) / seconds

    rows = [["LISTENER", "PROTOCOL", "CLUSTER", "CONN/S", "ACTIVE", "FAILED/S", "IN/S", "OUT/S"]]
    for name, new in after["listeners"].items():
        old = before["listeners"].get(name)
        rows.append([name, new["protocol"], new["cluster"] or "-", f"{rate(old, new, 'accepted'):.1f}",
                     str(new["active"]), f"{rate(old, new, 'failed'):.1f}",
                     _bytes(rate(old, new, "bytes_in")), _bytes(rate(old, new, "bytes_out"))])
    text = _table(rows)
    rows = [["CLUSTER", "BALANCER", "ENDPOINTS UP", "CONN/S", "ACTIVE", "CONNECT FAIL/S", "RETRIES/S"]]
    for name, new in after["clusters"].items():
        old = before["clusters"].get(name)
        rows.append([name, new["balancer"], f"{new['endpoints_up']}/{len(new['endpoints'])}",
                     f"{rate(old, new, 'upstream_connections'):.1f}", str(new["upstream_active"]),
                     f"{rate(old, new, 'connect_failures'):.1f}", f"{rate(old, new, 'retries'):.1f}"])
    text += "\n" + _table(rows)
    workers = after.get("workers", {})
    if workers:
        lag = max(w["lag"] for w in workers.values())
        text += f"\n{len(workers)} worker(s) serving; event-loop lag up to {lag * 1000:.1f} ms\n"
    return text


def _table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            numeric = r > 0 and i >= 3
            cells.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _bytes(per_second: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if per_second < 1024 or unit == "GiB":
            return f"{per_second:.0f}{unit}" if unit == "B" else f"{per_second:.1f}{unit}"
        per_second /= 1024
    return ""   # not reached
