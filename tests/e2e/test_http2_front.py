"""HTTP/2 with prior knowledge on an http listener, bridged to HTTP/1 backends: curl, h2load and raw frames (the
`h2` package as the client) through an in-process proxy to the real test backends (fastmesh/_testbase).

Each test states the behaviour it checks: requests and bodies both ways, trailers, proxy errors as HTTP/2 and gRPC
answers, grpc-timeout as the deadline, balancing per request, HTTP/1 on the same port, GOAWAY on drain and reload,
and bad input that must be refused before it reaches a backend.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

hpack = pytest.importorskip("hpack")
hyperframe = pytest.importorskip("hyperframe")
import hyperframe.frame  # noqa: E402

from fastmesh import Proxy  # noqa: E402
from fastmesh._testbase.curl import CURL, curl  # noqa: E402
from fastmesh._testbase.http_backend import HttpBackend, pattern  # noqa: E402
from fastmesh._testbase.inproc import no_connection_left  # noqa: E402
from fastmesh._testbase.net import free_port  # noqa: E402
from fastmesh.config.load import loads_config  # noqa: E402

pytestmark = pytest.mark.timeout(60)
H2LOAD = shutil.which("h2load")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_h2load = pytest.mark.skipif(H2LOAD is None, reason="h2load (Debian nghttp2-client) is not installed")


def run(coro):
    return asyncio.run(coro)


def config_text(port: int, backends: list[HttpBackend], *, listener: str = "", cluster: str = "",
                extra: str = "") -> str:
    eps = ", ".join(f'"{b.address}"' for b in backends)
    return (f'drain_timeout = "2s"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
            f'cluster = "web"\n{listener}\n[clusters.web]\nendpoints = [{eps}]\n{cluster}\n{extra}')


@contextlib.asynccontextmanager
async def proxied(backends: list[HttpBackend], **kw: str) -> AsyncIterator[tuple[Proxy, int]]:
    port = free_port()
    async with Proxy.from_toml(config_text(port, backends, **kw)) as proxy:
        yield proxy, port
        await no_connection_left(proxy)


# ---- clients ---------------------------------------------------------------------------------------------------

class H2Client:
    """A raw HTTP/2 client over an asyncio stream: frames built and read with hyperframe, headers with hpack, no
    state machine in the way, so a test can send what a well-behaved client never would and read on after a
    GOAWAY. It answers PINGs and SETTINGS, returns every window it is given, and collects events per stream."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.next_id = 1
        self.buf = b""
        self.settings: dict[int, int] = {}
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.interim: dict[int, list[list[tuple[bytes, bytes]]]] = {}     # 1xx heads, in order
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int]] = []        # (error code, last stream id)
        self.conn_window = 65535                        # what the server lets us send
        self.windows: dict[int, int] = {}
        self.closed = False

    async def __aenter__(self) -> "H2Client":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + hyperframe.frame.SettingsFrame(0).serialize())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def send(self, frame: Any) -> None:
        self.writer.write(frame.serialize())

    def request(self, path: str, *, method: str = "GET", headers: list[tuple[str, str]] = (),
                body: bytes | None = None, end: bool = True, authority: str | None = None) -> int:
        sid = self.next_id
        self.next_id += 2
        fields = [(b":method", method.encode()), (b":scheme", b"http"),
                  (b":authority", (authority or f"127.0.0.1:{self.port}").encode()), (b":path", path.encode())]
        fields += [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                   for k, v in headers]
        frame = hyperframe.frame.HeadersFrame(sid)
        frame.data = self.encoder.encode(fields)
        frame.flags.add("END_HEADERS")
        if end and body is None:
            frame.flags.add("END_STREAM")
        self.windows[sid] = self.settings.get(4, 65535)
        self.send(frame)
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """DATA frames (flow control is the caller's business: tests send within the first window)."""
        size = self.settings.get(5, 16384)
        for i in range(0, max(len(body), 1), size):
            frame = hyperframe.frame.DataFrame(sid, body[i:i + size])
            if end and i + size >= len(body):
                frame.flags.add("END_STREAM")
            self.send(frame)
            self.conn_window -= len(frame.data)
            self.windows[sid] = self.windows.get(sid, 65535) - len(frame.data)

    def room(self, sid: int) -> int:
        return min(self.conn_window, self.windows.get(sid, 0), self.settings.get(5, 16384))

    async def pump(self) -> None:
        """Read once and handle every whole frame that came."""
        data = await self.reader.read(65536)
        if not data:
            self.closed = True
            return
        self.buf += data
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            frame, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(self.buf[:9]))
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self.handle(frame)

    def handle(self, frame: Any) -> None:
        f = hyperframe.frame
        sid = frame.stream_id
        if isinstance(frame, f.SettingsFrame):
            if "ACK" not in frame.flags:
                for k, v in frame.settings.items():
                    if k == 4:
                        for s in self.windows:
                            self.windows[s] += v - self.settings.get(4, 65535)
                    self.settings[k] = v
                self.send(f.SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, f.PingFrame):
            if "ACK" not in frame.flags:
                self.send(f.PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, f.WindowUpdateFrame):
            if sid == 0:
                self.conn_window += frame.window_increment
            else:
                self.windows[sid] = self.windows.get(sid, 0) + frame.window_increment
        elif isinstance(frame, f.GoAwayFrame):
            self.goaways.append((frame.error_code, frame.last_stream_id))
        elif isinstance(frame, f.RstStreamFrame):
            self.resets[sid] = frame.error_code
        elif isinstance(frame, f.HeadersFrame):
            fields = [(bytes(k), bytes(v)) for k, v in self.decoder.decode(frame.data, raw=True)]
            if sid in self.heads:
                self.trailers[sid] = fields
            elif dict(fields).get(b":status", b"200")[:1] != b"1":
                self.heads[sid] = fields
            else:
                self.interim.setdefault(sid, []).append(fields)
        elif isinstance(frame, f.DataFrame):
            self.bodies.setdefault(sid, bytearray()).extend(frame.data)
            if frame.flow_controlled_length:
                self.send(f.WindowUpdateFrame(0, window_increment=frame.flow_controlled_length))
                if "END_STREAM" not in frame.flags:
                    self.send(f.WindowUpdateFrame(sid, window_increment=frame.flow_controlled_length))
        if isinstance(frame, (f.HeadersFrame, f.DataFrame)) and "END_STREAM" in frame.flags:
            self.ended.add(sid)

    async def until(self, done, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not done() and not self.closed:
                await self.pump()
        await asyncio.wait_for(loop(), timeout)

    async def response(self, sid: int, timeout: float = 10.0) -> tuple[int, dict[bytes, bytes], bytes]:
        await self.until(lambda: sid in self.ended or sid in self.resets, timeout)
        assert sid not in self.resets, f"stream {sid} was reset with code {self.resets[sid]}"
        head = dict(self.heads[sid])
        return int(head[b":status"]), head, bytes(self.bodies.get(sid, b""))


# ---- requests and bodies ---------------------------------------------------------------------------------------

@needs_curl
def test_get_and_post_reach_the_http1_backend_as_canonical_http1() -> None:
    """curl's GET and POST arrive as HTTP/1.1: Host from :authority, cookies joined, te dropped, a body with its
    content-length or, without one, chunked; the answer comes back over HTTP/2 with the proxy's Via."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            status, headers, body = await curl(port, "/echo/a?b=1", "-H", "cookie: a=1", "-H", "te: trailers")
            assert status == 200 and headers["via"] == "1.1 fastmesh"
            seen = json.loads(body)
            names = {k.lower(): v for k, v in seen["headers"]}
            assert seen["version"] == "HTTP/1.1" and seen["target"] == "/echo/a?b=1"
            assert names["host"] == f"127.0.0.1:{port}" and "te" not in names
            assert "fastmesh-timeout-ms" in names and names["x-forwarded-for"] == "127.0.0.1"
            status, _, body = await curl(port, "/echo", "--data-binary", "hello h2")
            seen = json.loads(body)
            assert status == 200 and seen["method"] == "POST" and seen["body"] == "hello h2"
            assert dict((k.lower(), v) for k, v in seen["headers"])["content-length"] == "8"
            async with H2Client(port) as c:
                sid = c.request("/echo", method="POST", headers=[("cookie", "a=1"), ("cookie", "b=2")], body=b"x" * 10,
                                end=False)
                c.send_body(sid, b"y" * 5)
                status, _, body = await c.response(sid)
            seen = json.loads(body)
            names = {k.lower(): v for k, v in seen["headers"]}
            assert seen["chunked"] and seen["body"] == "x" * 10 + "y" * 5
            assert names["cookie"] == "a=1; b=2"
            stats = proxy.stats()["http"]["web"]
            assert stats["requests"] == 3 and stats["responses"]["2xx"] == 3
            assert stats["http2"]["accepted"] == 3 and stats["http2"]["streams"] == 3
    run(main())


def test_large_bodies_stream_both_ways_with_bounded_windows() -> None:
    """8 MiB up and 8 MiB down on one connection through 64 KiB stream windows: byte-exact, in both directions."""
    size = 8 << 20

    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                up = c.request("/sink", method="POST", headers=[("content-length", str(size))], end=False)
                down = c.request(f"/bytes?n={size}")
                sent = 0

                async def upload() -> None:
                    nonlocal sent
                    while sent < size:
                        room = min(c.room(up), size - sent)
                        if room <= 0:
                            await asyncio.sleep(0.005)
                            continue
                        c.send_body(up, pattern(room, sent), end=sent + room == size)
                        sent += room
                        await c.writer.drain()

                task = asyncio.create_task(upload())
                await c.until(lambda: {up, down} <= c.ended, timeout=40)
                await task
            assert int(dict(c.heads[down])[b":status"]) == 200
            assert bytes(c.bodies[down]) == pattern(size)
            answer = json.loads(bytes(c.bodies[up]))
            assert answer["length"] == size and answer["pattern"] and not answer["chunked"]
    run(main())


def test_trailers_pass_from_a_chunked_http1_answer() -> None:
    """The trailer fields of a chunked HTTP/1 answer reach the HTTP/2 client as a trailing HEADERS frame."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                sid = c.request("/chunked?n=3", headers=[("te", "trailers")])
                status, head, body = await c.response(sid)
            assert status == 200 and b"transfer-encoding" not in head and b"trailer" in head
            trailers = dict(c.trailers[sid])
            assert trailers[b"x-chunks"] == b"3"
            assert trailers[b"x-body-sha256"] == hashlib.sha256(body).hexdigest().encode()
    run(main())


class InterimBackend:
    """A raw HTTP/1 server whose answers are preceded by an interim one: 100 Continue to a request with
    `Expect: 100-continue` (its body read only after that), else 103 Early Hints with a Link field."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.heads: list[bytes] = []

    @property
    def address(self) -> str:
        assert self.server is not None
        return "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> "InterimBackend":
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if fields.get(b"expect", b"").lower() == b"100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
            answer = b"got:" + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(answer)
                         + answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_interim_answers_of_an_http1_backend_reach_the_http2_client() -> None:
    """A backend's 103 Early Hints reaches the client as a HEADERS frame without END_STREAM before the answer; with
    `expect: 100-continue` the client waits for the backend's 100 Continue before it sends its body, and gets it."""
    async def main() -> None:
        async with InterimBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                sid = c.request("/hints")
                status, head, body = await c.response(sid)
                assert status == 200 and body == b"got:"
                assert [dict(h)[b":status"] for h in c.interim[sid]] == [b"103"]
                assert dict(c.interim[sid][0])[b"link"] == b"</style.css>; rel=preload"
                sid = c.request("/upload", method="POST", end=False,
                                headers=[("expect", "100-continue"), ("content-length", "5")])
                await c.until(lambda: sid in c.interim, 10.0)       # no body goes before the 100 came
                assert [dict(h)[b":status"] for h in c.interim[sid]] == [b"100"] and sid not in c.heads
                c.send_body(sid, b"hello")
                status, head, body = await c.response(sid)
                assert status == 200 and body == b"got:hello"
            assert b"expect: 100-continue" in backend.heads[1].lower()
    run(main())


async def h2load(port: int, *args: str, timeout: float = 50) -> str:
    """h2load's report of a run against the listener (args: -c, -m, -n ...)."""
    proc = await asyncio.create_subprocess_exec(H2LOAD, *args, f"http://127.0.0.1:{port}/x",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return out.decode()


@needs_h2load
def test_h2load_c4_m16_every_request_answered() -> None:
    """h2load, 4 connections x 16 concurrent streams, 4000 requests: every one answered 200."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            text = await h2load(port, "-c4", "-m16", "-n4000")
            assert "4000 succeeded" in text and "status codes: 4000 2xx" in text, text
            assert backend.requests == 4000
    run(main())


@needs_h2load
@pytest.mark.timeout(170)
def test_h2load_n20000_c4_m32_never_meets_the_flood_limits() -> None:
    """h2load at full speed, 4 connections x 32 concurrent streams, 20000 requests, default listener limits: every
    request answered 200, no connection sent away (its WINDOW_UPDATEs are paid by the DATA they answer)."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            proc = await asyncio.create_subprocess_exec(
                H2LOAD, "-c4", "-m32", "-n20000", f"http://127.0.0.1:{port}/x",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 150)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            text = out.decode()
            assert "20000 succeeded" in text and "status codes: 20000 2xx" in text, text
            assert backend.requests == 20000
            assert proxy.stats()["http"]["web"]["accepted"] == 4
    run(main())


# ---- retries, errors, deadlines --------------------------------------------------------------------------------

def test_failed_connects_fail_over_and_5xx_are_retried_within_the_policy() -> None:
    """A dead endpoint is failed over; a 5xx is retried up to `attempts` and then passed on with fastmesh-retried;
    a request body small enough to keep goes again with every try."""
    async def main() -> None:
        async with HttpBackend("a") as a, HttpBackend("b") as b:
            dead = HttpBackend("dead")
            dead.port = free_port()
            retries = ('outlier = false\n[clusters.web.retries]\nattempts = 3\non = ["5xx"]\nbackoff = "1ms"\n'
                       'budget_percent = 100\n')
            async with proxied([dead, a, b], cluster=retries) as (proxy, port):
                async with H2Client(port) as c:
                    for _ in range(4):
                        status, head, _ = await c.response(c.request("/x"))
                        assert status == 200 and head[b"x-backend"] in (b"a", b"b")
                    before = a.requests + b.requests
                    status, head, _ = await c.response(c.request("/status/503"))
                    assert status == 503 and head[b"fastmesh-retried"] == b"2"
                    assert a.requests + b.requests - before == 3
                    # A small body is kept whole: each try sends all of it (with and without content-length).
                    for headers in ([("content-length", "3000")], []):
                        sid = c.request("/status/503", method="PUT", headers=headers, body=b"b" * 3000)
                        status, head, _ = await c.response(sid)
                        assert status == 503 and head[b"fastmesh-retried"] == b"2"
                    puts = [r for r in a.received + b.received if r.method == "PUT"]
                    assert [r.body_length for r in puts] == [3000] * 6
                    assert sorted(r.chunked for r in puts) == [False] * 3 + [True] * 3
    run(main())


def test_proxy_errors_are_http2_answers() -> None:
    """No route: 404; a cluster whose endpoint is down: 503 connect refused; a spent deadline: 504; each with
    fastmesh-error and a short body, on a connection that goes on serving."""
    async def main() -> None:
        async with HttpBackend() as backend:
            port, dead = free_port(), free_port()
            text = (f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
                    f'[[listeners.routes]]\npath_prefix = "/down/"\ncluster = "down"\n'
                    f'[[listeners.routes]]\npath_prefix = "/up/"\nrewrite_prefix = "/"\ncluster = "web"\n'
                    f'[clusters.web]\nendpoints = ["{backend.address}"]\n'
                    f'[clusters.down]\nendpoints = ["127.0.0.1:{dead}"]\n')
            async with Proxy.from_toml(text) as proxy:
                async with H2Client(port) as c:
                    status, head, body = await c.response(c.request("/nowhere"))
                    assert status == 404 and head[b"fastmesh-error"] == b"no route"
                    status, head, body = await c.response(c.request("/down/x"))
                    assert status == 503 and head[b"fastmesh-error"] == b"connect refused"
                    assert body == b"Service Unavailable: connect refused\n"
                    status, head, _ = await c.response(c.request("/up/slow?ms=3000",
                                                                 headers=[("fastmesh-timeout-ms", "300")]))
                    assert status == 504 and head[b"fastmesh-error"] == b"deadline exceeded"
                    status, head, _ = await c.response(c.request("/up/x", method="HEAD"))
                    assert status == 200
                await no_connection_left(proxy)
    run(main())


def test_grpc_requests_get_trailers_only_errors_and_grpc_timeout_is_the_deadline() -> None:
    """A gRPC request (content-type application/grpc) that fastmesh answers itself gets a trailers-only gRPC error
    (HTTP 200, grpc-status, grpc-message, fastmesh-error); grpc-timeout is its deadline (DEADLINE_EXCEEDED) and goes
    upstream shrunk, next to fastmesh-timeout-ms."""
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]

    async def main() -> None:
        async with HttpBackend() as backend:
            down = HttpBackend("down")
            down.port = free_port()
            async with proxied([down]) as (proxy, port):
                async with H2Client(port) as c:
                    sid = c.request("/pkg.Svc/Call", method="POST", headers=grpc, body=b"\0\0\0\0\0")
                    status, head, body = await c.response(sid)
                    assert status == 200 and body == b"" and sid not in c.trailers
                    assert head[b"content-type"] == b"application/grpc" and head[b"grpc-status"] == b"14"
                    assert head[b"grpc-message"] == b"connect refused"
                    assert head[b"fastmesh-error"] == b"connect refused"
            async with proxied([backend]) as (proxy, port):
                async with H2Client(port) as c:
                    sid = c.request("/slow?ms=3000", method="POST", headers=grpc + [("grpc-timeout", "300m")],
                                    body=b"\0\0\0\0\0")
                    status, head, _ = await c.response(sid)
                    assert status == 200 and head[b"grpc-status"] == b"4"
                    sid = c.request("/echo", method="POST", headers=grpc + [("grpc-timeout", "2S")],
                                    body=b"\0\0\0\0\0")
                    status, head, body = await c.response(sid)
                    names = {k.lower(): v for k, v in json.loads(body)["headers"]}
                    assert names["grpc-timeout"].endswith("m") and 1500 < int(names["grpc-timeout"][:-1]) < 2000
                    assert 1500 < int(names["fastmesh-timeout-ms"]) < 2000
    run(main())


