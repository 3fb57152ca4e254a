"""Rate limits on routes, end to end: real sockets, a real backend, curl and a raw HTTP/1.1 client on 127.0.0.1.

An embedded Proxy for the per-route behaviour (burst then 429 with Retry-After, keys, HTTP/2 and gRPC, filters
setting the key, reloads), and a real `fastmesh run` with two workers for the limit they share.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastmesh import Proxy
from fastmesh._testbase.curl import CURL, curl
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import no_connection_left
from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import AsyncRun
from fastmesh.config.load import loads_config

pytestmark = pytest.mark.timeout(90)


def config_text(port: int, backend: HttpBackend, routes: str, *, admin: int = 0, workers: int = 1,
                listener: str = "") -> str:
    head = f'workers = {workers}\ndrain_timeout = "1s"\n'
    if admin:
        head += f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
    return (head + f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\ncluster = "web"\n'
            f'{listener}\n{routes}\n[clusters.web]\nendpoints = ["{backend.address}"]\n')


def route(limit: str, prefix: str = "/api/", extra: str = "") -> str:
    return f'[[listeners.routes]]\npath_prefix = "{prefix}"\ncluster = "web"\nrate_limit = {{ {limit} }}\n{extra}'


@contextlib.asynccontextmanager
async def proxied(routes: str, **kw: str) -> AsyncIterator[tuple[Proxy, int, HttpBackend]]:
    backend = await HttpBackend().start()
    port = free_port()
    try:
        async with Proxy.from_toml(config_text(port, backend, routes, **kw)) as proxy:
            yield proxy, port, backend
            await no_connection_left(proxy)
    finally:
        await backend.stop()


async def get(port: int, path: str, headers: dict[str, str] | None = None, n: int = 1
              ) -> list[tuple[int, dict[str, str], bytes]]:
    """n GETs one after another on one keep-alive HTTP/1.1 connection: (status, headers, body) each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    out = []
    try:
        for _ in range(n):
            writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n{extra}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            fields = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(fields.get("content-length", "0")))
            out.append((int(lines[0].split()[1]), fields, body))
    finally:
        writer.close()
    return out


def test_exactly_the_burst_passes_then_429_with_retry_after() -> None:
    async def main() -> None:
        async with proxied(route('rate = "10/s", burst = 10, key = "client_ip"')) as (proxy, port, backend):
            answers = await get(port, "/api/x", n=13)
            statuses = [s for s, _, _ in answers]
            # Burst 10, then a token every 100 ms: 13 requests within well under 100 ms... on a busy machine one
            # token may come back meanwhile, never more than the time taken allows.
            assert statuses[:10] == [200] * 10, statuses
            assert statuses[10:].count(429) >= 2, statuses
            refused = [a for a in answers if a[0] == 429]
            for _, fields, body in refused:
                assert fields["retry-after"] == "1"
                assert fields["fastmesh-error"] == "rate limited"
                assert body == b"Too Many Requests: rate limited\n"
            assert backend.requests == statuses.count(200)
            # A route without a limit is not limited at all.
            assert [s for s, _, _ in await get(port, "/other", n=30)] == [200] * 30
            stats = proxy.stats()["rate_limits"]
            assert stats == [{"listener": "web", "route": 0, "name": None, "limit": "10/s burst 10 by client_ip",
                              "passed": 10 + statuses[10:].count(200), "limited": len(refused), "evicted": 0}]

    asyncio.run(main())


def test_retry_after_rounds_the_wait_up_to_seconds() -> None:
    async def main() -> None:
        async with proxied(route('rate = "2/m", burst = 1')) as (_, port, _b):
            answers = await get(port, "/api/", n=2)
            assert [s for s, _, _ in answers] == [200, 429]
            assert 29 <= int(answers[1][1]["retry-after"]) <= 30          # a token every 30 s

    asyncio.run(main())


