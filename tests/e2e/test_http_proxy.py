"""The HTTP/1.1 proxy end to end: keep-alive, pipelining, 1.0, 100-continue, chunked, upgrades, pools, headers, logs.

Real sockets on 127.0.0.1: HttpBackend servers and the Proxy run on the test's own loop; clients are httpx,
curl (a subprocess, so the loop keeps serving) and raw sockets where the framing itself is under test.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import (
    WS_BINARY, WS_CLOSE, WS_PING, WS_PONG, WS_TEXT, HttpBackend, pattern, read_response, read_response_head,
    read_ws_frame, ws_accept, ws_frame,
)
from fastmesh._testbase.inproc import no_connection_left, web_config

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0          # seconds any single answer may take before the test fails


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def proxied(*backends: HttpBackend, listener: str = "", cluster: str = "") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(web_config([b.address for b in backends], listener=listener,
                                          cluster=cluster)) as proxy:
        yield proxy
        await no_connection_left(proxy)   # only after a passing test: a failure's own error is the one to see


def url(proxy: Proxy) -> str:
    host, port = proxy.addresses["web"]
    return f"http://{host}:{port}"


def client(proxy: Proxy, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url(proxy), timeout=WAIT, trust_env=False, **kwargs)


async def open_raw(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.addresses["web"]
    return await asyncio.open_connection(host, port, limit=1 << 22)


async def response(reader: asyncio.StreamReader, method: str = "GET"):
    return await asyncio.wait_for(read_response(reader, method=method), WAIT)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the peer has closed (FIN, or RST after everything was read)."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionResetError:
        return True


async def curl(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes, float]:
    """Run curl without blocking the loop the proxy and backends run on: (exit code, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--noproxy", "*", "--max-time", "20", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode or 0, out, err, time.monotonic() - t0


def names(headers: list) -> set[str]:
    return {name.lower() for name, _ in headers}


# ---- basics ------------------------------------------------------------------------------------------------------

def test_get_and_post_reach_the_backend():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy, client(proxy) as c:
            r = await c.get("/echo/path?q=1", headers={"x-hello": "there"})
            assert r.status_code == 200 and r.headers["x-backend"] == "web-0"
            echo = r.json()
            assert echo["method"] == "GET" and echo["target"] == "/echo/path?q=1"
            assert ["x-hello", "there"] in [[k.lower(), v] for k, v in echo["headers"]]
            r = await c.post("/echo", content=b"payload \x00\xff bytes")
            assert r.json()["body"] == "payload \x00\xff bytes" and r.json()["method"] == "POST"
            r = await c.put("/status/201", content=b"x")
            assert r.status_code == 201 and r.text == "201\n"

    run(main())


def test_curl_get_and_upload():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            code, out, err, _ = await curl("-i", f"{url(proxy)}/echo?via=curl")
            assert code == 0, err
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["target"] == "/echo?via=curl"
            code, out, err, _ = await curl("--data-binary", "@-", "-H", "Content-Type: application/octet-stream",
                                           "-H", "Expect:", f"{url(proxy)}/sink", stdin=pattern(300_000))
            assert code == 0, err
            answer = json.loads(out)
            assert answer["length"] == 300_000 and answer["pattern"] is True

    run(main())


def test_curl_chunked_upload_and_download():
    """curl -T - sends stdin chunked; /chunked answers chunked: both framings through the proxy, checked by curl."""
    size = 3_000_000

    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            code, out, err, _ = await curl("-T", "-", "-H", "Expect:", f"{url(proxy)}/sink", stdin=pattern(size))
            assert code == 0, err
            answer = json.loads(out)
            assert answer["chunked"] is True and answer["length"] == size and answer["pattern"] is True
            code, out, err, _ = await curl("--raw", f"{url(proxy)}/chunked?n=2")
            assert code == 0, err
            assert out.startswith(b"8\r\nchunk 0\n\r\n8\r\nchunk 1\n\r\n0\r\n")
            code, out, err, _ = await curl(f"{url(proxy)}/chunked?n=40&size=50000")
            assert code == 0, err
            assert out == pattern(40 * 50000)

    run(main())


def test_keep_alive_serves_many_requests_on_one_connection():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            for i in range(5):
                writer.write(b"GET /echo?i=%d HTTP/1.1\r\nHost: ka.test\r\n\r\n" % i)
                resp = await response(reader)
                assert resp.status == 200 and resp.json()["target"] == f"/echo?i={i}"
                assert "close" not in resp.tokens("Connection")
            writer.write(b"GET /echo?last HTTP/1.1\r\nHost: ka.test\r\nConnection: close\r\n\r\n")
            assert (await response(reader)).json()["target"] == "/echo?last"
            assert await closed(reader)
            writer.close()

    run(main())


def test_idle_keep_alive_connections_hold_no_exchange():
    """Between requests a swept connection gives its exchange (and output buffers) back; its next request takes one
    again and is forwarded as before, with the client's address in X-Forwarded-For."""
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            conns = [await open_raw(proxy) for _ in range(8)]
            for i, (reader, writer) in enumerate(conns):
                writer.write(b"GET /echo?first=%d HTTP/1.1\r\nHost: idle.test\r\n\r\n" % i)
                assert (await response(reader)).status == 200
            deadline = time.monotonic() + 10
            while proxy.stats()["http"]["web"]["exchanges"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert proxy.stats()["http"]["web"]["exchanges"] == 0
            assert proxy.stats()["http"]["web"]["active"] == 8
            for i, (reader, writer) in enumerate(conns):
                writer.write(b"GET /echo?again=%d HTTP/1.1\r\nHost: idle.test\r\n\r\n" % i)
                echo = (await response(reader)).json()
                assert echo["target"] == f"/echo?again={i}"
                assert {k.lower(): v for k, v in echo["headers"]}["x-forwarded-for"] == "127.0.0.1"
                writer.close()

    run(main())


def test_pipelined_requests_answered_in_order():
    """The first request is slow: the later, fast ones must still be answered after it, in order."""
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: p.test\r\n\r\n"
                         b"POST /echo?n=1 HTTP/1.1\r\nHost: p.test\r\nContent-Length: 5\r\n\r\nhello"
                         b"GET /echo?n=2 HTTP/1.1\r\nHost: p.test\r\n\r\n"
                         b"POST /echo?n=3 HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n"
                         b"GET /echo?n=4 HTTP/1.1\r\nHost: p.test\r\n\r\n")
            assert (await response(reader)).body == b"slept 300 ms\n"
            bodies = {1: "hello", 2: "", 3: "abc", 4: ""}
            for n in range(1, 5):
                echo = (await response(reader)).json()
                assert echo["target"] == f"/echo?n={n}" and echo["body"] == bodies[n]
            writer.close()

    run(main())


def test_head_and_bodyless_statuses_keep_framing():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"HEAD /bytes?n=1000 HTTP/1.1\r\nHost: h.test\r\n\r\n")
            resp = await response(reader, "HEAD")
            assert resp.status == 200 and resp.header("Content-Length") == "1000" and resp.body == b""
            for status in (204, 304):
                writer.write(b"GET /status/%d HTTP/1.1\r\nHost: h.test\r\n\r\n" % status)
                resp = await response(reader)
                assert resp.status == status and resp.body == b""
            writer.write(b"GET /echo?after HTTP/1.1\r\nHost: h.test\r\n\r\n")
            assert (await response(reader)).json()["target"] == "/echo?after"   # still in step
            writer.close()

    run(main())


