"""Chaos for resilience tests: a backend whose faults are switched while it runs, and clients that count outcomes.

ChaosBackend answers every request the same way, whatever its path, so a test can turn one endpoint of a
cluster bad while the proxy keeps sending it the traffic it sends the others:
  delay               seconds slept before each answer
  status              the status of every answer
  resets_left         an RST right after each of the next N request heads (-1: every one)
  doom_connections()  every connection open now gets an RST at its next request (a NAT or firewall that
                      silently dropped them)
  kill() / revive()   the listening socket closed and every open connection reset / listening again, same port
It is a separate small server rather than a mode of HttpBackend because the fault must not depend on the
path; it reads heads as HttpBackend does (fastmesh/httpwire.py, not the proxy's compiled parser).

Client side: `Client` is one keep-alive HTTP/1.1 connection to the proxy (reopened when the proxy closes it),
`Tally` counts what a bounded load saw, `run_load` runs `clients` such connections for a while.
`TapRelay` is a TCP relay between two hops that keeps the request heads it passed, to see what a hop sent.
"""
from __future__ import annotations

import asyncio
import collections
import socket
import struct
import time
from dataclasses import dataclass, field

from fastmesh._testbase.http_backend import BadRequest, Request, Response, read_response
from fastmesh.httpwire import parse_request_head

HEAD_LIMIT = 1 << 16        # bytes of request head the chaos backend buffers before giving up on a connection


class ChaosBackend:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 whose behaviour the test changes while it serves.

    Every answer carries `x-backend: NAME` and has NAME as its body. `requests` counts request heads read,
    `received` keeps the last `keep` of them (headers as sent, for checks on what the proxy forwarded).
    """

    def __init__(self, name: str, *, status: int = 200, delay: float = 0.0, keep: int = 1000) -> None:
        self.name = name
        self.status = status            # status of every answer
        self.delay = delay              # seconds slept before each answer
        self.resets_left = 0            # the next this-many request heads get an RST instead of an answer; -1: all
        self.port = 0
        self.requests = 0               # request heads read, ever
        self.connections = 0            # connections accepted, ever
        self.resets = 0                 # connections this backend reset on purpose
        self.received: collections.deque[Request] = collections.deque(maxlen=keep)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[int] = set()        # numbers of the connections open now
        self._doomed: set[int] = set()      # connections whose next request gets an RST

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def doom_connections(self) -> int:
        """Every connection open now is answered with an RST at its next request; returns how many."""
        self._doomed |= self._open
        return len(self._open)

    async def start(self) -> ChaosBackend:
        # reuse_address (asyncio's default on Unix) lets revive() bind the same port while old sockets linger.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=1024,
                                                  limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stop listening (connects are refused from now on) and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def revive(self) -> None:
        """Listen again on the same port, with the current fault settings."""
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.kill()

    async def __aenter__(self) -> ChaosBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        number = self.connections
        self._open.add(number)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Request.read(head, number, f"{peer[0]}:{peer[1]}")
                self.requests += 1
                self.received.append(request)
                length = request.header("content-length")
                if length is not None:
                    await reader.readexactly(int(length))
                doomed = number in self._doomed
                if doomed or self.resets_left:
                    if not doomed and self.resets_left > 0:
                        self.resets_left -= 1
                    self.resets += 1
                    _reset(writer)
                    return
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                if writer.is_closing():
                    return              # the proxy gave up on this try (a per-try timeout) while we slept
                body = self.name.encode()
                writer.write(b"HTTP/1.1 %d Chaos\r\nx-backend: %s\r\ncontent-length: %d\r\n\r\n%s"
                             % (self.status, body, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, BadRequest, ValueError,
                asyncio.CancelledError):
            pass                        # the peer left, sent garbage, or kill() ended the connection
        finally:
            self._open.discard(number)
            self._doomed.discard(number)
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed server's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


# ---- clients ---------------------------------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection to host:port; reopened when the server closes it after an answer."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str = "/", headers: dict[str, str] | None = None) -> Response:
        """GET path; raises OSError / asyncio.IncompleteReadError / TimeoutError when no answer comes."""
        reader, writer = await self._connection()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n".encode("latin-1"))
        try:
            response = await asyncio.wait_for(read_response(reader), self.timeout)
        except BaseException:
            self.close()
            raise
        if "close" in response.tokens("connection"):
            self.close()
        return response

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            return self._reader, self._writer
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        self._reader, self._writer = reader, writer
        return reader, writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None
            self._reader = None


@dataclass
class Tally:
    """What a load saw: answers per backend (x-backend) and per status, and failures with their reasons."""
    sent: int = 0
    ok: int = 0                                         # 2xx answers
    by_backend: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)   # reason -> count
    latencies: list[float] = field(default_factory=list)
    answered_at: list[tuple[float, str]] = field(default_factory=list)   # (time.monotonic(), backend)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def record(self, response: Response, seconds: float) -> None:
        self.by_status[response.status] += 1
        backend = response.header("x-backend") or "-"
        self.answered_at.append((time.monotonic(), backend))
        self.latencies.append(seconds)
        if 200 <= response.status < 300:
            self.ok += 1
            self.by_backend[backend] += 1
        else:
            self.failures[f"{response.status} {response.header('fastmesh-error') or backend}"] += 1

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run_load(host: str, port: int, *, clients: int, seconds: float, path: str = "/",
                   headers: dict[str, str] | None = None, tally: Tally | None = None,
                   timeout: float = 5.0, pause: float = 0.0, until: asyncio.Event | None = None) -> Tally:
    """`clients` connections sending GETs back to back (plus `pause` seconds between) for `seconds`, or until
    `until` is set when given (`seconds` then only bounds a test that never sets it)."""
    tally = tally if tally is not None else Tally()
    stop_at = time.monotonic() + seconds

    async def one_client() -> None:
        client = Client(host, port, timeout)
        try:
            while time.monotonic() < stop_at and not (until is not None and until.is_set()):
                tally.sent += 1
                t0 = time.monotonic()
                try:
                    response = await client.get(path, headers)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    tally.failures[type(exc).__name__] += 1
                    continue
                tally.record(response, time.monotonic() - t0)
                if pause:
                    await asyncio.sleep(pause)
        finally:
            client.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return tally


# ---- a tap between two hops --------------------------------------------------------------------------------------

class TapRelay:
    """A TCP relay on 127.0.0.1 to `target` that keeps each request head passing towards it (one per exchange)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.heads: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> TapRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    def header_values(self, name: str) -> list[str]:
        """Values of header `name` (case-insensitive) in every request head seen, in order."""
        return [v for head in self.heads for v in parse_request_head(head, max_fields=None).header_all(name)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(writer)
            _reset(writer)
            return
        self._writers.add(up_writer)

        async def requests() -> None:
            # GETs only (no bodies): each head is one exchange's request.
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                up_writer.write(head)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()

        try:
            tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
