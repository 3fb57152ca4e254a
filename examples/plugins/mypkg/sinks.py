"""A sink: records (access-log lines or events) appended to a file as JSON lines, one batch per write.

    [[listeners]]
    log_sinks = [{ plugin = "mypkg.sinks:JsonLines", config = { path = "requests.jsonl" }, interval = "1s" }]
    [[event_sinks]]
    plugin = "mypkg.sinks:JsonLines"
    config = { path = "events.jsonl" }
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class JsonLines:
    """Append each record as one JSON line."""

    @dataclass
    class Config:
        path: str

    def __init__(self, config: JsonLines.Config) -> None:
        self.file = open(config.path, "a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        self.file.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        self.file.flush()

    def close(self) -> None:
        self.file.close()
