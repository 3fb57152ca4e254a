"""The upstream HTTP/2 pool against a scripted h2 server: streams share connections up to the server's
MAX_CONCURRENT_STREAMS and a new connection opens when one is full; GOAWAY moves new requests to another connection
while the streams it accepted finish; refused streams are sent again; an HTTP/2 client drives it (httpx, prior
knowledge) through an http listener."""
from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.h2_backend import H2Backend
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


@contextlib.asynccontextmanager
async def setup(count: int = 1, cluster: str = "") -> AsyncIterator[tuple[Proxy, list[H2Backend], httpx.AsyncClient]]:
    backends = [await H2Backend(f"b{i}").start() for i in range(count)]
    port = free_port()
    eps = ", ".join(f'"{b.address}"' for b in backends)
    cfg = (f'drain_timeout = "300ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
           f'cluster = "up"\n[clusters.up]\nendpoints = [{eps}]\nprotocol = "h2"\noutlier = false\n{cluster}\n')
    try:
        async with Proxy.from_toml(cfg) as proxy, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True, timeout=WAIT,
                                  trust_env=False, limits=httpx.Limits(max_connections=1)) as client:
            yield proxy, backends, client
    finally:
        for b in backends:
            await b.stop()


def pool(proxy: Proxy) -> dict:
    return dict(proxy.stats()["pools"]["up"])


def test_streams_share_a_connection_up_to_the_servers_limit_then_a_new_one_opens() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), client):
            b.max_streams = 3
            b.delay = 0.3
            answers = await asyncio.gather(*(client.get(f"/r{i}") for i in range(7)))
            assert [r.status_code for r in answers] == [200] * 7
            assert all(r.http_version == "HTTP/2" for r in answers)
            assert [r.text for r in answers] == [f"b0:/r{i}" for i in range(7)]
            per_conn = collections.Counter(r.headers["x-connection"] for r in answers)
            assert b.max_open <= 3 and b.connections == 3 and sorted(per_conn.values()) == [1, 3, 3], per_conn
            assert pool(proxy)["opened"] == 3
            # Later requests reuse the open connections: no new connect.
            for i in range(5):
                assert (await client.get("/again")).status_code == 200
            assert b.connections == 3

    asyncio.run(main())


def test_goaway_lets_accepted_streams_finish_and_sends_new_ones_elsewhere() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), client):
            b.goaway_after = 2           # the first connection takes two requests, then says GOAWAY
            b.delay = 0.2
            answers = await asyncio.gather(*(client.get(f"/g{i}") for i in range(4)))
            assert [r.status_code for r in answers] == [200] * 4
            conns = collections.Counter(r.headers["x-connection"] for r in answers)
            assert conns["1"] == 2 and b.connections >= 2, conns     # the other two went to a new connection
            assert b.requests == 4                                   # each processed once
            assert pool(proxy)["retried"] == 0                       # moved at no cost: not retries

    asyncio.run(main())


def test_a_refused_stream_is_sent_again() -> None:
    async def main() -> None:
        async with setup(cluster='retries = { attempts = 1 }') as (proxy, (b,), client):
            b.refuse = {1}               # the first stream of every connection
            r = await client.post("/p", content=b"")
            assert r.status_code == 200 and b.refused == 1 and b.requests == 1
            assert r.headers["x-stream"] == "3"

    asyncio.run(main())


def test_bodies_both_ways_under_flow_control() -> None:
    async def main() -> None:
        async with setup() as (proxy, (b,), client):
            body = bytes(range(256)) * 8192                          # 2 MiB: many windows each way
            r = await client.post("/echo", content=body)
            assert r.status_code == 200 and r.content == body

    asyncio.run(main())