# ---- HTTP/1.0 ----------------------------------------------------------------------------------------------------

def test_http10_closes_after_the_response():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /echo?v=10 HTTP/1.0\r\nHost: old.test\r\n\r\n")
            resp = await response(reader)
            assert resp.status == 200 and resp.json()["target"] == "/echo?v=10"
            assert await closed(reader)
            writer.close()

    run(main())


def test_http10_keep_alive_when_asked():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            for i in range(3):
                writer.write(b"GET /echo?i=%d HTTP/1.0\r\nHost: old.test\r\nConnection: keep-alive\r\n\r\n" % i)
                resp = await response(reader)
                assert resp.json()["target"] == f"/echo?i={i}"
                assert resp.header("Content-Length") is not None   # 1.0 keep-alive needs a length, never chunked
            writer.close()

    run(main())


def test_http10_client_never_gets_chunked():
    """The backend answers chunked; a 1.0 client cannot read that, so the proxy must frame it otherwise."""
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /chunked?n=3 HTTP/1.0\r\nHost: old.test\r\n\r\n")
            resp = await response(reader)
            assert "chunked" not in resp.tokens("Transfer-Encoding")
            assert resp.body == b"chunk 0\nchunk 1\nchunk 2\n"
            writer.close()

    run(main())


# ---- Expect: 100-continue ------------------------------------------------------------------------------------------

