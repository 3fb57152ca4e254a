"""Single-process mode (`workers = 0`): the data plane runs on the supervisor's own loop, as worker slot 0.

Nothing else in the supervisor changes. The in-process Proxy counts into the supervisor's shared blocks (stats,
limits, rates) like a worker does, and answers the same control requests (reload, endpoints, describe, tls,
counters) with the worker's own handlers, called directly instead of over a socketpair: reloads, discovery
updates, /clusters and /metrics take the paths they take with workers. What is lost is crash isolation: a crash
of the data plane ends the instance, and there is no worker to restart.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from fastmesh.config.schema import Config
from fastmesh.process.link import LinkClosed

log = logging.getLogger("fastmesh.supervisor")

SLOT = 0                    # the worker slot the in-process data plane counts in

Handler = Callable[[dict[str, Any], list[int]], Awaitable[dict[str, Any]]]


class InlineLink:
    """A worker's control link (link.WorkerLink's `call`) whose requests run in this process."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.closed = False

    async def call(self, op: str, timeout: float, fds: Sequence[int] = (), **fields: Any) -> dict[str, Any]:
        """Run request `op`; TimeoutError when it takes longer than `timeout` (it still finishes, as a worker's
        would), LinkClosed once the data plane is stopping."""
        if self.closed:
            raise LinkClosed("the data plane is stopping")
        handler = self.handlers.get(op)
        if handler is None:
            return {"ok": False, "error": f"unknown request {op!r}"}
        # The handlers own (and close) the fds they get, as a worker owns what SCM_RIGHTS gave it; the caller
        # closes its own copies.
        copies = [os.dup(fd) for fd in fds]
        task = asyncio.ensure_future(handler({"op": op, **fields}, copies))
        # Shielded: a reload the caller stops waiting for must not be cancelled half-swapped.
        return await asyncio.wait_for(asyncio.shield(task), timeout)

    def close(self) -> None:
        self.closed = True


class Host(Protocol):
    """What the in-process data plane needs from the supervisor (supervisor.Supervisor has these)."""
    config_path: str
    cfg: Config
    config_gen: int
    spawn_gen: dict[int, int]
    links: dict[int, Any]
    stopping: asyncio.Event
    exit_code: int
    stats: Any
    limits: Any
    rates: Any
    reloader: Any
    ticket_secret: Any

    def on_inline_ready(self) -> None: ...


async def serve(sup: Host) -> None:
    """Serve the running config in this process until the supervisor stops, then drain (up to drain_timeout)."""
    from fastmesh.dataplane.tls import set_ticket_secret
    from fastmesh.process.worker import _handlers
    from fastmesh.proxy import Proxy
    set_ticket_secret(sup.ticket_secret.handover())     # the same rotating ticket keys a worker would derive
    # The running config (discovery's endpoints filled in, its slot holes beside it), as a forked worker gets it.
    cfg, holes, gen = sup.cfg, dict(sup.reloader.holes), sup.config_gen
    # Duplicates: the Proxy closes the fds it maps, the supervisor keeps its own for reloads.
    proxy = Proxy(cfg, reuse_port=True, stats_fd=os.dup(sup.stats.fd_for(SLOT)), limits_fd=os.dup(sup.limits.fd),
                  worker=SLOT, holes=holes, rates_fd=os.dup(sup.rates.fd))
    try:
        await proxy.start()
    except OSError as exc:              # start() has already closed whatever it had bound
        log.error("cannot start the data plane: %s", exc)
        sup.exit_code = 1
        sup.stopping.set()
        return
    stop = asyncio.Event()
    busy = asyncio.Lock()               # held while a control request runs: stopping waits for a reload to finish
    link = InlineLink(_handlers(proxy, busy, stop))
    sup.links[SLOT] = link
    sup.spawn_gen[SLOT] = gen           # a reload while we started is pushed to us once ready, as to a worker
    sup.on_inline_ready()
    try:
        await sup.stopping.wait()
    finally:
        stop.set()
        async with busy:
            link.close()
            sup.links.pop(SLOT, None)
        await proxy.stop()              # stops accepting at once, then drains for up to drain_timeout
