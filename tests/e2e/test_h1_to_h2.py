"""HTTP/1 clients to HTTP/2 clusters (the h1 -> h2 bridge): curl (HTTP/1.1) and raw HTTP/1 sockets through an http
listener to scripted h2 servers. Heads are mapped (Host -> :authority), bodies cross both ways de-framed and
re-framed (content-length, chunked, close-delimited for HTTP/1.0), trailers end a chunked answer, and retries,
deadlines and errors follow the same rules as for any request; many HTTP/1 connections share few h2 ones."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator

import pytest

from fastmesh import Proxy
from fastmesh._testbase.h2_backend import H2Backend
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(90)
WAIT = 20.0


@contextlib.asynccontextmanager
async def setup(count: int = 1, cluster: str = "", dead: bool = False) -> AsyncIterator[tuple[Proxy, list[H2Backend],
                                                                                              int]]:
    backends = [await H2Backend(f"b{i}").start() for i in range(count)]
    port = free_port()
    eps = ", ".join(f'"{b.address}"' for b in backends) if not dead else f'"127.0.0.1:{free_port()}"'
    cfg = (f'drain_timeout = "300ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
           f'cluster = "up"\n[clusters.up]\nendpoints = [{eps}]\nprotocol = "h2"\noutlier = false\n{cluster}\n')
    try:
        async with Proxy.from_toml(cfg) as proxy:
            yield proxy, backends, port
    finally:
        for b in backends:
            await b.stop()


def pool(proxy: Proxy) -> dict:
    return dict(proxy.stats()["pools"]["up"])


async def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl (HTTP/1.1, no proxy from the environment): the status, the last head's fields and the body."""
    with tempfile.TemporaryDirectory() as tmp:
        hdr, out = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        p = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http1.1", "--noproxy", "*", "--max-time", str(WAIT), "-D", hdr, "-o", out, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(p.communicate(), WAIT + 5)
        assert p.returncode == 0, err
        heads = open(hdr, "rb").read().decode("latin-1").split("\r\n\r\n")
        body = open(out, "rb").read()
    lines = [h for h in heads if h.startswith("HTTP/")][-1].split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), fields, body


