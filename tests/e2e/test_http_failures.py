"""HTTP failure handling end to end: upstream errors (502/503/504 naming their cause), client timeouts,
malformed requests from raw sockets, and pooled upstream connections that died while idle.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from fastmesh import ConfigError, Proxy
from fastmesh._testbase.http_backend import HttpBackend, read_response
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def proxied(endpoints: list[str], *, listener: str = "", cluster: str = "") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(web_config(endpoints, listener=listener, cluster=cluster)) as proxy:
        yield proxy
        await no_connection_left(proxy)   # only after a passing test: a failure's own error is the one to see


def client(proxy: Proxy) -> httpx.AsyncClient:
    host, port = proxy.addresses["web"]
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT, trust_env=False)


async def open_raw(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.addresses["web"]
    return await asyncio.open_connection(host, port, limit=1 << 22)


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionResetError:
        return True


def assert_proxy_error(r: httpx.Response, statuses: tuple[int, ...], cause: str) -> None:
    """An answer the proxy made itself: the status, the cause in `fastmesh-error`, a short plain-text body."""
    assert r.status_code in statuses, (r.status_code, r.headers, r.text)
    assert r.headers.get("fastmesh-error") == cause
    assert r.headers.get("content-type", "").startswith("text/plain")
    assert 0 < len(r.content) < 512 and r.content.isascii()
    assert "x-backend" not in r.headers


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """An address whose connects hang: a listener that never accepts, its accept queue already full, so the
    kernel drops further SYNs (the way to get a connect timeout on loopback)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(lsock.getsockname())
            fillers.append(s)
        time.sleep(0.2)
        yield "127.0.0.1:%d" % lsock.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        lsock.close()


# ---- upstream failures -------------------------------------------------------------------------------------------

def test_connect_refused():
    async def main():
        dead = f"127.0.0.1:{free_port()}"
        async with proxied([dead], cluster="connect_attempts = 1") as proxy, client(proxy) as c:
            assert_proxy_error(await c.get("/echo"), (502, 503), "connect refused")

    run(main())


def test_connect_refused_moves_on_to_another_endpoint():
    async def main():
        dead = f"127.0.0.1:{free_port()}"
        async with HttpBackend("good") as good, proxied([dead, good.address]) as proxy, client(proxy) as c:
            for i in range(4):
                r = await c.post("/echo", content=b"%d" % i)
                assert r.status_code == 200 and r.json()["body"] == str(i)
            assert good.requests == 4

    run(main())


def test_connect_timeout_is_503():
    async def main():
        with blackhole() as address:
            async with proxied([address], cluster='connect_timeout = "300ms"\nconnect_attempts = 1') as proxy, \
                    client(proxy) as c:
                t0 = time.monotonic()
                r = await c.get("/echo")
                elapsed = time.monotonic() - t0
                assert_proxy_error(r, (503,), "connect timeout")
                assert 0.25 < elapsed < 2.5

    run(main())


def test_upstream_reset_is_502():
    async def main():
        async with HttpBackend("resetter") as backend, proxied([backend.address]) as proxy, client(proxy) as c:
            assert_proxy_error(await c.get("/reset"), (502,), "reset")

    run(main())


@pytest.mark.parametrize("connection", ["fresh", "pooled"])
def test_reset_request_that_cannot_be_replayed_is_not_sent_twice(connection):
    """A POST the upstream took and then reset on: the proxy cannot know what happened, so it must not retry,
    not even when the reset came on a reused pooled connection (which looks like a stale one)."""
    async def main():
        async with HttpBackend("resetter") as backend, proxied([backend.address]) as proxy, client(proxy) as c:
            if connection == "pooled":
                assert (await c.get("/echo")).status_code == 200
            assert_proxy_error(await c.post("/reset", content=b"charge the card"), (502,), "reset")
            await asyncio.sleep(0.2)
            assert backend.requests == (2 if connection == "pooled" else 1)
            assert backend.connections == 1

    run(main())


def test_response_timeout_is_504():
    async def main():
        async with HttpBackend("slow") as backend, \
                proxied([backend.address], cluster='response_timeout = "300ms"') as proxy, client(proxy) as c:
            t0 = time.monotonic()
            r = await c.get("/slow?ms=5000")
            elapsed = time.monotonic() - t0
            assert_proxy_error(r, (504,), "response timeout")
            assert 0.25 < elapsed < 2.5
            # A fast request afterwards is unaffected (the timed-out upstream connection is not reused).
            r = await c.get("/echo")
            assert r.status_code == 200

    run(main())