def test_header_keys_are_independent() -> None:
    async def main() -> None:
        async with proxied(route('rate = "1/h", burst = 3, key = "header:x-user"')) as (_, port, _b):
            alice = [s for s, _, _ in await get(port, "/api/", {"x-user": "alice"}, n=4)]
            bob = [s for s, _, _ in await get(port, "/api/", {"X-User": "bob"}, n=4)]
            anon = [s for s, _, _ in await get(port, "/api/", n=4)]         # no field: the key ""
            assert alice == bob == anon == [200, 200, 200, 429]
            again = [s for s, _, _ in await get(port, "/api/", {"x-user": "alice"}, n=1)]
            assert again == [429]

    asyncio.run(main())


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_http2_requests_are_limited_too() -> None:
    async def main() -> None:
        async with proxied(route('rate = "1/h", burst = 2')) as (_, port, _b):
            answers = [await curl(port, "/api/h2") for _ in range(3)]
            assert [a[0] for a in answers] == [200, 200, 429]
            assert answers[2][1]["retry-after"] == "3600"
            assert answers[2][1]["fastmesh-error"] == "rate limited"
            # The bucket is the route's, whichever protocol a request comes by.
            assert [s for s, _, _ in await get(port, "/api/h1")] == [429]

    asyncio.run(main())


# ---- `fastmesh run`: two workers, one limit ----------------------------------------------------------------------

