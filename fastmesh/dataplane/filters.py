"""Request and response filters, wiring and running: per http listener, one chain per route (the listener's
filters, then the route's), called by the codec for the routes that have one (HttpProxy.chains; filters.pyx is the
compiled side).

Request side: a chain calls each filter's on_request() in order. A synchronous filter runs inline; the first
filter that returns an awaitable (an `async def`, or a filter with run = "thread", whose call goes to a worker
thread) parks the request: the rest of the chain runs in a task, each awaitable bounded by its filter's timeout,
and the request resumes with the outcome. Per filter: None goes on, an Answer ends the chain (the client gets it);
an exception (or a timeout) ends it with 500 `plugin` (504 `plugin timeout`) when the filter's failure_mode is
"closed", and skips the filter when it is "open". An inline call cannot be interrupted: one that takes longer
than the filter's timeout is counted as slow and logged (its outcome stands).

Response side: for the upstream's final answer head, the filters that have on_response(request, response) are
called inline in reverse order (the last to see the request sees the answer first); None goes on with the
header edits they made, an Answer replaces the upstream's answer, an exception is a failure as above. A chain
without response filters has respond = None, and the codec never calls into Python for the answer.

Each filter counts its calls, answers, errors, timeouts and slow calls; errors are logged (with a traceback at
most once every 10 s per filter).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from fastmesh._core.filters import FAILED, PENDING, TIMEOUT
from fastmesh.config.schema import FilterSpec
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.errors import PluginError
from fastmesh.plugins import registry

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("fastmesh.plugins")
LOG_EVERY = 10.0               # seconds between two logged failures of one filter
THREADS = 16                   # threads a worker runs `run = "thread"` filters on (shared by its filters)
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    """The worker's pool for run = "thread" filters, made at first use (a worker without them has no threads)."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor    # (with queue: imported where such a filter runs)
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="fastmesh-filter")
    return _pool


class FilterEntry:
    """One filter plugin instance at one place in the config, with its counters."""

    __slots__ = ("spec", "where", "plugin", "call", "respond", "is_async", "closed", "calls", "answers", "errors",
                 "timeouts", "slow", "_logged", "_slow_logged")

    def __init__(self, spec: FilterSpec, where: str) -> None:
        self.spec = spec
        self.where = where                          # the config key naming it
        self.plugin = registry.instantiate(spec.plugin, "filter", spec.config)
        call: Any = getattr(self.plugin, "on_request", None)
        self.respond: Any = getattr(self.plugin, "on_response", None)
        if self.respond is not None and asyncio.iscoroutinefunction(self.respond):
            raise PluginError(spec.plugin, "a synchronous on_response (response filters run inline)")
        self.is_async = asyncio.iscoroutinefunction(call)
        if call is not None and spec.run == "thread" and not self.is_async:
            call = self._in_thread(call)
            self.is_async = True
        self.call: Any = call                       # None: a filter of answers only
        self.closed = spec.failure_mode == "closed"
        self.calls = self.answers = self.errors = self.timeouts = self.slow = 0
        self._logged = self._slow_logged = 0.0

    @staticmethod
    def _in_thread(call: Any) -> Any:
        """on_request run on a worker thread: the request parks (other connections go on) and the filter's timeout
        and failure mode apply, as for an async filter."""
        def park(request: Any) -> Any:
            return asyncio.get_event_loop().run_in_executor(_threads(), call, request)
        return park

    def took(self, seconds: float) -> None:
        """An inline call took `seconds`, more than the filter's timeout: count it, log it (rate-limited)."""
        self.slow += 1
        now = time.monotonic()
        if now - self._slow_logged >= LOG_EVERY:
            self._slow_logged = now
            log.warning("filter %s (%s) ran %.1f ms inline, over its timeout of %g ms: every connection of the "
                        "worker waited (%d slow call(s) so far; run = \"thread\" or an async filter would not block "
                        "them)", self.where, self.spec.plugin, seconds * 1e3, self.spec.timeout * 1e3, self.slow)

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
                "errors": self.errors, "timeouts": self.timeouts, "slow": self.slow}

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
    """What the codec calls with a FilterRequest: None, an Answer, or FILTER_PENDING / FAILED / TIMEOUT; and, when
    some filter has on_response, `respond` with the FilterRequest and the upstream's FilterResponse."""

    __slots__ = ("entries", "requesters", "responders", "respond")

    def __init__(self, entries: list[FilterEntry]) -> None:
        self.entries = entries
        self.requesters = [e for e in entries if e.call is not None]
        self.responders = [e for e in reversed(entries) if e.respond is not None]
        self.respond = self._respond if self.responders else None

    def __call__(self, request: Any) -> Any:
        entries = self.requesters
        clock = time.perf_counter
        for i in range(len(entries)):
            e = entries[i]
            e.calls += 1
            t = clock()
            try:
                r = e.call(request)
            except Exception as exc:
                if e.failed(exc):
                    return FAILED
                continue
            if r is not None and (e.is_async or hasattr(r, "__await__")):
                asyncio.ensure_future(self._finish(request, i, r))
                return PENDING
            t = clock() - t
            if t > e.spec.timeout:
                e.took(t)
            if r is not None:
                e.answers += 1
                return r
        return None

    def _respond(self, request: Any, response: Any) -> Any:
        """The response filters on the upstream's answer head, inline: None (go on), an Answer, or FAILED."""
        clock = time.perf_counter
        for e in self.responders:
            t = clock()
            try:
                r = e.respond(request, response)
            except Exception as exc:
                if e.failed(exc):
                    return FAILED
                continue
            t = clock() - t
            if t > e.spec.timeout:
                e.took(t)
            if r is not None:
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
        entries = self.requesters
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