def test_no_endpoints_is_503():
    async def main():
        try:
            proxy = Proxy.from_toml(web_config([]))
        except ConfigError as exc:
            pytest.skip(f"the config loader refuses a cluster without endpoints ({exc}); "
                        "'no endpoints' is only reachable through discovery")
        async with proxy, client(proxy) as c:
            assert_proxy_error(await c.get("/echo"), (503,), "no endpoints")

    run(main())


BAD_RESPONSES = [
    ("garbage", "hello there\r\n\r\n"),
    ("bad-status", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("two-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nhi"),
    ("bad-length", "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nhi"),
    ("obs-fold", "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nhi"),
    ("closed-before-head", ""),
]


@pytest.mark.parametrize("answer", [b[1] for b in BAD_RESPONSES], ids=[b[0] for b in BAD_RESPONSES])
def test_malformed_upstream_response_is_502_and_that_connection_dropped(answer):
    """A backend answer that cannot be framed for sure must not reach the client (response splitting) and must not
    leave its connection in the pool; the next request works on a fresh connection."""
    async def main():
        async with HttpBackend("bad") as backend, proxied([backend.address]) as proxy, client(proxy) as c:
            # keep=1: the backend would go on using the connection; dropping it is up to the proxy.
            r = await c.get("/raw", params={"data": answer, "keep": "1" if answer else "0"})
            assert r.status_code == 502, (r.status_code, r.content)
            assert r.headers.get("fastmesh-error")
            assert "x-backend" not in r.headers and r.content.isascii() and len(r.content) < 512
            r = await c.get("/echo")
            assert r.status_code == 200 and r.json()["connection"] == 2

    run(main())


def test_upstream_reset_mid_response_closes_the_client_connection():
    """Once the head went out, a 502 is impossible: the client must see the body cut short and the connection end."""
    async def main():
        async with HttpBackend("resetter") as backend, proxied([backend.address]) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /reset?partial=1 HTTP/1.1\r\nHost: r.test\r\n\r\n")
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await asyncio.wait_for(read_response(reader), WAIT)
            writer.close()

    run(main())


# ---- pooled upstream connections that died while idle -------------------------------------------------------------

@pytest.mark.parametrize("how", ["silent-close", "backend-idle-timeout", "announced-close"])
def test_dead_pooled_connection_not_used_for_a_post(how):
    """The backend closed a connection the proxy had pooled; the next request, a POST that must not be replayed,
    goes on a fresh connection and arrives exactly once."""
    async def main():
        idle = 0.2 if how == "backend-idle-timeout" else None
        async with HttpBackend("closer", idle_timeout=idle) as backend, proxied([backend.address]) as proxy, \
                client(proxy) as c:
            first = {"silent-close": "/close?silent=1", "backend-idle-timeout": "/echo",
                     "announced-close": "/close"}[how]
            assert (await c.get(first)).status_code == 200
            for _ in range(40):
                if backend.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert backend.active == 0
            await asyncio.sleep(0.1)          # the FIN has reached the proxy
            r = await c.post("/echo", content=b"only once")
            assert r.status_code == 200 and r.json()["body"] == "only once"
            assert r.json()["connection"] == 2
            assert backend.requests == 2

    run(main())


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
def test_client_gone_mid_body_upstream_connection_not_reused(abort):
    """A client leaves in the middle of its request body: the upstream connection carries half a request, so the
    proxy must close it, and the next request must not land behind the leftover."""
    async def main():
        async with HttpBackend("web") as backend, proxied([backend.address]) as proxy, client(proxy) as c:
            reader, writer = await open_raw(proxy)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: g.test\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
            await writer.drain()
            for _ in range(40):
                if backend.requests == 1:
                    break
                await asyncio.sleep(0.05)
            assert backend.requests == 1
            if abort:
                writer.transport.abort()
            else:
                writer.close()
            for _ in range(60):
                if backend.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert backend.active == 0
            r = await c.post("/echo", content=b"clean")
            assert r.status_code == 200 and r.json()["body"] == "clean" and r.json()["connection"] == 2

    run(main())


# ---- client timeouts ---------------------------------------------------------------------------------------------

def test_slowloris_cut_off_within_header_timeout():
    """A head trickling in one byte at a time never completes: 408 (or a plain close) once header_timeout ends."""
    async def main():
        async with HttpBackend("web") as backend, \
                proxied([backend.address], listener='header_timeout = "500ms"') as proxy:
            host, port = proxy.addresses["web"]
            sock = socket.create_connection((host, port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            t0 = time.monotonic()
            answer = b""
            trickle = b"GET /echo HTTP/1.1\r\nHost: slow.test\r\n" + b"X-Slow: " + b"a" * 1000
            for byte in trickle:
                if time.monotonic() - t0 > 5:
                    break                   # never cut off: the assertions below say so
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break                   # reset or closed under us: the proxy gave up
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.1)
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                except ConnectionResetError:
                    break
                answer += data
                if not data:
                    break
                if b"\r\n\r\n" in answer:
                    break
            elapsed = time.monotonic() - t0
            sock.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
            assert 0.4 < elapsed < 2.5, elapsed
            assert backend.requests == 0

    run(main())


def test_header_timeout_does_not_limit_a_slow_body():
    async def main():
        async with HttpBackend("web") as backend, \
                proxied([backend.address], listener='header_timeout = "300ms"') as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: b.test\r\nContent-Length: 8\r\n\r\n")
            for byte in b"trickled":
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)
            resp = await asyncio.wait_for(read_response(reader), WAIT)
            assert resp.status == 200 and resp.json()["body"] == "trickled"
            writer.close()

    run(main())


def test_idle_keep_alive_connection_closed():
    async def main():
        async with HttpBackend("web") as backend, \
                proxied([backend.address], listener='idle_timeout = "300ms"') as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: i.test\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), WAIT)).status == 200
            t0 = time.monotonic()
            assert await closed(reader)
            elapsed = time.monotonic() - t0
            writer.close()
            assert 0.2 < elapsed < 2.0, elapsed

    run(main())


