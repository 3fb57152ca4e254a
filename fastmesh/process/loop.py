"""The worker's event loop: a stdlib asyncio loop that waits in the data path's epoll set (FASTMESH_LOOP picks it).

`FASTMESH_LOOP=reactor` (the default) gives a worker a ReactorLoop: asyncio.SelectorEventLoop over a
ReactorSelector, so one epoll_wait per wakeup serves the data path in C and the control plane (the control
channel, timers, health checks, discovery) runs unchanged on the same loop. `FASTMESH_LOOP=uvloop` keeps the
uvloop loop with the reactor's epoll set nested in it as one readable fd (the way before). The supervisor runs the
same loop as its workers. Proxy.start() takes the loop's reactor when it
has one free, and makes its own otherwise (an embedded Proxy, a second Proxy on the same loop).
"""
from __future__ import annotations

import asyncio
import os
from typing import Callable

from fastmesh._core.reactor import Reactor, ReactorSelector

LOOP_ENV = "FASTMESH_LOOP"
LOOPS = ("reactor", "uvloop")


class ReactorLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop whose selector is a ReactorSelector; `reactor` is the Reactor it waits in."""

    def __init__(self) -> None:
        self.reactor = Reactor()
        selector = ReactorSelector(self.reactor)
        super().__init__(selector)  # type: ignore[arg-type]   # the selectors.BaseSelector interface, duck-typed
        selector.bind(self)


def loop_name() -> str:
    """The loop FASTMESH_LOOP asks for; ValueError for a name we do not know."""
    name = os.environ.get(LOOP_ENV, "") or LOOPS[0]
    if name not in LOOPS:
        raise ValueError(f"{LOOP_ENV}={name!r}: expected one of {', '.join(LOOPS)}")
    return name


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a worker's loop, as FASTMESH_LOOP says."""
    if loop_name() == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    return ReactorLoop
