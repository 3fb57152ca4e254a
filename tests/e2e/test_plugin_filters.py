"""Request filter plugins end to end: real Proxy, real backends, real clients on 127.0.0.1.

The worked examples (examples/plugins, a real package put on sys.path here) check a token, reroute by cookie and
ask an auth service; the test plugins (fastmesh/_testbase/plugins.py) tag, answer, raise, wait and hang. Filters
that edit, reroute, reject, raise, hang (timeout) and run async; a plugin throwing under load; a reload swapping a
plugin's config; routes without filters untouched.

The same chains run for HTTP/2 streams, with the same outcomes (the second half): curl with prior knowledge, the
`h2` package over a raw socket (several streams on one connection, one parked by an async filter) and grpcio
through a filtered route to the gRPC test backends. A token filter refuses an HTTP/2 request without its token
(it never reaches the backend); edits are rendered by the HTTP/1 leg and by the h2 leg; a filter's answer goes
out as given (for gRPC calls too, and under flow control); plugin errors and timeouts; counters per filter.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import json
from typing import Any

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.curl import CURL, curl
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh._testbase.net import free_port
from fastmesh.config.load import loads_config

try:
    import grpc
    import h2.config
    import h2.connection
    import h2.events
    from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient
except ImportError:            # the test extras: the HTTP/2 half is skipped without them
    h2 = grpc = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(60)
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_h2 = pytest.mark.skipif(h2 is None or grpc is None, reason="the h2 and grpcio packages are not installed")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
WAIT = 10.0
T = "fastmesh._testbase.plugins"
AUTH = '{ plugin = "mypkg.auth:CheckToken", config = { tokens = { "s3cret" = "alice" } } }'


@pytest.fixture(autouse=True)
def _examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def proxied(backends: list[HttpBackend], listener: str = "", cluster: str = "") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(web_config([b.address for b in backends], listener=listener,
                                          cluster=cluster)) as proxy:
        yield proxy
        await no_connection_left(proxy)


def client(proxy: Proxy) -> httpx.AsyncClient:
    host, port = proxy.addresses["web"]
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT, trust_env=False)


def sent(r: httpx.Response) -> dict[str, str]:
    """The fields the backend received (lower-case names)."""
    return {k.lower(): v for k, v in r.json()["headers"]}


def counts(proxy: Proxy, where: str, listener: str = "web") -> dict[str, Any]:
    (entry,) = [e for e in proxy.stats()["filters"][listener] if e["where"] == where]
    return entry


# Routes whose filters fail: raise ("closed" and "open"), answer what cannot be sent, hang past their timeout.
FAILING = f"""
[[listeners.routes]]
path_prefix = "/closed/"
cluster = "web"
filters = [{{ plugin = "{T}:Raise" }}]
[[listeners.routes]]
path_prefix = "/open/"
cluster = "web"
filters = [{{ plugin = "{T}:Raise", failure_mode = "open" }}, {{ plugin = "{T}:Tag", config = {{ value = "after" }} }}]
[[listeners.routes]]
path_prefix = "/bad-answer/"
cluster = "web"
filters = [{{ plugin = "{T}:BadAnswer" }}]
[[listeners.routes]]
path_prefix = "/hang/"
cluster = "web"
filters = [{{ plugin = "{T}:Wait", config = {{ ms = -1 }}, timeout = "200ms" }}]
"""


async def held_auth_service() -> tuple[asyncio.Server, int, list[bytes], asyncio.Event]:
    """An auth service for mypkg.extauth that holds every answer until `release` is set: 200 with x-user: bob for
    "Bearer good", else 403 "nope". Returns (server, port, the request heads it was asked, release)."""
    release = asyncio.Event()
    asked: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        asked.append(head)
        await release.wait()
        ok = b"x-original-authorization: Bearer good" in head
        writer.write(b"HTTP/1.1 200 OK\r\nx-user: bob\r\ncontent-length: 0\r\n\r\n" if ok else
                     b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nnope\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], asked, release


def test_token_filter_rejects_and_edits():
    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=f"filters = [{AUTH}]") as proxy:
            async with client(proxy) as c:
                r = await c.get("/echo")
                assert r.status_code == 401 and r.text == "unauthorized\n"
                assert r.headers["www-authenticate"] == 'Bearer realm="fastmesh"'
                r = await c.get("/echo", headers={"authorization": "Bearer nope"})
                assert r.status_code == 401
                r = await c.get("/echo", headers={"authorization": "Bearer s3cret", "x-keep": "1"})
                assert r.status_code == 200
                fields = sent(r)
                assert fields["x-user"] == "alice" and fields["x-keep"] == "1" and "authorization" not in fields
                # The keep-alive connection serves the next request after a filter's answer.
                assert (await c.get("/echo")).status_code == 401
            assert counts(proxy, "listeners.web.filters[0]") == {
                "where": "listeners.web.filters[0]", "plugin": "mypkg.auth:CheckToken", "calls": 4, "answers": 3,
                "errors": 0, "timeouts": 0, "slow": 0}
    run(main())


def test_reroute_by_cookie():
    async def main():
        async with HttpBackend("web-0") as web, HttpBackend("canary-0") as canary:
            listener = """
