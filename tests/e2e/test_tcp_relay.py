"""The TCP relay end to end: real sockets on 127.0.0.1, backends started here, the Proxy on the same loop."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time

import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import Backend, answer_after_eof, echo, greet, hold, start_backends
from fastmesh._testbase.net import free_port, free_ports, tcp_config

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(coro)


async def _proxy(endpoints: list[str], **opts: object) -> Proxy:
    proxy = Proxy.from_toml(tcp_config(free_port(), endpoints, **opts))
    await proxy.start()
    return proxy


async def _connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.addresses["tcp-in"]
    return await asyncio.open_connection(host, port, limit=1 << 22)


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
def test_large_payload_both_directions_byte_exact(use_splice):
    """128 MiB sent while the echo comes back: both directions busy at once, checksums equal."""
    size = 128 << 20
    chunk = os.urandom(1 << 20)

    async def main():
        (backend,) = await start_backends(1, echo)
        proxy = await _proxy([backend.address], splice=use_splice)
        reader, writer = await _connect(proxy)
        sent = hashlib.sha256()

        async def send():
            for i in range(size // len(chunk)):
                block = i.to_bytes(8, "little") + chunk[8:]
                sent.update(block)
                writer.write(block)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        total = 0
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            got.update(data)
            total += len(data)
        await sender
        writer.close()
        stats = proxy.stats()["listeners"]["tcp-in"]
        await proxy.stop()
        await backend.stop()
        assert total == size
        assert got.hexdigest() == sent.hexdigest()
        assert stats["bytes_in"] == size and stats["bytes_out"] == size

    run(main())


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
def test_half_close_client_first(use_splice):
    """The client's FIN reaches the backend while the backend's answer still comes back."""
    async def main():
        (backend,) = await start_backends(1, answer_after_eof)
        proxy = await _proxy([backend.address], splice=use_splice)
        reader, writer = await _connect(proxy)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == b"got 100000 bytes\n"
        writer.close()
        await proxy.stop()
        await backend.stop()

    run(main())


def test_half_close_backend_first():
    """The backend's FIN reaches the client, and the client can still send afterwards."""
    received = []

    async def speak_then_listen(backend, reader, writer):
        writer.write(b"banner\n")
        writer.write_eof()
        received.append(await reader.read())

    async def main():
        backend = await Backend(speak_then_listen).start()
        proxy = await _proxy([backend.address])
        reader, writer = await _connect(proxy)
        assert await asyncio.wait_for(reader.read(), 5) == b"banner\n"  # read() returns at EOF
        writer.write(b"late words")
        writer.write_eof()
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert received == [b"late words"]
        writer.close()
        await proxy.stop()
        await backend.stop()

    run(main())


def test_round_robin_spreads_connections():
    async def main():
        backends = await start_backends(3, greet)
        proxy = await _proxy([b.address for b in backends])
        seen = []
        for _ in range(9):
            reader, writer = await _connect(proxy)
            seen.append((await reader.readline()).decode().strip())
            writer.close()
        await proxy.stop()
        for b in backends:
            await b.stop()
        assert sorted(seen) == sorted([f"hello from backend-{i}" for i in range(3)] * 3)

    run(main())


def test_endpoint_down_traffic_goes_to_the_others():
    async def main():
        backends = await start_backends(2, greet)
        dead = f"127.0.0.1:{free_port()}"
        proxy = await _proxy([dead] + [b.address for b in backends])
        for _ in range(20):
            reader, writer = await _connect(proxy)
            line = await asyncio.wait_for(reader.readline(), 5)
            assert line.startswith(b"hello from backend-")
            writer.close()
        states = {e["address"]: e for e in proxy.stats()["clusters"]["backend"]}
        await proxy.stop()
        for b in backends:
            await b.stop()
        assert states[dead]["state"] in ("down", "probing")
        assert states[dead]["connect_failures"] >= 1
        assert states[dead]["connect_failures"] <= 3  # marked down at once, not tried by every connection

    run(main())


