"""Receive buffers after a burst: each connection holds one only while part of a request waits in it, the listener
keeps the spares for the next burst, and gives back those nobody took for a whole trim interval, so an idle worker's
memory returns to what its open connections hold. Steady traffic keeps the spare it uses (no map per request).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend, read_response
from fastmesh._testbase.inproc import no_connection_left, until, web_config

pytestmark = pytest.mark.timeout(60)
BURST = 40
TRIM_EVERY = 0.3       # seconds (10 s by default): short, so that the test sees two trims


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[Proxy]:
    async with HttpBackend("a") as backend, Proxy.from_toml(web_config([backend.address])) as proxy:
        yield proxy
        await no_connection_left(proxy)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET / HTTP/1.1\r\nHost: buffers.test\r\n\r\n")
    return (await read_response(reader)).status


def test_a_bursts_buffers_are_kept_then_given_back_while_its_connections_stay_open() -> None:
    async def main() -> None:
        async with proxied() as proxy:
            pool = proxy._http["web"].buffers
            pool.trim_every = TRIM_EVERY
            host, port = proxy.addresses["web"]
            conns = [await asyncio.open_connection(host, port) for _ in range(BURST)]
            # Every connection sends half a head: each holds a receive buffer until the rest comes.
            for _, writer in conns:
                writer.write(b"GET / HTTP/1.1\r\nHost: buffers.test\r\n")
            await asyncio.sleep(0.3)
            for reader, writer in conns:
                writer.write(b"\r\n")
            assert [(await read_response(reader)).status for reader, _ in conns] == [200] * BURST
            kept = pool.spare
            assert kept >= BURST, f"the burst's buffers were not kept for reuse: {kept} spare"
            # Nobody takes them for a whole interval: given back, connections still open and working.
            await until(lambda: pool.spare == 0, timeout=10 * TRIM_EVERY)
            assert [await get(reader, writer) for reader, writer in conns] == [200] * BURST
            print(f"\nbuffers: {BURST} held at once, {kept} spare after the burst, {pool.spare} after two trims")
            for _, writer in conns:
                writer.close()

    asyncio.run(main())


def test_steady_traffic_keeps_the_spare_it_uses() -> None:
    async def main() -> None:
        async with proxied() as proxy:
            pool = proxy._http["web"].buffers
            pool.trim_every = TRIM_EVERY
            reader, writer = await asyncio.open_connection(*proxy.addresses["web"])
            loop = asyncio.get_running_loop()
            end = loop.time() + 4 * TRIM_EVERY
            while loop.time() < end:
                assert await get(reader, writer) == 200
                await asyncio.sleep(0.01)
            assert pool.spare >= 1, "the buffer steady traffic takes was unmapped"
            writer.close()

    asyncio.run(main())
