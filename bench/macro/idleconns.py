"""Open many connections through a proxy, prove each one reaches the backend, and keep them open (idle).

At L4 each connection sends one byte the echo backend returns; at L7 (`HTTP_GET`) one keep-alive request whose
answer must be a 200, so the proxy holds the client connection and the pooled upstream connection it caused.
With a TLS context each connection first completes its handshake (non-blocking, many at once) and the request
goes over TLS: what the proxy then holds per connection is an idle TLS session plus the pooled upstream one."""
from __future__ import annotations

import errno
import selectors
import socket
import ssl
import time

_PING = b"x"
HTTP_GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# HTTP/2 with prior knowledge: the preface, empty SETTINGS, the ACK of the server's (which it sends first), and
# stream 1: HEADERS (END_STREAM | END_HEADERS) of GET / in HPACK literals without indexing (no state to keep).
_H2_BLOCK = b"".join(bytes([0x00, len(n)]) + n + bytes([len(v)]) + v for n, v in (
    (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench"), (b":path", b"/")))
H2_GET = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
          + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
          + len(_H2_BLOCK).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + _H2_BLOCK)


def tls_client() -> ssl.SSLContext:
    """The idle TLS clients' context: HTTP/1.1 by ALPN, the benchmark's self-made certificate not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def open_held(port: int, count: int, timeout: float, batch: int = 250,
              ping: bytes = _PING, tls: ssl.SSLContext | None = None) -> tuple[list[socket.socket], int]:
    """Open count connections to 127.0.0.1:port in batches; each sends one byte and waits for its echo.

    Returns the sockets that completed the round trip (still open, now idle) and the number that failed.
    Batches stay below the listen backlogs so a proxy is not judged on SYN-queue overflow.
    """
    held: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    partial: dict[socket.socket, bytes] = {}      # HTTP/2: what came so far, until the answer's head is whole
    try:
        while len(held) + failed < count:
            n = min(batch, count - len(held) - failed)
            pending = 0
            for _ in range(n):
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    failed += 1
                    continue
                sel.register(s, selectors.EVENT_WRITE, "connecting")
                pending += 1
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(held)} of {count} connections held after {timeout:.0f}s")
                for key, _ in sel.select(min(left, 1.0)):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data == "connecting" and tls is not None:
                        sel.unregister(sock)
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            sock.close()
                            failed += 1
                            pending -= 1
                            continue
                        sock = tls.wrap_socket(sock, server_hostname="bench.test", do_handshake_on_connect=False)
                        sel.register(sock, selectors.EVENT_WRITE, "handshake")
                        continue
                    if key.data == "handshake":
                        try:
                            sock.do_handshake()
                        except ssl.SSLWantReadError:
                            sel.modify(sock, selectors.EVENT_READ, "handshake")
                            continue
                        except ssl.SSLWantWriteError:
                            sel.modify(sock, selectors.EVENT_WRITE, "handshake")
                            continue
                        except OSError:
                            sel.unregister(sock)
                            sock.close()
                            failed += 1
                            pending -= 1
                            continue
                        sel.modify(sock, selectors.EVENT_WRITE, "ready")
                        continue
                    if key.data in ("connecting", "ready"):
                        try:
                            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or sock.send(ping) != len(ping)
                        except OSError:
                            err = True      # the proxy closed it as soon as it was accepted
                        if err:
                            sel.unregister(sock)
                            sock.close()
                            failed += 1
                            pending -= 1
                            continue
                        sel.modify(sock, selectors.EVENT_READ, "echo")
                    else:
                        try:
                            ok = _answered(sock, ping, partial)
                        except ssl.SSLWantReadError:
                            ok = None       # a record without application data (a TLS 1.3 session ticket)
                        except OSError:
                            ok = False
                        if ok is None:
                            continue        # more of the answer to read
                        sel.unregister(sock)
                        partial.pop(sock, None)
                        if ok:
                            held.append(sock)
                        else:
                            sock.close()
                            failed += 1
                        pending -= 1
    except BaseException:
        for s in held:
            s.close()
        raise
    finally:
        for key in list(sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        sel.close()
    return held, failed


def _answered(sock: socket.socket, ping: bytes, partial: dict[socket.socket, bytes]) -> bool | None:
    """The backend's answer to ping came back: the echo, an HTTP 200 (small: one read holds its head), or for
    HTTP/2 a HEADERS frame on stream 1 whose block starts with :status 200 (static index 8). None: read more."""
    if ping == _PING:
        return sock.recv(1) == _PING
    if ping != H2_GET:
        return sock.recv(65536).startswith(b"HTTP/1.1 200")
    data = partial.get(sock, b"") + sock.recv(65536)
    if len(data) == len(partial.get(sock, b"")):
        return False                        # closed before answering
    pos = 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if len(data) - pos < 9 + length:
            break
        if data[pos + 3] == 1 and data[pos + 5:pos + 9] == b"\x00\x00\x00\x01":
            flags, body = data[pos + 4], data[pos + 9:pos + 9 + length]
            if flags & 0x08:                 # PADDED
                body = body[1:len(body) - body[0]]
            if flags & 0x20:                 # PRIORITY
                body = body[5:]
            while body and 0x20 <= body[0] < 0x40:
                body = body[1:]              # a dynamic table size update (one byte for small sizes)
            return body[:1] == b"\x88"
        pos += 9 + length
    partial[sock] = data
    return None


def close_all(socks: list[socket.socket]) -> None:
    """Close every held connection."""
    for s in socks:
        s.close()
