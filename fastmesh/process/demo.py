"""Demo backends: small servers that answer HTTP/1.1 (or echo other bytes) naming themselves, so examples run alone."""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Sequence
from typing import cast

from fastmesh.config.schema import Endpoint
from fastmesh.dataplane.sockets import bind_reason, serving_socket
from fastmesh.httpwire import HeadError, body_framing, head_end, parse_request_head, parse_request_line

log = logging.getLogger("fastmesh.demo")

MAX_HEAD = 64 * 1024        # bytes of request head (or of a first line) we buffer before giving up on it
LINGER = 2.0                # seconds a closing connection keeps reading (and dropping) what the client still sends
_REASONS = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}


class DemoError(Exception):
    """A demo backend could not start; str() is the user-facing message."""


class DemoBackend:
    """One demo backend's identity: its 1-based number and address, as it names itself in answers."""

    def __init__(self, number: int, host: str, port: int) -> None:
        self.number = number
        self.host = host
        self.port = port
        self.greeting = f"hello from demo backend {number} ({host}:{port})"


class _DemoProtocol(asyncio.Protocol):
    """One client connection: decides HTTP or echo from the first line, then serves in that mode until closed."""

    def __init__(self, backend: DemoBackend, open_transports: set[asyncio.Transport]) -> None:
        self.backend = backend
        self.open_transports = open_transports
        self.transport: asyncio.Transport | None = None
        self.mode = ""                  # "", then "http" or "echo" once the first line is seen; "closing" at the end
        self.buf = bytearray()
        self.body_left = 0              # request body bytes still to skip before answering
        self.pending: tuple[bool, bool] | None = None  # (keep_alive, is_head) of the request awaiting its body
        self.linger: asyncio.TimerHandle | None = None  # closes a "closing" connection the client keeps open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.open_transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open_transports.discard(self.transport)
        if self.linger is not None:
            self.linger.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == "echo":
            self.transport.write(data)
            return
        if self.mode == "closing":
            return
        self.buf += data
        if not self.mode:
            self._choose_mode(eof=False)
        if self.mode == "http":
            self._serve_http()

    def eof_received(self) -> bool | None:
        if not self.mode and self.buf:
            self._choose_mode(eof=True)
        return None                     # close our side too; queued writes are flushed first

    def _choose_mode(self, eof: bool) -> None:
        assert self.transport is not None
        # Methods are upper-case tokens, so a lower-case first byte is not HTTP and need not wait for a newline.
        newline = self.buf.find(b"\n")
        if self.buf[:1].isupper() and newline < 0 and not eof and len(self.buf) < MAX_HEAD:
            return
        if newline >= 0 and _is_request_line(bytes(self.buf[:newline])):
            self.mode = "http"
            return
        self.mode = "echo"
        self.transport.write(self.backend.greeting.encode() + b": not HTTP, echoing what you send\n")
        self.transport.write(bytes(self.buf))
        self.buf.clear()

    def _serve_http(self) -> None:
        while self.mode == "http":
            if self.pending is not None:
                skip = min(self.body_left, len(self.buf))
                del self.buf[:skip]
                self.body_left -= skip
                if self.body_left:
                    return
                keep_alive, is_head = self.pending
                self.pending = None
                self._answer(200, self.backend.greeting + "\n", keep_alive, is_head)
                continue
            # A request as a person types it into nc ends its lines in a bare LF: take those too.
            end = head_end(self.buf, lf_ok=True)
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._answer(431, "request head too large\n", False, False)
                return
            head = bytes(self.buf[:end])
            del self.buf[:end]
            self._start_request(head)

    def _start_request(self, head: bytes) -> None:
        try:
            request = parse_request_head(head, lf_ok=True)
            chunked, length = body_framing(request)
            if chunked:
                raise HeadError(501, "request bodies must use content-length")
        except HeadError as exc:
            self._answer(exc.status if exc.status in _REASONS else 400, f"{exc}\n", False, False)
            return
        self.body_left = length
        self.pending = (request.keep_alive, request.method == "HEAD")

    def _answer(self, status: int, text: str, keep_alive: bool, is_head: bool) -> None:
        assert self.transport is not None
        body = text.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-demo-backend: {self.backend.number}\r\n"
            f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        self.transport.write(head if is_head else head + body)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        """Half-close after the answer, then drop input until the client closes (or LINGER passes).

        Closing outright while the client's bytes are still arriving makes the kernel send RST, which can destroy
        the answer before the client reads it.
        """
        assert self.transport is not None
        self.mode = "closing"
        self.buf.clear()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.linger = asyncio.get_running_loop().call_later(LINGER, self.transport.close)


def _is_request_line(line: bytes) -> bool:
    """Whether the first line (a CR before its LF optional) starts an HTTP/1.x request, rather than other bytes."""
    try:
        parse_request_line(line[:-1] if line.endswith(b"\r") else line)
    except HeadError:
        return False
    return True


class DemoServers:
    """The running demo backends; close() stops listening and ends their open connections."""

    def __init__(self) -> None:
        self.backends: list[DemoBackend] = []
        self.servers: list[asyncio.Server] = []
        self.open_transports: set[asyncio.Transport] = set()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for transport in list(self.open_transports):
            transport.abort()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()


async def start_demo(endpoints: Sequence[Endpoint]) -> DemoServers:
    """Start one demo backend per endpoint (numbered from 1) on the running loop; raise DemoError if one can't bind."""
    loop = asyncio.get_running_loop()
    demo = DemoServers()
    for number, endpoint in enumerate(endpoints, start=1):
        backend = DemoBackend(number, endpoint.host, endpoint.port)
        try:
            factory = functools.partial(_DemoProtocol, backend, demo.open_transports)
            sock = serving_socket(endpoint.host, endpoint.port)
            if sock is not None:
                server = await loop.create_server(factory, sock=sock)
            else:
                server = await loop.create_server(factory, endpoint.host, endpoint.port, reuse_address=True)
        except OSError as exc:
            await demo.close()
            raise DemoError(f"demo backend {number} cannot listen on {endpoint.address}: {bind_reason(exc)}") from exc
        demo.backends.append(backend)
        demo.servers.append(server)
        log.info("demo backend %d listening on %s", number, endpoint.address)
    return demo


def parse_ports(text: str, host: str = "127.0.0.1") -> list[Endpoint]:
    """Turn "9001,9002" into endpoints on host; raise ValueError with a readable message on bad input."""
    endpoints = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise ValueError(f"not a port number: {item!r}")
        endpoints.append(Endpoint(host, int(item)))
    if not endpoints:
        raise ValueError("no ports given")
    return endpoints


async def serve_demo(endpoints: Sequence[Endpoint]) -> int:
    """`fastmesh demo`: run the demo backends in the foreground until SIGINT or SIGTERM; return the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        demo = await start_demo(endpoints)
    except DemoError as exc:
        log.error("%s", exc)
        return 1
    await stop.wait()
    log.info("stopping demo backends")
    await demo.close()
    return 0