def test_all_endpoints_down_closes_client_promptly():
    async def main():
        proxy = await _proxy([f"127.0.0.1:{p}" for p in free_ports(2)])
        t0 = time.monotonic()
        reader, writer = await _connect(proxy)
        data = await asyncio.wait_for(reader.read(), 2)
        elapsed = time.monotonic() - t0
        writer.close()
        failed = proxy.stats()["listeners"]["tcp-in"]["failed"]
        await proxy.stop()
        assert data == b""
        assert elapsed < 0.5
        assert failed == 1

    run(main())


def _saturated_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full, so further connects hang (SYNs dropped): a blackhole
    on loopback for connect-timeout tests."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(lsock.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.2)
    return lsock, fillers


def test_connect_timeout_moves_on_to_another_endpoint():
    async def main():
        lsock, fillers = _saturated_listener()
        blackhole = "127.0.0.1:%d" % lsock.getsockname()[1]
        (backend,) = await start_backends(1, greet)
        proxy = await _proxy([blackhole, backend.address], cluster_connect_timeout="300ms")
        t0 = time.monotonic()
        for _ in range(2):  # round robin: one of these two starts at the blackhole
            reader, writer = await _connect(proxy)
            assert await asyncio.wait_for(reader.readline(), 5) == b"hello from backend-0\n"
            writer.close()
        elapsed = time.monotonic() - t0
        states = {e["address"]: e for e in proxy.stats()["clusters"]["backend"]}
        await proxy.stop()
        await backend.stop()
        lsock.close()
        for s in fillers:
            s.close()
        assert states[blackhole]["connect_failures"] == 1
        assert 0.25 < elapsed < 2.0

    run(main())


def test_idle_timeout_closes_silent_connections():
    async def main():
        (backend,) = await start_backends(1, echo)
        proxy = await _proxy([backend.address], idle_timeout="300ms")
        reader, writer = await _connect(proxy)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        elapsed = time.monotonic() - t0
        writer.close()
        await proxy.stop()
        await backend.stop()
        assert 0.2 < elapsed < 1.5

    run(main())


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
def test_backpressure_bounds_buffering(use_splice):
    """A backend that never reads: the proxy stops reading too, so the client blocks after a few MB."""
    async def main():
        backend = await Backend(hold).start()
        proxy = await _proxy([backend.address], splice=use_splice)
        host, port = proxy.addresses["tcp-in"]
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        written = 0
        block = b"z" * 65536
        stalled_since = None
        while True:
            try:
                written += sock.send(block)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
            await asyncio.sleep(0)
            if written > 256 << 20:
                break
        sock.close()
        await proxy.stop()
        await backend.stop()
        # Kernel socket buffers on three sockets plus one pipe or buffer: a few MB at most, never unbounded.
        assert written < 64 << 20

    run(main())


def test_stop_drains_then_closes():
    async def main():
        (backend,) = await start_backends(1, echo)
        proxy = await _proxy([backend.address])
        host, port = proxy.addresses["tcp-in"]
        reader, writer = await _connect(proxy)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        stopping = asyncio.create_task(proxy.stop(drain_timeout=5))
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):  # no longer accepting
            await asyncio.open_connection(host, port)
        writer.write(b"b")  # the open connection still works while draining
        assert await reader.readexactly(1) == b"b"
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await asyncio.wait_for(stopping, 3)
        await backend.stop()

    run(main())


def test_embedded_proxy_many_concurrent_connections():
    """The embedding API under concurrency: 200 clients at once, each echo exact."""
    async def main():
        backends = await start_backends(2, echo)
        async with Proxy.from_toml(tcp_config(free_port(), [b.address for b in backends])) as proxy:
            async def client(i):
                reader, writer = await _connect(proxy)
                payload = os.urandom(1000 + i)
                writer.write(payload)
                writer.write_eof()
                data = await reader.read()
                writer.close()
                return data == payload
            results = await asyncio.gather(*(client(i) for i in range(200)))
            assert all(results)
            for _ in range(50):
                if proxy.active_connections == 0:
                    break
                await asyncio.sleep(0.02)
            assert proxy.active_connections == 0
        assert sum(b.connections for b in backends) == 200
        for b in backends:
            await b.stop()

    run(main())
