"""Response filters and how synchronous filters are run, end to end: a real Proxy, real backends and clients.

A filter's on_response sees the upstream's final answer head and edits its fields, replaces it with its own answer,
or fails (500 `plugin`, or the answer unedited with failure_mode "open"): over HTTP/1 to an HTTP/1 cluster, over
HTTP/1 to an HTTP/2 cluster (the bridge) and over HTTP/2 (curl with prior knowledge). A sync filter that runs
long inline is counted as slow; with run = "thread" it runs off the loop (other requests go on) under its timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.curl import CURL, curl
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh.config.load import loads_config
from fastmesh.errors import ConfigError

try:
    from fastmesh._testbase.h2_backend import H2Backend
except ImportError:            # the test extras: the bridge case is skipped without them
    H2Backend = None  # type: ignore[assignment,misc]

pytestmark = pytest.mark.timeout(60)
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
WAIT = 10.0
T = "fastmesh._testbase.plugins"

RESP_CONFIG = 'remove = ["x-backend-connection"], replace = 502, raise_on = 404'
# /resp/: a response filter after a request filter; /open/: one that raises on 404, failing open; the default
# route has no filter at all.
ROUTES = f"""
[[listeners.routes]]
path_prefix = "/resp/"
cluster = "web"
rewrite_prefix = "/"
filters = [{{ plugin = "{T}:Tag", config = {{ value = "req" }} }},
           {{ plugin = "{T}:RespTag", config = {{ {RESP_CONFIG} }} }}]
[[listeners.routes]]
path_prefix = "/open/"
cluster = "web"
rewrite_prefix = "/"
filters = [{{ plugin = "{T}:RespTag", config = {{ raise_on = 404 }}, failure_mode = "open" }}]
"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def proxied(backend: HttpBackend, listener: str = ROUTES) -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(web_config([backend.address], listener=listener)) as proxy:
        yield proxy
        await no_connection_left(proxy)


def client(proxy: Proxy) -> httpx.AsyncClient:
    host, port = proxy.addresses["web"]
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT, trust_env=False)


def port_of(proxy: Proxy) -> int:
    return proxy.addresses["web"][1]


def counts(proxy: Proxy, where: str) -> dict[str, Any]:
    (entry,) = [e for e in proxy.stats()["filters"]["web"] if e["where"] == where]
    return entry


def test_response_filter_edits_replaces_and_fails_over_http1() -> None:
    """The upstream's answer reaches the client edited (a field removed, one set, two added next to the request
    filter's answer field); a 502 is replaced by the filter's 503 (the next request on the connection is served);
    a raising response filter gives 500 `plugin` (closed) or the answer unedited (open); routes without response
    filters are untouched."""
    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy, client(proxy) as c:
            r = await c.get("/resp/echo")
            assert r.status_code == 200 and r.headers["x-backend"] == "web-0"
            assert r.headers["x-resp"] == "resp" and r.headers["x-seen-status"] == "200"
            assert r.headers["x-seen-path"] == "/resp/echo"          # the path as the client sent it
            assert r.headers["x-tag"] == "req"                       # the request filter's answer field too
            assert "x-backend-connection" not in r.headers
            assert r.json()["headers"] and dict((k.lower(), v) for k, v in r.json()["headers"])["x-tag"] == "req"
            r = await c.get("/resp/status/502")
            assert r.status_code == 503 and r.text == "replaced\n" and r.headers["x-replaced"] == "502"
            assert r.headers["x-tag"] == "req" and "x-backend" not in r.headers
            r = await c.get("/resp/respond?status=201&header=x-backend-connection: 9&header=x-resp: upstream")
            assert r.status_code == 201 and r.headers["x-resp"] == "resp"      # set_header replaced the upstream's
            assert "x-backend-connection" not in r.headers
            r = await c.get("/resp/status/404")
            assert r.status_code == 500 and r.headers["fastmesh-error"] == "plugin"
            r = await c.get("/open/status/404")
            assert r.status_code == 404 and "x-resp" not in r.headers
            r = await c.get("/open/echo")
            assert r.status_code == 200 and r.headers["x-resp"] == "resp"
            r = await c.get("/echo")
            assert r.status_code == 200 and "x-resp" not in r.headers and "x-backend-connection" in r.headers
            resp = counts(proxy, "listeners.web.routes[0].filters[1]")
            assert resp["answers"] == 1 and resp["errors"] == 1
            assert counts(proxy, "listeners.web.routes[1].filters[0]")["errors"] == 1
            assert backend.requests == 7
    run(main())