def test_streams_of_one_connection_are_balanced_per_request() -> None:
    """32 concurrent streams of one connection are spread over both endpoints (per request, not per connection)."""
    async def main() -> None:
        async with HttpBackend("a") as a, HttpBackend("b") as b, proxied([a, b]) as (proxy, port):
            async with H2Client(port) as c:
                sids = [c.request("/slow?ms=100") for _ in range(32)]
                await c.until(lambda: set(sids) <= c.ended, timeout=20)
            assert all(int(dict(c.heads[s])[b":status"]) == 200 for s in sids)
            assert a.requests == 16 and b.requests == 16
    run(main())


@needs_curl
def test_http1_on_the_same_listener_is_unchanged() -> None:
    """HTTP/1.1 clients keep working on the same port, a method that merely starts like the preface included."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            status, headers, body = await curl(port, "/echo", http2=False)
            assert status == 200 and json.loads(body)["version"] == "HTTP/1.1"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PRIX /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line.startswith(b"HTTP/1.1 200")
            writer.close()
            status, _, _ = await curl(port, "/echo")
            assert status == 200
    run(main())


# ---- GOAWAY: drain and reload ----------------------------------------------------------------------------------

def test_drain_sends_goaway_and_lets_streams_in_flight_finish() -> None:
    """Shutting down sends GOAWAY (graceful: no stream refused); a stream already under way still gets its answer."""
    async def main() -> None:
        async with HttpBackend() as backend:
            port = free_port()
            proxy = Proxy.from_toml(config_text(port, [backend]))
            await proxy.start()
            try:
                async with H2Client(port) as c:
                    sid = c.request("/slow?ms=700")
                    await asyncio.sleep(0.2)
                    stop = asyncio.create_task(proxy.stop(drain_timeout=5))
                    await c.until(lambda: bool(c.goaways), timeout=5)
                    assert c.goaways[0][0] == 0
                    status, _, body = await c.response(sid)
                    assert status == 200 and body == b"slept 700 ms\n"
                    await c.until(lambda: c.closed, timeout=5)
                await asyncio.wait_for(stop, 10)
            finally:
                await proxy.stop(drain_timeout=0)
    run(main())


def test_reload_with_new_http2_settings_sends_goaway_and_keeps_streams() -> None:
    """A reload that changes [listeners.http2] sends open connections a graceful GOAWAY; their streams finish."""
    async def main() -> None:
        async with HttpBackend() as backend:
            port = free_port()
            async with Proxy.from_toml(config_text(port, [backend])) as proxy:
                async with H2Client(port) as c:
                    sid = c.request("/slow?ms=500")
                    await asyncio.sleep(0.1)
                    new = loads_config(config_text(port, [backend], listener="http2 = { max_concurrent_streams = 50 }"))
                    await proxy.reload(new)
                    await c.until(lambda: bool(c.goaways), timeout=5)
                    status, _, _ = await c.response(sid)
                    assert status == 200
                async with H2Client(port) as c:
                    await c.until(lambda: c.settings.get(3) == 50, timeout=5)
                await no_connection_left(proxy)
    run(main())


# ---- bad input never reaches a backend -------------------------------------------------------------------------

BAD_HEADS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("uppercase name", [(b"X-Upper", b"1")]),
    ("CR LF in a value", [(b"x-a", b"1\r\nx-injected: 1")]),
    ("LF in a value", [(b"x-a", b"1\nx-injected: 1")]),
    ("NUL in a value", [(b"x-a", b"1\x00")]),
    ("space in a name", [(b"x a", b"1")]),
    ("colon in a name", [(b"x:a", b"1")]),
    ("connection", [(b"connection", b"keep-alive")]),
    ("keep-alive", [(b"keep-alive", b"5")]),
    ("transfer-encoding", [(b"transfer-encoding", b"chunked")]),
    ("upgrade", [(b"upgrade", b"websocket")]),
    ("te other than trailers", [(b"te", b"gzip")]),
    ("leading whitespace", [(b"x-a", b" 1")]),
    ("pseudo-header after a field", [(b"x-a", b"1"), (b":path", b"/again")]),
    ("unknown pseudo-header", [(b":nope", b"1")]),
]


@pytest.mark.parametrize("name,fields", BAD_HEADS, ids=[n for n, _ in BAD_HEADS])
def test_malformed_heads_are_reset_and_never_reach_the_backend(name: str, fields: list[tuple[bytes, bytes]]) -> None:
    """A head HTTP/2 calls malformed (RFC 9113 8.2, 8.3), many of them HTTP/1 smuggling vectors once downgraded,
    gets RST_STREAM PROTOCOL_ERROR; the backend sees nothing, and the connection goes on serving."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                sid = c.request("/echo", headers=fields)
                await c.until(lambda: sid in c.resets or sid in c.ended or bool(c.goaways), timeout=10)
                assert c.resets.get(sid) == 1 or (c.goaways and c.goaways[0][0] == 1), (c.resets, c.goaways)
                if not c.goaways:
                    status, _, _ = await c.response(c.request("/echo", headers=[("x-ok", "1")]))
                    assert status == 200
            # Only the well-formed request after it arrived.
            assert [dict((k.lower(), v) for k, v in r.headers).get("x-ok") for r in backend.received] == \
                ([] if c.goaways else ["1"])
    run(main())