async def raw(port: int, request: bytes) -> bytes:
    """Send request bytes on one HTTP/1 connection; everything the proxy sent until it closed (or WAIT)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            if not chunk:
                return data
            data += chunk
    finally:
        writer.close()


def test_get_and_posts_with_both_body_framings() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            url = f"http://127.0.0.1:{port}"
            status, h, body = await curl(f"{url}/hello?x=1")
            assert status == 200 and body == b"b0:/hello?x=1" and h["x-backend"] == "b0"
            assert h["content-length"] == str(len(body))
            status, h, body = await curl("--data-binary", "ping-pong", f"{url}/post")
            assert status == 200 and body == b"ping-pong"
            status, h, body = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", "chunked body",
                                         f"{url}/chunked")
            assert status == 200 and body == b"chunked body"
            assert b.requests == 3 and b.connections == 1              # one h2 connection carried all three
            assert pool(proxy)["opened"] == 1 and pool(proxy)["reuses"] == 2

    asyncio.run(main())


def test_the_head_is_mapped_host_to_authority_and_hop_by_hop_fields_dropped() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            data = await raw(port, b"GET /m HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive\r\n"
                                   b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Mine: 1\r\nCookie: a=1\r\n\r\n"
                                   b"GET /last HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            first = b.heads[0]
            names = [k for k, _ in first]
            assert (b":method", b"GET") in first and (b":path", b"/m") in first and (b":scheme", b"http") in first
            assert (b":authority", b"example.test:8080") in first
            assert b"host" not in names and b"connection" not in names and b"keep-alive" not in names
            assert (b"te", b"trailers") in first and (b"x-mine", b"1") in first and (b"cookie", b"a=1") in first
            heads = data.split(b"HTTP/1.1 ")[1:]
            assert len(heads) == 2 and all(h.startswith(b"200 OK\r\n") for h in heads), data
            assert b"b0:/m" in heads[0] and b"b0:/last" in heads[1]
            assert b"connection: close" in heads[1].lower()

    asyncio.run(main())


def test_fields_the_connection_field_names_stay_behind() -> None:
    """RFC 9110 7.6.1: the fields a client's Connection field names are for its hop alone; HTTP/2 carries no
    connection-specific fields at all (RFC 9113 8.2.2)."""
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            data = await raw(port, b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: X-Hop, x-other\r\nX-Hop: 1\r\n"
                                   b"X-Kept: 2\r\nConnection: close\r\nX-Other: 3\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"b0:/c"), data
            names = [k for k, _ in b.heads[0]]
            assert b"x-hop" not in names and b"x-other" not in names and b"connection" not in names, b.heads[0]
            assert (b"x-kept", b"2") in b.heads[0]

    asyncio.run(main())


def test_a_chunked_request_body_s_trailers_go_up_as_a_trailing_headers_frame() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            data = await raw(port, b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                                   b"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nContent-Length: 11\r\n"
                                   b"X-Count: 2\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"hello world"), data
            # The framing field stays behind (HTTP/1 knows it by name); the others end the stream as trailers.
            assert b.request_trailers == [[(b"x-checksum", b"abc"), (b"x-count", b"2")]]
            # Without trailers the body ends with its last DATA frame, as before.
            data = await raw(port, b"POST /n HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                                   b"\r\n2\r\nok\r\n0\r\n\r\n")
            assert data.endswith(b"\r\n\r\nok") and len(b.request_trailers) == 1

    asyncio.run(main())


def test_a_head_over_the_server_s_header_list_limit_is_answered_431_and_the_connection_lives_on() -> None:
    """The server's SETTINGS_MAX_HEADER_LIST_SIZE is honoured: a request head over it is never sent (the server would
    fail the stream or the connection); it is answered here, and HPACK stays in step for the next requests."""
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            b.max_header_list = 2048
            url = f"http://127.0.0.1:{port}"
            status, _, body = await curl("-H", "X-Mine: first", f"{url}/a")
            assert status == 200 and body == b"b0:/a"
            status, h, _ = await curl("-H", "X-Mine: first", "-H", "X-Big: " + "v" * 3000, f"{url}/big")
            assert status == 431 and h["fastmesh-error"] == "head too large for upstream", h
            for path in ("/b", "/c"):                # fields the dropped block had indexed are sent again
                status, _, body = await curl("-H", "X-Mine: first", "-H", "X-Big: small", f"{url}{path}")
                assert status == 200 and body == b"b0:" + path.encode()
            assert b.requests == 3 and b.connections == 1 and b.closed == 0
            assert [dict(hd).get(b"x-mine") for hd in b.heads] == [b"first"] * 3

    asyncio.run(main())


def test_a_large_body_streams_both_ways() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            b.streamed = True                                          # no content-length: chunked to the client
            payload = os.urandom(3 << 20)                              # 3 MiB: many windows each way
            with tempfile.NamedTemporaryFile() as f:
                f.write(payload)
                f.flush()
                status, h, body = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f.name}",
                                             f"http://127.0.0.1:{port}/big")
                assert status == 200 and h.get("transfer-encoding") == "chunked"
                assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
                b.streamed = False
                status, h, body = await curl("--data-binary", f"@{f.name}", f"http://127.0.0.1:{port}/big2")
                assert status == 200 and h["content-length"] == str(len(payload)) and body == payload

    asyncio.run(main())


def test_response_framing_trailers_for_chunked_and_close_delimited_for_http10() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            b.streamed = True
            b.trailers = [(b"x-sum", b"42")]
            data = await raw(port, b"GET /t HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower()
            assert rest == b"5\r\nb0:/t\r\n0\r\nx-sum: 42\r\n\r\n", rest
            # HTTP/1.0 knows no chunked coding: the body ends with the close, trailers are dropped.
            data = await raw(port, b"GET /t10 HTTP/1.0\r\nHost: h\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower(), head
            assert b"connection: close" in head.lower() and rest == b"b0:/t10"
            # A HEAD answer carries no body, whatever the server framed.
            b.streamed = False
            b.trailers = []
            data = await raw(port, b"HEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and rest == b""

    asyncio.run(main())


def test_a_5xx_is_retried_on_another_endpoint() -> None:
    async def main() -> None:
        async with setup(2, 'balancer = "round_robin"\nretries = { attempts = 2, on = ["5xx"] }') as (proxy, bs, port):
            bs[0].status = 503
            bs[1].status = 200
            answers = [await curl("-X", "PUT", "--data-binary", f"m{i}", f"http://127.0.0.1:{port}/r")
                       for i in range(4)]
            assert [s for s, _, _ in answers] == [200] * 4, answers
            assert all(h["x-backend"] == "b1" for _, h, _ in answers)
            assert [body for _, _, body in answers] == [b"m0", b"m1", b"m2", b"m3"]   # the body was sent again
            assert bs[0].requests >= 1 and bs[1].requests == 4

    asyncio.run(main())


def test_backend_down_is_503_with_fastmesh_error() -> None:
    async def main() -> None:
        async with setup(0, dead=True) as (proxy, _, port):
            status, h, body = await curl(f"http://127.0.0.1:{port}/down")
            assert status == 503 and h["fastmesh-error"].startswith("connect"), (h, body)

    asyncio.run(main())


def test_deadline_is_504() -> None:
    async def main() -> None:
        async with setup(1, 'timeout = "300ms"') as (proxy, (b,), port):
            b.delay = 3.0
            status, h, _ = await curl(f"http://127.0.0.1:{port}/slow")
            assert status == 504 and "fastmesh-error" in h
            b.delay = 0
            status, _, body = await curl(f"http://127.0.0.1:{port}/fast")          # the listener goes on
            assert status == 200 and body == b"b0:/fast"

    asyncio.run(main())


def test_many_keepalive_http1_clients_share_few_h2_connections() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), port):
            b.delay = 0.05

            async def client(i: int) -> list[bytes]:
                # One curl, one keep-alive connection, five requests in turn.
                urls = [f"http://127.0.0.1:{port}/c{i}-{k}" for k in range(5)]
                p = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "--http1.1", "--noproxy", "*", "--max-time", str(WAIT), *urls,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(p.communicate(), WAIT + 5)
                assert p.returncode == 0, err
                return [out]

            outs = await asyncio.gather(*(client(i) for i in range(16)))
            for i, (out,) in enumerate(outs):
                assert out == b"".join(f"b0:/c{i}-{k}".encode() for k in range(5))
            assert b.requests == 80
            assert proxy.stats()["http"]["in"]["accepted"] >= 16             # 16 HTTP/1 connections...
            p = pool(proxy)
            assert p["opened"] <= 2 and b.connections <= 2, p                # ...over one or two h2 connections
            assert p["opened"] + p["reuses"] == 80 and b.max_open > 1         # streams multiplexed on them

    asyncio.run(main())
