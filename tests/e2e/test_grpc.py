"""gRPC end to end: a grpcio client -> fastmesh (an http listener, HTTP/2 prior knowledge) -> grpcio servers on an
h2 cluster. Unary and the three streaming kinds, balancing per request over one client connection, the grpc-timeout
deadline, retries by grpc-status, the proxy's own gRPC errors, health checks, counters by grpc-status."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from fastmesh import Proxy
from fastmesh.admin.metrics import ProcessInfo, render
from fastmesh.dataplane.stats import Snapshot
from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(90)
WAIT = 10.0


def config(port: int, backends: list[GrpcBackend], cluster: str = "") -> str:
    eps = ", ".join(f'"{b.address}"' for b in backends)
    return (f'drain_timeout = "500ms"\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
            f'cluster = "grpc"\n[clusters.grpc]\nendpoints = [{eps}]\nprotocol = "h2"\n{cluster}\n')


@contextlib.asynccontextmanager
async def grpc_setup(count: int, cluster: str = "") -> AsyncIterator[tuple[Proxy, list[GrpcBackend], GrpcClient]]:
    backends = [GrpcBackend(f"g{i}").start() for i in range(count)]
    port = free_port()
    client = GrpcClient(f"127.0.0.1:{port}")
    try:
        async with Proxy.from_toml(config(port, backends, cluster)) as proxy:
            yield proxy, backends, client
    finally:
        client.close()
        for b in backends:
            b.stop()


def call(client: GrpcClient, payload: bytes, timeout: float = WAIT) -> str:
    """One unary call: the backend that answered (the echo must come back whole)."""
    response, metadata = client.unary(payload, timeout=timeout)
    assert response == payload
    return metadata["x-backend"]


def test_unary_and_streaming_calls_balanced_per_request_over_one_connection() -> None:
    async def main() -> None:
        async with grpc_setup(3) as (proxy, backends, client):
            answered = collections.Counter()
            for i in range(30):
                answered[await asyncio.to_thread(call, client, b"ping %d" % i)] += 1
            # One client connection, every backend got its share: balanced per request, not per connection.
            assert answered == {"g0": 10, "g1": 10, "g2": 10}, answered
            assert proxy.stats()["http"]["in"]["accepted"] == 1
            big = bytes(range(256)) * 4096                       # 1 MiB each way: flow control both ways
            assert await asyncio.to_thread(call, client, big) in answered
            # Server streaming: many messages, larger than the stream window in total.
            messages = await asyncio.to_thread(client.server_stream, 200, 4096)
            assert len(messages) == 200 and all(len(m) == 4096 for m in messages)
            assert [m.split(b".")[0].split(b":")[1] for m in messages] == [b"%d" % i for i in range(200)]
            # Client streaming and bidi: every message arrives, in order.
            reply = await asyncio.to_thread(client.client_stream, (b"m%d" % i for i in range(100)))
            name, count, total = reply.split(b":")
            assert (int(count), int(total)) == (100, sum(len(b"m%d" % i) for i in range(100)))
            echoed = await asyncio.to_thread(client.bidi, (b"b%d" % i for i in range(50)))
            assert [e.split(b":", 1)[1] for e in echoed] == [b"b%d" % i for i in range(50)]
            # Upstream: few shared connections carried every stream.
            pools = proxy.stats()["pools"]["grpc"]
            assert pools["opened"] <= 3 and pools["reuses"] >= 30, pools

    asyncio.run(main())


def test_thousands_of_quick_calls_on_one_channel_pass_the_flood_limits() -> None:
    # grpcio sends a PING (BDP probe) per call and small WINDOW_UPDATEs, some on streams that just closed: with
    # the listener's default limits none of that may count as a flood, however fast the calls come.
    async def main() -> None:
        async with grpc_setup(1) as (proxy, backends, client):
            def calls() -> int:
                ok = 0
                for i in range(3000):
                    ok += call(client, b"q%d" % i) == "g0"
                return ok
            assert await asyncio.to_thread(calls) == 3000
            assert proxy.stats()["http"]["in"]["accepted"] == 1          # one connection, never sent away
            assert backends[0].calls["Unary"] == 3000

    asyncio.run(main())


def test_concurrent_calls_share_connections_up_to_the_stream_limit() -> None:
    async def main() -> None:
        async with grpc_setup(1) as (proxy, backends, client):
            backends[0].delay = 0.3
            t0 = time.monotonic()
            results = await asyncio.gather(*(asyncio.to_thread(call, client, b"c%d" % i) for i in range(20)))
            elapsed = time.monotonic() - t0
            assert results == ["g0"] * 20
            assert elapsed < 0.3 * 20 / 2, elapsed      # multiplexed: nowhere near one call after another
            assert proxy.stats()["pools"]["grpc"]["opened"] == 1

    asyncio.run(main())


def test_a_client_stream_outlives_body_timeout() -> None:
    """body_timeout bounds an ordinary request body; a gRPC call's request stream lasts as long as its deadline
    (here none), only silence between messages is limited (idle_timeout). The server sends its head only with its
    answer, so no response has started while the client streams."""
    def slow(n: int) -> Iterator[bytes]:
        for i in range(n):
            time.sleep(0.25)
            yield b"s%d" % i

    async def main() -> None:
        backend = GrpcBackend("g0").start()
        backend.head_first = False
        port = free_port()
        client = GrpcClient(f"127.0.0.1:{port}")
        toml = config(port, [backend]).replace('protocol = "http"\n', 'protocol = "http"\nbody_timeout = "1s"\n', 1)
        try:
            async with Proxy.from_toml(toml):
                reply = await asyncio.to_thread(client.client_stream, slow(10))     # about 2.5 s of request body
                assert reply.split(b":")[1:] == [b"10", b"%d" % sum(len(b"s%d" % i) for i in range(10))]
        finally:
            client.close()
            backend.stop()

    asyncio.run(main())


def test_grpc_timeout_is_the_deadline_and_shrinks_upstream() -> None:
    async def main() -> None:
        async with grpc_setup(1) as (proxy, backends, client):
            seen = await asyncio.to_thread(client.who, 2.0)
            budget = int(seen["metadata"]["fastmesh-timeout-ms"])
            # grpcio rounds the grpc-timeout it sends up a little (2 s may go as "2100m"); far below the cluster's
            # 15 s response_timeout, and what went upstream (both fields) is no more than what came.
            assert 1000 < budget <= 2100, seen
            assert 1.0 < seen["time_remaining"] <= budget / 1000 + 0.01, seen
            backends[0].delay = 3.0
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(client.unary, b"slow", 0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 2.5

    asyncio.run(main())


def test_unavailable_is_retried_on_another_backend() -> None:
    async def main() -> None:
        cluster = 'retries = { attempts = 2, grpc_status = ["unavailable"], backoff = "1ms" }\noutlier = false'
        async with grpc_setup(2, cluster) as (proxy, backends, client):
            backends[0].fail_with = grpc.StatusCode.UNAVAILABLE
            answered = collections.Counter()
            for i in range(10):
                answered[await asyncio.to_thread(call, client, b"r%d" % i)] += 1
            assert answered == {"g1": 10}, answered
            assert backends[0].calls["Unary"] >= 4                  # round robin sent it its share first
            assert proxy.stats()["pools"]["grpc"]["retried"] == backends[0].calls["Unary"]
            counts = proxy._clusters["grpc"].counts["grpc"]
            assert counts["UNAVAILABLE"] == backends[0].calls["Unary"] and counts["OK"] == 10, counts

    asyncio.run(main())


def test_without_a_listed_status_the_failure_reaches_the_client() -> None:
    async def main() -> None:
        async with grpc_setup(1, 'retries = { attempts = 3, on = ["5xx", "reset"] }') as (proxy, backends, client):
            backends[0].fail_with = grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(client.unary, b"x", WAIT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "fails on purpose" in info.value.details()
            assert backends[0].calls["Unary"] == 1

    asyncio.run(main())


def test_a_streaming_call_is_not_retried_once_a_message_went_upstream() -> None:
    def slow_messages() -> Iterator[bytes]:
        for i in range(3):
            yield b"s%d" % i
            time.sleep(0.1)

    async def main() -> None:
        cluster = 'retries = { attempts = 3, grpc_status = ["unavailable"], backoff = "1ms" }\noutlier = false'
        async with grpc_setup(1, cluster) as (proxy, backends, client):
            backends[0].fail_with = grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(client.client_stream, slow_messages())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert backends[0].calls["ClientStream"] == 1          # the body was under way: never sent twice
            # A unary call to the same failing backend is retried (and fails again): attempts = 3.
            with pytest.raises(grpc.RpcError):
                await asyncio.to_thread(client.unary, b"u", WAIT)
            assert backends[0].calls["Unary"] == 3

    asyncio.run(main())


def test_backend_down_is_a_grpc_unavailable_with_fastmesh_error() -> None:
    async def main() -> None:
        async with grpc_setup(2) as (proxy, backends, client):
            for b in backends:
                b.stop()
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(client.unary, b"x", WAIT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            trailers = dict(info.value.trailing_metadata() or ())
            assert trailers.get("fastmesh-error") in ("connect refused", "no endpoints"), trailers

    asyncio.run(main())


def test_a_backend_that_goes_away_mid_connection_fails_over() -> None:
    async def main() -> None:
        cluster = 'retries = { attempts = 2, on = ["reset"] }'
        async with grpc_setup(2, cluster) as (proxy, backends, client):
            for i in range(4):
                await asyncio.to_thread(call, client, b"w%d" % i)
            backends[0].stop()                      # its shared connection breaks (GOAWAY, then the close)
            answered = collections.Counter()
            for i in range(6):
                answered[await asyncio.to_thread(call, client, b"a%d" % i)] += 1
            assert answered == {"g1": 6}, answered

    asyncio.run(main())


def test_not_serving_backend_gets_no_calls() -> None:
    async def main() -> None:
        cluster = ('health_check = { type = "grpc", interval = "100ms", timeout = "100ms", healthy = 1, unhealthy = 1 }'
                   '\noutlier = false')
        async with grpc_setup(2, cluster) as (proxy, backends, client):
            backends[1].set_serving(False)
            t0 = time.monotonic()
            while proxy.stats()["clusters"]["grpc"][1]["healthy"]:
                assert time.monotonic() - t0 < WAIT
                await asyncio.sleep(0.05)
            answered = collections.Counter()
            for i in range(6):
                answered[await asyncio.to_thread(call, client, b"h%d" % i)] += 1
            assert answered == {"g0": 6}

    asyncio.run(main())


def test_metrics_count_grpc_answers_by_status() -> None:
    async def main() -> None:
        async with grpc_setup(1, "outlier = false") as (proxy, backends, client):
            await asyncio.to_thread(call, client, b"ok")
            backends[0].fail_with = grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError):
                await asyncio.to_thread(client.unary, b"x", WAIT)
            assert proxy._clusters["grpc"].counts["grpc"] == {"OK": 1, "RESOURCE_EXHAUSTED": 1}
            # The same counters, as /clusters and /metrics read them from the stats block.
            assert proxy._stats_layout is not None and proxy._stats_block is not None
            snap = Snapshot.of_block(proxy._stats_layout, proxy._stats_block)
            assert {k: v for k, v in snap.clusters()["grpc"]["grpc"].items() if v} == {"OK": 1, "RESOURCE_EXHAUSTED": 1}
            text = render(snap, ProcessInfo("test", 0.0, "x", 1, 1)).decode()
            assert 'fastmesh_grpc_responses_total{cluster="grpc",grpc_status="RESOURCE_EXHAUSTED"} 1' in text
            assert 'fastmesh_grpc_responses_total{cluster="grpc",grpc_status="OK"} 1' in text

    asyncio.run(main())


def test_the_proxy_s_own_grpc_errors_are_counted_by_grpc_status() -> None:
    """A call fastmesh answers itself (trailers-only, here UNAVAILABLE: the one endpoint refuses connects) is counted
    with the answers the servers gave, by its grpc-status."""
    async def main() -> None:
        async with grpc_setup(1, "outlier = false") as (proxy, backends, client):
            await asyncio.to_thread(call, client, b"ok")
            backends[0].stop()
            with pytest.raises(grpc.RpcError) as failed:
                await asyncio.to_thread(client.unary, b"x", WAIT)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "fastmesh-error" in dict(failed.value.trailing_metadata())
            assert proxy._clusters["grpc"].counts["grpc"] == {"OK": 1, "UNAVAILABLE": 1}

    asyncio.run(main())