[[listeners.routes]]
path_prefix = "/"
cluster = "web"
add_response_headers = { "x-route" = "main" }
filters = [{ plugin = "mypkg.canary:CanaryCookie", config = { cluster = "canary" } }]
"""
            async with proxied([web], listener=listener,
                               cluster=f'[clusters.canary]\nendpoints = ["{canary.address}"]') as proxy:
                async with client(proxy) as c:
                    r = await c.get("/echo")
                    assert r.headers["x-backend"] == "web-0" and "x-canary" not in r.headers
                    r = await c.get("/echo", headers={"cookie": "a=b; canary=1"})
                    assert r.headers["x-backend"] == "canary-0"
                    assert r.headers["x-canary"] == "1" and r.headers["x-route"] == "main"
    run(main())


def test_async_filter_parks_only_its_request():
    """An auth service that holds its answer: the filtered request waits for it, others go on meanwhile."""
    async def main():
        server, port, asked, release = await held_auth_service()
        listener = f"""
[[listeners.routes]]
path_prefix = "/private/"
cluster = "web"
filters = [{{ plugin = "mypkg.extauth:AskAuthService", config = {{ url = "http://127.0.0.1:{port}/check" }} }}]
"""
        async with server, HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with client(proxy) as c1, client(proxy) as c2:
                good = asyncio.ensure_future(c1.get("/private/echo", headers={"authorization": "Bearer good"}))
                bad = asyncio.ensure_future(c2.get("/private/echo"))
                while len(asked) < 2:
                    await asyncio.sleep(0.01)
                # Both wait on the service; a request on a route without filters is answered meanwhile.
                async with client(proxy) as c3:
                    t0 = time.monotonic()
                    assert (await c3.get("/public/echo")).status_code == 200
                    assert time.monotonic() - t0 < 2.0
                assert not good.done() and not bad.done()
                release.set()
                r_good, r_bad = await good, await bad
                assert r_good.status_code == 200 and sent(r_good)["x-user"] == "bob"
                assert r_bad.status_code == 403 and r_bad.text == "nope\n"
                # The parked connections are reused for further requests.
                assert (await c1.get("/public/echo")).status_code == 200
    run(main())


def test_raising_filter_closed_and_open():
    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=FAILING) as proxy:
            async with client(proxy) as c:
                r = await c.get("/closed/echo")
                assert r.status_code == 500 and r.headers["fastmesh-error"] == "plugin"
                r = await c.get("/open/echo")
                assert r.status_code == 200 and sent(r)["x-tag"] == "after" and r.headers["x-tag"] == "after"
                r = await c.get("/bad-answer/echo")
                assert r.status_code == 500 and r.headers["fastmesh-error"] == "plugin"
                assert (await c.get("/other")).status_code == 200
            assert counts(proxy, "listeners.web.routes[0].filters[0]")["errors"] == 1
            assert counts(proxy, "listeners.web.routes[1].filters[0]")["errors"] == 1
    run(main())


def test_hanging_filter_times_out():
    listener = f"""
