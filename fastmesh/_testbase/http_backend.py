"""HTTP/1.1 backends for tests: an asyncio server with per-path behaviours.

Heads are read with the Python side's head parser (fastmesh/httpwire.py), deliberately not the proxy's compiled
one: a test that checks the proxy against the proxy's own parser proves nothing. It is strict where a server
should be (CRLF only, no obs-fold, token names, one framing). Paths (the first segment picks the behaviour; any
other path echoes):

    /echo            the request (method, target, headers, body, trailers, peer) as JSON
    /status/NNN      answer status NNN
    /slow?ms=N       answer after N ms
    /reset           RST right after the head (SO_LINGER 0); ?partial=1 sends part of a response first
    /close           answer, then close (Connection: close); ?silent=1 closes without announcing it
    /chunked?n=N     a chunked answer of N chunks with trailers; &size=S chunks of S pattern bytes, &ext=1 extensions
    /bytes?n=N       N pattern bytes, streamed; &chunked=1 or &close=1 choose the framing
    /sink            read a body of any size; answer its length, sha256 and whether it is the pattern (&hash=0: no sha)
    /ws              WebSocket echo after the 101
    /continue        Expect: 100-continue: 100, then the body; ?status=NNN refuses with NNN without reading the body
    /respond         ?status=NNN&header=Name: value (repeatable)&body=text: an answer the test spells out
    /raw?data=...    write exactly these bytes (the parameter, percent-decoded as latin-1) as the answer, then
                     close; &keep=1 keeps the connection open (for malformed answers a proxy must refuse)

Every answer but /raw's carries `x-backend` (the backend's name) and `x-backend-connection` (which of its
connections, counted from 1).
Bodies the tests check for size use the *pattern*: a fixed 64 KiB pseudo-random block repeated, so a client
can check any amount of it byte for byte with memcmp speed instead of hashing (see PatternChecker).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import socket
import ssl as ssl_module
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from fastmesh.httpwire import TOKEN, HeadError, RequestHead, ResponseHead, body_framing, parse_request_head
from fastmesh.httpwire import parse_response_head

MAX_HEAD = 1 << 20          # bytes of request head buffered before answering 431 (the proxy's limits are smaller)
IO_CHUNK = 1 << 20          # bytes per read/write when streaming bodies
HEX = frozenset(b"0123456789abcdefABCDEF")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # RFC 6455 section 1.3
WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# The pattern: a fixed seed, so every process (the backend, a client, a subprocess) derives the same bytes.
PATTERN_BLOCK = random.Random(0x5EED).randbytes(1 << 16)
_PATTERN_BIG = PATTERN_BLOCK * (IO_CHUNK // len(PATTERN_BLOCK))          # one IO_CHUNK of pattern
_PATTERN_WIDE = PATTERN_BLOCK * (IO_CHUNK // len(PATTERN_BLOCK) + 1)     # so any offset has IO_CHUNK bytes after it


# ---- the pattern -------------------------------------------------------------------------------------------------

def pattern(n: int, offset: int = 0) -> bytes:
    """n pattern bytes starting at stream offset `offset` (for small bodies; stream big ones with pattern_chunks)."""
    out = bytearray()
    for piece in pattern_chunks(n, offset):
        out += piece
    return bytes(out)


def pattern_chunks(n: int, offset: int = 0) -> Iterator[memoryview]:
    """The pattern from `offset`, n bytes in all, as views of at most IO_CHUNK bytes (no copying)."""
    wide = memoryview(_PATTERN_WIDE)
    while n > 0:
        start = offset % len(PATTERN_BLOCK)
        size = min(n, IO_CHUNK)
        yield wide[start:start + size]
        offset += size
        n -= size


class PatternChecker:
    """Checks a byte stream against the pattern as it arrives; `ok` stays True while every byte matched."""

    def __init__(self) -> None:
        self.length = 0
        self.ok = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while self.ok and len(view):
            piece = view[:IO_CHUNK]
            start = self.length % len(PATTERN_BLOCK)
            # bytes == bytes is one memcmp; slicing the wide copy costs a memcpy, still far cheaper than a hash.
            self.ok = bytes(piece) == _PATTERN_WIDE[start:start + len(piece)]
            self.length += len(piece)
            view = view[len(piece):]
        if not self.ok:
            self.length += len(view)


# ---- requests as the backend saw them ------------------------------------------------------------------------------

# A request the backend cannot take: it answers `status` and closes (the parser's error, raised here too).
BadRequest = HeadError


@dataclass
class Request(RequestHead):
    """One request as it arrived at the backend (headers in arrival order, names as spelled on the wire)."""
    connection: int                     # which of the backend's connections (1-based) it came on
    peer: str                           # "host:port" of the proxy side of that connection
    body: bytes = b""                   # kept for /echo only (other paths stream their bodies)
    body_length: int = 0
    chunked: bool = False               # the body came chunked
    trailers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, head: bytes, connection: int, peer: str) -> Request:
        """The request of one head (ending in CRLF CRLF); HeadError (BadRequest) if malformed. The proxy's limits
        are what the tests exercise, so no field count is refused here."""
        h = parse_request_head(head, max_fields=None)
        return cls(h.method, h.target, h.version, h.headers, connection, peer)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


# ---- the server ---------------------------------------------------------------------------------------------------

class HttpBackend:
    """An HTTP/1.1 server on 127.0.0.1 for tests; counts connections and requests and keeps what it received.

    `expect_continue=False` makes it ignore `Expect: 100-continue` everywhere but /continue (as some servers do);
    `idle_timeout` closes keep-alive connections that stay silent that long (seconds; None: never); `ssl` serves
    HTTPS with that context (/echo's JSON then has `peer_cert`: the client certificate, if one was sent, and
    `tls_resumed`: whether the connection resumed a session).
    """

    def __init__(self, name: str = "backend", *, expect_continue: bool = True,
                 idle_timeout: float | None = None, ssl: "ssl_module.SSLContext | None" = None) -> None:
        self.name = name
        self.ssl = ssl
        self.expect_continue = expect_continue
        self.idle_timeout = idle_timeout
        self.port = 0
        self.connections = 0            # connections accepted so far
        self.active = 0                 # connections open now
        self.requests = 0               # request heads parsed so far
        self.received: list[Request] = []
        self.body_bytes_read = 0        # request body bytes read, over all requests
        self.body_bytes_sent = 0        # response body bytes written (handed to the socket), over all responses
        self.upgrades = 0               # WebSocket connections switched after a 101
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> "HttpBackend":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, limit=MAX_HEAD,
                                                  backlog=1024, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop listening and end every open connection (handlers waiting in /slow or a WebSocket included)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def __aenter__(self) -> "HttpBackend":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.active += 1
        peer = writer.get_extra_info("peername")
        conn = _Connection(self, reader, writer, self.connections, f"{peer[0]}:{peer[1]}")
        conn.peer_cert = writer.get_extra_info("peercert") if self.ssl else None
        tls_object = writer.get_extra_info("ssl_object") if self.ssl else None
        conn.tls_resumed = bool(tls_object is not None and tls_object.session_reused)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError,
                TimeoutError):
            pass                        # the peer went away, or sent a line too long to answer: just close
        finally:
            self.active -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


async def start_http_backends(count: int, prefix: str = "backend", **options: object) -> list[HttpBackend]:
    """`count` started backends named prefix-0, prefix-1, ..."""
    return [await HttpBackend(f"{prefix}-{i}", **options).start() for i in range(count)]  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def http_backends(count: int, prefix: str = "backend", **options: object) -> AsyncIterator[list[HttpBackend]]:
    """start_http_backends for the block; every backend is stopped however the block ends."""
    backends = await start_http_backends(count, prefix, **options)
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.stop()


class _Connection:
    """One accepted connection: read a request, answer it, repeat while both sides keep it alive."""

    def __init__(self, backend: HttpBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 number: int, peer: str) -> None:
        self.backend = backend
        self.reader = reader
        self.writer = writer
        self.number = number
        self.peer = peer
        self.peer_cert: object = None     # the client certificate a TLS backend saw (getpeercert()), or None
        self.tls_resumed = False          # the client resumed a TLS session on this connection

    async def run(self) -> None:
        while True:
            try:
                head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.backend.idle_timeout)
            except asyncio.IncompleteReadError:
                return                  # the peer closed, between requests or inside a head
            except asyncio.LimitOverrunError:
                await self._refuse(431, "request head too large")
                return
            try:
                request = Request.read(head, self.number, self.peer)
            except BadRequest as exc:
                await self._refuse(exc.status, str(exc))
                return
            self.backend.requests += 1
            self.backend.received.append(request)
            try:
                keep_alive = await self._answer(request)
            except BadRequest as exc:
                await self._refuse(exc.status, str(exc))
                return
            if not keep_alive:
                return

    async def _refuse(self, status: int, why: str) -> None:
        body = f"{why}\n".encode()
        self.writer.write(self._head(status, [("Content-Length", str(len(body)))], False, "HTTP/1.1") + body)
        await self.writer.drain()

    # ---- framing ----

    def _head(self, status: int, headers: list[tuple[str, str]], keep_alive: bool, version: str) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        lines = [f"HTTP/1.1 {status} {reason}", f"x-backend: {self.backend.name}",
                 f"x-backend-connection: {self.number}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep_alive:
            lines.append("Connection: close")
        elif version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _read_body(self, request: Request, consume: Callable[[bytes], None], *,
                         send_continue: bool) -> None:
        """Read the request body (CL or chunked, trailers kept), giving each piece to consume()."""
        chunked, length = body_framing(request)
        request.chunked = chunked
        if send_continue and "100-continue" in request.tokens("Expect") and (chunked or length):
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()
        if not chunked:
            await self._read_exactly(request, length, consume)
            return
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not size_text or not set(size_text) <= HEX or len(size_text) > 16:
                raise BadRequest(400, "bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            await self._read_exactly(request, size, consume)
            if await self.reader.readexactly(2) != b"\r\n":
                raise BadRequest(400, "chunk data not followed by CRLF")
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                return
            name, colon, value = line[:-2].partition(b":")
            if not colon or not name or not set(name) <= TOKEN:
                raise BadRequest(400, "malformed trailer")
            request.trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))

    async def _read_exactly(self, request: Request, length: int, consume: Callable[[bytes], None]) -> None:
        while length:
            data = await self.reader.read(min(length, IO_CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(data)
            request.body_length += len(data)
            self.backend.body_bytes_read += len(data)
            consume(data)

    async def _send(self, request: Request, status: int, body: bytes, keep_alive: bool,
                    headers: list[tuple[str, str]] | None = None) -> bool:
        """A complete answer with Content-Length; returns keep_alive (what run() should do next)."""
        all_headers = list(headers or [])
        if status >= 200 and status not in (204, 304):
            all_headers.append(("Content-Length", str(len(body))))
        else:
            body = b""
        if request.method == "HEAD":
            body = b""
        self.writer.write(self._head(status, all_headers, keep_alive, request.version) + body)
        self.backend.body_bytes_sent += len(body)
        await self.writer.drain()
        return keep_alive

    # ---- behaviours ----

    async def _answer(self, request: Request) -> bool:
        segment = request.path.split("/")[1] if request.path.startswith("/") else ""
        behaviour = _BEHAVIOURS.get(segment, _Connection._echo)
        try:
            return bool(await behaviour(self, request))
        except BadRequest:            # a ValueError too, already with its status
            raise
        except ValueError as exc:     # a query parameter that is not a number
            raise BadRequest(400, f"bad parameter: {exc}") from None

    async def _discard_body(self, request: Request) -> None:
        await self._read_body(request, lambda data: None, send_continue=self.backend.expect_continue)

    async def _echo(self, request: Request) -> bool:
        body = bytearray()
        await self._read_body(request, body.extend, send_continue=self.backend.expect_continue)
        request.body = bytes(body)
        answer = {
            "backend": self.backend.name, "connection": self.number, "request": self.backend.requests,
            "peer": self.peer, "method": request.method, "target": request.target, "path": request.path,
            "version": request.version, "headers": request.headers, "chunked": request.chunked,
            "body": request.body.decode("latin-1"), "body_length": len(request.body),
            "body_sha256": hashlib.sha256(request.body).hexdigest(), "trailers": request.trailers,
            "tls": self.backend.ssl is not None, "peer_cert": self.peer_cert, "tls_resumed": self.tls_resumed,
        }
        payload = json.dumps(answer).encode()
        return await self._send(request, 200, payload, request.keep_alive,
                                [("Content-Type", "application/json")])

    async def _status(self, request: Request) -> bool:
        await self._discard_body(request)
        parts = request.path.split("/")
        try:
            status = int(parts[2])
        except (IndexError, ValueError):
            status = 0
        if not 200 <= status <= 999:
            raise BadRequest(400, "/status/NNN needs a final status from 200 to 999")
        return await self._send(request, status, f"{status}\n".encode(), request.keep_alive,
                                [("Content-Type", "text/plain")])

    async def _slow(self, request: Request) -> bool:
        await self._discard_body(request)
        ms = int(request.param("ms", "1000") or 0)
        await asyncio.sleep(ms / 1000)
        return await self._send(request, 200, f"slept {ms} ms\n".encode(), request.keep_alive)

    async def _reset(self, request: Request) -> bool:
        if request.param("partial") == "1":
            await self._discard_body(request)
            self.writer.write(self._head(200, [("Content-Length", "1000000")], True, request.version))
            self.writer.write(pattern(1000))
            await self.writer.drain()
            await asyncio.sleep(0.05)   # let the partial answer leave before the RST overtakes it
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        return False

    async def _close(self, request: Request) -> bool:
        await self._discard_body(request)
        silent = request.param("silent") == "1"
        body = b"closing\n"
        # A silent close answers as if the connection stays open: the peer learns otherwise only from the FIN.
        await self._send(request, 200, body, silent)
        return False

    async def _chunked(self, request: Request) -> bool:
        await self._discard_body(request)
        n = int(request.param("n", "3") or 0)
        size = int(request.param("size", "0") or 0)
        extensions = request.param("ext") == "1"
        keep_alive = request.keep_alive
        digest = hashlib.sha256()
        if request.version == "HTTP/1.0":   # a 1.0 client cannot read chunked: the body ends with the connection
            self.writer.write(self._head(200, [], False, request.version))
            for i in range(n):
                data = pattern(size, i * size) if size else f"chunk {i}\n".encode()
                self.writer.write(data)
                self.backend.body_bytes_sent += len(data)
                await self.writer.drain()
            return False
        self.writer.write(self._head(200, [("Transfer-Encoding", "chunked"),
                                           ("Trailer", "x-chunks, x-body-sha256")], keep_alive, request.version))
        if request.method == "HEAD":
            await self.writer.drain()
            return keep_alive
        for i in range(n):
            data = pattern(size, i * size) if size else f"chunk {i}\n".encode()
            digest.update(data)
            ext = f";i={i};note=\"chunk {i}\"" if extensions else ""
            self.writer.write(f"{len(data):x}{ext}\r\n".encode() + data + b"\r\n")
            self.backend.body_bytes_sent += len(data)
            await self.writer.drain()
        self.writer.write(f"0\r\nx-chunks: {n}\r\nx-body-sha256: {digest.hexdigest()}\r\n\r\n".encode())
        await self.writer.drain()
        return keep_alive

    async def _bytes(self, request: Request) -> bool:
        await self._discard_body(request)
        n = int(request.param("n", "0") or 0)
        chunked = request.param("chunked") == "1" and request.version == "HTTP/1.1"
        close_delimited = request.param("close") == "1" or (request.param("chunked") == "1" and not chunked)
        keep_alive = request.keep_alive and not close_delimited
        if chunked:
            headers = [("Transfer-Encoding", "chunked")]
        elif close_delimited:
            headers = []
        else:
            headers = [("Content-Length", str(n))]
        self.writer.write(self._head(200, headers + [("Content-Type", "application/octet-stream")], keep_alive,
                                     request.version))
        if request.method == "HEAD":
            await self.writer.drain()
            return keep_alive
        for piece in pattern_chunks(n):
            if chunked:
                self.writer.write(f"{len(piece):x}\r\n".encode())
            self.writer.write(piece)
            if chunked:
                self.writer.write(b"\r\n")
            self.backend.body_bytes_sent += len(piece)
            await self.writer.drain()
        if chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        return keep_alive

    async def _sink(self, request: Request) -> bool:
        digest = hashlib.sha256() if request.param("hash") != "0" else None
        checker = PatternChecker()

        def consume(data: bytes) -> None:
            checker.feed(data)
            if digest is not None:
                digest.update(data)
        wait_ms = int(request.param("wait_ms", "0") or 0)
        if wait_ms:                     # hold the body unread for a while: the sender must feel backpressure
            await asyncio.sleep(wait_ms / 1000)
        await self._read_body(request, consume, send_continue=self.backend.expect_continue)
        answer = {"backend": self.backend.name, "length": request.body_length, "chunked": request.chunked,
                  "sha256": digest.hexdigest() if digest is not None else None, "pattern": checker.ok,
                  "trailers": request.trailers}
        return await self._send(request, 200, json.dumps(answer).encode(), request.keep_alive,
                                [("Content-Type", "application/json")])

    async def _continue(self, request: Request) -> bool:
        refuse = request.param("status")
        if refuse is not None:
            # Refused before the body was read: the unread body makes the connection unusable, so close it.
            return await self._send(request, int(refuse), b"refused\n", False)
        digest = hashlib.sha256()
        await self._read_body(request, digest.update, send_continue=True)
        answer = {"backend": self.backend.name, "expect": sorted(request.tokens("Expect")),
                  "length": request.body_length, "sha256": digest.hexdigest()}
        return await self._send(request, 200, json.dumps(answer).encode(), request.keep_alive,
                                [("Content-Type", "application/json")])

    async def _respond(self, request: Request) -> bool:
        await self._discard_body(request)
        status = int(request.param("status", "200") or 200)
        headers = []
        for item in request.query.get("header", []):
            name, _, value = item.partition(":")
            headers.append((name.strip(), value.strip()))
        body = (request.param("body", "") or "").encode()
        return await self._send(request, status, body, request.keep_alive, headers)

    async def _raw(self, request: Request) -> bool:
        await self._discard_body(request)
        values = parse_qs(urlsplit(request.target).query, keep_blank_values=True, encoding="latin-1")
        data = (values.get("data") or [""])[0].encode("latin-1")
        self.writer.write(data)
        await self.writer.drain()
        return request.param("keep") == "1"

    async def _ws(self, request: Request) -> bool:
        key = request.header("Sec-WebSocket-Key")
        if "websocket" not in request.tokens("Upgrade") or "upgrade" not in request.tokens("Connection") or not key:
            return await self._send(request, 400, b"not a WebSocket handshake\n", False)
        self.writer.write(self._head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                           ("Sec-WebSocket-Accept", ws_accept(key))], True, request.version))
        await self.writer.drain()
        self.backend.upgrades += 1
        while True:
            fin, opcode, payload = await read_ws_frame(self.reader)
            if opcode == WS_CLOSE:
                self.writer.write(ws_frame(WS_CLOSE, payload, mask=False))
                await self.writer.drain()
                return False
            reply = WS_PONG if opcode == WS_PING else opcode
            if opcode != WS_PONG:
                self.writer.write(ws_frame(reply, payload, mask=False, fin=fin))
                await self.writer.drain()


_BEHAVIOURS = {
    "echo": _Connection._echo, "status": _Connection._status, "slow": _Connection._slow,
    "reset": _Connection._reset, "close": _Connection._close, "chunked": _Connection._chunked,
    "bytes": _Connection._bytes, "sink": _Connection._sink, "continue": _Connection._continue,
    "respond": _Connection._respond, "raw": _Connection._raw, "ws": _Connection._ws,
}


# ---- WebSocket frames (RFC 6455), for the backend and for test clients ---------------------------------------------

def ws_accept(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


def ws_frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One frame; clients must mask (mask=True), servers must not."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = random.randbytes(4)
    return head + key + _unmask(payload, key)


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next frame."""
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(n)
    return bool(first & 0x80), first & 0x0F, _unmask(payload, key) if key else payload


