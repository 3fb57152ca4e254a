"""Connection limits in an in-process Proxy: a listener's max_connections and the worker's (over all listeners)
keep connections past them waiting in the backlog until one closes; a reload changes them; upgraded connections
hold their slot as tunnels; splice pipes stay within the budget and relays without one copy instead."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import Backend, echo
from fastmesh._testbase.http_backend import HttpBackend, read_response, read_ws_frame, ws_frame, WS_TEXT
from fastmesh._testbase.net import free_port, free_ports, tcp_config
from fastmesh.config.load import loads_config

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0          # seconds any single answer may take before the test fails
QUIET = 0.3         # seconds in which a connection waiting at a limit must get no answer


async def until(check, what: str) -> None:
    for _ in range(int(WAIT / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT}s: {what}")


async def connected(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)


def test_listener_max_connections_keeps_the_rest_waiting_until_one_closes_or_a_reload_raises_it():
    async def main():
        backend = await Backend(echo).start()
        port = free_port()
        try:
            async with Proxy.from_toml(tcp_config(port, [backend.address], max_connections=3)) as proxy:
                conns = [await connected(port) for _ in range(5)]      # one by one: the backlog keeps this order
                for i, (_, writer) in enumerate(conns):
                    writer.write(f"hello {i}\n".encode())
                echoes = [asyncio.create_task(reader.readuntil(b"\n")) for reader, _ in conns]
                assert await asyncio.wait_for(asyncio.gather(*echoes[:3]), WAIT) == [b"hello 0\n", b"hello 1\n",
                                                                                     b"hello 2\n"]
                await asyncio.sleep(QUIET)
                assert not echoes[3].done() and not echoes[4].done()
                limits = proxy.stats()["connections"]
                assert limits["listeners"]["tcp-in"]["max_connections"] == 3
                assert limits["listeners"]["tcp-in"]["open"] == limits["open"] == 3
                assert proxy.active_connections == 3

                conns[0][1].close()                     # a slot frees up: the next in the backlog is accepted
                assert await asyncio.wait_for(echoes[3], WAIT) == b"hello 3\n"
                await asyncio.sleep(QUIET)
                assert not echoes[4].done()

                await proxy.reload(loads_config(tcp_config(port, [backend.address], max_connections=0)))
                assert await asyncio.wait_for(echoes[4], WAIT) == b"hello 4\n"
                limits = proxy.stats()["connections"]["listeners"]["tcp-in"]
                assert limits["max_connections"] == 0 and limits["open"] == 4
                assert limits["limited"] >= 2 and limits["paused"] == 0

                for _, writer in conns[1:]:
                    writer.close()
                await until(lambda: proxy.stats()["connections"]["open"] == 0, "every slot given back")
                assert proxy.stats()["connections"]["listeners"]["tcp-in"]["open"] == 0
        finally:
            await backend.stop()

    asyncio.run(main())


def test_worker_limit_spans_listeners_and_an_upgraded_connection_keeps_its_slot():
    async def main():
        async with HttpBackend("ws") as backend:
            web, side = free_ports(2)
            text = f"""
max_connections = 2
drain_timeout = "500ms"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "api"
[[listeners]]
name = "side"
listen = "127.0.0.1:{side}"
protocol = "http"
cluster = "api"
[clusters.api]
endpoints = ["{backend.address}"]
"""
            async with Proxy.from_toml(text) as proxy:
                ws_reader, ws_writer = await connected(web)
                ws_writer.write(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                assert (await asyncio.wait_for(read_response(ws_reader), WAIT)).status == 101
                ws_writer.write(ws_frame(WS_TEXT, b"hi"))
                assert await asyncio.wait_for(read_ws_frame(ws_reader), WAIT) == (True, WS_TEXT, b"hi")

                side_reader, side_writer = await connected(side)
                side_writer.write(b"GET /echo HTTP/1.1\r\nHost: side.test\r\n\r\n")
                assert (await asyncio.wait_for(read_response(side_reader), WAIT)).status == 200

                # The worker's two slots are taken (one by the tunnel): a third client waits, on either listener.
                third_reader, third_writer = await connected(web)
                third_writer.write(b"GET /echo HTTP/1.1\r\nHost: web.test\r\n\r\n")
                answer = asyncio.create_task(read_response(third_reader))
                await asyncio.sleep(QUIET)
                assert not answer.done()
                limits = proxy.stats()["connections"]
                assert limits["max_connections"] == 2 and limits["open"] == 2
                assert limits["listeners"] == {
                    "web": {"max_connections": 0, "open": 1, "limited": 0, "paused": 0},
                    "side": {"max_connections": 0, "open": 1, "limited": 0, "paused": 0}}

                ws_writer.close()                   # the tunnel ends: its slot goes to the waiting client
                assert (await asyncio.wait_for(answer, WAIT)).status == 200
                assert proxy.stats()["connections"]["listeners"]["web"]["limited"] == 1
                side_writer.close()
                third_writer.close()
                await until(lambda: proxy.stats()["connections"]["open"] == 0, "every slot given back")
                await proxy.reload(loads_config(text.replace("max_connections = 2", "max_connections = 3")))
                assert proxy.stats()["connections"]["max_connections"] == 3

    asyncio.run(main())


def test_splice_pipes_stay_within_the_budget_and_relays_without_one_copy():
    """max_connections 8 allows 2 splice pipes: four bulk streams both ways through an echo backend want eight;
    the relays that get none copy through buffers, and every byte arrives."""
    size = 8 << 20

    async def stream(port: int, seed: int) -> bool:
        reader, writer = await connected(port)
        block = hashlib.sha256(str(seed).encode()).digest() * 2048      # 64 KiB
        sent, got = hashlib.sha256(), hashlib.sha256()

        async def send() -> None:
            for _ in range(size // len(block)):
                writer.write(block)
                sent.update(block)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = 0
        while received < size:
            data = await reader.read(1 << 20)
            assert data, f"closed after {received} bytes"
            got.update(data)
            received += len(data)
        await sender
        writer.close()
        return sent.digest() == got.digest()

    async def main():
        backend = await Backend(echo).start()
        port = free_port()
        try:
            text = "max_connections = 8\n" + tcp_config(port, [backend.address])
            async with Proxy.from_toml(text) as proxy:
                assert proxy.stats()["connections"]["max_pipes"] == 2
                most = 0

                async def watch() -> None:
                    nonlocal most
                    while True:
                        most = max(most, proxy.stats()["connections"]["pipes_open"])
                        await asyncio.sleep(0.005)

                watcher = asyncio.create_task(watch())
                results = await asyncio.wait_for(asyncio.gather(*(stream(port, i) for i in range(4))), 30)
                watcher.cancel()
                assert results == [True] * 4
                assert 1 <= most <= 2
        finally:
            await backend.stop()

    asyncio.run(main())