[[listeners.routes]]
path_prefix = "/closed/"
cluster = "web"
filters = [{{ plugin = "{T}:Wait", config = {{ ms = -1 }}, timeout = "200ms" }}]
[[listeners.routes]]
path_prefix = "/open/"
cluster = "web"
filters = [{{ plugin = "{T}:Wait", config = {{ ms = -1 }}, timeout = "200ms", failure_mode = "open" }},
           {{ plugin = "{T}:Wait", config = {{ ms = 10 }} }}]
"""

    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with client(proxy) as c:
                t0 = time.monotonic()
                r = await c.get("/closed/echo")
                assert r.status_code == 504 and r.headers["fastmesh-error"] == "plugin timeout"
                assert 0.15 < time.monotonic() - t0 < 3.0
                r = await c.get("/open/echo")
                assert r.status_code == 200 and sent(r)["x-waited"] == "10"
            assert counts(proxy, "listeners.web.routes[0].filters[0]")["timeouts"] == 1
            assert counts(proxy, "listeners.web.routes[1].filters[0]")["timeouts"] == 1
    run(main())


def test_client_gone_while_parked():
    """A client that leaves while an async filter holds its request: the connection is closed, nothing leaks."""
    listener = f'filters = [{{ plugin = "{T}:Wait", config = {{ ms = 300 }} }}]'

    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            host, port = proxy.addresses["web"]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await asyncio.sleep(0.5)
            async with client(proxy) as c:
                assert (await c.get("/echo")).status_code == 200
    run(main())


def test_throwing_plugin_under_load():
    """Every third request's filter raises, under 8 concurrent keep-alive clients: each gets 200 or a clean 500,
    the worker keeps serving, and the counts add up."""
    listener = f'filters = [{{ plugin = "{T}:Raise", config = {{ every = 3 }} }}]'

    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            statuses: list[int] = []

            async def one_client() -> None:
                async with client(proxy) as c:
                    for _ in range(60):
                        r = await c.get("/status/200")
                        assert r.status_code == 200 or r.headers["fastmesh-error"] == "plugin"
                        statuses.append(r.status_code)
            await asyncio.gather(*(one_client() for _ in range(8)))
            assert len(statuses) == 480 and statuses.count(500) == 160
            assert counts(proxy, "listeners.web.filters[0]")["errors"] == 160
            assert proxy.stats()["http"]["web"]["responses"]["5xx"] == 160
    run(main())


def test_reload_swaps_plugin_config():
    async def main():
        async with HttpBackend("web-0") as backend:
            tag = f'filters = [{{ plugin = "{T}:Tag", config = {{ value = "one" }} }}]'
            text = web_config([backend.address], listener=tag)
            async with Proxy.from_toml(text) as proxy:
                async with client(proxy) as c:
                    assert sent(await c.get("/echo"))["x-tag"] == "one"
                    await proxy.reload(loads_config(text.replace('"one"', '"two"')))
                    assert sent(await c.get("/echo"))["x-tag"] == "two"
                    await proxy.reload(loads_config(text.replace(tag, "")))
                    assert "x-tag" not in sent(await c.get("/echo"))
                    assert proxy.stats()["filters"] == {}
                await no_connection_left(proxy)
    run(main())


def test_filters_cannot_touch_framing_fields():
    """A filter that tries to edit Content-Length (or another framing field) fails its request; nothing smuggles."""
    listener = f'filters = [{{ plugin = "{T}:Tag", config = {{ value = "5", name = "content-length" }} }}]'

    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with client(proxy) as c:
                r = await c.post("/echo", content=b"hello world")
                assert r.status_code == 500 and r.headers["fastmesh-error"] == "plugin"
    run(main())


# ---- HTTP/2 streams: the same chains, the same outcomes ----------------------------------------------------------

def port_of(proxy: Proxy) -> int:
    return proxy.addresses["web"][1]


def sent_h2(body: bytes) -> dict[str, str]:
    """The fields the HTTP/1 backend's /echo received (lower-case names), from its answer's body."""
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


class H2Streams:
    """One HTTP/2 connection driven by the `h2` package over an asyncio stream: several requests at once, each
    answer collected per stream (head, body, end or reset)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.events = asyncio.Event()
        self.closed = False

    async def __aenter__(self) -> H2Streams:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conn.initiate_connection()
        self.flush()
        self.task = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def request(self, path: str, headers: Sequence[tuple[str, str]] = (), method: str = "GET",
                end: bool = True) -> int:
        """A new stream's request head; `end` False: a body would follow."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", f"127.0.0.1:{self.port}"),
                  (":path", path), *headers]
        self.conn.send_headers(sid, fields, end_stream=end)
        self.flush()
        return sid

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.flush()

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.closed = True
                self.events.set()
                return
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    self.heads[ev.stream_id] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended.add(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.resets[ev.stream_id] = ev.error_code
            self.flush()
            self.events.set()

    async def until(self, done: Any, timeout: float = WAIT) -> None:
        async def wait() -> None:
            while not done() and not self.closed:
                self.events.clear()
                await self.events.wait()
        await asyncio.wait_for(wait(), timeout)

    async def response(self, sid: int, timeout: float = WAIT) -> tuple[int, dict[bytes, bytes], bytes]:
        await self.until(lambda: sid in self.ended or sid in self.resets, timeout)
        assert sid in self.ended, f"stream {sid}: reset {self.resets.get(sid)}, closed {self.closed}"
        head = self.heads[sid]
        return int(head[b":status"]), head, bytes(self.bodies.get(sid, b""))


# ---- the hole: filters must not be bypassed by HTTP/2 --------------------------------------------------------------

@needs_curl
def test_token_filter_refuses_http2_request_without_token() -> None:
    """The listener's CheckToken filter answers an HTTP/2 request without the token itself: 401, and the backend
    never sees it. With the token it goes on, edited (authorization removed, x-user added)."""
    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied([backend], listener=f"filters = [{AUTH}]") as proxy:
            port = port_of(proxy)
            status, headers, body = await curl(port, "/echo")
            assert status == 401 and body == b"unauthorized\n", (status, body)
            assert headers["www-authenticate"] == 'Bearer realm="fastmesh"'
            status, _, _ = await curl(port, "/echo", "-H", "authorization: Bearer nope")
            assert status == 401
            assert backend.requests == 0
            status, headers, body = await curl(port, "/echo", "-H", "authorization: Bearer s3cret",
                                               "-H", "x-keep: 1")
            assert status == 200 and headers["x-backend"] == "web-0"
            fields = sent_h2(body)
            assert fields["x-user"] == "alice" and fields["x-keep"] == "1" and "authorization" not in fields
            assert backend.requests == 1
            assert counts(proxy, "listeners.web.filters[0]") == {
                "where": "listeners.web.filters[0]", "plugin": "mypkg.auth:CheckToken", "calls": 3, "answers": 2,
                "errors": 0, "timeouts": 0, "slow": 0}
            http = proxy.stats()["http"]["web"]
            assert http["responses"]["4xx"] == 2 and http["responses"]["2xx"] == 1
    run(main())


# ---- edits and rerouting -------------------------------------------------------------------------------------------

@needs_curl
def test_edits_and_reroute_over_http2_to_an_http1_cluster() -> None:
    """A filter's request and answer fields reach the HTTP/1 backend and the HTTP/2 client; route_to() sends the
    stream to another cluster, whose answer still carries the route's and the filter's answer fields."""
    listener = f"""
