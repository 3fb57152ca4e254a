"""The worker's loop (process/loop.py): the data path waited in directly, asyncio's own work on the same loop."""
import asyncio
import re
import threading

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import until
from fastmesh._testbase.net import free_ports
from fastmesh.process import loop as workerloop


def config(port: int, backend: str) -> str:
    return (f'drain_timeout = "100ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
            f'cluster = "b"\n[clusters.b]\nendpoints = ["{backend}"]\n')


async def answers(port: int, count: int, pipelined: bool) -> list[bytes]:
    """count GETs on one keep-alive connection (all in one write when pipelined); the bodies of the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /respond?status=200&body=ok HTTP/1.1\r\nHost: t\r\n\r\n"
    bodies = []
    try:
        if pipelined:
            writer.write(req * count)
        for _ in range(count):
            if not pipelined:
                writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
            bodies.append(await asyncio.wait_for(reader.readexactly(length), 10))
    finally:
        writer.close()
    return bodies


@pytest.fixture(autouse=True)
def _stdlib_policy():
    """A worker with FASTMESH_LOOP=reactor runs under asyncio's own policy (its child watcher), whatever the suite's."""
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    yield
    asyncio.set_event_loop_policy(before)


def run(main) -> None:
    with asyncio.Runner(loop_factory=workerloop.ReactorLoop) as runner:
        runner.run(asyncio.wait_for(main(), 60))


def test_proxy_waits_in_the_loops_reactor_and_serves():
    """A Proxy on a worker's loop takes the loop's reactor (no nested fd): keep-alive and pipelined requests (more
    than one dispatch's fair share, so the work left for later runs from the selector) are all answered."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        port, = free_ports(1)
        async with HttpBackend("b") as backend:
            async with Proxy.from_toml(config(port, backend.address)):
                assert loop.reactor.attached
                assert await answers(port, 50, pipelined=False) == [b"ok"] * 50
                assert await answers(port, 100, pipelined=True) == [b"ok"] * 100
            assert not loop.reactor.attached
    run(main)


def test_asyncio_keeps_working_while_the_reactor_waits():
    """Threads handing results over (call_soon_threadsafe, the child watcher reaping a subprocess) and timers work
    while the loop blocks in the reactor's epoll_wait: with no Proxy (no tick to end a wait), and with two Proxies,
    the second with a reactor of its own."""
    async def asyncio_work(loop: asyncio.AbstractEventLoop) -> None:
        handed = loop.create_future()
        threading.Timer(0.05, loop.call_soon_threadsafe, (handed.set_result, "from a thread")).start()
        assert await asyncio.wait_for(handed, 5) == "from a thread"
        child = await asyncio.create_subprocess_exec("sleep", "0.1")
        assert await asyncio.wait_for(child.wait(), 10) == 0
        began = loop.time()
        await asyncio.sleep(0.05)
        assert 0.04 <= loop.time() - began < 5

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = free_ports(2)
        await asyncio_work(loop)
        async with HttpBackend("b") as backend:
            async with Proxy.from_toml(config(first, backend.address)), \
                    Proxy.from_toml(config(second, backend.address)):
                await asyncio_work(loop)
                assert await answers(first, 5, pipelined=False) == [b"ok"] * 5
                assert await answers(second, 5, pipelined=False) == [b"ok"] * 5
    run(main)


def test_an_idle_reactor_ticks_slowly_until_events_come():
    """With no connection open the tick slows down (Reactor.idle); the events of a new connection bring the fast
    tick back at once, so the connection's deadlines keep their time: a head left unfinished gets its 408 after
    header_timeout, not at the slow tick's next turn. Once it is closed, the tick slows down again."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        port, = free_ports(1)
        async with HttpBackend("b") as backend:
            text = config(port, backend.address).replace('protocol = "http"\n',
                                                         'protocol = "http"\nheader_timeout = "300ms"\n')
            async with Proxy.from_toml(text):
                await until(lambda: loop.reactor.idle, 5)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
                began = loop.time()
                await asyncio.sleep(0.05)
                assert not loop.reactor.idle
                answer = await asyncio.wait_for(reader.read(), 5)
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                assert 0.25 < loop.time() - began < 0.9
                writer.close()
                await until(lambda: loop.reactor.idle, 5)
    run(main)


def test_loop_choice(monkeypatch):
    monkeypatch.setenv(workerloop.LOOP_ENV, "")
    assert workerloop.loop_factory() is workerloop.ReactorLoop
    monkeypatch.setenv(workerloop.LOOP_ENV, "uvloop")
    import uvloop
    assert workerloop.loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv(workerloop.LOOP_ENV, "libev")
    with pytest.raises(ValueError, match="FASTMESH_LOOP='libev': expected one of reactor, uvloop"):
        workerloop.loop_factory()
