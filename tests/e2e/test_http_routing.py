"""HTTP routing end to end: host (exact, wildcard), path (exact, prefix, regex), methods, headers, first match
wins, prefix rewrites, header edits, and the 404 when nothing matches and there is no default cluster.

One backend per cluster, named after it, so the echo's `backend` field says which route matched.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend, read_response
from fastmesh._testbase.inproc import no_connection_left
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)

CLUSTERS = ("default", "api", "wild", "exact", "regex", "getter", "canary", "first", "second")

ROUTES = """
[[listeners.routes]]
host = "api.example.com"
path_prefix = "/api/"
rewrite_prefix = "/"
cluster = "api"
add_request_headers = { "x-a" = "b", "x-route" = "api" }
remove_request_headers = ["x-secret"]
add_response_headers = { "x-served-by" = "fastmesh" }

[[listeners.routes]]
host = "*.example.com"
cluster = "wild"

[[listeners.routes]]
path = "/exact"
cluster = "exact"

[[listeners.routes]]
path_regex = "^/v[0-9]+/"
cluster = "regex"

[[listeners.routes]]
path_prefix = "/only-get/"
methods = ["GET"]
cluster = "getter"

[[listeners.routes]]
path_prefix = "/canary/"
headers = { "x-env" = "canary" }
cluster = "canary"

[[listeners.routes]]
path_prefix = "/first/"
cluster = "first"

