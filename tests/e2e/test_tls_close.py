"""A TLS peer's close sent in the same flight as its last bytes is passed on at once, on every TLS path.

OpenSSL's read-ahead takes such a close_notify off the socket together with the data before it, so no readiness
edge follows: each test's peer (fastmesh._testbase.tls_flight) sends data + close_notify in one write and no FIN,
and the other side must see the close within seconds, long before any idle timeout (30 s here).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pki
from fastmesh._testbase.tls_flight import FlightServer, flight_client

pytestmark = pytest.mark.timeout(90)

PROMPT = 3.0        # seconds: a close passed on by the relay itself, not by a timeout
IDLE = "30s"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def config(endpoints: list[str], protocol: str, tls: str = "", cluster_tls: str = "") -> str:
    text = (f'[[listeners]]\nname = "edge"\nprotocol = "{protocol}"\nlisten = "127.0.0.1:{free_port()}"\n'
            f'cluster = "backend"\nidle_timeout = "{IDLE}"\n')
    if tls:
        text += f"tls = {tls}\n"
    text += f'[clusters.backend]\nendpoints = ["{endpoints[0]}"]\n'
    if cluster_tls:
        text += f"tls = {cluster_tls}\n"
    return text


@contextlib.asynccontextmanager
async def edge_port(text: str) -> AsyncIterator[int]:
    """The port of listener "edge" of a Proxy of `text`, started for the block and stopped however it ends."""
    proxy = Proxy.from_toml(text)
    await proxy.start()
    try:
        yield proxy.addresses["edge"][1]
    finally:
        await proxy.stop()


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything until EOF, and how long the EOF took; (bytes so far, inf) when it did not come in 10 s."""
    start, got = time.monotonic(), b""
    try:
        while data := await asyncio.wait_for(reader.read(65536), 10):
            got += data
    except asyncio.TimeoutError:
        return got, float("inf")
    return got, time.monotonic() - start


REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def test_tcp_origination_passes_backend_close_notify_to_client(pki: Pki) -> None:
    """tcp listener originating TLS; the backend answers and sends close_notify in one flight: the client gets
    the answer and EOF at once, and the backend gets our close_notify once the client has closed."""
    server = FlightServer(pki.server_context(pki.issue("web.svc.test")), REPLY)

    async def main() -> None:
        async with edge_port(config([server.address], "tcp",
                                    cluster_tls=f'{{ ca = "{pki.ca_file}", server_name = "web.svc.test" }}')) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            got, took = await read_to_eof(reader)
            writer.close()
            await asyncio.to_thread(server.stop)
        assert got == REPLY
        assert took < PROMPT, f"the backend's close reached the client only after {took:.1f}s"
        assert len(server.closes) == 1
        answered, notified = server.closes[0]
        assert answered < PROMPT and notified, server.closes

    run(main())


def test_tcp_termination_passes_client_close_notify_to_backend(pki: Pki) -> None:
    """tcp listener terminating TLS; the client sends its data and close_notify in one flight: the cleartext
    backend sees the FIN at once (it answers only after EOF), and the client gets that answer and our close."""
    cert = pki.issue("edge.test")
    seen: list[bytes] = []

    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()                       # up to EOF
        seen.append(data)
        writer.write(b"got %d" % len(data))
        await writer.drain()
        writer.close()

    async def main() -> None:
        backend = await asyncio.start_server(until_eof, "127.0.0.1", 0)
        address = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        try:
            async with edge_port(config([address], "tcp",
                                        tls=f'{{ cert = "{cert.cert}", key = "{cert.key}" }}')) as port:
                got, took, closed = await asyncio.to_thread(flight_client, port, pki.client_context(), "edge.test",
                                                            b"hello", 10.0)
        finally:
            backend.close()
            await backend.wait_closed()
        assert seen == [b"hello"], "the backend never saw the client's close"
        assert closed and got == b"got 5"
        assert took < PROMPT, f"the client's close reached the backend only after {took:.1f}s"

    run(main())


def test_http_listener_serves_request_sent_with_close_notify_then_closes(pki: Pki) -> None:
    """http listener terminating TLS; the client sends a keep-alive request and close_notify in one flight: it
    gets the response, then the connection ends at once rather than idling to the keep-alive timeout."""
    cert = pki.issue("edge.test")

    async def main() -> None:
        async with HttpBackend("b") as backend:
            async with edge_port(config([backend.address], "http",
                                        tls=f'{{ cert = "{cert.cert}", key = "{cert.key}" }}')) as port:
                got, took, closed = await asyncio.to_thread(
                    flight_client, port, pki.client_context(), "edge.test",
                    b"GET /status/200 HTTP/1.1\r\nHost: edge.test\r\n\r\n", 10.0)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        assert closed and took < PROMPT, f"the connection ended only after {took:.1f}s"

    run(main())


def test_http_pooled_tls_upstream_closed_behind_response_is_not_reused(pki: Pki) -> None:
    """HTTPS upstream that answers a keep-alive response and closes (close_notify in the same flight, no FIN):
    the pool must not keep that connection, so the next request opens a new one and succeeds, and the server
    gets our close_notify at once."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    server = FlightServer(pki.server_context(pki.issue("web.svc.test")), reply)

    async def get(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        got, _ = await read_to_eof(reader)
        writer.close()
        return got

    async def main() -> None:
        async with edge_port(config([server.address], "http",
                                    cluster_tls=f'{{ ca = "{pki.ca_file}", server_name = "web.svc.test" }}')) as port:
            first = await get(port)
            await asyncio.sleep(0.2)
            second = await asyncio.wait_for(get(port), 15)
            await asyncio.to_thread(server.stop)
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"hello"), first
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"hello"), second
        assert len(server.requests) == 2
        assert len(server.closes) == 2
        assert all(answered < PROMPT and notified for answered, notified in server.closes), server.closes

    run(main())


def test_http_tls_upstream_body_until_close_ends_at_close_notify(pki: Pki) -> None:
    """HTTPS upstream whose response body runs until the close (no length), sent with close_notify in one
    flight: the client gets the whole body and its end at once."""
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody-until-close"
    server = FlightServer(pki.server_context(pki.issue("web.svc.test")), reply)

    async def main() -> None:
        async with edge_port(config([server.address], "http",
                                    cluster_tls=f'{{ ca = "{pki.ca_file}", server_name = "web.svc.test" }}')) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            got, took = await read_to_eof(reader)
            writer.close()
            await asyncio.to_thread(server.stop)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"body-until-close"), got
        assert took < PROMPT, f"the response ended only after {took:.1f}s"

    run(main())
