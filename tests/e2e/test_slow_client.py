"""A client slow to send its request body, end to end: its own clocks (body_timeout, idle_timeout) answer 408
and close; the upstream's response clock runs only while the upstream owes something; and nothing the client
causes counts against an endpoint (outlier ejection, latency estimates, retries).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend, Response, read_response
from fastmesh._testbase.inproc import no_connection_left, web_config

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


@contextlib.asynccontextmanager
async def proxied(endpoints: list[str], *, listener: str = "", cluster: str = "") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(web_config(endpoints, listener=listener, cluster=cluster)) as proxy:
        yield proxy
        await no_connection_left(proxy)


@dataclasses.dataclass
class Trickled:
    response: Response | None      # what came back (None: the connection closed without an answer)
    sent: int                      # body bytes the client had sent when the answer came
    elapsed: float                 # seconds from the head to the answer
    silent_for: float              # seconds from the client's last byte to the answer
    closed: bool                   # the proxy closed the connection after the answer


async def trickle(proxy: Proxy, path: str, body: bytes, interval: float, *, stop_after: int | None = None
                  ) -> Trickled:
    """POST `body` to `path` one byte every `interval` seconds (only `stop_after` bytes, then silence), while
    watching for an answer; stop sending as soon as one comes."""
    host, port = proxy.addresses["web"]
    reader, writer = await asyncio.open_connection(host, port)
    t0 = last = time.monotonic()
    writer.write(b"POST %s HTTP/1.1\r\nHost: slow.test\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body)))
    answer = asyncio.ensure_future(read_response(reader))
    sent = 0
    limit = len(body) if stop_after is None else stop_after
    try:
        while sent < limit and not answer.done():
            await asyncio.wait([answer], timeout=interval)
            if answer.done():
                break
            writer.write(body[sent:sent + 1])
            sent += 1
            last = time.monotonic()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await asyncio.wait_for(asyncio.shield(answer), WAIT)
        response = answer.result() if answer.done() and answer.exception() is None else None
        elapsed = time.monotonic() - t0
        silent_for = time.monotonic() - last
        try:
            closed = await asyncio.wait_for(reader.read(), 2.0) == b""
        except ConnectionError:
            closed = True
        except (TimeoutError, asyncio.TimeoutError):
            closed = False                 # still open: a keep-alive connection waiting for the next request
        return Trickled(response, sent, elapsed, silent_for, closed)
    finally:
        answer.cancel()
        writer.close()


def endpoints_unblamed(proxy: Proxy) -> None:
    for e in proxy.stats()["clusters"]["web"]:
        assert (e["state"], e["ejected"], e["ejections"], e["consecutive_failures"]) == ("up", False, 0, 0), e


def test_slow_bodies_get_408_and_leave_both_endpoints_up():
    """Twelve clients sending a 100-byte body at one byte a second, against two endpoints with outlier ejection
    at its defaults (5 consecutive failures): each gets 408 when body_timeout ends, none is retried, and both
    endpoints stay up and unblamed."""
    async def main():
        async with HttpBackend("a") as a, HttpBackend("b") as b, \
                proxied([a.address, b.address], listener='body_timeout = "2s"') as proxy:
            results = await asyncio.gather(*(trickle(proxy, "/echo", b"x" * 100, 1.0) for _ in range(12)))
            answers = collections.Counter(
                (r.response.status, r.response.header("fastmesh-error")) if r.response else None for r in results)
            print(f"\nslowbody: 12 clients at 1 byte/s, body_timeout 2s: {dict(answers)} after "
                  f"{min(r.elapsed for r in results):.2f}-{max(r.elapsed for r in results):.2f} s, "
                  f"endpoints {[e['state'] for e in proxy.stats()['clusters']['web']]}")
            assert answers == {(408, "body timeout"): 12}
            for r in results:
                assert r.response is not None and r.response.header("connection") == "close" and r.closed
                assert 1.8 < r.elapsed < 6.0 and r.sent <= 6, (r.elapsed, r.sent)
            endpoints_unblamed(proxy)
            assert proxy.stats()["pools"]["web"]["retried"] == 0
            assert proxy.stats()["http"]["web"]["responses"]["5xx"] == 0
            # Both endpoints still take traffic.
            seen = set()
            for _ in range(4):
                r = await trickle(proxy, "/echo", b"ok", 0.0)
                assert r.response is not None and r.response.status == 200
                seen.add(r.response.json()["backend"])
            assert seen == {"a", "b"}

    asyncio.run(main())


def test_response_timeout_starts_once_the_request_is_sent():
    """A body trickling in for longer than response_timeout still gets its answer: the upstream's clock starts
    when it has the whole request. One failure would eject the endpoint here, and none is counted."""
    async def main():
        async with HttpBackend("a") as a, \
                proxied([a.address], cluster='response_timeout = "1s"\noutlier = { consecutive_failures = 1 }') \
                as proxy:
            r = await trickle(proxy, "/echo", b"trickled!", 0.3)
            assert r.response is not None, r
            assert r.response.status == 200 and r.response.json()["body"] == "trickled!", r.response
            assert r.elapsed > 2.4 and not r.closed
            endpoints_unblamed(proxy)
            # The upstream's own slowness is still its own: 504 after the (whole-request) response timeout.
            r = await trickle(proxy, "/slow?ms=3000", b"", 0.0)
            assert r.response is not None and r.response.status == 504
            assert r.response.header("fastmesh-error") == "response timeout"
            assert proxy.stats()["clusters"]["web"][0]["consecutive_failures"] >= 1

    asyncio.run(main())


def test_deadline_running_out_while_the_body_arrives_is_the_client_s():
    """The request's own deadline (`timeout`) ends while the client still owes body bytes: 408, not 504 (which a
    fastmesh hop further up would count against this one), and nothing is counted against the endpoint."""
    async def main():
        async with HttpBackend("a") as a, \
                proxied([a.address], cluster='timeout = "1s"\noutlier = { consecutive_failures = 1 }') as proxy:
            r = await trickle(proxy, "/echo", b"x" * 20, 0.3)
            assert r.response is not None and r.response.status == 408, r
            assert r.response.header("fastmesh-error") == "body timeout"
            assert r.response.header("fastmesh-retried") is None
            assert r.closed and 0.8 < r.elapsed < 4.0, r
            endpoints_unblamed(proxy)

    asyncio.run(main())


def test_silence_within_a_body_is_bounded_by_idle_timeout():
    """With no limit on the whole body (body_timeout = "0s"), a client may send slowly but not fall silent:
    after idle_timeout without a byte, 408. Steady bytes, however slow, keep it going."""
    async def main():
        async with HttpBackend("a") as a, \
                proxied([a.address], listener='body_timeout = "0s"\nidle_timeout = "1s"',
                        cluster="outlier = { consecutive_failures = 1 }") as proxy:
            steady, stalled = await asyncio.gather(
                trickle(proxy, "/echo", b"steady", 0.4),
                trickle(proxy, "/echo", b"stalled", 0.1, stop_after=3))
            assert steady.response is not None and steady.response.status == 200, steady
            assert steady.response.json()["body"] == "steady" and steady.elapsed > 2.0
            assert stalled.response is not None and stalled.response.status == 408, stalled
            assert stalled.response.header("fastmesh-error") == "body timeout" and stalled.closed
            assert 0.8 < stalled.silent_for < 4.0, stalled.silent_for
            endpoints_unblamed(proxy)

    asyncio.run(main())


def test_slow_body_is_not_counted_as_endpoint_latency():
    """Peak EWMA judges an endpoint by how long it takes to answer, not by how long a client takes to send:
    requests whose bodies took over a second to arrive leave the latency estimate where the backend put it."""
    async def main():
        async with HttpBackend("a") as a, HttpBackend("b") as b, \
                proxied([a.address, b.address], cluster='balancer = "ewma"') as proxy:
            results = await asyncio.gather(*(trickle(proxy, "/echo", b"abcde", 0.3) for _ in range(4)))
            assert all(r.response is not None and r.response.status == 200 for r in results), results
            assert min(r.elapsed for r in results) > 1.2
            latencies = [e["latency_ms"] for e in proxy.endpoint_details(["web"])["web"]]
            assert all(ms is not None and ms < 500 for ms in latencies), latencies
            endpoints_unblamed(proxy)

    asyncio.run(main())


def test_early_answer_to_a_slow_body_is_passed_on_and_the_connection_closed():
    """The upstream answers before the body is complete (here 413, without reading it): the client gets that
    answer at once, not a 408, and the connection closes (the rest of the body cannot be told from a next
    request). Nothing is blamed on the endpoint."""
    async def main():
        async with HttpBackend("a") as a, \
                proxied([a.address], listener='body_timeout = "2s"', cluster="outlier = { consecutive_failures = 1 }"
                        ) as proxy:
            r = await trickle(proxy, "/continue?status=413", b"x" * 100, 0.2)
            assert r.response is not None and r.response.status == 413 and r.response.body == b"refused\n"
            assert r.closed and r.elapsed < 1.5 and r.sent < 10, r
            endpoints_unblamed(proxy)

    asyncio.run(main())


def test_upstream_not_reading_a_fast_body_is_still_its_failure():
    """The client has sent all it can and the upstream takes none of it: the upstream's clock runs (504
    response timeout, counted against the endpoint), not the client's."""
    async def main():
        async with HttpBackend("sink") as backend, \
                proxied([backend.address], listener='body_timeout = "30s"', cluster='per_try_timeout = "1s"') \
                as proxy:
            host, port = proxy.addresses["web"]
            sock = socket.create_connection((host, port))
            sock.setblocking(False)
            sock.sendall(b"POST /sink?hash=0&wait_ms=30000 HTTP/1.1\r\nHost: up.test\r\n"
                         b"Content-Length: %d\r\n\r\n" % (1 << 30))
            t0 = time.monotonic()
            block = b"u" * 65536
            try:
                while time.monotonic() - t0 < WAIT:
                    if proxy.stats()["http"]["web"]["responses"]["5xx"]:
                        break
                    with contextlib.suppress(BlockingIOError):
                        sock.send(block)
                    await asyncio.sleep(0.01)
            except ConnectionError:
                pass                        # the proxy answered and closed under the upload
            elapsed = time.monotonic() - t0
            sock.close()
            assert proxy.stats()["http"]["web"]["responses"]["5xx"] == 1
            assert proxy.stats()["http"]["web"]["responses"]["4xx"] == 0
            assert 0.8 < elapsed < 6.0, elapsed
            assert proxy.stats()["clusters"]["web"][0]["consecutive_failures"] == 1

    asyncio.run(main())
