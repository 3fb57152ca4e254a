"""Demo backends: HTTP/1.1 framing and echo mode on real sockets, `fastmesh demo`, the quickstart example end to end."""
from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import uvloop

from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import env
from fastmesh.config.schema import Endpoint
from fastmesh.process.demo import DemoError, DemoServers, start_demo

REPO = Path(__file__).resolve().parents[2]
WAIT = 15.0         # seconds any one expected event may take before the test fails


@pytest.fixture
def backends() -> Iterator[list[Endpoint]]:
    """Three demo backends on free ports, served by a uvloop loop in a thread while the test uses plain sockets."""
    endpoints = [Endpoint("127.0.0.1", free_port()) for _ in range(3)]
    loop = uvloop.new_event_loop()
    started = threading.Event()
    holder: list[DemoServers] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder.append(loop.run_until_complete(start_demo(endpoints)))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(WAIT)
    yield endpoints
    asyncio.run_coroutine_threadsafe(holder[0].close(), loop).result(WAIT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()


def connect(endpoint: Endpoint) -> socket.socket:
    return socket.create_connection((endpoint.host, endpoint.port), timeout=5)


def read_response(sock: socket.socket, buf: bytearray) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response framed by content-length, from sock (bytes past it stay in buf): (status line, headers, body)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-head after {bytes(buf)!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    length = int(headers[b"content-length"])
    buf[:] = rest
    while len(buf) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed mid-body"
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def assert_closed(sock: socket.socket) -> None:
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass


def test_keep_alive_requests_with_bodies(backends: list[Endpoint]) -> None:
    # h11 checks the framing independently: it refuses anything malformed or mis-sized.
    endpoint = backends[1]
    conn = h11.Connection(h11.CLIENT)
    with connect(endpoint) as sock:
        for n, body in enumerate([b"", b"x" * 70000, b"GET /smuggled HTTP/1.1\r\n\r\n"]):
            headers = [("host", "demo"), ("content-length", str(len(body)))]
            sock.sendall(conn.send(h11.Request(method="POST", target=f"/{n}", headers=headers)))
            sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            events: list[object] = []
            while not events or not isinstance(events[-1], h11.EndOfMessage):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                else:
                    events.append(event)
            response = events[0]
            assert isinstance(response, h11.Response) and response.status_code == 200
            assert (b"x-demo-backend", b"2") in list(response.headers)
            text = b"".join(e.data for e in events if isinstance(e, h11.Data))
            assert text == f"hello from demo backend 2 (127.0.0.1:{endpoint.port})\n".encode()
            conn.start_next_cycle()
        # A body that looks like a request was skipped as a body: nothing more arrives.
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)


def test_pipelined_and_split_requests(backends: list[Endpoint]) -> None:
    with connect(backends[0]) as sock:
        buf = bytearray()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: d\r\n\r\nHEAD /b HTTP/1.1\r\nHost: d\r\n\r\n"
                     b"POST /c HTTP/1.1\r\nHost: d\r\nContent-Length: 10\r\n\r\n01234")
        status, headers, body = read_response(sock, buf)
        assert status == b"HTTP/1.1 200 OK" and body.startswith(b"hello from demo backend 1 ")
        head_length = int(headers[b"content-length"])
        # HEAD: the same content-length, no body (read_response would otherwise swallow the next answer).
        while not buf.endswith(b"\r\n\r\n"):
            buf += sock.recv(4096)
        headers_only = bytes(buf)
        assert headers_only.startswith(b"HTTP/1.1 200 OK\r\n") and headers_only.endswith(b"\r\n\r\n")
        assert f"content-length: {head_length}\r\n".encode() in headers_only
        buf.clear()
        # Half the POST body is still missing, so no answer yet.
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        sock.settimeout(5)
        sock.sendall(b"56789GET / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        assert read_response(sock, buf)[1][b"connection"] == b"keep-alive"
        assert read_response(sock, buf)[1][b"connection"] == b"close"
        assert_closed(sock)


def test_http10_closes_unless_keep_alive(backends: list[Endpoint]) -> None:
    with connect(backends[2]) as sock:
        buf = bytearray()
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert read_response(sock, buf)[1][b"connection"] == b"keep-alive"
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        _, headers, _ = read_response(sock, buf)
        assert headers[b"connection"] == b"close" and headers[b"x-demo-backend"] == b"3"
        assert_closed(sock)


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost : d\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 431),
])
def test_requests_it_cannot_frame_get_an_error_and_close(
        backends: list[Endpoint], request_bytes: bytes, status: int) -> None:
    with connect(backends[0]) as sock:
        sock.sendall(request_bytes)
        status_line, headers, _ = read_response(sock, bytearray())
        assert status_line.startswith(b"HTTP/1.1 %d " % status)
        assert headers[b"connection"] == b"close"
        assert_closed(sock)