def test_expect_continue_raw():
    """The client holds its body back until a 100 arrives (from the backend or the proxy), then gets the answer."""
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"POST /continue HTTP/1.1\r\nHost: c.test\r\nContent-Length: 11\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(read_response_head(reader), WAIT)
            assert interim.status == 100
            writer.write(b"hello world")
            resp = await response(reader)
            assert resp.status == 200 and resp.json()["length"] == 11
            writer.close()

    run(main())


def test_expect_continue_with_curl():
    """curl waits up to --expect100-timeout for the 100; finishing far sooner proves the 100 came through."""
    size = 2 << 20

    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            code, out, err, elapsed = await curl("-i", "--expect100-timeout", "10", "-H", "Expect: 100-continue",
                                                 "--data-binary", "@-", f"{url(proxy)}/continue",
                                                 stdin=pattern(size))
            assert code == 0, err
            assert out.startswith(b"HTTP/1.1 100")
            final = out[out.index(b"\r\n\r\n") + 4:]
            head, _, body = final.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["length"] == size
            assert elapsed < 5

    run(main())


def test_expect_refused_by_backend_reaches_client():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"POST /continue?status=417 HTTP/1.1\r\nHost: c.test\r\nContent-Length: 11\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            resp = await response(reader)
            assert resp.status == 417 and resp.body == b"refused\n"
            writer.close()

    run(main())


# ---- chunked both ways ---------------------------------------------------------------------------------------------

def test_chunked_request_with_trailers_reaches_backend():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 11\r\n\r\n")
            echo = (await response(reader)).json()
            assert echo["body"] == "hello world"
            assert [k.lower() for k, _ in echo["trailers"]] == ["x-checksum"] and echo["trailers"][0][1] == "11"
            writer.close()

    run(main())


def test_chunked_response_with_trailers_reaches_client():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /chunked?n=5&ext=1 HTTP/1.1\r\nHost: c.test\r\nTE: trailers\r\n\r\n")
            resp = await response(reader)
            body = b"".join(b"chunk %d\n" % i for i in range(5))
            assert resp.body == body
            trailers = {k.lower(): v for k, v in resp.trailers}
            assert trailers["x-chunks"] == "5"
            writer.write(b"GET /chunked?n=20&size=100000 HTTP/1.1\r\nHost: c.test\r\nTE: trailers\r\n\r\n")
            resp = await response(reader)
            assert resp.body == pattern(2_000_000)
            writer.close()

    run(main())


def test_chunked_upload_streamed_with_httpx():
    size = 8 << 20

    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy, client(proxy) as c:
            async def body():
                for i in range(0, size, 1 << 20):
                    yield pattern(1 << 20, i)
            answer = (await c.post("/sink?hash=0", content=body())).json()
            assert answer["length"] == size and answer["pattern"] is True

    run(main())


# ---- upgrades ----------------------------------------------------------------------------------------------------

