"""The access log: one line per request, plain or JSON, to stderr or a file. Off unless configured."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

from fastmesh.config.schema import AccessLog

Fields = tuple[str, str, str, int, int, int, str, float]


def build_access_log(cfg: AccessLog | None, listener: str) -> Callable[[Fields], None] | None:
    """A callable the core calls once per finished request with (method, authority, path, status, bytes in,
    bytes out, upstream endpoint, duration seconds), or None when the log is off (then it costs nothing)."""
    if cfg is None:
        return None
    stream: TextIO = sys.stderr if cfg.path == "-" else open(cfg.path, "a", buffering=1, encoding="utf-8")

    if cfg.format == "json":
        def write(f: Fields) -> None:
            stream.write(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "listener": listener, "method": f[0],
                "authority": f[1], "path": f[2], "status": f[3], "bytes_in": f[4], "bytes_out": f[5],
                "upstream": f[6], "duration_ms": round(f[7] * 1000, 3)}) + "\n")
    else:
        def write(f: Fields) -> None:
            stream.write(f'{time.strftime("%Y-%m-%dT%H:%M:%S%z")} {listener} "{f[0]} {f[1]}{f[2]}" {f[3]} '
                         f'{f[4]} {f[5]} {f[6]} {f[7] * 1000:.3f}ms\n')
    return write