def admin_get(admin: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as resp:
        return resp.read()


def admin_reload(admin: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
    with urllib.request.urlopen(request, timeout=15) as resp:
        return json.loads(resp.read())


async def spread_requests(port: int, path: str, connections: int, each: int) -> list[int]:
    """`connections` keep-alive connections at once (the kernel spreads them over the workers), `each` GETs on
    each: the statuses."""
    answers = await asyncio.gather(*(get(port, path, n=each) for _ in range(connections)))
    return [s for conn in answers for s, _, _ in conn]


async def per_worker_connections(admin: int) -> list[int]:
    stats = json.loads(await asyncio.to_thread(admin_get, admin, "/stats"))
    return [int(w["connections"]) for w in stats["workers"].values()]


def test_two_workers_enforce_one_limit(tmp_path: Path) -> None:
    """workers = 2 (SO_REUSEPORT): 40 connections x 3 requests against 1/h burst 20: exactly 20 pass over the
    instance (each worker alone would let up to 20 through), both workers served, and /metrics counts the rest."""
    async def main() -> None:
        backend = await HttpBackend().start()
        port, admin = free_port(), free_port()
        run = AsyncRun(tmp_path, config_text(port, backend, route('rate = "1/h", burst = 20'), admin=admin,
                                             workers=2))
        await run.start()
        try:
            statuses = await spread_requests(port, "/api/", 40, 3)
            spread = await per_worker_connections(admin)
            print(f"\nratelimit: 2 workers, 120 requests, burst 20: passed={statuses.count(200)} "
                  f"limited={statuses.count(429)} per_worker_connections={spread}")
            assert statuses.count(200) == 20 and statuses.count(429) == 100, statuses
            assert len(spread) == 2 and min(spread) >= 1              # both workers took part
            assert backend.requests == 20
            metrics = (await asyncio.to_thread(admin_get, admin, "/metrics")).decode()
            assert 'fastmesh_rate_limited_total{listener="web",route="0"} 100' in metrics, metrics
            assert 'fastmesh_rate_limit_passed_total{listener="web",route="0"} 20' in metrics
        finally:
            await run.stop()
            await backend.stop()

    asyncio.run(main())


def test_a_reload_keeps_unchanged_limits_and_resets_changed_ones(tmp_path: Path) -> None:
    """Two limited routes, burst 2 each, both drained. A reload that changes nothing about them keeps both
    drained; one that raises the second's burst to 3 gives it a new bucket (3 pass) while the first stays drained."""
    async def main() -> None:
        backend = await HttpBackend().start()
        port, admin = free_port(), free_port()

        def text(second_burst: int, extra: str = "") -> str:
            routes = route('rate = "1/h", burst = 2', "/a/") + route(f'rate = "1/h", burst = {second_burst}', "/b/")
            return config_text(port, backend, routes + extra, admin=admin, workers=2)
        run = AsyncRun(tmp_path, text(2))
        await run.start()
        try:
            first = await spread_requests(port, "/a/", 4, 1) + await spread_requests(port, "/b/", 4, 1)
            assert first.count(200) == 4, first             # 2 + 2 over both workers: then both are drained
            assert await spread_requests(port, "/a/", 4, 1) == [429] * 4
            assert await spread_requests(port, "/b/", 4, 1) == [429] * 4
            # A reload that changes something else (a response header on the default route) keeps the buckets.
            run.config.write_text(text(2, '[[listeners.routes]]\npath = "/x"\ncluster = "web"\n'))
            assert (await asyncio.to_thread(admin_reload, admin))["result"] == "ok"
            assert await spread_requests(port, "/a/", 4, 1) == [429] * 4
            assert await spread_requests(port, "/b/", 4, 1) == [429] * 4
            # Changing /b/'s burst: /b/ starts over with 3 tokens, /a/ stays drained.
            run.config.write_text(text(3, '[[listeners.routes]]\npath = "/x"\ncluster = "web"\n'))
            assert (await asyncio.to_thread(admin_reload, admin))["result"] == "ok"
            assert await spread_requests(port, "/a/", 4, 1) == [429] * 4
            b = await spread_requests(port, "/b/", 6, 1)
            assert b.count(200) == 3 and b.count(429) == 3, b
        finally:
            await run.stop()
            await backend.stop()

    asyncio.run(main())


# ---- keys from filters, a global service, gRPC, the access log ---------------------------------------------------

T = "fastmesh._testbase.plugins"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


def test_a_filter_sets_the_key() -> None:
    """key = "filter": the route's filter computes the key (a tenant from a field); requests it gives no key are
    not limited."""
    async def main() -> None:
        routes = route('rate = "1/h", burst = 2, key = "filter"',
                       extra=f'filters = [{{ plugin = "{T}:RateKey", config = {{ header = "x-tenant" }} }}]\n')
        async with proxied(routes) as (proxy, port, backend):
            acme = [s for s, _, _ in await get(port, "/api/", {"x-tenant": "acme"}, n=3)]
            umbrella = [s for s, _, _ in await get(port, "/api/", {"x-tenant": "umbrella"}, n=3)]
            nobody = [s for s, _, _ in await get(port, "/api/", n=5)]
            assert acme == umbrella == [200, 200, 429]
            assert nobody == [200] * 5
            assert backend.requests == 9
            assert proxy.stats()["rate_limits"][0]["limited"] == 2

    asyncio.run(main())


def test_a_global_rate_limit_service_through_the_example_filter() -> None:
    """examples/plugins' AskRateLimitService: the service's 429 and Retry-After reach the client; a service that
    does not answer in time lets requests through with failure_mode = "open"."""
    seen: list[str] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = head.split()[1].partition("key=")[2]
        seen.append(key)
        if key == "hang":
            await asyncio.sleep(5)
        over = seen.count(key) > 2
        body = b"over the limit\n" if over else b""
        writer.write((f"HTTP/1.1 {429 if over else 200} X\r\ncontent-length: {len(body)}\r\n"
                      + ("retry-after: 7\r\n" if over else "") + "\r\n").encode() + body)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(service, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/check"
        listener = (f'filters = [{{ plugin = "mypkg.ratelimit:AskRateLimitService", config = {{ url = "{url}", '
                    f'header = "x-user" }}, timeout = "300ms", failure_mode = "open" }}]\n')
        try:
            async with proxied("", listener=listener) as (_, port, backend):
                alice = await get(port, "/", {"x-user": "alice"}, n=3)
                assert [s for s, _, _ in alice] == [200, 200, 429]
                assert alice[2][1]["retry-after"] == "7" and alice[2][2] == b"over the limit\n"
                t0 = time.monotonic()
                assert [s for s, _, _ in await get(port, "/", {"x-user": "hang"})] == [200]
                assert time.monotonic() - t0 < 3            # the filter's timeout, not the service's silence
                assert backend.requests == 3
        finally:
            server.close()

    import sys
    sys.path.insert(0, str(EXAMPLES))
    try:
        asyncio.run(main())
    finally:
        sys.path.remove(str(EXAMPLES))


def test_the_access_log_names_the_refusal(tmp_path: Path) -> None:
    async def main() -> None:
        log = tmp_path / "access.jsonl"
        listener = f'access_log = {{ format = "json", path = "{log}" }}\n'
        async with proxied(route('rate = "1/h", burst = 1'), listener=listener) as (_, port, _b):
            assert [s for s, _, _ in await get(port, "/api/", n=2)] == [200, 429]
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(r["status"], r["error"], r["route"]) for r in records] == [(200, "", 0), (429, "rate limited", 0)]

    asyncio.run(main())


def test_grpc_calls_get_resource_exhausted() -> None:
    grpc_mod = pytest.importorskip("grpc")
    from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient
    backend = GrpcBackend("g0").start()
    port = free_port()
    client = GrpcClient(f"127.0.0.1:{port}")
    text = (f'drain_timeout = "500ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\n'
            f'protocol = "http"\ncluster = "grpc"\n'
            f'[[listeners.routes]]\npath_prefix = "/fastmesh.test.Echo/"\ncluster = "grpc"\n'
            f'rate_limit = {{ rate = "1/h", burst = 2 }}\n'
            f'[clusters.grpc]\nendpoints = ["{backend.address}"]\nprotocol = "h2"\n')

    async def main() -> None:
        async with Proxy.from_toml(text):
            assert (await asyncio.to_thread(client.unary, b"a", 10.0))[0] == b"a"
            assert (await asyncio.to_thread(client.unary, b"b", 10.0))[0] == b"b"
            with pytest.raises(grpc_mod.RpcError) as refused:
                await asyncio.to_thread(client.unary, b"c", 10.0)
            assert refused.value.code() == grpc_mod.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(refused.value.trailing_metadata())
            assert trailers["fastmesh-error"] == "rate limited"
            # The wait until a token, as gRPC's retry pushback and as Retry-After (1/h: about an hour).
            assert 3_500_000 < int(trailers["grpc-retry-pushback-ms"]) <= 3_600_000
            assert 3500 < int(trailers["retry-after"]) <= 3600
            assert backend.calls["Unary"] == 2

    try:
        asyncio.run(main())
    finally:
        client.close()
        backend.stop()


def test_grpc_clients_retrying_resource_exhausted_wait_for_the_pushback() -> None:
    """A grpcio client whose retry policy lists RESOURCE_EXHAUSTED, refused by a 2/s limit with a burst of 1: it waits
    the grpc-retry-pushback-ms it was given (about 500 ms) rather than its own 10 ms backoff, and its retry gets
    the next token. With the backoff alone its retry would come too soon and be refused again."""
    pytest.importorskip("grpc")
    from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient
    backend = GrpcBackend("g0").start()
    port = free_port()
    policy = {"methodConfig": [{"name": [{"service": "fastmesh.test.Echo"}], "retryPolicy": {
        "maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]}
    client = GrpcClient(f"127.0.0.1:{port}", options=[("grpc.service_config", json.dumps(policy)),
                                                      ("grpc.enable_retries", 1)])
    text = (f'drain_timeout = "500ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\n'
            f'protocol = "http"\ncluster = "grpc"\n'
            f'[[listeners.routes]]\npath_prefix = "/fastmesh.test.Echo/"\ncluster = "grpc"\n'
            f'rate_limit = {{ rate = "2/s", burst = 1 }}\n'
            f'[clusters.grpc]\nendpoints = ["{backend.address}"]\nprotocol = "h2"\n')

    async def main() -> None:
        async with Proxy.from_toml(text) as proxy:
            assert (await asyncio.to_thread(client.unary, b"a", 10.0))[0] == b"a"
            began = time.monotonic()
            assert (await asyncio.to_thread(client.unary, b"b", 10.0))[0] == b"b"
            took = time.monotonic() - began
            assert 0.3 < took < 5, took
            (stats,) = proxy.stats()["rate_limits"]
            assert stats["limited"] == 1 and stats["passed"] == 2
            assert backend.calls["Unary"] == 2

    try:
        asyncio.run(main())
    finally:
        client.close()
        backend.stop()


def test_buckets_follow_a_route_s_name_or_match_not_its_place() -> None:
    """Buckets are kept by the listener's name and the route's name (or, unnamed, its match) with its limit: a reload
    that moves limited routes, or puts new routes before them, keeps their buckets; a named route keeps them
    when its match changes; an unnamed route whose match changes, or a route whose limit changes, starts afresh."""
    limit = 'rate = "1/h", burst = 2'
    api = route(limit, "/api/")
    named = route(limit, "/v1/", 'name = "orders"\n')
    other = '[[listeners.routes]]\npath = "/x"\ncluster = "web"\n'

    async def main() -> None:
        backend = await HttpBackend().start()
        port = free_port()
        try:
            async with Proxy.from_toml(config_text(port, backend, api + named)) as proxy:
                assert [s for s, _, _ in await get(port, "/api/", n=3)] == [200, 200, 429]
                assert [s for s, _, _ in await get(port, "/v1/", n=2)] == [200, 200]
                # Both moved behind a new route, and their order swapped: the same buckets.
                await proxy.reload(loads_config(config_text(port, backend, other + named + api)))
                assert [s for s, _, _ in await get(port, "/api/", n=1)] == [429]
                assert [s for s, _, _ in await get(port, "/v1/", n=1)] == [429]
                by_name = {s["name"]: s for s in proxy.stats()["rate_limits"]}
                assert by_name["orders"]["route"] == 1 and by_name[None]["route"] == 2
                assert by_name[None]["limited"] == 2 and by_name["orders"]["passed"] == 2
                # The named route now matches /v2/: still its buckets. The unnamed one matches /api/v2/: new ones.
                moved = route(limit, "/v2/", 'name = "orders"\n') + route(limit, "/api/v2/")
                await proxy.reload(loads_config(config_text(port, backend, other + moved)))
                assert [s for s, _, _ in await get(port, "/v2/", n=1)] == [429]
                assert [s for s, _, _ in await get(port, "/api/v2/", n=3)] == [200, 200, 429]
                # A new limit on the named route: fresh buckets.
                moved = route('rate = "1/h", burst = 1', "/v2/", 'name = "orders"\n') + route(limit, "/api/v2/")
                await proxy.reload(loads_config(config_text(port, backend, moved)))
                assert [s for s, _, _ in await get(port, "/v2/", n=2)] == [200, 429]
                assert [s for s, _, _ in await get(port, "/api/v2/", n=1)] == [429]
                await no_connection_left(proxy)
        finally:
            await backend.stop()

    asyncio.run(main())


def test_route_names_are_unique_in_a_listener() -> None:
    text = config_text(8080, HttpBackend(), route('rate = "1/h"', "/a/", 'name = "x"\n')
                       + route('rate = "1/h"', "/b/", 'name = "x"\n'))
    with pytest.raises(Exception) as bad:
        loads_config(text)
    assert 'listeners[0].routes[1].name: expected a name no other route of the listener has (routes[0] is' \
        in str(bad.value)


def test_an_embedded_proxy_reload_keeps_or_resets_its_own_buckets() -> None:
    async def main() -> None:
        backend = await HttpBackend().start()
        port = free_port()
        try:
            async with Proxy.from_toml(config_text(port, backend, route('rate = "1/h", burst = 2'))) as proxy:
                assert [s for s, _, _ in await get(port, "/api/", n=3)] == [200, 200, 429]
                extra = '[[listeners.routes]]\npath = "/x"\ncluster = "web"\n'
                await proxy.reload(loads_config(config_text(port, backend, route('rate = "1/h", burst = 2') + extra)))
                assert [s for s, _, _ in await get(port, "/api/", n=1)] == [429]       # the same limit: kept
                await proxy.reload(loads_config(config_text(port, backend, route('rate = "1/h", burst = 3') + extra)))
                assert [s for s, _, _ in await get(port, "/api/", n=4)] == [200, 200, 200, 429]
                await proxy.reload(loads_config(config_text(port, backend, extra)))
                assert [s for s, _, _ in await get(port, "/api/", n=5)] == [200] * 5   # no limit any more
                assert proxy.stats()["rate_limits"] == []
                await no_connection_left(proxy)
        finally:
            await backend.stop()

    asyncio.run(main())