@needs_curl
def test_response_filter_over_http2() -> None:
    """The same response filters on HTTP/2 streams: edits rendered into the HEADERS frame, a replaced answer, a
    failing filter's 500."""
    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied(backend) as proxy:
            port = port_of(proxy)
            status, headers, body = await curl(port, "/resp/echo")
            assert status == 200 and headers["x-resp"] == "resp" and headers["x-seen-status"] == "200"
            assert headers["x-tag"] == "req" and "x-backend-connection" not in headers
            assert headers["x-backend"] == "web-0"
            status, headers, body = await curl(port, "/resp/status/502")
            assert status == 503 and body == b"replaced\n" and headers["x-replaced"] == "502"
            status, headers, _ = await curl(port, "/resp/status/404")
            assert status == 500 and headers["fastmesh-error"] == "plugin"
            status, headers, _ = await curl(port, "/echo")
            assert status == 200 and "x-resp" not in headers
    run(main())


@needs_curl
@pytest.mark.skipif(H2Backend is None, reason="the h2 package is not installed")
def test_response_filter_on_an_http2_cluster_from_http1() -> None:
    """HTTP/1 clients to an HTTP/2 cluster (the bridge): the h2 answer's fields are edited before the HTTP/1 head is
    rendered, and a replaced answer ends the request cleanly."""
    async def main() -> None:
        backend = await H2Backend("h2-0").start()
        backend.head_fields = [(b"x-drop", b"1")]
        listener = (f'[[listeners.routes]]\npath_prefix = "/"\ncluster = "up"\n'
                    f'filters = [{{ plugin = "{T}:RespTag", config = {{ remove = ["x-drop"], replace = 502 }} }}]\n')
        cluster = f'[clusters.up]\nendpoints = ["{backend.address}"]\nprotocol = "h2"\noutlier = false\n'
        try:
            async with Proxy.from_toml(web_config([backend.address], listener=listener,
                                                  cluster=cluster)) as proxy:
                port = port_of(proxy)
                status, headers, body = await curl(port, "/a", http2=False)
                assert status == 200 and headers["x-resp"] == "resp" and headers["x-backend"] == "h2-0"
                assert "x-drop" not in headers and body == b"h2-0:/a"
                backend.status = 502
                status, headers, body = await curl(port, "/b", http2=False)
                assert status == 503 and body == b"replaced\n" and headers["x-replaced"] == "502"
                backend.status = 200
                status, headers, _ = await curl(port, "/c", http2=False)
                assert status == 200 and headers["x-resp"] == "resp"
        finally:
            await backend.stop()
    run(main())


