"""The HTTP test backend itself, checked against httpx and raw sockets with no proxy in between."""
from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from fastmesh._testbase.http_backend import (
    WS_BINARY, WS_CLOSE, WS_PING, WS_PONG, WS_TEXT, HttpBackend, PatternChecker, pattern, pattern_chunks,
    read_response, read_response_head, read_ws_frame, ws_accept, ws_frame,
)

pytestmark = pytest.mark.timeout(60)


def run(test):
    """Run test(backend, client) on a fresh loop with a started backend and an httpx client for it."""
    async def main():
        async with HttpBackend("b1") as backend:
            async with httpx.AsyncClient(base_url=backend.url, timeout=10) as client:
                await test(backend, client)
    asyncio.run(main())


async def raw(backend: HttpBackend) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", backend.port, limit=1 << 22)


def test_echo_reports_the_request():
    async def test(backend, client):
        r = await client.post("/echo/a?b=1", content=b"hello", headers={"X-Thing": "v1"})
        assert r.status_code == 200
        assert r.headers["x-backend"] == "b1" and r.headers["x-backend-connection"] == "1"
        echo = r.json()
        assert echo["method"] == "POST" and echo["target"] == "/echo/a?b=1" and echo["path"] == "/echo/a"
        assert echo["body"] == "hello" and echo["body_length"] == 5
        assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert ["X-Thing", "v1"] in echo["headers"]
        assert echo["peer"].startswith("127.0.0.1:")
        # Any path without a behaviour of its own echoes too (routing tests look at rewritten targets this way).
        assert (await client.get("/some/where")).json()["target"] == "/some/where"
        assert backend.received[0].header("x-thing") == "v1" and backend.received[0].body == b"hello"

    run(test)


def test_keep_alive_counts_connections_and_requests():
    async def test(backend, client):
        for i in range(10):
            assert (await client.get(f"/echo?i={i}")).json()["target"] == f"/echo?i={i}"
        assert backend.connections == 1 and backend.requests == 10

    run(test)


def test_status_paths():
    async def test(backend, client):
        r = await client.get("/status/503")
        assert r.status_code == 503 and r.text == "503\n"
        r = await client.get("/status/204")
        assert r.status_code == 204 and r.content == b"" and "content-length" not in r.headers
        assert (await client.get("/status/99")).status_code == 400
        assert (await client.get("/status/404")).status_code == 404

    run(test)


def test_chunked_response_with_trailers_and_extensions():
    async def test(backend, client):
        r = await client.get("/chunked?n=3")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.content == b"chunk 0\nchunk 1\nchunk 2\n"
        reader, writer = await raw(backend)
        writer.write(b"GET /chunked?n=4&size=70000&ext=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = await read_response(reader)
        body = pattern(4 * 70000)
        assert resp.body == body
        assert ("x-chunks", "4") in resp.trailers
        assert ("x-body-sha256", hashlib.sha256(body).hexdigest()) in resp.trailers
        writer.close()

    run(test)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_bytes_streams_the_pattern(framing):
    n = 5_000_003
    query = {"length": "", "chunked": "&chunked=1", "close": "&close=1"}[framing]

    async def test(backend, client):
        checker = PatternChecker()
        async with client.stream("GET", f"/bytes?n={n}{query}") as r:
            async for data in r.aiter_raw():
                checker.feed(data)
        assert checker.length == n and checker.ok
        assert backend.body_bytes_sent == n
        assert ("content-length" in r.headers) == (framing == "length")
        assert (r.headers.get("connection") == "close") == (framing == "close")

    run(test)


def test_pattern_helpers_agree_and_checker_catches_a_wrong_byte():
    whole = pattern(300_000)
    assert b"".join(bytes(c) for c in pattern_chunks(300_000)) == whole
    assert pattern(1000, 70_000) == whole[70_000:71_000]
    good = PatternChecker()
    good.feed(whole[:12345])
    good.feed(whole[12345:])
    assert good.ok and good.length == 300_000
    bad = PatternChecker()
    broken = bytearray(whole)
    broken[200_000] ^= 1
    bad.feed(broken)
    assert not bad.ok and bad.length == 300_000


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_sink_reads_any_body(chunked):
    n = 3_000_001

    async def test(backend, client):
        async def gen():
            for piece in pattern_chunks(n):
                yield bytes(piece)
        content = gen() if chunked else pattern(n)
        r = await client.post("/sink", content=content)
        answer = r.json()
        assert answer["length"] == n and answer["chunked"] == chunked and answer["pattern"] is True
        assert answer["sha256"] == hashlib.sha256(pattern(n)).hexdigest()
        r = await client.post("/sink?hash=0", content=b"not the pattern")
        assert r.json() == {"backend": "b1", "length": 15, "chunked": False, "sha256": None, "pattern": False,
                            "trailers": []}

    run(test)


def test_chunked_request_with_trailers():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n")
        echo = (await read_response(reader)).json()
        assert echo["body"] == "hello world" and echo["chunked"] is True and echo["trailers"] == [["x-sum", "11"]]
        writer.close()

    run(test)


def test_reset_sends_rst():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"GET /reset HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        with pytest.raises(httpx.TransportError):
            await client.get("/reset?partial=1")

    run(test)


@pytest.mark.parametrize("silent", [False, True])
def test_close_answers_then_closes(silent):
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"GET /close%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"?silent=1" if silent else b""))
        resp = await read_response(reader)
        assert resp.status == 200 and resp.body == b"closing\n"
        assert (resp.header("Connection") == "close") != silent
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    run(test)


def test_raw_writes_exactly_what_it_is_given():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"GET /raw?data=HTTP/1.1%20200%20OK%0D%0AX-Byte:%20%FF%0D%0AContent-Length:%202%0D%0A%0D%0Ahi "
                     b"HTTP/1.1\r\nHost: t\r\n\r\n")
        expected = b"HTTP/1.1 200 OK\r\nX-Byte: \xff\r\nContent-Length: 2\r\n\r\nhi"
        assert await asyncio.wait_for(reader.read(), 5) == expected
        writer.close()

    run(test)