def test_idle_connections_close_after_the_idle_timeout() -> None:
    async def main() -> None:
        async with setup(cluster='pool_idle_timeout = "300ms"') as (proxy, (b,), client):
            assert (await client.get("/x")).status_code == 200
            assert pool(proxy)["open"] == 1
            for _ in range(100):
                if pool(proxy)["open"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert pool(proxy)["open"] == 0
            assert (await client.get("/y")).status_code == 200     # and a new one opens when needed

    asyncio.run(main())


def test_a_discovery_update_retires_a_removed_endpoints_connection() -> None:
    """Proxy.update_endpoints on an h2 cluster: the removed endpoint's shared connection takes no new stream and
    closes once idle; the kept endpoint's connection is reused; the added endpoint gets connections of its own."""
    from fastmesh.config.schema import Endpoint

    async def main() -> None:
        async with setup(count=3) as (proxy, b, client):
            ep = [Endpoint("127.0.0.1", x.port) for x in b]
            await proxy.update_endpoints({"up": ([ep[0], ep[1]], ())})         # b2 out: two endpoints in use
            for i in range(4):
                assert (await client.get(f"/a{i}")).status_code == 200
            assert b[0].connections == 1 and b[1].connections == 1
            changes = await proxy.update_endpoints({"up": ([ep[1], ep[2]], (0,))})   # b0 out, b2 back in
            assert changes["clusters_updated"] == ["up"]
            for _ in range(100):
                if b[0].closed == b[0].connections:
                    break
                await asyncio.sleep(0.05)
            assert b[0].closed == b[0].connections == 1                      # its connection closed when idle
            answers = [await client.get(f"/b{i}") for i in range(6)]
            assert {r.text.split(":")[0] for r in answers} == {"b1", "b2"}
            assert b[1].connections == 1                                     # the kept one's connection reused

    asyncio.run(main())


def test_a_grpc_status_that_fails_in_the_trailers_after_messages_counts_for_outlier_detection() -> None:
    """A gRPC answer's head says 200; a failing grpc-status may come only in its trailers, after messages were passed
    on. That status is the endpoint's outcome, as a 5xx would be: five UNAVAILABLE in a row eject it."""
    async def main() -> None:
        backends = [await H2Backend(f"b{i}").start() for i in range(2)]
        bad = backends[1]
        bad.streamed = True
        bad.head_fields = [(b"content-type", b"application/grpc")]
        bad.trailers = [(b"grpc-status", b"14"), (b"grpc-message", b"going away")]
        backends[0].head_fields = [(b"content-type", b"application/grpc")]
        backends[0].trailers = [(b"grpc-status", b"0")]
        port = free_port()
        eps = ", ".join(f'"{b.address}"' for b in backends)
        cfg = (f'drain_timeout = "300ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\n'
               f'protocol = "http"\ncluster = "up"\n[clusters.up]\nendpoints = [{eps}]\nprotocol = "h2"\n'
               f'balancer = "round_robin"\n'
               f'outlier = {{ consecutive_failures = 5, base_ejection = "30s", max_ejected_percent = 50 }}\n')
        headers = {"content-type": "application/grpc", "te": "trailers"}
        try:
            async with Proxy.from_toml(cfg) as proxy, \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True, timeout=WAIT,
                                      trust_env=False) as client:
                for i in range(40):
                    if proxy.stats()["clusters"]["up"][1]["ejected"]:
                        break
                    r = await client.post("/svc/Call", content=b"\0\0\0\0\x01m", headers=headers)
                    assert r.status_code == 200
                assert proxy.stats()["clusters"]["up"][1]["ejected"] and bad.requests == 5
                assert proxy._clusters["up"].counts["grpc"] == {"OK": backends[0].requests, "UNAVAILABLE": 5}
                before = bad.requests
                for i in range(4):
                    r = await client.post("/svc/Call", content=b"\0\0\0\0\x01m", headers=headers)
                    assert r.headers["x-backend"] == "b0"
                assert bad.requests == before
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_a_server_gone_silent_is_found_by_keepalive_pings_and_its_requests_are_retried() -> None:
    """h2_keepalive_interval: a connection the server has been silent on gets a PING; no answer within
    h2_keepalive_timeout and the connection is given up as a broken one, its streams failing as resets (retried
    elsewhere when the policy allows) instead of waiting for the response timeout."""
    async def main() -> None:
        cluster = ('balancer = "round_robin"\nh2_keepalive_interval = "200ms"\nh2_keepalive_timeout = "400ms"\n'
                   'response_timeout = "20s"\nretries = { attempts = 2, on = ["reset"] }')
        async with setup(2, cluster) as (proxy, b, client):
            answers = [await client.get(f"/w{i}") for i in range(2)]
            assert sorted(r.headers["x-backend"] for r in answers) == ["b0", "b1"]
            await asyncio.sleep(0.6)                   # idle connections: pinged, and both answer
            h2pool = next(p for p in proxy._pools if p.cluster.name == "up")
            assert h2pool.keepalive_failures == 0 and b[0].closed == 0 and b[1].closed == 0
            b[0].frozen = True
            t0 = asyncio.get_running_loop().time()
            answers = await asyncio.gather(*(client.get(f"/f{i}") for i in range(4)))
            assert [r.status_code for r in answers] == [200] * 4
            assert {r.headers["x-backend"] for r in answers} == {"b1"}
            assert asyncio.get_running_loop().time() - t0 < 10.0        # well before the 20 s response timeout
            assert h2pool.keepalive_failures >= 1 and b[1].closed == 0

    asyncio.run(main())