def test_idle_timeout_does_not_cut_a_slow_response():
    async def main():
        async with HttpBackend("web") as backend, \
                proxied([backend.address], listener='idle_timeout = "300ms"') as proxy, client(proxy) as c:
            r = await c.get("/slow?ms=700")
            assert r.status_code == 200 and r.text == "slept 700 ms\n"

    run(main())


# ---- malformed requests ------------------------------------------------------------------------------------------

MALFORMED = [
    ("cl-and-te", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n", 400),
    ("te-and-cl", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                  b"0\r\n\r\n", 400),
    ("bad-cl", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length: 1x\r\n\r\nx", 400),
    ("negative-cl", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length: -1\r\n\r\n", 400),
    ("two-cl", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("bare-lf", b"GET /echo HTTP/1.1\nHost: m.test\n\n", 400),
    ("bare-lf-in-header", b"GET /echo HTTP/1.1\r\nHost: m.test\nX-A: b\r\n\r\n", 400),
    ("obs-fold", b"GET /echo HTTP/1.1\r\nHost: m.test\r\nX-A: b\r\n  c\r\n\r\n", 400),
    ("space-before-colon", b"GET /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length : 0\r\n\r\n", 400),
    ("no-host", b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("long-request-line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: m.test\r\n\r\n", 414),
    ("many-headers", b"GET /echo HTTP/1.1\r\nHost: m.test\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
                     + b"\r\n", 431),
    ("large-headers", b"GET /echo HTTP/1.1\r\nHost: m.test\r\n"
                      + b"".join(b"X-Big%d: %s\r\n" % (i, b"v" * 7000) for i in range(10)) + b"\r\n", 431),
    ("unknown-te", b"POST /echo HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: x-custom, chunked\r\n\r\n"
                   b"0\r\n\r\n", 501),
    ("http-2.0", b"GET /echo HTTP/2.0\r\nHost: m.test\r\n\r\n", 505),
]


@pytest.mark.parametrize("request_bytes, status", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_refused_and_connection_closed(request_bytes, status):
    async def main():
        async with HttpBackend("web") as backend, proxied(
                [backend.address], listener="max_request_line = 8192\nmax_header_bytes = 65536\nmax_headers = 100"
        ) as proxy:
            reader, writer = await open_raw(proxy)
            writer.write(request_bytes)
            resp = await asyncio.wait_for(read_response(reader), WAIT)
            assert resp.status == status, (resp.status, resp.body)
            assert await closed(reader)
            writer.close()
            assert backend.requests == 0      # nothing of it reached the backend

    run(main())


def test_limits_are_configurable():
    """The same request passes or fails depending on the listener's limits, never on a hard-coded one."""
    async def main():
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(20))       # 20 fields, about 200 bytes
        request = b"GET /echo?" + b"q" * 100 + b" HTTP/1.1\r\nHost: m.test\r\n" + headers + b"\r\n"
        async with HttpBackend("web") as backend:
            for limits, status in [("max_headers = 10", 431), ("max_headers = 30", 200),
                                   ("max_request_line = 64", 414), ("max_request_line = 256", 200),
                                   ("max_header_bytes = 64", 431), ("max_header_bytes = 4096", 200)]:
                async with proxied([backend.address], listener=limits) as proxy:
                    reader, writer = await open_raw(proxy)
                    writer.write(request)
                    resp = await asyncio.wait_for(read_response(reader), WAIT)
                    assert resp.status == status, limits
                    writer.close()

    run(main())
