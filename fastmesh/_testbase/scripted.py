"""A base for test backends that answer in their own handle(): a TCP server on 127.0.0.1 as an async context."""
from __future__ import annotations

import asyncio
from typing import Self


class ScriptedBackend:
    """A TCP server on a free 127.0.0.1 port while in `async with`; each connection runs handle(). On exit the
    connections still open are aborted, so closing never waits for a keep-alive client."""

    def __init__(self, name: str, close_timeout: float = 5.0) -> None:
        self.name = name
        self.close_timeout = close_timeout      # seconds the server may take to close on exit
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await asyncio.wait_for(self.server.wait_closed(), self.close_timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection until it ends (a subclass's job)."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
