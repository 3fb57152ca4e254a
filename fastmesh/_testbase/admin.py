"""The admin server of a `fastmesh run` under test, over real HTTP: a path's JSON, and waiting until a check holds."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from fastmesh._testbase.run import WAIT


async def admin_json(admin: int, path: str) -> Any:
    """GET http://127.0.0.1:<admin><path> and decode its JSON."""
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{admin}{path}", timeout=5)).json()


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], wait: float = WAIT) -> Any:
    """Poll the async `check` until it returns something true; that value. Fails naming `what` after `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)