def test_slow_waits():
    async def test(backend, client):
        t0 = time.monotonic()
        r = await client.get("/slow?ms=300")
        assert r.text == "slept 300 ms\n" and time.monotonic() - t0 >= 0.3

    run(test)


def test_pipelined_requests_answered_in_order():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        for i in range(5):
            assert (await read_response(reader)).json()["target"] == f"/echo?n={i}"
        assert backend.connections == 1
        writer.close()

    run(test)


def test_http10_closes_unless_keep_alive_asked():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
        resp = await read_response(reader)
        assert resp.json()["version"] == "HTTP/1.0" and resp.header("Connection") == "close"
        assert await reader.read() == b""
        writer.close()
        reader, writer = await raw(backend)
        for _ in range(2):
            writer.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (await read_response(reader)).header("Connection") == "keep-alive"
        writer.close()
        assert backend.connections == 2

    run(test)


def test_expect_continue():
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(b"POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(read_response_head(reader), 5)
        assert interim.status == 100
        writer.write(b"body")
        resp = await read_response(reader)
        assert resp.status == 200 and resp.json()["length"] == 4 and resp.json()["expect"] == ["100-continue"]
        writer.write(b"POST /continue?status=417 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        resp = await read_response(reader)
        assert resp.status == 417 and resp.interim == [] and resp.header("Connection") == "close"
        writer.close()

    run(test)


def test_expect_ignored_when_configured_so():
    async def main():
        async with HttpBackend("quiet", expect_continue=False) as backend:
            reader, writer = await raw(backend)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            with pytest.raises(asyncio.TimeoutError):   # no 100 comes: the client must send the body regardless
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
            writer.write(b"ok")
            resp = await read_response(reader)
            assert resp.interim == [] and resp.json()["body"] == "ok"
            writer.close()
    asyncio.run(main())


def test_websocket_echo():
    async def test(backend, client):
        reader, writer = await raw(backend)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        assert ws_accept(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="       # the example in RFC 6455
        writer.write(f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        resp = await read_response(reader)
        assert resp.status == 101 and resp.header("Sec-WebSocket-Accept") == ws_accept(key)
        big = pattern(70_000)
        for opcode, payload in [(WS_TEXT, b"hi"), (WS_BINARY, big), (WS_BINARY, b"x" * 300)]:
            writer.write(ws_frame(opcode, payload))
            assert await read_ws_frame(reader) == (True, opcode, payload)
        writer.write(ws_frame(WS_PING, b"p"))
        assert await read_ws_frame(reader) == (True, WS_PONG, b"p")
        writer.write(ws_frame(WS_CLOSE, b"\x03\xe8"))
        assert await read_ws_frame(reader) == (True, WS_CLOSE, b"\x03\xe8")
        assert await reader.read() == b""
        assert backend.upgrades == 1
        writer.close()

    run(test)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\nHost: t\n\n\r\n\r\n", 400),                                   # bare LF
    (b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400),                           # obs-fold
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
])
def test_malformed_requests_refused(request_bytes, status):
    async def test(backend, client):
        reader, writer = await raw(backend)
        writer.write(request_bytes)
        resp = await read_response(reader)
        assert resp.status == status and resp.header("Connection") == "close"
        writer.close()

    run(test)


def test_idle_timeout_and_stop_end_connections():
    async def main():
        backend = await HttpBackend("idle", idle_timeout=0.2).start()
        reader, writer = await raw(backend)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 2) == b""     # closed by the backend's idle timeout
        writer.close()
        reader, writer = await raw(backend)
        writer.write(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await backend.stop()
        assert await asyncio.wait_for(reader.read(), 2) == b"" and time.monotonic() - t0 < 1
        assert backend.active == 0 and backend.connections == 2
        writer.close()
    asyncio.run(main())
