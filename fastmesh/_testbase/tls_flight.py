"""TLS peers that send their last bytes and their close_notify in one TCP write, then wait for the other side.

OpenSSL's read-ahead takes such a close off the socket together with the data, so no readiness edge announces
it: these peers (Python's ssl over memory BIOs, one sendall per flight) reproduce that exactly, and record how
long the other side took to answer the close.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class _Session:
    """One TLS connection over a blocking socket, driven through memory BIOs so we choose what goes per write."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side, server_hostname=server_hostname)
        self.eof = False

    def flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def fill(self) -> bool:
        """One recv into OpenSSL's input: False at the peer's EOF."""
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                if not self.fill():
                    raise ConnectionError("EOF during the handshake")
        self.flush()

    def read_until(self, done: Callable[[bytes], bool]) -> bytes:
        """Application bytes until done(bytes so far) or the peer's close."""
        got = b""
        while not done(got):
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                got += chunk
            except ssl.SSLWantReadError:
                self.flush()
                if not self.fill():
                    break
            except ssl.SSLZeroReturnError:
                break
        return got

    def send_and_close(self, data: bytes) -> None:
        """data and our close_notify, encrypted first and then written with one sendall: one flight."""
        if data:
            self.obj.write(data)
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass                             # close_notify queued; the peer's comes later
        self.sock.sendall(self.out.read())

    def wait_close(self, timeout: float) -> tuple[float, bool]:
        """Wait for the peer to answer our close: (seconds it took, whether it sent close_notify rather than
        only a FIN). (timeout, False) when it did neither in time."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    self.obj.unwrap()
                    return time.monotonic() - start, True
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, OSError):
                    return time.monotonic() - start, False
                if self.eof or not self.fill():
                    try:
                        self.obj.unwrap()
                        return time.monotonic() - start, True
                    except (ssl.SSLError, OSError):
                        return time.monotonic() - start, False
        except socket.timeout:
            return timeout, False


@dataclass
class FlightServer:
    """A TLS server on 127.0.0.1: each connection reads one HTTP request head, then sends `reply` and its
    close_notify in one flight (without a FIN) and waits up to `wait` seconds for the client's close. `closes`
    records per connection (seconds until the client's close, whether that was a close_notify)."""
    ctx: ssl.SSLContext
    reply: bytes
    wait: float = 10.0
    closes: list[tuple[float, bool]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.wait)
        try:
            s = _Session(conn, self.ctx, True)
            s.handshake()
            self.requests.append(s.read_until(lambda b: b"\r\n\r\n" in b))
            s.send_and_close(self.reply)
            self.closes.append(s.wait_close(self.wait))
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self.sock.close()
        for t in self._threads:
            t.join(self.wait + 1)


def flight_client(port: int, ctx: ssl.SSLContext, server_hostname: str, data: bytes,
                  timeout: float = 10.0) -> tuple[bytes, float, bool]:
    """Connect, handshake, send data and our close_notify in one flight, then read until the server closes.
    Returns (the bytes received, seconds until the server's close, whether it closed within timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        s = _Session(sock, ctx, False, server_hostname)
        s.handshake()
        s.send_and_close(data)
        start = time.monotonic()
        try:
            got = s.read_until(lambda b: False)
        except socket.timeout:
            return b"", time.monotonic() - start, False
        return got, time.monotonic() - start, True
