"""Resilience end to end, part 2: where load goes (peak EWMA, consistent hashing, slow start) and circuit breakers.
Real backends on 127.0.0.1, the Proxy on the test's loop. Run with `-s` to see the measured numbers.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from fastmesh._testbase.chaos import ChaosBackend, Client, Tally, run_load
from tests.e2e.test_resilience import client, endpoint_state, proxy_for, report, wait_for

pytestmark = pytest.mark.timeout(60)


def find_counter(tree: object, name: str) -> int | None:
    """The first number stored under key `name` anywhere in a stats tree, or None when stats() has no such key."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == name and isinstance(value, int):
                return value
            found = find_counter(value, name)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for item in tree:
            found = find_counter(item, name)
            if found is not None:
                return found
    return None


# ---- 6. peak EWMA ---------------------------------------------------------------------------------------------

def test_ewma_moves_load_away_from_a_slower_endpoint():
    """Three endpoints, one 50 ms slower per answer: under 8 clients it gets far less than its third."""
    async def main():
        backends = [await ChaosBackend(name, delay=delay).start()
                    for name, delay in (("fast-0", 0.0), ("slow", 0.05), ("fast-1", 0.0))]
        try:
            async with proxy_for([b.address for b in backends], 'balancer = "ewma"') as proxy:
                host, port = proxy.addresses["web"]
                tally = await run_load(host, port, clients=8, seconds=2.0)
                share = tally.by_backend["slow"] / tally.ok
                report("ewma", sent=tally.sent, answered_by=dict(tally.by_backend), slow_share=f"{share:.3f}")
                assert tally.failed == 0 and tally.ok > 300
                assert share < 1 / 6                       # half of a fair share, at most
                assert tally.by_backend["slow"] > 0        # still sampled now and then
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_ewma_does_not_park_every_client_on_an_endpoint_that_just_slowed_down():
    """Without per-try timeouts, 40 clients: one endpoint turns slow (2 s) while another starts resetting every
    connection (and stays in: outlier ejection off, as when max_ejected_percent is reached); most clients must
    keep being served by the two fast endpoints meanwhile."""
    async def main():
        names = ("fast-0", "slowed", "resetting", "fast-1")
        backends = [await ChaosBackend(name).start() for name in names]
        fast0, slowed, resetting, fast1 = backends
        try:
            cluster = ('balancer = "ewma"\noutlier = false\nretries = { attempts = 3, on = ["reset"] }\n'
                       'limits = { max_retries = 40 }\n')
            async with proxy_for([b.address for b in backends], cluster) as proxy:
                host, port = proxy.addresses["web"]
                window: dict[str, int] = {}

                async def chaos() -> None:
                    await asyncio.sleep(0.3)
                    slowed.delay = 2.0
                    resetting.resets_left = -1
                    before = fast0.requests + fast1.requests
                    await asyncio.sleep(1.0)
                    window["fast"] = fast0.requests + fast1.requests - before
                    window["parked"] = proxy.stats()["clusters"]["web"][1]["active"]

                tally, _ = await asyncio.gather(run_load(host, port, clients=40, seconds=1.5, timeout=5.0), chaos())
                report("ewma herd", fast_answers_in_1s=window["fast"], parked_on_slowed=window["parked"],
                       failed=tally.failed)
                assert tally.failed == 0
                # Peak EWMA learns of the slowness only from the first slow answer: until then some clients park
                # there (about 10 of 40 when nothing else happens), but not nearly all of them.
                assert window["parked"] <= 25
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def shares_of(tally, names: list[str], start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
    """Each backend's share of the answers that arrived between start and end (time.monotonic())."""
    got = [b for t, b in tally.answered_at if start <= t < end]
    return {name: got.count(name) / max(1, len(got)) for name in names}


def test_ewma_cold_start_behind_health_checks_shares_fairly():
    """Three equal endpoints behind active health checks, 16 clients at about 150 req/s from the start: each gets
    at least 15% of the first 4 s (before: the endpoints measured first left the third on its 30 ms placeholder,
    with no request at all for 5 to 30 s). Latency-weighted shares of equal endpoints wander: the smallest of
    the three was 0.23 to 0.31 in 15 quiet runs and 0.19 once beside the whole suite, so the line is drawn well
    below a fair third and far above the starvation this test is for."""
    async def main():
        names = ["b0", "b1", "b2"]
        backends = [await ChaosBackend(name).start() for name in names]
        try:
            cluster = 'balancer = "ewma"\nhealth_check = { path = "/healthz", interval = "1s" }\n'
            async with proxy_for([b.address for b in backends], cluster) as proxy:
                host, port = proxy.addresses["web"]
                tally = Tally()

                async def paced(k: int) -> None:
                    """Client k joins k / 150 s in, as clients of a service coming up would."""
                    await asyncio.sleep(k / 150)
                    await run_load(host, port, clients=1, seconds=4.0 - k / 150, pause=16 / 150, tally=tally)
                await asyncio.gather(*(paced(k) for k in range(16)))
                got = shares_of(tally, names)
                report("ewma cold start", answers=tally.ok, shares={k: f"{v:.3f}" for k, v in got.items()})
                assert tally.failed == 0 and tally.ok > 200
                assert min(got.values()) >= 0.15, got
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_ewma_endpoint_joining_under_load_gets_its_share():
    """Two keep-alive clients going back to back on two endpoints; the third, equal one comes up: over the next
    2.5 s each endpoint gets at least 20%."""
    async def main():
        names = ["b0", "b1", "late"]
        backends = [await ChaosBackend(name).start() for name in names]
        late = backends[2]
        try:
            async with proxy_for([b.address for b in backends], 'balancer = "ewma"\noutlier = false\n') as proxy:
                host, port = proxy.addresses["web"]
                await late.kill()
                marks: dict[str, float] = {}

                async def chaos() -> None:
                    await wait_for(lambda: not endpoint_state(proxy, 2)["eligible"])
                    await asyncio.sleep(0.5)
                    await late.revive()
                    await wait_for(lambda: endpoint_state(proxy, 2)["state"] == "up", 5.0)
                    marks["up"] = time.monotonic()

                tally, _ = await asyncio.gather(run_load(host, port, clients=2, seconds=6.0), chaos())
                got = shares_of(tally, names, marks["up"], marks["up"] + 2.5)
                report("ewma join", shares={k: f"{v:.3f}" for k, v in got.items()}, failed=tally.failed)
                assert marks["up"] + 2.5 < tally.answered_at[-1][0]
                assert min(got.values()) >= 0.2, got
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_ewma_low_concurrency_is_fair():
    """One client going back to back over three equal endpoints: each gets at least 20% of 3 s."""
    async def main():
        names = ["b0", "b1", "b2"]
        backends = [await ChaosBackend(name).start() for name in names]
        try:
            async with proxy_for([b.address for b in backends], 'balancer = "ewma"') as proxy:
                host, port = proxy.addresses["web"]
                tally = await run_load(host, port, clients=1, seconds=3.0)
                got = shares_of(tally, names)
                report("ewma one client", answers=tally.ok, shares={k: f"{v:.3f}" for k, v in got.items()})
                assert tally.failed == 0 and tally.ok > 300
                assert min(got.values()) >= 0.2, got
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_ewma_endpoint_fast_again_after_a_slow_spell_is_back_within_10s():
    """Eight clients; one endpoint answers in 2 s for 3 s, then as fast as the others: while slow it gets almost
    nothing, and 10 s after it is fast again it has at least 20% (before: about a minute at ~0%)."""
    async def main():
        names = ["b0", "spell", "b2"]
        backends = [await ChaosBackend(name).start() for name in names]
        spell = backends[1]
        try:
            async with proxy_for([b.address for b in backends], 'balancer = "ewma"\noutlier = false\n') as proxy:
                host, port = proxy.addresses["web"]
                marks: dict[str, float] = {}

                async def chaos() -> None:
                    await asyncio.sleep(0.5)
                    spell.delay = 2.0
                    marks["slow"] = time.monotonic()
                    await asyncio.sleep(3.0)
                    spell.delay = 0.0
                    marks["fast"] = time.monotonic()

                tally, _ = await asyncio.gather(run_load(host, port, clients=8, seconds=14.0, pause=0.002,
                                                         timeout=5.0), chaos())
                during = shares_of(tally, names, marks["slow"] + 1.0, marks["fast"])
                after = shares_of(tally, names, marks["fast"] + 8.0, marks["fast"] + 10.0)
                report("ewma slow spell", during=f"{during['spell']:.3f}", after=f"{after['spell']:.3f}",
                       failed=tally.failed)
                assert tally.failed == 0
                assert during["spell"] < 0.05, during
                assert after["spell"] >= 0.2, after
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


# ---- 7. consistent hashing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("balancer", ["ring_hash", "maglev"])
def test_hash_key_pins_users_and_survives_losing_an_endpoint(balancer):
    """x-user keyed: every request of a user reaches the same endpoint; after one of 10 endpoints is killed,
    >= 90% of the users on the other nine stay where they were, and the dead one's users are still served."""
    async def main():
        backends = [await ChaosBackend(f"b{i}").start() for i in range(10)]
        users = [f"user-{i}" for i in range(300)]
        try:
            cluster = f'balancer = "{balancer}"\nhash_key = "header:x-user"\noutlier = false\n'
            async with proxy_for([b.address for b in backends], cluster) as proxy:
                host, port = proxy.addresses["web"]

                async def placement() -> dict[str, str]:
                    """user -> the backend that answered; 10 clients, each user asked once."""
                    out: dict[str, str] = {}

                    async def worker(mine: list[str]) -> None:
                        c = Client(host, port)
                        for user in mine:
                            r = await c.get("/", {"x-user": user})
                            assert r.status == 200, (r.status, r.headers)
                            out[user] = r.header("x-backend") or "-"
                        c.close()
                    await asyncio.gather(*(worker(users[i::10]) for i in range(10)))
                    return out

                before = await placement()
                again = await placement()
                assert again == before                    # sticky
                assert len(set(before.values())) >= 8     # and spread (300 users over 10 endpoints)
                victim = backends[3]
                await victim.kill()
                after = await placement()
                stayed = [u for u in users if before[u] != victim.name]
                kept = sum(after[u] == before[u] for u in stayed) / len(stayed)
                moved_off_victim = [after[u] for u in users if before[u] == victim.name]
                report(f"{balancer}", users=len(users), on_victim=len(moved_off_victim),
                       kept_on_surviving=f"{kept:.3f}",
                       kept_overall=f"{sum(after[u] == before[u] for u in users) / len(users):.3f}")
                assert kept >= 0.9
                assert victim.name not in moved_off_victim
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


# ---- 8. circuit breakers ----------------------------------------------------------------------------------------

def test_max_requests_refuses_at_once_and_recovers():
    """limits.max_requests = 2 with a backend taking 0.5 s: the third request in flight gets 503 `overloaded`
    without waiting; once the two are answered, requests pass again."""
    async def main():
        async with ChaosBackend("slow", delay=0.5) as backend, \
                proxy_for([backend.address], "limits = { max_requests = 2 }\noutlier = false") as proxy:
            first, second, third, later = (client(proxy) for _ in range(4))
            busy = [asyncio.ensure_future(c.get("/")) for c in (first, second)]
            await wait_for(lambda: backend.requests == 2)
            t0 = time.monotonic()
            r = await third.get("/")
            refused_in = time.monotonic() - t0
            assert r.status == 503 and r.header("fastmesh-error") == "overloaded", r.headers
            assert r.header("fastmesh-retried") is not None
            assert refused_in < 0.1
            assert [x.status for x in await asyncio.gather(*busy)] == [200, 200]
            assert (await later.get("/")).status == 200
            overloaded = find_counter(proxy.stats(), "overloaded")
            report("max_requests", refused_in=f"{refused_in * 1000:.1f}ms", backend_saw=backend.requests,
                   overloaded_counter=overloaded)
            assert backend.requests == 3                  # the refused one never reached it
            if overloaded is not None:                    # proxy.stats() does not expose it yet
                assert overloaded >= 1
            for c in (first, second, third, later):
                c.close()

    asyncio.run(main())


def test_max_connections_queues_up_to_max_pending_then_refuses():
    """limits { max_connections = 1, max_pending = 1 }, a backend taking 0.3 s: the first request takes the only
    connection, the second waits for it, the third is refused at once; the waiting one is served after the
    first, over the same connection."""
    async def main():
        cluster = "limits = { max_connections = 1, max_pending = 1 }\noutlier = false"
        async with ChaosBackend("slow", delay=0.3) as backend, proxy_for([backend.address], cluster) as proxy:
            a, b, c = (client(proxy) for _ in range(3))
            t0 = time.monotonic()
            first = asyncio.ensure_future(a.get("/"))
            await wait_for(lambda: backend.requests == 1)
            second = asyncio.ensure_future(b.get("/"))
            await asyncio.sleep(0.05)                     # the second is queued by now (nothing else to do)
            r = await c.get("/")
            refused_at = time.monotonic() - t0
            assert r.status == 503 and r.header("fastmesh-error") == "overloaded", r.headers
            assert refused_at < 0.25                      # before the first answer: not queued
            r1, r2 = await asyncio.gather(first, second)
            second_at = time.monotonic() - t0
            report("max_connections", refused_at=f"{refused_at:.3f}s", queued_answered_at=f"{second_at:.3f}s",
                   connections=backend.connections)
            assert r1.status == 200 and r2.status == 200
            assert second_at >= 0.55                      # it waited for the first to finish
            assert backend.connections == 1 and backend.requests == 2
            for x in (a, b, c):
                x.close()

    asyncio.run(main())


# ---- 9. slow start ----------------------------------------------------------------------------------------------

def test_slow_start_ramps_a_recovered_endpoint_up():
    """Two endpoints, slow_start 2 s: one is killed and revived; in its first half second back it gets a small
    share (weight from 10%), two seconds later about half again."""
    async def main():
        steady, flaky = await ChaosBackend("steady").start(), await ChaosBackend("flaky").start()
        try:
            cluster = 'balancer = "round_robin"\nslow_start = "2s"\noutlier = false\n'
            async with proxy_for([steady.address, flaky.address], cluster) as proxy:
                host, port = proxy.addresses["web"]
                marks: dict[str, float] = {}

                async def chaos() -> None:
                    await asyncio.sleep(0.3)
                    await flaky.kill()
                    await wait_for(lambda: not proxy.stats()["clusters"]["web"][1]["eligible"])
                    await flaky.revive()
                    await wait_for(lambda: proxy.stats()["clusters"]["web"][1]["state"] == "up", 3.0)
                    marks["up"] = time.monotonic()

                tally, _ = await asyncio.gather(run_load(host, port, clients=4, seconds=4.0, pause=0.002), chaos())
                up = marks["up"]

                def share(start: float, end: float) -> tuple[float, int]:
                    names = [b for t, b in tally.answered_at if up + start <= t < up + end]
                    return (names.count("flaky") / len(names) if names else 0.0), len(names)

                early, n_early = share(0.0, 0.5)
                late, n_late = share(2.0, 2.8)
                report("slow start", share_first_500ms=f"{early:.3f}", answers=n_early,
                       share_after_2s=f"{late:.3f}", answers_late=n_late, failed=tally.failed)
                assert tally.failed == 0
                assert n_early > 50 and n_late > 50
                assert early < 0.3
                assert late > 0.4
        finally:
            await steady.stop()
            await flaky.stop()

    asyncio.run(main())
