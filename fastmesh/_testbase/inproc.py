"""Helpers for tests of an in-process Proxy: a one-listener http config and the check that no connection leaked."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastmesh._testbase.net import free_port

if TYPE_CHECKING:
    from fastmesh import Proxy


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll predicate every 20 ms until it holds; the seconds that took. Fails the test after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def no_connection_left(proxy: Proxy) -> None:
    """Every client has gone: within a moment the proxy holds no downstream connection (none leaked)."""
    for _ in range(60):
        if proxy.active_connections == 0:
            return
        await asyncio.sleep(0.05)
    assert proxy.active_connections == 0, "downstream connections left open after every client closed"


def web_config(endpoints: list[str], *, listener: str = "", cluster: str = "") -> str:
    """One http listener "web" whose default cluster "web" has these endpoints; extra TOML lines for each."""
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (f'drain_timeout = "500ms"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\ncluster = "web"\n'
            f'{listener}\n[clusters.web]\nendpoints = [{eps}]\n{cluster}\n')