[[listeners.routes]]
path_prefix = "/"
cluster = "web"
add_response_headers = {{ "x-route" = "main" }}
filters = [{{ plugin = "mypkg.canary:CanaryCookie", config = {{ cluster = "canary" }} }},
           {{ plugin = "{T}:Tag", config = {{ value = "h2" }} }}]
"""

    async def main() -> None:
        async with HttpBackend("web-0") as web, HttpBackend("canary-0") as canary:
            async with proxied([web], listener=listener,
                               cluster=f'[clusters.canary]\nendpoints = ["{canary.address}"]') as proxy:
                port = port_of(proxy)
                status, headers, body = await curl(port, "/echo")
                assert status == 200 and headers["x-backend"] == "web-0" and "x-canary" not in headers
                assert headers["x-tag"] == "h2" and headers["x-route"] == "main"
                assert sent_h2(body)["x-tag"] == "h2"
                status, headers, body = await curl(port, "/echo", "-H", "cookie: a=b; canary=1")
                assert status == 200 and headers["x-backend"] == "canary-0", headers
                assert headers["x-canary"] == "1" and headers["x-route"] == "main" and headers["x-tag"] == "h2"
                assert sent_h2(body)["x-tag"] == "h2"
                assert canary.requests == 1 and web.requests == 1
    run(main())


# ---- async filters park their stream only ------------------------------------------------------------------------

@needs_h2
def test_async_filter_parks_only_its_stream() -> None:
    """On one HTTP/2 connection: two streams wait on an auth service, a third (a route without filters) is
    answered meanwhile; once the service answers, the good stream reaches the backend and the bad one gets the
    service's 403. A stream the client resets while parked is dropped; the connection serves on."""
    async def main() -> None:
        server, port, asked, release = await held_auth_service()
        listener = f"""
[[listeners.routes]]
path_prefix = "/private/"
cluster = "web"
[[listeners.routes.filters]]
plugin = "mypkg.extauth:AskAuthService"
config = {{ url = "http://127.0.0.1:{port}/check" }}
timeout = "20s"
"""
        async with server, HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with H2Streams(port_of(proxy)) as c:
                good = c.request("/private/echo", [("authorization", "Bearer good")])
                bad = c.request("/private/echo")
                gone = c.request("/private/echo", [("authorization", "Bearer good")])
                t0 = time.monotonic()
                while len(asked) < 3:
                    assert time.monotonic() - t0 < WAIT
                    await asyncio.sleep(0.01)
                c.reset(gone)
                # The parked streams hold nothing up: another stream of the same connection is answered.
                status, head, _ = await c.response(c.request("/public/echo"))
                assert status == 200 and head[b"x-backend"] == b"web-0"
                assert good not in c.ended and bad not in c.ended and backend.requests == 1
                release.set()
                status, _, body = await c.response(good)
                assert status == 200 and sent_h2(body)["x-user"] == "bob"
                status, head, body = await c.response(bad)
                assert status == 403 and body == b"nope\n" and head[b"content-type"] == b"text/plain"
                assert backend.requests == 2          # the reset stream never went upstream
                status, _, _ = await c.response(c.request("/public/echo"))
                assert status == 200
            assert proxy.stats()["http"]["web"]["http2"]["streams"] == 5
    run(main())


