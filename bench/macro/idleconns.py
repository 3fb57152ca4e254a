"""Open many connections through a proxy, prove each one reaches the backend, and keep them open (idle).

At L4 each connection sends one byte the echo backend returns; at L7 (`HTTP_GET`) one keep-alive request whose
answer must be a 200, so the proxy holds the client connection and the pooled upstream connection it caused."""
from __future__ import annotations

import errno
import selectors
import socket
import time

_PING = b"x"
HTTP_GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def open_held(port: int, count: int, timeout: float, batch: int = 250,
              ping: bytes = _PING) -> tuple[list[socket.socket], int]:
    """Open count connections to 127.0.0.1:port in batches; each sends one byte and waits for its echo.

    Returns the sockets that completed the round trip (still open, now idle) and the number that failed.
    Batches stay below the listen backlogs so a proxy is not judged on SYN-queue overflow.
    """
    held: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
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
                    if key.data == "connecting":
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
                        sel.unregister(sock)
                        try:
                            ok = _answered(sock, ping)
                        except OSError:
                            ok = False
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


def _answered(sock: socket.socket, ping: bytes) -> bool:
    """The backend's answer to ping came back: the echo, or an HTTP 200 (small: one read holds its head)."""
    if ping == _PING:
        return sock.recv(1) == _PING
    return sock.recv(65536).startswith(b"HTTP/1.1 200")


def close_all(socks: list[socket.socket]) -> None:
    """Close every held connection."""
    for s in socks:
        s.close()