def _unmask(data: bytes, key: bytes) -> bytes:
    # XOR as one big integer: linear time without a Python loop per byte.
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


# ---- a response reader for raw-socket clients -----------------------------------------------------------------------

@dataclass
class Response(ResponseHead):
    """One response read off a raw connection."""
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)   # 1xx statuses that came before this one

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


async def read_response_head(reader: asyncio.StreamReader) -> Response:
    """The next response head, 1xx included (strict CRLF; HeadError, a ValueError, if malformed)."""
    h = parse_response_head(await reader.readuntil(b"\r\n\r\n"), max_fields=None)
    return Response(h.version, h.status, h.reason, h.headers)


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    """The next final response with its body; interim 1xx answers are recorded in `interim` (101 is final)."""
    interim = []
    while True:
        response = await read_response_head(reader)
        if response.status >= 200 or response.status == 101:
            break
        interim.append(response.status)
    response.interim = interim
    if method == "HEAD" or response.status in (101, 204, 304):
        return response
    te = response.tokens("Transfer-Encoding")
    if "chunked" in te:
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line[:-2].split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line[:-2].decode("latin-1").partition(":")
            response.trailers.append((name, value.strip(" \t")))
        response.body = bytes(body)
    elif response.header("Content-Length") is not None:
        response.body = await reader.readexactly(int(response.header("Content-Length") or 0))
    else:
        response.body = await reader.read(-1)   # close-delimited
    return response