def test_websocket_upgrade_becomes_a_relay():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            key = "x3JJHMbDL1EzLkh9GBhXDw=="
            writer.write(f"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            resp = await response(reader)
            assert resp.status == 101 and resp.header("Sec-WebSocket-Accept") == ws_accept(key)
            assert "websocket" in resp.tokens("Upgrade") and "upgrade" in resp.tokens("Connection")
            for opcode, payload in [(WS_TEXT, b"hello"), (WS_BINARY, pattern(200_000)), (WS_TEXT, b"")]:
                writer.write(ws_frame(opcode, payload))
                assert await asyncio.wait_for(read_ws_frame(reader), WAIT) == (True, opcode, payload)
            # Raw bytes now: an HTTP-looking frame payload is just data to the relay.
            writer.write(ws_frame(WS_BINARY, b"GET / HTTP/1.1\r\n\r\n"))
            assert (await asyncio.wait_for(read_ws_frame(reader), WAIT))[2] == b"GET / HTTP/1.1\r\n\r\n"
            writer.write(ws_frame(WS_PING, b"ping"))
            assert await asyncio.wait_for(read_ws_frame(reader), WAIT) == (True, WS_PONG, b"ping")
            writer.write(ws_frame(WS_CLOSE, b"\x03\xe8bye"))
            assert await asyncio.wait_for(read_ws_frame(reader), WAIT) == (True, WS_CLOSE, b"\x03\xe8bye")
            assert await closed(reader)
            writer.close()
            assert backend.upgrades == 1 and backend.requests == 1

    run(main())


def test_declined_upgrade_stays_http():
    """The backend answers an upgrade request with a plain 200: no relay, the connection keeps speaking HTTP."""
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            resp = await response(reader)
            assert resp.status == 200
            upgrade = [v for k, v in resp.json()["headers"] if k.lower() == "upgrade"]
            assert upgrade == ["websocket"]             # an upgrade request carries its Upgrade header on
            writer.write(b"GET /echo?next HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            assert (await response(reader)).json()["target"] == "/echo?next"
            writer.close()

    run(main())


# ---- upstream pools ----------------------------------------------------------------------------------------------

def test_pool_reuses_backend_connections_for_one_client():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            async with client(proxy, limits=httpx.Limits(max_connections=1)) as c:
                for i in range(100):
                    assert (await c.get(f"/echo?i={i}")).status_code == 200
            assert backend.requests == 100
            assert backend.connections <= 2

    run(main())


def test_pool_reuses_backend_connections_across_clients():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            conns = [await open_raw(proxy) for _ in range(10)]
            for i in range(100):
                reader, writer = conns[i % 10]
                writer.write(b"GET /echo?i=%d HTTP/1.1\r\nHost: pool.test\r\n\r\n" % i)
                assert (await response(reader)).json()["target"] == f"/echo?i={i}"
            for _, writer in conns:
                writer.close()
            assert backend.requests == 100
            assert backend.connections <= 2

    run(main())


def test_pool_disabled_opens_a_connection_per_request():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend, cluster="pool_max_idle = 0") as proxy:
            async with client(proxy) as c:
                for i in range(5):
                    assert (await c.get(f"/echo?i={i}")).status_code == 200
            assert backend.connections == 5

    run(main())


def test_pool_idle_timeout_closes_idle_upstream_connections():
    async def main():
        async with HttpBackend("web-0") as backend, \
                proxied(backend, cluster='pool_idle_timeout = "300ms"') as proxy, client(proxy) as c:
            assert (await c.get("/echo")).status_code == 200
            assert backend.active == 1
            for _ in range(40):          # the proxy closes its idle upstream connection after ~300 ms
                if backend.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert backend.active == 0
            assert (await c.get("/echo")).json()["connection"] == 2

    run(main())


def test_concurrent_clients_spread_over_backends():
    async def main():
        async with HttpBackend("web-0") as b0, HttpBackend("web-1") as b1, proxied(b0, b1) as proxy, \
                client(proxy) as c:
            answers = await asyncio.gather(*(c.post(f"/echo?i={i}", content=b"%d" % i) for i in range(40)))
            assert [r.json()["body"] for r in answers] == [str(i) for i in range(40)]
            assert {r.headers["x-backend"] for r in answers} == {"web-0", "web-1"}
            assert b0.requests + b1.requests == 40

    run(main())


# ---- headers the proxy edits ---------------------------------------------------------------------------------------

HOP_BY_HOP_REQUEST = (b"GET /echo HTTP/1.1\r\nHost: hop.test\r\n"
                      b"Connection: keep-alive, X-Custom-Hop\r\nX-Custom-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                      b"TE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                      b"Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n")


def test_hop_by_hop_request_headers_removed():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(HOP_BY_HOP_REQUEST)
            echo = (await response(reader)).json()
            seen = names(echo["headers"])
            for gone in ("x-custom-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                         "proxy-connection"):
                assert gone not in seen, gone
            assert ["X-End-To-End", "kept"] in echo["headers"]
            connection = " ".join(v for k, v in echo["headers"] if k.lower() == "connection").lower()
            assert "x-custom-hop" not in connection
            writer.close()

    run(main())


def test_hop_by_hop_response_headers_removed():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            reader, writer = await open_raw(proxy)
            query = "&".join(f"header={h}" for h in (
                "Connection:%20X-Resp-Hop", "X-Resp-Hop:%201", "Keep-Alive:%20timeout=5", "Upgrade:%20h2c",
                "Proxy-Authenticate:%20Basic", "Trailer:%20x-t", "X-Kept:%20yes"))
            writer.write(f"GET /respond?{query}&body=ok HTTP/1.1\r\nHost: hop.test\r\n\r\n".encode())
            resp = await response(reader)
            assert resp.status == 200 and resp.body == b"ok" and resp.header("X-Kept") == "yes"
            seen = names(resp.headers)
            for gone in ("x-resp-hop", "keep-alive", "upgrade", "proxy-authenticate", "trailer"):
                assert gone not in seen, gone
            assert "x-resp-hop" not in resp.tokens("Connection")
            writer.close()

    run(main())


def test_forwarded_headers_added():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy, client(proxy) as c:
            echo = (await c.get("/echo")).json()
            got = {k.lower(): v for k, v in echo["headers"]}
            assert got["x-forwarded-for"] == "127.0.0.1"
            assert got["x-forwarded-proto"] == "http"
            assert got["via"].startswith("1.1 ")
            first_id = got["x-request-id"]
            assert first_id
            echo = (await c.get("/echo")).json()
            assert {k.lower(): v for k, v in echo["headers"]}["x-request-id"] not in ("", first_id)

    run(main())


def test_forwarded_headers_extend_or_keep_what_the_client_sent():
    async def main():
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy, client(proxy) as c:
            echo = (await c.get("/echo", headers={"X-Forwarded-For": "10.1.2.3", "x-request-id": "req-123",
                                                  "Via": "1.1 edge"})).json()
            got = {}
            for k, v in echo["headers"]:
                got.setdefault(k.lower(), []).append(v)
            xff = ", ".join(got["x-forwarded-for"]).replace(" ", "").split(",")
            assert xff == ["10.1.2.3", "127.0.0.1"]          # appended, not replaced
            assert got["x-request-id"] == ["req-123"]        # kept, not regenerated
            via = ", ".join(got["via"])
            assert via.startswith("1.1 edge") and via.count("1.1 ") == 2

    run(main())


def test_forwarded_headers_can_be_turned_off():
    async def main():
        async with HttpBackend("web-0") as backend, \
                proxied(backend, listener="forwarded_headers = false") as proxy, client(proxy) as c:
            echo = (await c.get("/echo", headers={"X-Forwarded-For": "10.1.2.3"})).json()
            got = {k.lower(): v for k, v in echo["headers"]}
            assert "via" not in got and "x-forwarded-proto" not in got
            assert got["x-forwarded-for"] == "10.1.2.3"

    run(main())


def test_request_id_header_name_configurable():
    async def main():
        async with HttpBackend("web-0") as backend, \
                proxied(backend, listener='request_id_header = "x-trace"') as proxy, client(proxy) as c:
            got = {k.lower(): v for k, v in (await c.get("/echo")).json()["headers"]}
            assert got.get("x-trace") and "x-request-id" not in got

    run(main())


# ---- access log --------------------------------------------------------------------------------------------------

async def _wait_lines(path: Path, count: int) -> list[str]:
    for _ in range(100):
        if os.path.exists(path):
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            if len(lines) >= count:
                return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} access log lines in {path}")


def test_access_log_json(tmp_path):
    log_path = tmp_path / "access.json.log"

    async def main():
        async with HttpBackend("web-0") as backend, proxied(
                backend, listener=f'access_log = {{ format = "json", path = "{log_path}" }}') as proxy:
            async with client(proxy, headers={"Host": "logs.example"}) as c:
                assert (await c.get("/bytes?n=1234")).status_code == 200
                assert (await c.get("/status/404")).status_code == 404
            lines = await _wait_lines(log_path, 2)
            entries = [json.loads(line) for line in lines]
            first = entries[0]
            values = list(first.values())
            assert first.get("method") == "GET"
            assert first.get("authority") == "logs.example"
            assert str(first.get("path", "")).startswith("/bytes")
            assert first.get("status") in (200, "200")
            assert backend.address in values                                   # the upstream endpoint
            byte_counts = [v for k, v in first.items() if "bytes" in k.lower() and isinstance(v, int)]
            assert any(v >= 1234 for v in byte_counts)
            durations = [v for k, v in first.items() if "duration" in k.lower()]
            assert durations and all(isinstance(v, (int, float)) and v >= 0 for v in durations)
            assert entries[1].get("status") in (404, "404")

    run(main())


def test_access_log_plain(tmp_path):
    log_path = tmp_path / "access.log"

    async def main():
        async with HttpBackend("web-0") as backend, proxied(
                backend, listener=f'access_log = {{ format = "plain", path = "{log_path}" }}') as proxy:
            async with client(proxy, headers={"Host": "plain.example"}) as c:
                assert (await c.get("/bytes?n=987654")).status_code == 200
            (line,) = await _wait_lines(log_path, 1)
            for part in ("GET", "plain.example", "/bytes?n=987654", backend.address):
                assert part in line, (part, line)
            rest = line.replace("/bytes?n=987654", " ").replace(backend.address, " ")
            numbers = [int(n) for n in re.findall(r"(?<![\d.])\d+(?![\d.])", rest)]
            assert 200 in numbers                                  # the status
            # The bytes sent: the body, or the body and the head (no port or timestamp falls in this window).
            assert any(987654 <= n <= 987654 + 4096 for n in numbers)

    run(main())
