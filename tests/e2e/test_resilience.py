"""Resilience end to end (Finagle's operational model): chaos under load, retry budgets, retries and deadlines
across two hops, per-try and total timeouts. Real backends on 127.0.0.1, the Proxy on the test's loop.

Run with `-s` to see the measured numbers (each test prints one line starting with "resilience:").
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from fastmesh import Proxy
from fastmesh._testbase.chaos import ChaosBackend, Client, TapRelay, run_load
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)


def config(endpoints: list[str], cluster: str = "", listener: str = "") -> str:
    """One http listener in front of one cluster `web`; `cluster` / `listener` are extra TOML lines."""
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (f'drain_timeout = "200ms"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\ncluster = "web"\n'
            f'{listener}\n[clusters.web]\nendpoints = [{eps}]\n{cluster}\n')


@contextlib.asynccontextmanager
async def proxy_for(endpoints: list[str], cluster: str = "", listener: str = "") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(config(endpoints, cluster, listener)) as proxy:
        yield proxy


def client(proxy: Proxy, timeout: float = 5.0) -> Client:
    host, port = proxy.addresses["web"]
    return Client(host, port, timeout)


def endpoint_state(proxy: Proxy, i: int) -> dict:
    return proxy.stats()["clusters"]["web"][i]


def report(what: str, **numbers: object) -> None:
    print(f"\nresilience: {what}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until predicate() held (polled every 10 ms); fails after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


# ---- 1. chaos under load ----------------------------------------------------------------------------------------

CHAOS_CLUSTER = """\
balancer = "ewma"
# A try on the slowed endpoint is abandoned after 300 ms and sent elsewhere: without it, peak EWMA learns of the
# slowness only when the first 2 s answer completes, and P2C pairs the slowed endpoint with the penalised
# resetting one often enough to park every client on it meanwhile (nothing fails, but nothing moves either).
per_try_timeout = "300ms"
retries = { attempts = 3, on = ["connect-failure", "reset", "timeout", "503"], budget_percent = 20 }
# Requests being retried at once: with 20 concurrent clients a reset storm can retry more than the default 3.
limits = { max_retries = 20 }
outlier = { consecutive_failures = 5, base_ejection = "10s" }
"""


def test_chaos_no_request_fails_while_a_healthy_endpoint_remains():
    """Four endpoints under 20 clients for 4 s: one is slowed to 2 s per answer, one resets every connection,
    one is killed (listener closed, connections reset) mid-load; the fourth stays healthy. Every client request
    must be answered 200, and the killed one must be out of the balancer within a second."""
    async def main():
        names = ("killed", "slowed", "resetting", "healthy")
        backends = [await ChaosBackend(name).start() for name in names]
        killed, slowed, resetting, healthy = backends
        try:
            async with proxy_for([b.address for b in backends], CHAOS_CLUSTER) as proxy:
                host, port = proxy.addresses["web"]
                marks: dict[str, float] = {}

                async def chaos() -> None:
                    await asyncio.sleep(0.5)
                    slowed.delay = 2.0
                    await asyncio.sleep(0.5)
                    resetting.resets_left = -1
                    await asyncio.sleep(0.5)
                    await killed.kill()
                    marks["killed"] = time.monotonic()
                    marks["eject"] = await wait_for(lambda: not endpoint_state(proxy, 0)["eligible"], 2.0)
                    await asyncio.sleep(max(0.0, marks["killed"] + 1.0 - time.monotonic()))
                    marks["failures_at_1s"] = endpoint_state(proxy, 0)["connect_failures"]

                load = run_load(host, port, clients=20, seconds=4.0, timeout=5.0)
                tally, _ = await asyncio.gather(load, chaos())
                after_1s = endpoint_state(proxy, 0)["connect_failures"] - marks["failures_at_1s"]
                stats = proxy.stats()["clusters"]["web"]
                report("chaos", sent=tally.sent, ok=tally.ok, failed=tally.failed, failures=dict(tally.failures),
                       answered_by=dict(tally.by_backend), time_to_eject_killed=f"{marks['eject']:.3f}s",
                       connects_to_killed_after_1s=after_1s, p50=f"{tally.percentile(0.5) * 1000:.1f}ms",
                       p99=f"{tally.percentile(0.99) * 1000:.0f}ms", resets_sent=resetting.resets,
                       states={s["address"]: s["state"] for s in stats})
                assert tally.sent > 500, "the load was too small to say anything"
                assert tally.failed == 0, tally.failures
                assert tally.ok == tally.sent
                assert marks["eject"] < 1.0
                # Out of the balancer, a down endpoint is only probed after a doubling backoff (0.5 s, 1 s, 2 s...).
                assert after_1s <= 10
                assert resetting.resets > 0 and slowed.requests > 0
                assert tally.by_backend["healthy"] > tally.sent // 2
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_request_on_a_reused_connection_that_is_reset_is_replayed_and_answered():
    """A pooled connection dies under a request (the RST comes after the request head): the request had not
    reached a live server, so it is replayed on a new connection and answered."""
    async def main():
        async with ChaosBackend("b") as backend, proxy_for([backend.address], "outlier = false") as proxy:
            c = client(proxy, timeout=2.0)
            assert (await c.get("/")).status == 200        # leaves an idle keep-alive connection in the pool
            backend.resets_left = 1                        # the next request on it gets an RST
            try:
                r = await c.get("/")
            finally:
                c.close()
            assert r.status == 200 and r.header("x-backend") == "b"
            assert backend.resets == 1 and backend.connections == 2

    asyncio.run(main())


def test_pool_of_silently_dropped_connections_does_not_fail_a_request():
    """Three idle pooled connections that a middlebox dropped without telling anyone: the next request meets
    each of them dead in turn and must still be answered, on a fresh connection (the replays of a request that
    never reached a live server are free: they spend no connect attempt)."""
    async def main():
        async with ChaosBackend("b", delay=0.1) as backend, proxy_for([backend.address], "outlier = false") as proxy:
            host, port = proxy.addresses["web"]
            warm = [Client(host, port, 2.0) for _ in range(3)]
            answers = await asyncio.gather(*(c.get("/") for c in warm))   # overlapping: three upstream connections
            for c in warm:
                c.close()
            assert [r.status for r in answers] == [200, 200, 200]
            await wait_for(lambda: sum(proxy.stats()["pools"]["web"]["idle"]) == 3)
            assert backend.doom_connections() == 3
            c = client(proxy, timeout=2.0)
            try:
                r = await c.get("/")
            finally:
                c.close()
            report("stale pool", status=r.status, resets=backend.resets, connections=backend.connections,
                   requests=backend.requests)
            assert r.status == 200 and r.header("x-backend") == "b", (r.status, r.headers)
            assert backend.resets == 3 and backend.connections == 4

    asyncio.run(main())


# ---- 2. the retry budget ----------------------------------------------------------------------------------------

BUDGET_CLUSTER = """\
outlier = false
retries = { attempts = 3, on = ["503"], budget_percent = 20, min_per_second = 0.1 }
limits = { max_retries = 1000 }
"""


def test_retry_budget_caps_amplification_against_a_failing_backend():
    """Every answer is 503 and each request may be tried 3 times, yet the backend sees about 1.2x the offered
    load (the budget), not 3x; every answer says the proxy applied its retries."""
    async def main():
        async with ChaosBackend("down", status=503) as backend, proxy_for([backend.address], BUDGET_CLUSTER) as proxy:
            host, port = proxy.addresses["web"]
            tally = await run_load(host, port, clients=4, seconds=1.5)
            n = tally.sent
            report("retry budget", offered=n, backend_saw=backend.requests, ratio=f"{backend.requests / n:.3f}",
                   statuses=dict(tally.by_status))
            assert n >= 200 and set(tally.by_status) == {503} and tally.by_status[503] == n
            assert backend.requests <= 1.3 * n
            assert backend.requests >= 1.05 * n            # the budget is used, not off
            # Every answer, retried or not, carries the marker (checked on a fresh run of a few requests).
            c = client(proxy)
            for _ in range(20):
                r = await c.get("/")
                assert r.status == 503 and r.header("fastmesh-retried") is not None, r.headers
                assert int(r.header("fastmesh-retried") or "-1") in (0, 1, 2)
            c.close()

    asyncio.run(main())


# ---- 3. two hops: the marker stops retries multiplying ------------------------------------------------------------

HOP_RETRIES = 'retries = { attempts = 3, on = ["503"], budget_percent = 20, min_per_second = 0.1 }\n' \
              'limits = { max_retries = 1000 }\noutlier = false\n'


def test_two_hops_do_not_multiply_retries():
    """client -> outer fastmesh -> inner fastmesh -> backend answering 503, both hops retrying 503s: the inner hop
    marks its answers `fastmesh-retried`, so the outer never retries them; the backend sees ~1.2x, not 1.44x."""
    async def main():
        async with ChaosBackend("down", status=503) as backend, \
                proxy_for([backend.address], HOP_RETRIES) as inner:
            inner_addr = "%s:%d" % inner.addresses["web"]
            async with proxy_for([inner_addr], HOP_RETRIES) as outer:
                host, port = outer.addresses["web"]
                tally = await run_load(host, port, clients=4, seconds=1.5)
                n = tally.sent
                inner_saw = inner.stats()["http"]["web"]["requests"]
                report("two hops", offered=n, inner_saw=inner_saw, backend_saw=backend.requests,
                       ratio=f"{backend.requests / n:.3f}")
                assert n >= 200 and tally.by_status[503] == n
                assert inner_saw == n                      # the outer hop retried nothing
                assert backend.requests <= 1.3 * n

    asyncio.run(main())


# ---- 4. deadlines ------------------------------------------------------------------------------------------------

DEADLINE_HOP = "timeout = \"30s\"\noutlier = false\n"


def test_deadline_shrinks_across_two_hops_and_ends_in_504():
    """client -> outer -> tap -> inner -> backend (slow 2 s), the client sending fastmesh-timeout-ms: 500: the outer
    hop sends less than 500, the inner less again, and the client gets 504 `deadline exceeded` at about 0.5 s."""
    async def main():
        async with HttpBackend("slow") as backend, proxy_for([backend.address], DEADLINE_HOP) as inner:
            async with TapRelay(inner.addresses["web"]) as tap, proxy_for([tap.address], DEADLINE_HOP) as outer:
                c = client(outer)
                t0 = time.monotonic()
                r = await c.get("/slow?ms=2000", {"fastmesh-timeout-ms": "500"})
                elapsed = time.monotonic() - t0
                c.close()
                first = [int(v) for v in tap.header_values("fastmesh-timeout-ms")]
                second = [int(v) for req in backend.received for v in req.header_all("fastmesh-timeout-ms")]
                report("deadline two hops", client_sent=500, first_hop_sent=first, second_hop_sent=second,
                       elapsed=f"{elapsed:.3f}s", status=r.status, error=r.header("fastmesh-error"))
                assert r.status == 504 and r.header("fastmesh-error") == "deadline exceeded"
                assert r.header("fastmesh-retried") is not None
                assert len(first) == 1 and len(second) == 1
                assert 400 < second[0] < first[0] < 500
                assert 0.45 <= elapsed < 0.65

    asyncio.run(main())


def test_spent_deadline_is_never_sent_upstream():
    """fastmesh-timeout-ms: 0 from the client: 504 `deadline exceeded` at once, and the backend never sees it."""
    async def main():
        async with HttpBackend("b") as backend, proxy_for([backend.address]) as proxy:
            c = client(proxy)
            t0 = time.monotonic()
            r = await c.get("/echo", {"fastmesh-timeout-ms": "0"})
            elapsed = time.monotonic() - t0
            c.close()
            assert r.status == 504 and r.header("fastmesh-error") == "deadline exceeded"
            assert elapsed < 0.1
            assert backend.requests == 0

    asyncio.run(main())


def test_untrusted_listener_ignores_and_strips_the_client_deadline():
    """trust_headers = false: a client's 100 ms budget neither cuts a 300 ms answer short nor reaches the
    backend; the backend sees the proxy's own per-try budget instead (response_timeout = 5 s)."""
    async def main():
        async with HttpBackend("b") as backend, \
                proxy_for([backend.address], 'response_timeout = "5s"', "trust_headers = false") as proxy:
            c = client(proxy)
            r = await c.get("/slow?ms=300", {"fastmesh-timeout-ms": "100"})
            c.close()
            values = backend.received[0].header_all("fastmesh-timeout-ms")
            assert r.status == 200
            assert len(values) == 1 and 4900 <= int(values[0]) <= 5000, values

    asyncio.run(main())


