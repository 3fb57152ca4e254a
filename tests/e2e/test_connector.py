"""The upstream connector is one for every protocol: a TCP relay and an HTTP request that meet the same dead
endpoints fail over and give up the same way, and count it the same (cluster retries and failures)."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.inproc import no_connection_left
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)


def config(dead: str) -> str:
    return (f'drain_timeout = "500ms"\n'
            f'[[listeners]]\nname = "tcp"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "tcp"\ncluster = "t"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\ncluster = "h"\n'
            f'[clusters.t]\nendpoints = ["{dead}"]\nconnect_attempts = 2\n'
            f'[clusters.h]\nendpoints = ["{dead}"]\nconnect_attempts = 2\n')


def test_tcp_and_http_count_failover_and_giving_up_the_same() -> None:
    async def main() -> None:
        dead = f"127.0.0.1:{free_port()}"
        async with Proxy.from_toml(config(dead)) as proxy:
            host, port = proxy.addresses["tcp"]
            reader, writer = await asyncio.open_connection(host, port)
            assert await asyncio.wait_for(reader.read(), 5) == b""     # no endpoint took it: closed
            writer.close()
            host, port = proxy.addresses["web"]
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5, trust_env=False) as c:
                r = await c.get("/")
            assert r.status_code == 503 and r.headers["fastmesh-error"] == "connect refused"
            counts = {name: proxy._clusters[name].counts for name in ("t", "h")}
            # Two connects each (connect_attempts = 2): the second is a retry, then the walk gives up.
            assert counts["t"]["retries"] == counts["h"]["retries"] == 1, counts
            assert counts["t"]["failed"] == counts["h"]["failed"] == 1, counts
            failures = {name: [e["connect_failures"] for e in proxy._clusters[name].endpoints()] for name in "th"}
            assert failures == {"t": [2], "h": [2]}
            await no_connection_left(proxy)

    asyncio.run(main())
