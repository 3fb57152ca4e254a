"""Real backends for tests: asyncio TCP servers on 127.0.0.1 that echo, greet, hold or sink connections."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable


class Backend:
    """A TCP server on 127.0.0.1 with a handler; counts connections and bytes it read."""

    def __init__(self, handler: Callable[["Backend", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                 name: str = "backend") -> None:
        self.handler = handler
        self.name = name
        self.connections = 0
        self.active = 0
        self.bytes_read = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0, backlog: int = 1024) -> "Backend":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=backlog)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.writers.add(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        """Stop listening and cut the connections still open (from 3.12 on, wait_closed() waits for them; a
        handler that holds its connection would keep it waiting)."""
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None


async def echo(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every byte; pass the client's FIN on as ours."""
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        backend.bytes_read += len(data)
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def greet(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say which backend this is, then echo."""
    writer.write(f"hello from {backend.name}\n".encode())
    await echo(backend, reader, writer)


async def answer_after_eof(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until the client's FIN, then answer with the byte count (tests half-close)."""
    data = await reader.read()
    backend.bytes_read += len(data)
    writer.write(f"got {len(data)} bytes\n".encode())
    await writer.drain()


async def hold(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never read: a backend that applies backpressure. Ends when the client goes away."""
    await asyncio.sleep(3600)


async def start_backends(count: int, handler=echo) -> list[Backend]:
    return [await Backend(handler, f"backend-{i}").start() for i in range(count)]
