"""Active health checks end to end: real backends on 127.0.0.1, probed by a running Proxy, traffic through it."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import Backend, echo
from fastmesh._testbase.inproc import until
from fastmesh._testbase.net import free_port, free_ports
from fastmesh._testbase.scripted import ScriptedBackend

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0
CHECK = 'health_check = { path = "/healthz", interval = "100ms", timeout = "100ms", healthy = 2, unhealthy = 3 }'


class HealthBackend(ScriptedBackend):
    """An HTTP/1.1 server whose /healthz answers `health` (settable) and every other path 200 with its name."""

    def __init__(self, name: str) -> None:
        super().__init__(name, WAIT)
        self.health = 200
        self.hits: collections.Counter[str] = collections.Counter()   # requests per path
        self.host_headers: set[str] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            fields = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            self.hits[path] += 1
            if path == "/healthz":
                self.host_headers.add(fields.get("host", ""))
            status = self.health if path == "/healthz" else 200
            body = self.name.encode()
            close = fields.get("connection", "").lower() == "close"
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-backend: %s\r\n%s\r\n%s" % (
                status, len(body), body, b"connection: close\r\n" if close else b"", body))
            await writer.drain()
            if close:
                break


def config(endpoints: list[str], cluster_lines: str, protocol: str = "http") -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (f'drain_timeout = "200ms"\n'
            f'[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "{protocol}"\n'
            f'cluster = "web"\n'
            f'[clusters.web]\nendpoints = [{eps}]\n{cluster_lines}\n')


@contextlib.asynccontextmanager
async def proxied(endpoints: list[str], cluster_lines: str, protocol: str = "http") -> AsyncIterator[Proxy]:
    async with Proxy.from_toml(config(endpoints, cluster_lines, protocol)) as proxy:
        yield proxy


def endpoint(proxy: Proxy, i: int) -> dict:
    return proxy.stats()["clusters"]["web"][i]


def check_status(proxy: Proxy, i: int) -> dict:
    return proxy.stats()["health"]["web"][i]


async def spread(proxy: Proxy, count: int) -> collections.Counter[str]:
    """Send `count` requests through the proxy; which backend answered each."""
    host, port = proxy.addresses["in"]
    answered: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT, trust_env=False) as client:
        for _ in range(count):
            r = await client.get("/work")
            assert r.status_code == 200
            answered[r.headers["x-backend"]] += 1
    return answered


def test_failing_healthz_takes_the_endpoint_out_and_passing_brings_it_back(caplog):
    caplog.set_level(logging.INFO, logger="fastmesh.health")

    async def main():
        async with HealthBackend("a") as a, HealthBackend("b") as b, \
                proxied([a.address, b.address], CHECK + "\noutlier = false") as proxy:
            await until(lambda: a.hits["/healthz"] >= 2 and b.hits["/healthz"] >= 2)
            assert endpoint(proxy, 1)["healthy"] and (await spread(proxy, 10)) == {"a": 5, "b": 5}
            assert b.host_headers == {b.address}

            b.health = 503
            before = b.hits["/healthz"]
            await until(lambda: not endpoint(proxy, 1)["healthy"])
            assert b.hits["/healthz"] - before >= 3             # `unhealthy = 3` failed checks, not fewer
            e = endpoint(proxy, 1)
            assert (e["state"], e["eligible"]) == ("unhealthy", False)
            assert check_status(proxy, 1)["last"] == "status 503"
            assert await spread(proxy, 10) == {"a": 10}

            b.health = 200
            before = b.hits["/healthz"]
            await until(lambda: endpoint(proxy, 1)["healthy"])
            assert b.hits["/healthz"] - before >= 2             # `healthy = 2` passed checks
            assert (await spread(proxy, 10)) == {"a": 5, "b": 5}

    asyncio.run(main())
    down = [r.getMessage() for r in caplog.records if "unhealthy" in r.getMessage()]
    up = [r.getMessage() for r in caplog.records if r.getMessage().endswith("healthy: 2 passed checks")]
    assert len(down) == 1 and down[0].endswith("unhealthy: 3 failed checks (status 503)"), down
    assert len(up) == 1, up


def test_expected_statuses_decide_what_passes():
    async def main():
        async with HealthBackend("a") as a, \
                proxied([a.address], 'health_check = { path = "/healthz", interval = "100ms", timeout = "100ms", '
                                     'unhealthy = 1, expected_statuses = [204] }') as proxy:
            await until(lambda: not endpoint(proxy, 0)["healthy"])   # 200 is not in [204]
            assert check_status(proxy, 0)["last"] == "status 200"
            a.health = 204
            await until(lambda: endpoint(proxy, 0)["healthy"])

    asyncio.run(main())


def test_tcp_check_on_a_closed_port_marks_it_down():
    async def main():
        live = await Backend(echo).start()
        dead = f"127.0.0.1:{free_ports(1)[0]}"
        try:
            check = 'health_check = { type = "tcp", interval = "100ms", timeout = "100ms", unhealthy = 2 }'
            async with proxied([live.address, dead], check + "\noutlier = false", protocol="tcp") as proxy:
                await until(lambda: not endpoint(proxy, 1)["healthy"])
                assert endpoint(proxy, 0)["healthy"]
                assert check_status(proxy, 1)["last"] == "connection refused"
                assert check_status(proxy, 0)["last"] == "ok"
                assert endpoint(proxy, 1)["state"] == "unhealthy"
                # Relayed connections all go to the live endpoint: no connect is even tried on the dead one.
                host, port = proxy.addresses["in"]
                for _ in range(6):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(b"ping")
                    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
                    writer.close()
                assert endpoint(proxy, 1)["connect_failures"] == 0
        finally:
            await live.stop()

    asyncio.run(main())


def test_check_timeout_is_a_failure():
    async def main():
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)             # accepts, reads nothing, never answers

        async with HealthBackend("a") as a:
            slow = await asyncio.start_server(silent, "127.0.0.1", 0)
            try:
                address = "127.0.0.1:%d" % slow.sockets[0].getsockname()[1]
                check = 'health_check = { path = "/healthz", interval = "100ms", timeout = "50ms", unhealthy = 2 }'
                async with proxied([a.address, address], check) as proxy:
                    await until(lambda: not endpoint(proxy, 1)["healthy"])
                    assert check_status(proxy, 1)["last"] == "timeout"
                    assert endpoint(proxy, 0)["healthy"]
            finally:
                slow.close()
                for writer in held:
                    writer.transport.abort()

    asyncio.run(main())