@needs_h2
def test_connection_closed_while_a_stream_is_parked() -> None:
    """A client that leaves while an async filter holds one of its streams: nothing leaks, the late outcome is
    dropped, and new connections are served."""
    listener = f'filters = [{{ plugin = "{T}:Wait", config = {{ ms = 300 }} }}]'

    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with H2Streams(port_of(proxy)) as c:
                c.request("/echo")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert backend.requests == 0
            async with H2Streams(port_of(proxy)) as c:
                status, _, body = await c.response(c.request("/echo"))
                assert status == 200 and sent_h2(body)["x-waited"] == "300"
    run(main())


@needs_h2
def test_filter_answer_larger_than_the_window() -> None:
    """A filter's answer body bigger than the client's flow-control windows goes out as the windows open; a HEAD
    request gets the head alone, with the body's content-length."""
    size = 200_000
    listener = f'filters = [{{ plugin = "{T}:Reply", config = {{ status = 403, body = "{"d" * size}" }} }}]'

    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            async with H2Streams(port_of(proxy)) as c:
                first, second = c.request("/a"), c.request("/b")
                for sid in (first, second):
                    status, head, body = await c.response(sid)
                    assert status == 403 and head[b"content-length"] == str(size).encode()
                    assert body == b"d" * size
                status, head, body = await c.response(c.request("/c", method="HEAD"))
                assert status == 403 and head[b"content-length"] == str(size).encode() and body == b""
            assert backend.requests == 0
    run(main())


# ---- failures --------------------------------------------------------------------------------------------------------

