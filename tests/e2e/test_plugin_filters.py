"""Request filter plugins end to end: real Proxy, real backends, real clients on 127.0.0.1.

The worked examples (examples/plugins, a real package put on sys.path here) check a token, reroute by cookie and
ask an auth service; the test plugins (fastmesh/_testbase/plugins.py) tag, raise, wait and hang. Filters that
edit, reroute, reject, raise, hang (timeout) and run async; a plugin throwing under load; a reload swapping a
plugin's config; routes without filters untouched.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh.config.load import loads_config

pytestmark = pytest.mark.timeout(60)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
WAIT = 5.0
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


def counts(proxy: Proxy, where: str) -> dict[str, int]:
    (entry,) = [e for e in proxy.stats()["filters"]["web"] if e["where"] == where]
    return entry


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
                "errors": 0, "timeouts": 0}
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
    release = asyncio.Event()
    asked: list[bytes] = []

    async def auth_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        asked.append(head)
        await release.wait()
        ok = b"x-original-authorization: Bearer good" in head
        writer.write(b"HTTP/1.1 200 OK\r\nx-user: bob\r\ncontent-length: 0\r\n\r\n" if ok else
                     b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nnope\n")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(auth_service, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
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
"""

    async def main():
        async with HttpBackend("web-0") as backend, proxied([backend], listener=listener) as proxy:
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
