"""The supervisor's events for event-sink plugins: reloads, discovery updates, workers starting and exiting.

Each event is a dict {"time", "event", ...}; emit() only queues it for every sink of `event_sinks` (the sinks'
timers hand them on in batches: fastmesh/plugins/sinks.py). A reload that changes `event_sinks` makes new sink
instances; the old ones write what they still hold, then close.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastmesh.config.schema import Config, SinkSpec
from fastmesh.plugins.sinks import SinkRunner


def _shape(record: dict[str, Any]) -> dict[str, Any]:
    return record


class Events:
    """Where the supervisor's events go."""

    def __init__(self) -> None:
        self.specs: list[SinkSpec] = []
        self.runners: list[SinkRunner] = []
        self.closing: set[asyncio.Task[None]] = set()

    def configure(self, cfg: Config) -> None:
        if cfg.event_sinks == self.specs:
            return
        old = self.runners
        self.specs = list(cfg.event_sinks)
        self.runners = [SinkRunner(spec, f"event_sinks[{i}]", _shape) for i, spec in enumerate(self.specs)]
        for runner in old:
            self._close_later(runner)

    def emit(self, event: str, **fields: Any) -> None:
        if not self.runners:
            return
        t = time.time()
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
                  + time.strftime("%z", time.localtime(t)), "event": event, **fields}
        for runner in self.runners:
            runner.add(record)

    def status(self) -> list[dict[str, Any]]:
        return [r.stats() for r in self.runners]

    def _close_later(self, runner: SinkRunner) -> None:
        task = asyncio.get_running_loop().create_task(runner.aclose())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def close(self) -> None:
        runners, self.runners = self.runners, []
        await asyncio.gather(*(r.aclose() for r in runners), *self.closing, return_exceptions=True)