# ---- 5. per-try and total timeouts --------------------------------------------------------------------------------

def test_per_try_timeout_moves_a_stuck_request_to_another_endpoint():
    """per_try_timeout 200 ms, retry on "timeout": a try on the 2 s endpoint is abandoned and the other
    endpoint answers, so every request gets 200 well under the slow endpoint's 2 s."""
    async def main():
        cluster = ('per_try_timeout = "200ms"\noutlier = false\nbalancer = "round_robin"\n'
                   'retries = { attempts = 2, on = ["timeout"] }\n')
        async with ChaosBackend("stuck", delay=2.0) as stuck, ChaosBackend("fast") as fast, \
                proxy_for([stuck.address, fast.address], cluster) as proxy:
            c = client(proxy)
            latencies = []
            for _ in range(6):
                t0 = time.monotonic()
                r = await c.get("/")
                latencies.append(time.monotonic() - t0)
                assert r.status == 200 and r.header("x-backend") == "fast"
            c.close()
            report("per-try timeout", stuck_tries=stuck.requests, fast_answers=fast.requests,
                   slowest=f"{max(latencies):.3f}s")
            assert stuck.requests >= 2                     # round robin did send tries there
            assert max(latencies) < 0.6                    # 200 ms try + tick + backoff, never the 2 s

    asyncio.run(main())


def test_total_timeout_includes_retries():
    """timeout 500 ms over tries of 200 ms on two stuck endpoints: 504 `deadline exceeded` at about 0.5 s,
    after more than one try."""
    async def main():
        cluster = ('timeout = "500ms"\nper_try_timeout = "200ms"\noutlier = false\n'
                   'retries = { attempts = 5, on = ["timeout"] }\n')
        async with ChaosBackend("a", delay=2.0) as a, ChaosBackend("b", delay=2.0) as b, \
                proxy_for([a.address, b.address], cluster) as proxy:
            c = client(proxy)
            t0 = time.monotonic()
            r = await c.get("/")
            elapsed = time.monotonic() - t0
            c.close()
            report("total timeout", elapsed=f"{elapsed:.3f}s", tries=a.requests + b.requests,
                   error=r.header("fastmesh-error"))
            assert r.status == 504 and r.header("fastmesh-error") == "deadline exceeded"
            assert a.requests + b.requests >= 2
            assert 0.45 <= elapsed < 0.65

    asyncio.run(main())
