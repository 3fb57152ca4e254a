"""A window without cyclic garbage collection, for the bursts of a discovery update (parse, hand-off, apply).

A 10,000-endpoint update allocates some 40,000 container objects in the supervisor and in every worker: left on,
the collector runs dozens of young collections inside the update and, every update or two, a full one over the
whole heap (the running config, the previous endpoint sets), which was up to half of a worker's apply time and
most of its spread. Paused, the update runs without them; the collector resumes when the window closes and
collects what is due then (reference counting frees the update's garbage meanwhile: endpoint sets hold no
cycles). Windows nest; a window never turns on a collector that was off when it opened.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused(resume_soon: bool = False) -> Iterator[None]:
    """No cyclic collection inside. `resume_soon`: turn it back on from the running event loop's next turn, not
    at once: a worker's handler returns inside the window and its answer leaves in the same step, before the
    collection it has deferred (the supervisor waits for that answer)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if resume_soon:
                asyncio.get_running_loop().call_soon(gc.enable)
            else:
                gc.enable()
