"""The access log: one line per request, plain or JSON, to stderr or a file, and records for log-sink plugins.

The core calls the recorder once per finished request with a Fields tuple (only when the listener logs or has
log sinks: otherwise the field is None and a request costs nothing). The recorder writes the line and queues the
tuple, with its time, for each sink (fastmesh/plugins/sinks.py), which turns it into a dict and hands it on in
batches from a timer: nothing of a sink runs on the request path.
"""
from __future__ import annotations

import json
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, TextIO

from fastmesh.config.schema import AccessLog, Listener
from fastmesh.plugins.sinks import SinkRunner

# (method, authority, path, status, bytes in, bytes out, upstream endpoint, duration seconds, request id, client
# address, cluster, route index (-1: none), retries, fastmesh error cause ("" for an upstream's answer), trace id
# ("" without trace context), the client's verified identity ("" when it showed none))
Fields = tuple[str, str, str, int, int, int, str, float, str, str, str, int, int, str, str, str]
CLASSIC = ("time", "listener", "method", "authority", "path", "status", "bytes_in", "bytes_out", "upstream",
           "duration_ms")
# JSON lines carry every field unless `fields` chooses.
ALL = (*CLASSIC, "request_id", "client", "cluster", "route", "retries", "error", "trace_id", "client_identity")


def timestamp(t: float) -> str:
    """Local time with milliseconds and the UTC offset: 2024-05-01T12:00:00.123+0200."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}" + \
        time.strftime("%z", time.localtime(t))


def record(listener: str, t: float, f: Fields) -> dict[str, Any]:
    """Every field of one request by name (what JSON lines and sinks get)."""
    return {"time": timestamp(t), "listener": listener, "method": f[0], "authority": f[1], "path": f[2],
            "status": f[3], "bytes_in": f[4], "bytes_out": f[5], "upstream": f[6],
            "duration_ms": round(f[7] * 1000, 3), "request_id": f[8], "client": f[9], "cluster": f[10],
            "route": f[11], "retries": f[12], "error": f[13], "trace_id": f[14], "client_identity": f[15]}


def _plain(fields: tuple[str, ...]) -> Callable[[str, float, Fields], str]:
    if not fields:
        def classic(listener: str, t: float, f: Fields) -> str:
            return (f'{timestamp(t)} {listener} "{f[0]} {f[1]}{f[2]}" {f[3]} {f[4]} {f[5]} {f[6]} '
                    f'{f[7] * 1000:.3f}ms\n')
        return classic

    def chosen(listener: str, t: float, f: Fields) -> str:
        r = record(listener, t, f)
        return " ".join(str(r[name]) if r[name] != "" else "-" for name in fields) + "\n"
    return chosen


def _json(fields: tuple[str, ...]) -> Callable[[str, float, Fields], str]:
    names = fields or ALL

    def line(listener: str, t: float, f: Fields) -> str:
        r = record(listener, t, f)
        return json.dumps({name: r[name] for name in names}) + "\n"
    return line


class AccessLogWriter:
    """What the core calls once per finished request with a Fields tuple. close() closes its file (stderr stays
    open) and its sinks; lines after it are dropped. A writer dropped unclosed (a reload gives the listener a new
    one) closes its file itself, so no file is left to the garbage collector's ResourceWarning."""

    __slots__ = ("stream", "listener", "line", "closer", "sinks", "__weakref__")

    def __init__(self, stream: TextIO | None, listener: str, line: Callable[[str, float, Fields], str], owned: bool,
                 sinks: list[SinkRunner] | None = None) -> None:
        self.stream: TextIO | None = stream
        self.listener = listener
        self.line = line
        self.closer = weakref.finalize(self, stream.close) if owned and stream is not None else None
        self.sinks = sinks or []

    def __call__(self, f: Fields) -> None:
        t = time.time()
        stream = self.stream
        if stream is not None:
            stream.write(self.line(self.listener, t, f))
        for sink in self.sinks:
            sink.add((t, f))

    def close(self) -> None:
        """Stop writing and close the file and the sinks (once; later calls do nothing)."""
        self.stream = None
        if self.closer is not None:
            self.closer()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


def build_access_log(cfg: AccessLog | None, listener: str, sinks: list[SinkRunner] | None = None
                     ) -> AccessLogWriter | None:
    """The writer of an http listener's access log, or None when there is neither a log nor a sink (then it costs
    nothing)."""
    if cfg is None and not sinks:
        return None
    if cfg is None:
        return AccessLogWriter(None, listener, _plain(()), owned=False, sinks=sinks)
    line = _json(tuple(cfg.fields)) if cfg.format == "json" else _plain(tuple(cfg.fields))
    if cfg.path == "-":
        return AccessLogWriter(sys.stderr, listener, line, owned=False, sinks=sinks)
    stream = open(cfg.path, "a", buffering=1, encoding="utf-8")
    return AccessLogWriter(stream, listener, line, owned=True, sinks=sinks)


def build_listener_log(cfg: Listener) -> AccessLogWriter | None:
    """The access log of an http listener with its log sinks (new plugin instances: a reload makes new ones)."""
    def shape(r: tuple[float, Fields]) -> dict[str, Any]:
        return record(cfg.name, r[0], r[1])
    sinks = [SinkRunner(spec, f"listeners.{cfg.name}.log_sinks[{i}]", shape=shape)
             for i, spec in enumerate(cfg.log_sinks)]
    return build_access_log(cfg.access_log, cfg.name, sinks)
