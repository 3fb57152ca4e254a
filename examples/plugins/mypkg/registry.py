"""A discovery source: endpoints from an HTTP registry, polled (a JSON array of "ip:port" or {address, weight}).

    [clusters.web]
    discovery = { kind = "plugin", plugin = "mypkg.registry:HttpRegistry",
                  config = { url = "http://127.0.0.1:8500/services/web", interval = 0.5 } }

Each new answer replaces the cluster's endpoints in every worker; an unreachable registry or a bad answer raises,
which fastmesh logs and counts while the last good set stays (the watch is started again after a pause).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpRegistry:
    """Poll a registry URL; yield its endpoint list whenever it changes."""

    @dataclass
    class Config:
        url: str
        interval: float = 1.0         # seconds between polls

    def __init__(self, config: HttpRegistry.Config) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"

    async def fetch(self) -> Any:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {self.path} HTTP/1.1\r\nhost: {self.host}\r\nconnection: close\r\n\r\n".encode())
            answer = await reader.read()
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"registry answered {status}")
        return json.loads(body)

    async def watch(self) -> AsyncIterator[list[Any]]:
        last = None
        while True:
            endpoints = await self.fetch()
            if endpoints != last:
                last = endpoints
                yield endpoints
            await asyncio.sleep(self.config.interval)
