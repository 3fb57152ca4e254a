"""Request filter plugins on HTTP/2 streams: the same chains, the same outcomes as for HTTP/1 requests.

Clients: curl with prior knowledge, the `h2` package over a raw socket (several streams on one connection, one of
them parked by an async filter), and grpcio through a filtered route to the gRPC test backends. Checked: a token
filter refuses an HTTP/2 request without its token (it never reaches the backend), header edits rendered by the
HTTP/1 leg and by the h2 leg, route_to another cluster, a filter's answer (as given, for gRPC calls too), async
filters parking their stream only, a client resetting a parked stream, plugin errors and timeouts (gRPC:
trailers-only errors), counters per filter.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

h2 = pytest.importorskip("h2")
grpc = pytest.importorskip("grpc")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

from fastmesh import Proxy  # noqa: E402
from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient  # noqa: E402
from fastmesh._testbase.http_backend import HttpBackend  # noqa: E402
from fastmesh._testbase.inproc import no_connection_left, web_config  # noqa: E402

pytestmark = pytest.mark.timeout(90)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
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


def port_of(proxy: Proxy) -> int:
    return proxy.addresses["web"][1]


def counts(proxy: Proxy, where: str) -> dict[str, Any]:
    (entry,) = [e for e in proxy.stats()["filters"]["web"] if e["where"] == where]
    return entry


async def curl(port: int, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/2 (prior knowledge) request by curl; it must have spoken HTTP/2."""
    assert CURL is not None
    argv = [CURL, "-s", "-S", "-i", "--max-time", "20", "--http2-prior-knowledge"]
    proc = await asyncio.create_subprocess_exec(*argv, *args, f"http://127.0.0.1:{port}{path}",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/2 "), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def echoed(body: bytes) -> dict[str, str]:
    """The fields the HTTP/1 backend's /echo received (lower-case names)."""
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

    def request(self, path: str, headers: list[tuple[str, str]] = (), method: str = "GET", end: bool = True) -> int:
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
            fields = echoed(body)
            assert fields["x-user"] == "alice" and fields["x-keep"] == "1" and "authorization" not in fields
            assert backend.requests == 1
            assert counts(proxy, "listeners.web.filters[0]") == {
                "where": "listeners.web.filters[0]", "plugin": "mypkg.auth:CheckToken", "calls": 3, "answers": 2,
                "errors": 0, "timeouts": 0}
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
                assert echoed(body)["x-tag"] == "h2"
                status, headers, body = await curl(port, "/echo", "-H", "cookie: a=b; canary=1")
                assert status == 200 and headers["x-backend"] == "canary-0", headers
                assert headers["x-canary"] == "1" and headers["x-route"] == "main" and headers["x-tag"] == "h2"
                assert echoed(body)["x-tag"] == "h2"
                assert canary.requests == 1 and web.requests == 1
    run(main())


# ---- async filters park their stream only ------------------------------------------------------------------------

def test_async_filter_parks_only_its_stream() -> None:
    """On one HTTP/2 connection: two streams wait on an auth service, a third (a route without filters) is
    answered meanwhile; once the service answers, the good stream reaches the backend and the bad one gets the
    service's 403. A stream the client resets while parked is dropped; the connection serves on."""
    release = asyncio.Event()
    asked: list[bytes] = []

    async def auth_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        asked.append(head)
        await release.wait()
        ok = b"x-original-authorization: Bearer good" in head
        writer.write(b"HTTP/1.1 200 OK\r\nx-user: bob\r\ncontent-length: 0\r\n\r\n" if ok else
                     b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nnope\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(auth_service, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
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
                assert status == 200 and echoed(body)["x-user"] == "bob"
                status, head, body = await c.response(bad)
                assert status == 403 and body == b"nope\n" and head[b"content-type"] == b"text/plain"
                assert backend.requests == 2          # the reset stream never went upstream
                status, _, _ = await c.response(c.request("/public/echo"))
                assert status == 200
            assert proxy.stats()["http"]["web"]["http2"]["streams"] == 5
    run(main())


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
                assert status == 200 and echoed(body)["x-waited"] == "300"
    run(main())


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
def test_raising_bad_and_hanging_filters_over_http2() -> None:
    listener = f"""
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

    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
            port = port_of(proxy)
            status, headers, _ = await curl(port, "/closed/echo")
            assert status == 500 and headers["fastmesh-error"] == "plugin"
            status, headers, body = await curl(port, "/open/echo")
            assert status == 200 and headers["x-tag"] == "after" and echoed(body)["x-tag"] == "after"
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


def test_grpc_calls_through_filters() -> None:
    """gRPC calls on a filtered route: the filter's metadata edits reach the backend through the h2 leg (HPACK),
    its answer reaches the client as given (a trailers-only gRPC status here), a raising filter gives the client
    a trailers-only INTERNAL with fastmesh-error, and an async filter's call goes on after it."""
    from fastmesh._testbase.net import free_port

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
