"""Shared test setup: import check for the compiled core and the uvloop policy."""
import asyncio

import pytest
import uvloop


@pytest.fixture(autouse=True, scope="session")
def _uvloop_policy():
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    yield
    asyncio.set_event_loop_policy(None)
