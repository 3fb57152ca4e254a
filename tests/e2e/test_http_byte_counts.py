"""Bytes an http listener counts are the bytes on the client's connection: a request's head and body in, the
answer's head and body out (the listener's counters behind fastmesh_downstream_*_bytes_total, and the access log's
bytes_in / bytes_out), for answers relayed from an endpoint and for fastmesh's own.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import web_config
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(60)


async def exchange(port: int, request: bytes) -> bytes:
    """Send request on a new connection and return every byte that came back until the proxy closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def logged(path: Path, count: int) -> list[dict]:
    for _ in range(250):
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} access-log lines")


def test_a_relayed_answer_counts_its_head_and_body_both_ways(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        async with HttpBackend("a") as backend, Proxy.from_toml(web_config(
                [backend.address], listener=f'access_log = {{ path = "{log}", format = "json" }}')) as proxy:
            port = proxy.addresses["web"][1]
            request = (b"POST /echo HTTP/1.1\r\nHost: bytes.test\r\nContent-Length: 5\r\n"
                       b"Connection: close\r\n\r\nhello")
            answer = await exchange(port, request)
            assert answer.startswith(b"HTTP/1.1 200 ")
            stats = proxy.stats()["http"]["web"]
            assert (stats["bytes_in"], stats["bytes_out"]) == (len(request), len(answer))
            [record] = await logged(log, 1)
            assert (record["bytes_in"], record["bytes_out"]) == (len(request), len(answer))

    asyncio.run(main())


def test_fastmesh_s_own_answer_is_counted_in_the_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        dead = f"127.0.0.1:{free_port()}"        # nothing listens: fastmesh answers 502 itself
        async with Proxy.from_toml(web_config(
                [dead], listener=f'access_log = {{ path = "{log}", format = "json" }}')) as proxy:
            request = b"GET / HTTP/1.1\r\nHost: bytes.test\r\nConnection: close\r\n\r\n"
            answer = await exchange(proxy.addresses["web"][1], request)
            assert answer.startswith(b"HTTP/1.1 50")
            [record] = await logged(log, 1)
            assert (record["bytes_in"], record["bytes_out"]) == (len(request), len(answer))

    asyncio.run(main())