def test_content_length_that_the_data_contradicts_is_reset_before_a_backend_gets_a_whole_request() -> None:
    """content-length 10 with 5 bytes and END_STREAM, and 5 with 10 bytes: RST_STREAM PROTOCOL_ERROR; the backend
    never receives a complete request (its connection is reset under the partial one)."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                short = c.request("/echo", method="POST", headers=[("content-length", "10")], body=b"12345")
                long = c.request("/echo", method="POST", headers=[("content-length", "5")], body=b"1234567890")
                await c.until(lambda: {short, long} <= set(c.resets) | c.ended, timeout=10)
                assert c.resets.get(short) == 1 and c.resets.get(long) == 1
            await asyncio.sleep(0.2)
            assert backend.body_bytes_read <= 10
            assert not any(r.body for r in backend.received)
    run(main())


def test_a_connection_error_gets_goaway() -> None:
    """Frames that break the connection (DATA on stream 0) get GOAWAY PROTOCOL_ERROR and the connection closes."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            async with H2Client(port) as c:
                await c.until(lambda: c.settings.get(3) == 100, timeout=5)
                c.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
                await c.until(lambda: bool(c.goaways), timeout=5)
                assert c.goaways[0][0] == 1
                await c.until(lambda: c.closed, timeout=5)
            assert backend.requests == 0
    run(main())


@needs_h2load
def test_h2load_c8_m16_keeps_the_http1_connections_it_needs_instead_of_churning_them() -> None:
    """c8 x m16 keeps up to 128 requests in flight at one HTTP/1 endpoint: the pool keeps as many idle connections
    as were in use at once lately, so the next burst of streams reuses them (bench/h2_churn.py measures it)."""
    async def main() -> None:
        async with HttpBackend() as backend, proxied([backend]) as (proxy, port):
            text = await h2load(port, "-c8", "-m16", "-n8000")
            assert "8000 succeeded" in text, text
            opened = proxy.stats()["pools"]["web"]["opened"]
            assert opened <= 8000 * 0.03, opened          # one connect per 5 requests or so without it
            assert sum(proxy.stats()["pools"]["web"]["idle"]) <= 128 + 8
    run(main())
