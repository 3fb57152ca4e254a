"""Request filters, wiring and running: per http listener, one chain per route (the listener's filters, then the
route's), called by the codec for the routes that have one (HttpProxy.chains; filters.pyx is the compiled side).

A chain calls each filter's on_request() in order. A synchronous filter runs inline; the first filter that
returns an awaitable (an `async def`) parks the request: the rest of the chain runs in a task, each awaitable
bounded by its filter's timeout, and the request resumes with the outcome. Per filter: None goes on, an Answer
ends the chain (the client gets it); an exception (or a timeout) ends it with 500 `plugin` (504 `plugin
timeout`) when the filter's failure_mode is "closed", and skips the filter when it is "open". Each filter counts
its calls, answers, errors and timeouts; errors are logged (with a traceback at most once every 10 s per filter).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastmesh._core.filters import FAILED, PENDING, TIMEOUT
from fastmesh.config.schema import FilterSpec
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.plugins import registry

log = logging.getLogger("fastmesh.plugins")
LOG_EVERY = 10.0               # seconds between two logged failures of one filter


class FilterEntry:
    """One filter plugin instance at one place in the config, with its counters."""

    __slots__ = ("spec", "where", "plugin", "call", "is_async", "closed", "calls", "answers", "errors", "timeouts",
                 "_logged")

    def __init__(self, spec: FilterSpec, where: str) -> None:
        self.spec = spec
        self.where = where                          # the config key naming it
        self.plugin = registry.instantiate(spec.plugin, "filter", spec.config)
        self.call = self.plugin.on_request
        self.is_async = asyncio.iscoroutinefunction(self.call)
        self.closed = spec.failure_mode == "closed"
        self.calls = self.answers = self.errors = self.timeouts = 0
        self._logged = 0.0

    def failed(self, exc: BaseException, timed_out: bool = False) -> bool:
        """Count and log a failure; True when it fails the request (failure_mode "closed")."""
        if timed_out:
            self.timeouts += 1
        else:
            self.errors += 1
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            what = f"took longer than {self.spec.timeout:g}s" if timed_out else f"raised {type(exc).__name__}: {exc}"
            log.warning("filter %s (%s) %s; %s (%d error(s), %d timeout(s) so far)", self.where, self.spec.plugin,
                        what, "the request fails" if self.closed else "the request goes on without it",
                        self.errors, self.timeouts, exc_info=None if timed_out else exc)
        return self.closed

    def stats(self) -> dict[str, Any]:
        return {"where": self.where, "plugin": self.spec.plugin, "calls": self.calls, "answers": self.answers,
                "errors": self.errors, "timeouts": self.timeouts}

    def close(self) -> None:
        close = getattr(self.plugin, "close", None)
        if close is not None:
            try:
                result = close()
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception:
                log.exception("filter %s (%s): close() failed", self.where, self.spec.plugin)


class FilterChain:
    """What the codec calls with a FilterRequest: None, an Answer, or FILTER_PENDING / FAILED / TIMEOUT."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[FilterEntry]) -> None:
        self.entries = entries

    def __call__(self, request: Any) -> Any:
        entries = self.entries
        for i in range(len(entries)):
            e = entries[i]
            e.calls += 1
            try:
                r = e.call(request)
            except Exception as exc:
                if e.failed(exc):
                    return FAILED
                continue
            if r is None:
                continue
            if e.is_async or hasattr(r, "__await__"):
                asyncio.ensure_future(self._finish(request, i, r))
                return PENDING
            e.answers += 1
            return r
        return None

    async def _finish(self, request: Any, i: int, pending: Any) -> None:
        """The rest of the chain from filter i (whose awaitable is `pending`); resumes the request once."""
        outcome: Any = FAILED
        try:
            outcome = await self._rest(request, i, pending)
        finally:
            request._resume(outcome)

    async def _rest(self, request: Any, i: int, pending: Any) -> Any:
        entries = self.entries
        while True:
            e = entries[i]
            try:
                r = await asyncio.wait_for(pending, e.spec.timeout) if pending is not None else None
            except TimeoutError as exc:
                if e.failed(exc, timed_out=True):
                    return TIMEOUT
                r = None
            except Exception as exc:
                if e.failed(exc):
                    return FAILED
                r = None
            if r is not None:
                e.answers += 1
                return r
            i += 1
            if i == len(entries):
                return None
            e = entries[i]
            e.calls += 1
            try:
                pending = e.call(request)
            except Exception as exc:
                if e.failed(exc):
                    return FAILED
                pending = None
                continue
            if pending is not None and not (e.is_async or hasattr(pending, "__await__")):
                e.answers += 1
                return pending


def build_chains(cfg: ListenerConfig) -> tuple[list[FilterChain | None] | None, list[FilterEntry]]:
    """Per route index of the listener's router (its routes, then the default cluster's catch-all): the chain,
    or None for a route without filters; None for all when no route has one. Also every entry, for stats."""
    listener = [FilterEntry(spec, f"listeners.{cfg.name}.filters[{j}]") for j, spec in enumerate(cfg.filters)]
    chains: list[FilterChain | None] = []
    entries = list(listener)
    for r, route in enumerate(cfg.routes):
        own = [FilterEntry(spec, f"listeners.{cfg.name}.routes[{r}].filters[{j}]")
               for j, spec in enumerate(route.filters)]
        entries += own
        chains.append(FilterChain(listener + own) if listener or own else None)
    if cfg.cluster is not None:
        chains.append(FilterChain(listener) if listener else None)
    if not any(chains):
        return None, entries
    return chains, entries


def filter_wait(cfg: ListenerConfig) -> float:
    """How long a parked request may wait before its connection is closed: every filter's timeout, and a margin."""
    specs = list(cfg.filters) + [spec for route in cfg.routes for spec in route.filters]
    return sum(spec.timeout for spec in specs) + 5.0