def test_async_response_filter_is_a_config_error(tmp_path: Path) -> None:
    """Response filters run inline: an `async def on_response` is refused when the config is loaded."""
    (tmp_path / "asyncresp.py").write_text(
        "class Late:\n    def __init__(self, config):\n        pass\n\n"
        "    async def on_response(self, request, response):\n        return None\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as err:
            loads_config(web_config(["127.0.0.1:1"], listener='filters = ["asyncresp:Late"]'))
    finally:
        sys.path.remove(str(tmp_path))
    assert "listeners[0].filters[0].plugin" in str(err.value) and "response filters run inline" in str(err.value)


OPEN = 'failure_mode = "open"'


def test_slow_inline_filter_is_counted_and_thread_filter_does_not_block() -> None:
    """An inline sync filter over its timeout still answers (it cannot be interrupted) and is counted as slow; the
    same filter with run = "thread" runs off the loop: a request to another route is answered while it blocks,
    and one over its timeout gets 504 `plugin timeout` (closed) or goes on without it (open)."""
    listener = f"""
[[listeners.routes]]
path_prefix = "/inline/"
cluster = "web"
filters = [{{ plugin = "{T}:Block", config = {{ ms = 60 }}, timeout = "20ms" }}]
[[listeners.routes]]
path_prefix = "/thread/"
cluster = "web"
filters = [{{ plugin = "{T}:Block", config = {{ ms = 600 }}, timeout = "5s", run = "thread" }}]
[[listeners.routes]]
path_prefix = "/late/"
cluster = "web"
filters = [{{ plugin = "{T}:Block", config = {{ ms = 800 }}, timeout = "100ms", run = "thread" }}]
[[listeners.routes]]
path_prefix = "/late-open/"
cluster = "web"
filters = [{{ plugin = "{T}:Block", config = {{ ms = 800 }}, timeout = "100ms", run = "thread", {OPEN} }}]
"""

    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied(backend, listener) as proxy:
            async with client(proxy) as c, client(proxy) as other:
                r = await c.get("/inline/echo")
                fields = {k.lower(): v for k, v in r.json()["headers"]}
                assert r.status_code == 200 and fields["x-thread"] == "main" and fields["x-blocked"] == "60"
                assert counts(proxy, "listeners.web.routes[0].filters[0]")["slow"] == 1
                threaded = asyncio.ensure_future(c.get("/thread/echo"))
                await asyncio.sleep(0.1)
                t = time.monotonic()
                r = await other.get("/echo")                 # served while the threaded filter still blocks
                assert r.status_code == 200 and time.monotonic() - t < 0.4 and not threaded.done()
                r = await threaded
                fields = {k.lower(): v for k, v in r.json()["headers"]}
                assert r.status_code == 200 and fields["x-thread"] == "other" and fields["x-blocked"] == "600"
                assert counts(proxy, "listeners.web.routes[1].filters[0]")["slow"] == 0
                r = await c.get("/late/echo")
                assert r.status_code == 504 and r.headers["fastmesh-error"] == "plugin timeout"
                r = await other.get("/late-open/echo")
                fields = {k.lower(): v for k, v in r.json()["headers"]}
                assert r.status_code == 200 and "x-blocked" not in fields
                assert counts(proxy, "listeners.web.routes[2].filters[0]")["timeouts"] == 1
            await asyncio.sleep(0.9)                         # the overrun threads finish before the proxy stops
    run(main())


def test_reload_imports_a_changed_plugin_module(tmp_path: Path) -> None:
    """A plugin module rewritten on disk (same size, within the same second: the bytecode cache cannot tell) is
    imported again by the next reload; a rewrite that does not import is a reload error and the old code stays."""
    mod = tmp_path / "editedplug.py"
    source = ("class Version:\n    def __init__(self, config):\n        pass\n\n"
              "    def on_request(self, request):\n        request.add_response_header('x-version', '{}')\n")
    mod.write_text(source.format("1"))
    sys.path.insert(0, str(tmp_path))

    async def main() -> None:
        async with HttpBackend("web-0") as backend:
            text = web_config([backend.address], listener='filters = ["editedplug:Version"]')
            async with Proxy.from_toml(text) as proxy:
                async with client(proxy) as c:
                    assert (await c.get("/echo")).headers["x-version"] == "1"
                    mod.write_text(source.format("2"))
                    await proxy.reload(loads_config(text))
                    assert (await c.get("/echo")).headers["x-version"] == "2"
                    mod.write_text(source.format("3") + "this is not python\n")
                    with pytest.raises(ConfigError, match="importing editedplug again"):
                        loads_config(text)
                    assert (await c.get("/echo")).headers["x-version"] == "2"
                    mod.write_text(source.format("4"))
                    await proxy.reload(loads_config(text))
                    assert (await c.get("/echo")).headers["x-version"] == "4"
                await no_connection_left(proxy)
    try:
        run(main())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("editedplug", None)


def test_worked_response_example() -> None:
    """examples/plugins mypkg.headers:SecureHeaders: security fields added, the backend's self-description hidden,
    its 5xx body replaced by a plain page (status kept)."""
    listener = 'filters = [{ plugin = "mypkg.headers:SecureHeaders", config = { hide = ["x-backend"] } }]'
    sys.path.insert(0, str(EXAMPLES))

    async def main() -> None:
        async with HttpBackend("web-0") as backend, proxied(backend, listener) as proxy, client(proxy) as c:
            r = await c.get("/echo")
            assert r.status_code == 200 and "x-backend" not in r.headers
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            assert r.headers["x-content-type-options"] == "nosniff"
            r = await c.get("/status/500")
            assert r.status_code == 500 and r.text == "Something went wrong on our side.\n"
            assert r.headers["content-type"] == "text/plain" and "x-backend" not in r.headers
    try:
        run(main())
    finally:
        sys.path.remove(str(EXAMPLES))