@pytest.mark.parametrize("first", [b"hello\n", b"HELLO there\r\n", b"\x16\x03\x01\x00"])
def test_non_http_is_echoed_after_one_greeting(backends: list[Endpoint], first: bytes) -> None:
    endpoint = backends[1]
    greeting = f"hello from demo backend 2 (127.0.0.1:{endpoint.port}): not HTTP, echoing what you send\n"
    with connect(endpoint) as sock:
        sock.sendall(first)
        expected = greeting.encode() + first
        data = b""
        while len(data) < len(expected):
            data += sock.recv(4096)
        assert data == expected
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")     # once echoing, always echoing
        data = b""
        while len(data) < 18:
            data += sock.recv(4096)
        assert data == b"GET / HTTP/1.1\r\n\r\n"
        sock.shutdown(socket.SHUT_WR)
        assert_closed(sock)


def test_busy_port_is_reported(backends: list[Endpoint]) -> None:
    with pytest.raises(DemoError, match=rf"demo backend 1 cannot listen on 127\.0\.0\.1:{backends[0].port}: "):
        asyncio.run(start_demo([backends[0]]))


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while not re.search(pattern, path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()
        time.sleep(0.05)


def test_demo_command_runs_backends_in_the_foreground(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    log = tmp_path / "demo.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "demo", "--ports", f"{ports[0]},{ports[1]}"],
                                env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(log, rf"INFO main fastmesh\.demo: demo backend 2 listening on 127\.0\.0\.1:{ports[1]}", proc)
        with connect(Endpoint("127.0.0.1", ports[1])) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: d\r\n\r\n")
            assert read_response(sock, bytearray())[1][b"x-demo-backend"] == b"2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_demo_command_rejects_bad_ports() -> None:
    result = subprocess.run([sys.executable, "-m", "fastmesh", "demo", "--ports", "9001,http"], env=env(),
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2 and "not a port number: 'http'" in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_quickstart_balances_curl_across_the_three_backends(tmp_path: Path) -> None:
    # The example as shipped, moved to free ports so the test never collides with anything on the machine.
    text = (REPO / "examples" / "quickstart.toml").read_text()
    ports = {old: free_port() for old in (4140, 4141, 9001, 9002, 9003)}
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    config = tmp_path / "quickstart.toml"
    config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
    log = tmp_path / "fastmesh.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "run", str(config)], env=env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(log, r"ready: 1 worker\(s\) serving 'quickstart'", proc)
        url = f"http://127.0.0.1:{ports[4140]}/"
        seen = []
        for _ in range(6):
            result = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", url], capture_output=True, text=True,
                                    timeout=WAIT)
            assert result.returncode == 0, result.stderr
            match = re.search(r"^x-demo-backend: (\d)\r?$", result.stdout, re.MULTILINE)
            assert match and f"hello from demo backend {match[1]} (127.0.0.1:" in result.stdout, result.stdout
            seen.append(int(match[1]))
        assert sorted(seen) == [1, 1, 2, 2, 3, 3]
        # The HTTP listener: routed, rewritten, with the proxy's own headers.
        result = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", f"http://127.0.0.1:{ports[4141]}/hello/x"],
                                capture_output=True, text=True, timeout=WAIT)
        assert result.returncode == 0, result.stderr
        assert re.search(r"^Via: 1\.1 fastmesh\r?$", result.stdout, re.MULTILINE), result.stdout
        assert re.search(r"^x-route: hello\r?$", result.stdout, re.MULTILINE), result.stdout
        assert "hello from demo backend" in result.stdout
        with socket.create_connection(("127.0.0.1", ports[4140]), timeout=5) as sock:   # what `nc` would show
            sock.sendall(b"hi\n")
            data = b""
            while not data.endswith(b"hi\n"):
                data += sock.recv(4096)
            assert re.fullmatch(rb"hello from demo backend \d \(127\.0\.0\.1:\d+\): not HTTP, echoing what you send\n"
                                rb"hi\n", data)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
