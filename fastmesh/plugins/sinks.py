"""Sinks off the data path: records gather in a bounded queue and a loop timer hands them to the plugin in batches.

Whoever produces records (the access log's recorder per request, the supervisor per event) only appends to a
deque; every `interval` (or as soon as `batch` records wait) a timer on the same loop takes up to `batch` records,
turns them into dicts if they are not yet (`shape`, so the request path never builds one), and calls the plugin's
write(). An async write() is awaited in a task, one at a time per sink; records that arrive meanwhile wait, and
past `max_pending` the oldest are dropped and counted. An exception costs its batch (counted, logged at most once
every 10 s per sink), never the worker.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from fastmesh.plugins import registry

log = logging.getLogger("fastmesh.plugins")
LOG_EVERY = 10.0               # seconds between two logged failures of one sink


class SinkRunner:
    """One sink plugin instance and the records waiting for it. `plugin`: a sink object made by fastmesh itself
    (span export, dataplane/tracing.py) instead of the one `spec` names; `spec` then gives only batch, interval and
    max_pending."""

    def __init__(self, spec: Any, where: str, shape: Callable[[Any], Any] | None = None,
                 plugin: Any = None) -> None:
        self.spec = spec
        self.where = where                         # the config key naming it, for logs
        self.plugin = plugin if plugin is not None else registry.instantiate(spec.plugin, "sink", spec.config)
        self.shape = shape
        self.pending: collections.deque[Any] = collections.deque()
        self.written = 0                           # records handed to write() that returned cleanly
        self.dropped = 0                           # records dropped: the queue was full, or their write() failed
        self.errors = 0                            # write() calls that raised
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged = 0.0
        self._closed = False

    def add(self, record: Any) -> None:
        """Queue one record (the only work a producer does)."""
        pending = self.pending
        pending.append(record)
        if len(pending) > self.spec.max_pending:
            pending.popleft()
            self.dropped += 1
        if self._timer is None and not self._closed:
            self._arm(self.spec.interval if len(pending) < self.spec.batch else 0.0)

    def _arm(self, delay: float) -> None:
        try:
            loop = self._loop or asyncio.get_running_loop()
        except RuntimeError:
            return                                 # no loop (a sync caller in a test): flush() will do it
        self._loop = loop
        self._timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._task is not None and not self._task.done():
            self._arm(self.spec.interval)          # an async write is still under way
            return
        self.flush_some()
        if self.pending and not self._closed:
            self._arm(0.0 if len(self.pending) >= self.spec.batch else self.spec.interval)

    def flush_some(self) -> None:
        """Hand one batch to the plugin (a task when its write() is async)."""
        batch = [self.pending.popleft() for _ in range(min(self.spec.batch, len(self.pending)))]
        if not batch:
            return
        if self.shape is not None:
            batch = [self.shape(r) for r in batch]
        try:
            result = self.plugin.write(batch)
        except Exception as exc:
            self._failed(exc, len(batch))
            return
        if inspect.isawaitable(result):
            self._task = asyncio.ensure_future(self._await(result, len(batch)))
        else:
            self.written += len(batch)

    async def _await(self, result: Any, n: int) -> None:
        try:
            await result
        except Exception as exc:
            self._failed(exc, n)
        else:
            self.written += n

    def _failed(self, exc: Exception, n: int) -> None:
        self.errors += 1
        self.dropped += n
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning("sink %s (%s): write() raised %s: %s (%d failure(s), %d record(s) dropped so far)",
                        self.where, self.name, type(exc).__name__, exc, self.errors, self.dropped)

    @property
    def name(self) -> str:
        """The plugin as the config names it (or, for fastmesh's own sinks, the config key)."""
        return str(getattr(self.spec, "plugin", self.where))

    def stats(self) -> dict[str, Any]:
        return {"plugin": self.name, "written": self.written, "dropped": self.dropped, "errors": self.errors,
                "pending": len(self.pending)}

    async def aclose(self) -> None:
        """Write what is left (a last batch per call until empty), then close the plugin."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        while self.pending:
            self.flush_some()
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
        self.close_plugin()

    def close(self) -> None:
        """Stop now (no loop to wait on): what is queued is written synchronously when write() is sync."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not inspect.iscoroutinefunction(getattr(self.plugin, "write", None)):
            while self.pending:
                self.flush_some()
        self.close_plugin()

    def close_plugin(self) -> None:
        close = getattr(self.plugin, "close", None)
        if close is None:
            return
        try:
            result = close()
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)
        except Exception:
            log.exception("sink %s (%s): close() failed", self.where, self.name)