@needs_curl
@needs_h2
def test_raising_bad_and_hanging_filters_over_http2() -> None:
    """The failing routes over HTTP/2: the same answers as HTTP/1's, each stream for itself."""
    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied([backend], listener=FAILING) as proxy:
            port = port_of(proxy)
            status, headers, _ = await curl(port, "/closed/echo")
            assert status == 500 and headers["fastmesh-error"] == "plugin"
            status, headers, body = await curl(port, "/open/echo")
            assert status == 200 and headers["x-tag"] == "after" and sent_h2(body)["x-tag"] == "after"
            status, headers, _ = await curl(port, "/bad-answer/echo")
            assert status == 500 and headers["fastmesh-error"] == "plugin"
            t0 = time.monotonic()
            status, headers, _ = await curl(port, "/hang/echo")
            assert status == 504 and headers["fastmesh-error"] == "plugin timeout"
            assert 0.15 < time.monotonic() - t0 < 5.0
            # A POST whose filter fails is answered before its body ended: the stream is then reset with NO_ERROR
            # (the client may stop sending) and the connection goes on.
            async with H2Streams(port) as c:
                sid = c.request("/closed/echo", method="POST", end=False)
                status, head, _ = await c.response(sid)
                assert status == 500 and head[b"fastmesh-error"] == b"plugin"
                await c.until(lambda: sid in c.resets)
                assert c.resets[sid] == 0
                status, _, _ = await c.response(c.request("/open/echo"))
                assert status == 200
            assert backend.requests == 2
            assert counts(proxy, "listeners.web.routes[0].filters[0]")["errors"] == 2
            assert counts(proxy, "listeners.web.routes[1].filters[0]")["errors"] == 2
            assert counts(proxy, "listeners.web.routes[3].filters[0]")["timeouts"] == 1
    run(main())


# ---- gRPC through a filtered route -----------------------------------------------------------------------------------

def grpc_config(port: int, backend: GrpcBackend, filters: str) -> str:
    return (f'drain_timeout = "500ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\n'
            f'protocol = "http"\ncluster = "grpc"\n'
            f'[[listeners.routes]]\npath_prefix = "/fastmesh.test.Echo/"\ncluster = "grpc"\nfilters = [{filters}]\n'
            f'[clusters.grpc]\nendpoints = ["{backend.address}"]\nprotocol = "h2"\n')


@needs_h2
def test_grpc_calls_through_filters() -> None:
    """gRPC calls on a filtered route: the filter's metadata edits reach the backend through the h2 leg (HPACK),
    its answer reaches the client as given (a trailers-only gRPC status here), a raising filter gives the client
    a trailers-only INTERNAL with fastmesh-error, and an async filter's call goes on after it."""
    backend = GrpcBackend("g0").start()
    port = free_port()
    client = GrpcClient(f"127.0.0.1:{port}")
    filters = (f'{{ plugin = "{T}:Reply", config = {{ path = "/fastmesh.test.Echo/Unary", status = 200, '
               f'headers = {{ "content-type" = "application/grpc", "grpc-status" = "7", '
               f'"grpc-message" = "no entry" }} }} }}, '
               f'{{ plugin = "{T}:Raise", config = {{ every = 2 }} }}, '
               f'{{ plugin = "{T}:Wait", config = {{ ms = 20 }} }}, '
               f'{{ plugin = "{T}:Tag", config = {{ value = "grpc" }} }}')

    async def main() -> None:
        async with Proxy.from_toml(grpc_config(port, backend, filters)) as proxy:
            with pytest.raises(grpc.RpcError) as denied:
                await client.aunary(b"hello", timeout=WAIT)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == "no entry"
            assert backend.calls["Unary"] == 0
            # Raise fails every second call: the first Who goes on (Wait, then Tag), the second fails.
            who = await asyncio.to_thread(client.who, WAIT)
            assert who["metadata"]["x-tag"] == "grpc" and who["metadata"]["x-waited"] == "20"
            with pytest.raises(grpc.RpcError) as failed:
                await asyncio.to_thread(client.who, WAIT)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert dict(failed.value.trailing_metadata())["fastmesh-error"] == "plugin"
            assert backend.calls["Who"] == 1
            (raising,) = [e for e in proxy.stats()["filters"]["in"] if e["plugin"].endswith(":Raise")]
            assert raising["calls"] == 2 and raising["errors"] == 1

    try:
        run(main())
    finally:
        client.close()
        backend.stop()
