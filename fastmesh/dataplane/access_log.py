"""The access log: one line per request, plain or JSON, to stderr or a file. Off unless configured."""
from __future__ import annotations

import json
import sys
import time
import weakref
from typing import Callable, TextIO

from fastmesh.config.schema import AccessLog

Fields = tuple[str, str, str, int, int, int, str, float]


def _plain(listener: str, f: Fields) -> str:
    return (f'{time.strftime("%Y-%m-%dT%H:%M:%S%z")} {listener} "{f[0]} {f[1]}{f[2]}" {f[3]} '
            f'{f[4]} {f[5]} {f[6]} {f[7] * 1000:.3f}ms\n')


def _json(listener: str, f: Fields) -> str:
    return json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "listener": listener, "method": f[0],
        "authority": f[1], "path": f[2], "status": f[3], "bytes_in": f[4], "bytes_out": f[5],
        "upstream": f[6], "duration_ms": round(f[7] * 1000, 3)}) + "\n"


class AccessLogWriter:
    """What the core calls once per finished request with (method, authority, path, status, bytes in, bytes out,
    upstream endpoint, duration seconds). close() closes its file (stderr stays open); lines after it are dropped.
    A writer dropped unclosed (a reload gives the listener a new one) closes its file itself, so no file is left
    to the garbage collector's ResourceWarning."""

    __slots__ = ("stream", "listener", "line", "closer", "__weakref__")

    def __init__(self, stream: TextIO, listener: str, line: Callable[[str, Fields], str], owned: bool) -> None:
        self.stream: TextIO | None = stream
        self.listener = listener
        self.line = line
        self.closer = weakref.finalize(self, stream.close) if owned else None

    def __call__(self, f: Fields) -> None:
        stream = self.stream
        if stream is not None:
            stream.write(self.line(self.listener, f))

    def close(self) -> None:
        """Stop writing and close the file (once; later calls do nothing)."""
        self.stream = None
        if self.closer is not None:
            self.closer()


def build_access_log(cfg: AccessLog | None, listener: str) -> AccessLogWriter | None:
    """The writer of an http listener's access log, or None when the log is off (then it costs nothing)."""
    if cfg is None:
        return None
    if cfg.path == "-":
        return AccessLogWriter(sys.stderr, listener, _json if cfg.format == "json" else _plain, owned=False)
    stream = open(cfg.path, "a", buffering=1, encoding="utf-8")
    return AccessLogWriter(stream, listener, _json if cfg.format == "json" else _plain, owned=True)
