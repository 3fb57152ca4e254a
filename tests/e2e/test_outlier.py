"""Outlier ejection end to end: HTTP through a running Proxy to backends on 127.0.0.1 that answer 5xx."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.inproc import until
from fastmesh._testbase.net import free_port
from fastmesh._testbase.scripted import ScriptedBackend

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0


class StatusBackend(ScriptedBackend):
    """An HTTP/1.1 keep-alive server answering every request with `status` and its name in x-backend."""

    def __init__(self, name: str, status: int) -> None:
        super().__init__(name, WAIT)
        self.status = status
        self.hits = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")       # GET only: no body to read
            self.hits += 1
            body = self.name.encode()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-backend: %s\r\n\r\n%s"
                         % (self.status, len(body), body, body))
            await writer.drain()


def config(endpoints: list[str], outlier: str) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (f'drain_timeout = "200ms"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\ncluster = "web"\n'
            f'[clusters.web]\nendpoints = [{eps}]\noutlier = {outlier}\n')


@contextlib.asynccontextmanager
async def proxied(endpoints: list[str], outlier: str) -> AsyncIterator[tuple[Proxy, httpx.AsyncClient]]:
    async with Proxy.from_toml(config(endpoints, outlier)) as proxy:
        host, port = proxy.addresses["web"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT, trust_env=False) as client:
            yield proxy, client


def endpoint(proxy: Proxy, i: int) -> dict:
    return proxy.stats()["clusters"]["web"][i]


async def send(client: httpx.AsyncClient, count: int) -> collections.Counter[str]:
    """`count` requests in turn; which backend answered each (503s from the backend are passed on as they are)."""
    answered: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        r = await client.get("/")
        assert "fastmesh-error" not in r.headers, r.headers
        answered[r.headers["x-backend"]] += 1
    return answered


async def send_until(client: httpx.AsyncClient, done: Callable[[], bool], limit: int = 40) -> None:
    for _ in range(limit):
        if done():
            return
        await send(client, 1)
    assert done(), "condition not reached"


def test_endpoint_answering_503_is_ejected_readmitted_and_ejected_again_for_longer():
    async def main():
        outlier = ('{ consecutive_failures = 5, base_ejection = "1s", max_ejection = "10s", '
                   'max_ejected_percent = 50 }')
        async with StatusBackend("good", 200) as good, StatusBackend("bad", 503) as bad, \
                proxied([good.address, bad.address], outlier) as (proxy, client):
            await send_until(client, lambda: bad.hits == 4)
            assert not endpoint(proxy, 1)["ejected"]
            await send_until(client, lambda: bad.hits == 5)   # the fifth 503 in a row ejects it
            now = time.monotonic()
            e = endpoint(proxy, 1)
            assert e["ejected"] and e["state"] == "ejected" and e["ejections"] == 1
            assert 0.75 <= e["ejected_until"] - now <= 1.2                  # 1 s +-20%
            assert await send(client, 10) == {"good": 10}                   # no traffic while ejected
            assert bad.hits == 5

            await until(lambda: not endpoint(proxy, 1)["ejected"], timeout=3.0)
            await send_until(client, lambda: bad.hits == 6, limit=4)       # the trial request
            now = time.monotonic()
            e = endpoint(proxy, 1)
            assert e["ejected"] and e["ejections"] == 2                     # one failed trial: out again
            assert 1.55 <= e["ejected_until"] - now <= 2.4                  # 2 s +-20%
            assert await send(client, 6) == {"good": 6}
            assert endpoint(proxy, 0)["ejections"] == 0 and not endpoint(proxy, 0)["ejected"]

    asyncio.run(main())


def test_max_ejected_percent_keeps_half_of_two_failing_endpoints():
    async def main():
        outlier = '{ consecutive_failures = 5, base_ejection = "30s", max_ejected_percent = 50 }'
        async with StatusBackend("a", 503) as a, StatusBackend("b", 503) as b, \
                proxied([a.address, b.address], outlier) as (proxy, client):
            await send(client, 30)
            ejected = [endpoint(proxy, i)["ejected"] for i in range(2)]
            assert sorted(ejected) == [False, True]                          # only one of the two at 50%
            kept = (a, b)[ejected.index(False)]
            before = kept.hits
            answered = await send(client, 10)
            assert answered == {kept.name: 10} and kept.hits == before + 10  # the other still serves

    asyncio.run(main())


def test_outlier_false_keeps_a_failing_endpoint_in():
    async def main():
        async with StatusBackend("good", 200) as good, StatusBackend("bad", 503) as bad, \
                proxied([good.address, bad.address], "false") as (proxy, client):
            assert await send(client, 20) == {"good": 10, "bad": 10}
            assert not endpoint(proxy, 1)["ejected"]

    asyncio.run(main())
