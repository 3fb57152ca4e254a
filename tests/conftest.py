"""Shared test setup: import check for the compiled core and the loop policy (FASTMESH_LOOP, as workers choose)."""
import asyncio

import pytest
import uvloop


class _ReactorLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """New loops are workers' ReactorLoops, so in-process Proxies run the way a worker does."""

    def new_event_loop(self):
        from fastmesh.process.loop import ReactorLoop
        return ReactorLoop()


@pytest.fixture(autouse=True, scope="session")
def _loop_policy():
    from fastmesh.process.loop import loop_name
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy() if loop_name() == "uvloop" else _ReactorLoopPolicy())
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture(autouse=True)
def _no_connection_objects_leaked():
    """In a debug build (FASTMESH_DEBUG=1) every test must leave no connection object of the data path alive."""
    from fastmesh._core import build_info
    if not build_info.DEBUG:
        yield
        return
    import gc

    from fastmesh._core.debug import live_objects
    before = live_objects()
    yield
    gc.collect()
    after = live_objects()
    leaked = {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}
    assert not leaked, f"connection objects left alive by this test: {leaked}"