[[listeners.routes]]
path_prefix = "/first/second/"
cluster = "second"
"""


def routing_config(backends: dict[str, HttpBackend], *, default: str | None = "default",
                   routes: str = ROUTES) -> str:
    default_line = f'cluster = "{default}"\n' if default else ""
    clusters = "".join(f'[clusters.{name}]\nendpoints = ["{b.address}"]\n' for name, b in backends.items())
    return (f'drain_timeout = "500ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\n'
            f'protocol = "http"\n{default_line}{routes}\n{clusters}')


@contextlib.asynccontextmanager
async def routed(default: str | None = "default", routes: str = ROUTES,
                 clusters: tuple[str, ...] = CLUSTERS) -> AsyncIterator[tuple[httpx.AsyncClient, dict]]:
    """Backends for every cluster, the proxy, and an httpx client for it."""
    backends = {name: await HttpBackend(name).start() for name in clusters}
    try:
        async with Proxy.from_toml(routing_config(backends, default=default, routes=routes)) as proxy:
            host, port = proxy.addresses["web"]
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5, trust_env=False) as c:
                yield c, backends
            await no_connection_left(proxy)   # only after a passing test: a failure's own error is the one to see
    finally:
        for backend in backends.values():
            await backend.stop()


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("method, host, target, headers, cluster, upstream_target", [
    # exact host (case and port do not matter) with a prefix rewrite
    ("GET", "api.example.com", "/api/users?id=1", {}, "api", "/users?id=1"),
    ("GET", "API.Example.COM", "/api/x", {}, "api", "/x"),
    ("GET", "api.example.com:8080", "/api/x", {}, "api", "/x"),
    # the api route needs its prefix too; the wildcard after it still matches the host
    ("GET", "api.example.com", "/other", {}, "wild", "/other"),
    ("GET", "a.example.com", "/api/x", {}, "wild", "/api/x"),
    ("GET", "example.com", "/", {}, "default", "/"),                 # a wildcard does not match the bare domain
    ("GET", "evil-example.com", "/", {}, "default", "/"),            # nor a name that merely ends the same
    # exact path: the whole path, the query aside
    ("GET", "site.test", "/exact", {}, "exact", "/exact"),
    ("GET", "site.test", "/exact?q=1", {}, "exact", "/exact?q=1"),
    ("GET", "site.test", "/exact/", {}, "default", "/exact/"),
    ("GET", "site.test", "/exactly", {}, "default", "/exactly"),
    # regex
    ("GET", "site.test", "/v12/users", {}, "regex", "/v12/users"),
    ("GET", "site.test", "/vx/users", {}, "default", "/vx/users"),
    # methods
    ("GET", "site.test", "/only-get/a", {}, "getter", "/only-get/a"),
    ("POST", "site.test", "/only-get/a", {}, "default", "/only-get/a"),
    # headers: the name in any case, the value exactly
    ("GET", "site.test", "/canary/a", {"x-env": "canary"}, "canary", "/canary/a"),
    ("GET", "site.test", "/canary/a", {"X-Env": "canary"}, "canary", "/canary/a"),
    ("GET", "site.test", "/canary/a", {"x-env": "prod"}, "default", "/canary/a"),
    ("GET", "site.test", "/canary/a", {}, "default", "/canary/a"),
    # first match wins, even when a later route is more specific
    ("GET", "site.test", "/first/second/x", {}, "first", "/first/second/x"),
    # a prefix is a string prefix of the path, nothing more clever
    ("GET", "site.test", "/first", {}, "default", "/first"),
])
def test_route_selection(method, host, target, headers, cluster, upstream_target):
    async def main():
        async with routed() as (c, backends):
            r = await c.request(method, target, headers={"Host": host, **headers})
            assert r.status_code == 200
            echo = r.json()
            assert echo["backend"] == cluster
            assert echo["target"] == upstream_target
            assert backends[cluster].requests == 1
            assert sum(b.requests for b in backends.values()) == 1

    run(main())


def test_route_by_host_with_curl():
    async def main():
        async with routed() as (c, backends):
            base = str(c.base_url).rstrip("/")
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--noproxy", "*", "--max-time", "20", "-i", "-H", "Host: api.example.com",
                f"{base}/api/from-curl", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err
            head, _, body = out.partition(b"\r\n\r\n")
            assert b"\r\nx-served-by: fastmesh" in head.lower()
            echo = json.loads(body)
            assert echo["backend"] == "api" and echo["target"] == "/from-curl"

    run(main())


def test_pipelined_requests_to_different_clusters_answered_in_order():
    """The first request goes to a cluster that answers late, the second to one that answers at once."""
    async def main():
        async with routed() as (c, backends):
            host, port = c.base_url.host, c.base_url.port
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: site.test\r\n\r\n"
                         b"GET /first/x HTTP/1.1\r\nHost: site.test\r\n\r\n"
                         b"GET /exact HTTP/1.1\r\nHost: site.test\r\n\r\n")
            first = await asyncio.wait_for(read_response(reader), 5)
            assert first.body == b"slept 300 ms\n" and first.header("x-backend") == "default"
            assert (await asyncio.wait_for(read_response(reader), 5)).json()["backend"] == "first"
            assert (await asyncio.wait_for(read_response(reader), 5)).json()["backend"] == "exact"
            writer.close()

    run(main())


def test_rewrite_prefix_to_another_prefix():
    routes = ('[[listeners.routes]]\npath_prefix = "/old/"\nrewrite_prefix = "/new/v2/"\ncluster = "api"\n')

    async def main():
        async with routed(routes=routes, clusters=("default", "api")) as (c, backends):
            echo = (await c.get("/old/a/b?c=d")).json()
            assert echo["backend"] == "api" and echo["target"] == "/new/v2/a/b?c=d"
            assert (await c.get("/older")).json()["backend"] == "default"

    run(main())


def test_request_and_response_header_edits():
    async def main():
        async with routed() as (c, backends):
            r = await c.get("/api/h", headers={"Host": "api.example.com", "X-Secret": "hunter2",
                                               "x-a": "from-client", "x-keep": "1"})
            assert r.headers["x-served-by"] == "fastmesh"
            got: dict[str, list[str]] = {}
            for k, v in r.json()["headers"]:
                got.setdefault(k.lower(), []).append(v)
            assert "x-secret" not in got                     # removed whatever its case
            assert got["x-a"][-1] == "b" and got["x-route"] == ["api"]
            assert got["x-keep"] == ["1"]
            # The edits belong to that route only.
            r = await c.get("/other", headers={"Host": "www.example.com", "X-Secret": "hunter2"})
            assert r.json()["backend"] == "wild" and "x-served-by" not in r.headers
            assert "x-secret" in {k.lower() for k, _ in r.json()["headers"]}

    run(main())


def test_no_route_and_no_default_is_404():
    routes = '[[listeners.routes]]\nhost = "only.example.com"\ncluster = "api"\n'

    async def main():
        async with routed(default=None, routes=routes, clusters=("api",)) as (c, backends):
            r = await c.get("/anything", headers={"Host": "elsewhere.example.com"})
            assert r.status_code == 404
            assert "route" in r.text.lower()
            assert backends["api"].requests == 0
            r = await c.get("/anything", headers={"Host": "only.example.com"})
            assert r.status_code == 200 and r.json()["backend"] == "api"

    run(main())


def test_route_conditions_all_must_hold():
    routes = ('[[listeners.routes]]\nhost = "shop.test"\npath_prefix = "/cart/"\nmethods = ["POST", "PUT"]\n'
              'headers = { "x-tenant" = "blue" }\ncluster = "api"\n')

    async def main():
        async with routed(routes=routes, clusters=("default", "api")) as (c, backends):
            full = {"Host": "shop.test", "x-tenant": "blue"}
            assert (await c.post("/cart/1", headers=full)).json()["backend"] == "api"
            assert (await c.put("/cart/1", headers=full)).json()["backend"] == "api"
            for method, target, headers in [
                ("GET", "/cart/1", full),
                ("POST", "/carts/1", full),
                ("POST", "/cart/1", {"Host": "shop.test", "x-tenant": "red"}),
                ("POST", "/cart/1", {"Host": "other.test", "x-tenant": "blue"}),
            ]:
                r = await c.request(method, target, headers=headers)
                assert r.json()["backend"] == "default", (method, target, headers)

    run(main())
