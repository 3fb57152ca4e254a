"""The window without cyclic garbage collection that discovery updates run in (fastmesh/gcpause.py)."""
import asyncio
import gc

import pytest

from fastmesh.gcpause import collector_paused


@pytest.fixture(autouse=True)
def collector_on():
    gc.enable()
    yield
    gc.enable()


def test_paused_inside_resumed_after_also_on_an_error():
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError):
        with collector_paused():
            raise KeyError("x")
    assert gc.isenabled()


def test_windows_nest_and_never_turn_on_a_collector_that_was_off():
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()           # the outer window is still open
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_resume_soon_waits_for_the_loops_next_turn():
    async def main() -> list[bool]:
        seen = []
        with collector_paused(resume_soon=True):
            pass
        seen.append(gc.isenabled())         # what the handler's step still does (its answer sent): paused
        await asyncio.sleep(0)
        seen.append(gc.isenabled())
        return seen
    assert asyncio.run(main()) == [False, True]


def test_a_collection_that_comes_due_inside_runs_after():
    # Enough new containers for several young collections: none inside the window, one once it closed.
    def collections() -> int:
        return sum(generation["collections"] for generation in gc.get_stats())
    before = collections()
    keep = []
    with collector_paused():
        keep.extend([{"i": i}] for i in range(20 * gc.get_threshold()[0]))
        assert collections() == before
    keep.append([{}])
    assert collections() == before + 1
