"""HTTP bodies streamed through the proxy with backpressure: bounded buffering, byte-exact bodies, and 1 GiB
each way through a `fastmesh run` process whose resident memory stays flat (read from /proc while it runs).

FASTMESH_E2E_STREAM_BYTES overrides the 1 GiB (for a quick local run); the tests stay bounded either way.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import (
    HttpBackend, PatternChecker, pattern_chunks, read_response, read_response_head,
)
from fastmesh._testbase.inproc import no_connection_left
from fastmesh._testbase.net import free_port

REPO = Path(__file__).resolve().parents[2]
STREAM_BYTES = int(os.environ.get("FASTMESH_E2E_STREAM_BYTES", 1 << 30))


def _tcp_buffer_max(name: str) -> int:
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


# Bytes that may sit between a stopped reader and a writer: the kernel's largest autotuned receive and send
# buffers on both sockets of the path (they differ per machine), the proxy's own buffer, and room to spare.
BUFFER_BOUND = 2 * (_tcp_buffer_max("tcp_rmem") + _tcp_buffer_max("tcp_wmem")) + (16 << 20)
MEMORY_SLACK = 64 << 20     # bytes the proxy's RSS may grow while a whole STREAM_BYTES body passes through it
PAUSE = 1.0                 # seconds a reader stops reading mid-stream: time enough to buffer hundreds of MB
WAIT = 20.0                 # seconds for `fastmesh run` to become ready


def run(coro):
    return asyncio.run(coro)


# ---- in-process proxy: bounded buffering and exact bodies ---------------------------------------------------------

@contextlib.asynccontextmanager
async def proxied(backend: HttpBackend) -> AsyncIterator[Proxy]:
    config = (f'drain_timeout = "500ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\n'
              f'protocol = "http"\ncluster = "web"\n[clusters.web]\nendpoints = ["{backend.address}"]\n')
    async with Proxy.from_toml(config) as proxy:
        yield proxy
        await no_connection_left(proxy)   # only after a passing test: a failure's own error is the one to see


async def wait_still(read_counter, settle: float = 0.5, limit: float = 10.0) -> int:
    """Wait until read_counter() has not changed for `settle` seconds; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last, since = read_counter(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        now = read_counter()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= settle:
            break
    return last


async def held_back_upload(proxy: Proxy) -> tuple[socket.socket, int]:
    """Start a 1 GiB upload to a backend that leaves it unread; send until the socket has accepted nothing for
    half a second. The socket (still open) and the bytes it took."""
    host, port = proxy.addresses["web"]
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    sock.sendall(b"POST /sink?hash=0&wait_ms=30000 HTTP/1.1\r\nHost: up.test\r\n"
                 b"Content-Length: %d\r\n\r\n" % (1 << 30))
    written = 0
    block = b"u" * 65536
    stalled_since = None
    while written < 512 << 20:
        try:
            written += sock.send(block)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break
        await asyncio.sleep(0)          # the proxy and the backend share this loop
    return sock, written


@pytest.mark.timeout(60)
def test_upload_to_a_backend_that_does_not_read_is_held_back():
    """The backend leaves the body unread: the proxy must stop reading the client, so the client stalls early."""
    async def main():
        async with HttpBackend("sink") as backend, proxied(backend) as proxy:
            sock, written = await held_back_upload(proxy)
            assert written < BUFFER_BOUND, written
            assert backend.body_bytes_read == 0
            await backend.stop()            # the upstream goes away: the proxy must let the client go too
            sock.close()

    run(main())


@contextlib.asynccontextmanager
async def proxied_with(backend: HttpBackend, cluster_extra: str) -> AsyncIterator[Proxy]:
    config = (f'drain_timeout = "500ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\n'
              f'protocol = "http"\ncluster = "web"\n[clusters.web]\nendpoints = ["{backend.address}"]\n'
              + cluster_extra)
    async with Proxy.from_toml(config) as proxy:
        yield proxy
        await no_connection_left(proxy)


async def upstream_released(proxy: Proxy, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if proxy.active_connections == 0 and proxy.stats()["pools"]["web"]["open"] == 0:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.timeout(60)
def test_client_resetting_a_held_back_upload_releases_both_connections():
    """A client resets an upload the backend is not reading: the proxy is not reading that client either, but
    the RST raises EPOLLHUP/EPOLLERR at once; both sides are released, the upstream with a reset of its own
    (a FIN would queue behind the unsent body and never reach the backend)."""
    async def main():
        async with HttpBackend("sink") as backend, proxied(backend) as proxy:
            sock, written = await held_back_upload(proxy)
            assert written < BUFFER_BOUND and backend.active == 1 and proxy.active_connections == 1
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            assert await upstream_released(proxy, 2.0)

    run(main())


@pytest.mark.timeout(60)
def test_client_closing_a_held_back_upload_is_released_by_the_try_timeout():
    """A client closes (FIN) mid-upload while its receive window at the proxy is zero: the FIN queues behind its
    unsent bytes and cannot arrive, so no proxy can see it. The try's timeout releases both sides."""
    async def main():
        async with HttpBackend("sink") as backend, proxied_with(backend, 'per_try_timeout = "1s"\n') as proxy:
            sock, written = await held_back_upload(proxy)
            assert written < BUFFER_BOUND and proxy.active_connections == 1
            sock.close()
            assert await upstream_released(proxy, 5.0)

    run(main())


@pytest.mark.timeout(60)
def test_download_to_a_client_that_does_not_read_is_held_back():
    """The client stops reading: the proxy must stop reading the backend, so the backend's writes stall early;
    when the client reads again the stream resumes where it stopped, byte-exact."""
    async def main():
        async with HttpBackend("source") as backend, proxied(backend) as proxy:
            host, port = proxy.addresses["web"]
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: down.test\r\n\r\n" % (1 << 30))
            head = await asyncio.wait_for(read_response_head(reader), 5)
            assert head.status == 200
            sent = await wait_still(lambda: backend.body_bytes_sent)
            assert sent < BUFFER_BOUND, sent
            checker = PatternChecker()
            while checker.length < sent + (32 << 20):
                checker.feed(await asyncio.wait_for(reader.read(1 << 20), 5))
            assert checker.ok
            assert backend.body_bytes_sent > sent               # the backend was let go again
            writer.close()

    run(main())


@pytest.mark.timeout(60)
def test_client_gone_mid_download_releases_the_upstream():
    """The client reads a little of a huge body and leaves: the proxy closes the upstream connection rather than
    draining (or pooling) it."""
    async def main():
        async with HttpBackend("source") as backend, proxied(backend) as proxy:
            host, port = proxy.addresses["web"]
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: down.test\r\n\r\n" % (1 << 30))
            assert (await asyncio.wait_for(read_response_head(reader), 5)).status == 200
            checker = PatternChecker()
            while checker.length < 1 << 20:
                checker.feed(await asyncio.wait_for(reader.read(1 << 20), 5))
            assert checker.ok
            writer.close()
            for _ in range(60):
                if backend.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert backend.active == 0
            assert backend.body_bytes_sent < BUFFER_BOUND
            for _ in range(60):
                if proxy.active_connections == 0:
                    break
                await asyncio.sleep(0.05)
            assert proxy.active_connections == 0

    run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_download_byte_exact(framing):
    size = 64 << 20
    query = {"length": "", "chunked": "&chunked=1", "close": "&close=1"}[framing]

    async def main():
        async with HttpBackend("source") as backend, proxied(backend) as proxy:
            host, port = proxy.addresses["web"]
            async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
                checker = PatternChecker()
                async with c.stream("GET", f"http://{host}:{port}/bytes?n={size}{query}") as r:
                    assert r.status_code == 200
                    async for data in r.aiter_bytes():
                        checker.feed(data)
                assert checker.length == size and checker.ok

    run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_upload_byte_exact(chunked):
    size = 64 << 20

    async def main():
        async with HttpBackend("sink") as backend, proxied(backend) as proxy:
            host, port = proxy.addresses["web"]
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
            writer.write(b"POST /sink HTTP/1.1\r\nHost: up.test\r\n%s\r\n\r\n" % framing)
            digest = hashlib.sha256()
            for piece in pattern_chunks(size):
                digest.update(piece)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\nx-upload-done: yes\r\n\r\n")
            answer = (await asyncio.wait_for(read_response(reader), 30)).json()
            assert answer["length"] == size and answer["pattern"] is True
            assert answer["sha256"] == digest.hexdigest()
            if chunked:
                assert [[k.lower(), v] for k, v in answer["trailers"]] == [["x-upload-done", "yes"]]
            writer.close()

    run(main())


# ---- 1 GiB each way through `fastmesh run` ------------------------------------------------------------------------

class FastmeshRun:
    """A `fastmesh run` process (one worker) proxying http to `backend`; its log in a file; ended by stop()."""

    def __init__(self, tmp_path: Path, backend: HttpBackend) -> None:
        self.port = free_port()
        self.config = tmp_path / "fastmesh.toml"
        self.config.write_text(
            f'workers = 1\ndrain_timeout = "1s"\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{self.port}"\nprotocol = "http"\ncluster = "web"\n'
            f'[clusters.web]\nendpoints = ["{backend.address}"]\n')
        self.log_path = tmp_path / "fastmesh.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "run", str(self.config)], cwd=tmp_path,
                                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.worker = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while not re.search(r"ready: \d+ worker\(s\) serving", self.log()):
            assert self.proc.poll() is None and time.monotonic() < deadline, f"not serving:\n{self.log()}"
            await asyncio.sleep(0.05)
        self.worker = int(re.findall(r"w0 started \(pid (\d+)\)", self.log())[-1])
        # The process that proxies, not the supervisor (nor the fork server): forked, or a fresh `_worker` interpreter.
        with open(f"/proc/{self.worker}/comm") as f, open(f"/proc/{self.worker}/cmdline", "rb") as g:
            assert f.read().strip() == "fastmesh-worker" or b"\0_worker\0" in g.read()

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the worker, in bytes."""
        with open(f"/proc/{self.worker}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    def stop(self) -> None:
        """End the supervisor, then the worker if it outlived it (only if it is still ours: its cmdline names our
        config)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.worker:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{self.worker}/cmdline", "rb") as f:
                    ours = str(self.config).encode() in f.read()
                if ours:
                    os.kill(self.worker, signal.SIGKILL)


class MemoryWatch:
    """Samples the worker's RSS every 10 ms while a transfer runs; `growth` is the peak over the baseline."""

    def __init__(self, fm: FastmeshRun) -> None:
        self.fm = fm
        self.baseline, self.hwm_before = fm.memory()
        self.peak = self.baseline
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.fm.memory()[0])
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        rss, hwm = self.fm.memory()
        self.peak = max(self.peak, rss)
        # The kernel's high-water mark catches a spike between two samples.
        self.hwm_growth = max(0, hwm - self.hwm_before)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@contextlib.asynccontextmanager
async def fastmesh_run(tmp_path: Path, backend: HttpBackend) -> AsyncIterator[FastmeshRun]:
    fm = FastmeshRun(tmp_path, backend)
    try:
        await fm.ready()
        # Warm up: the first requests allocate what every later request reuses (pools, buffers, caches).
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fm.port}", timeout=10, trust_env=False) as c:
            for _ in range(3):
                assert (await c.get("/bytes?n=4000000")).status_code == 200
                assert (await c.post("/sink?hash=0", content=b"w" * 4000000)).status_code == 200
        yield fm
    finally:
        fm.stop()


@pytest.mark.timeout(300)
def test_one_gib_download_keeps_proxy_memory_flat(tmp_path):
    async def main():
        async with HttpBackend("source") as backend, fastmesh_run(tmp_path, backend) as fm:
            reader, writer = await asyncio.open_connection("127.0.0.1", fm.port, limit=1 << 22)
            writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: big.test\r\n\r\n" % STREAM_BYTES)
            head = await asyncio.wait_for(read_response_head(reader), 10)
            assert head.status == 200 and head.header("Content-Length") == str(STREAM_BYTES)
            watch = MemoryWatch(fm)
            checker = PatternChecker()
            paused_at = None
            t0 = time.monotonic()
            while checker.length < STREAM_BYTES:
                data = await asyncio.wait_for(reader.read(1 << 20), 30)
                assert data, f"connection closed after {checker.length} bytes"
                checker.feed(data)
                if paused_at is None and checker.length >= STREAM_BYTES // 2:
                    # Stop reading a while: a proxy without backpressure would now buffer what the backend sends.
                    await asyncio.sleep(PAUSE)
                    paused_at = checker.length
                    ahead = backend.body_bytes_sent - paused_at
                    assert ahead < BUFFER_BOUND, f"the backend got {ahead} bytes ahead of a client that stopped"
            elapsed = time.monotonic() - t0
            await watch.stop()
            writer.close()
            assert checker.length == STREAM_BYTES and checker.ok
            print(f"\n1 GiB download: {STREAM_BYTES / elapsed / 1e6:.0f} MB/s (with a {PAUSE}s pause), "
                  f"RSS {watch.baseline >> 20} MiB, growth {watch.growth >> 10} KiB, "
                  f"high-water growth {watch.hwm_growth >> 10} KiB")
            assert watch.growth < MEMORY_SLACK, watch.growth
            assert watch.hwm_growth < MEMORY_SLACK, watch.hwm_growth

    run(main())


@pytest.mark.timeout(300)
def test_one_gib_upload_keeps_proxy_memory_flat(tmp_path):
    async def main():
        async with HttpBackend("sink") as backend, fastmesh_run(tmp_path, backend) as fm:
            reader, writer = await asyncio.open_connection("127.0.0.1", fm.port, limit=1 << 22)
            # The backend waits PAUSE before reading: meanwhile the client must be held back, not buffered for.
            writer.write(b"POST /sink?hash=0&wait_ms=%d HTTP/1.1\r\nHost: big.test\r\nContent-Length: %d\r\n\r\n"
                         % (int(PAUSE * 1000), STREAM_BYTES))
            watch = MemoryWatch(fm)
            sent = 0
            sent_during_pause = None
            t0 = time.monotonic()
            for piece in pattern_chunks(STREAM_BYTES):
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
                if sent_during_pause is None and time.monotonic() - t0 > PAUSE * 0.8:
                    sent_during_pause = sent
            if sent_during_pause is None:       # a body so small (FASTMESH_E2E_STREAM_BYTES) it all fit
                sent_during_pause = sent
            answer = (await asyncio.wait_for(read_response(reader), 60)).json()
            elapsed = time.monotonic() - t0
            await watch.stop()
            writer.close()
            assert answer["length"] == STREAM_BYTES and answer["pattern"] is True
            assert sent_during_pause < BUFFER_BOUND, sent_during_pause
            print(f"\n1 GiB upload: {STREAM_BYTES / elapsed / 1e6:.0f} MB/s (after a {PAUSE}s hold), "
                  f"RSS {watch.baseline >> 20} MiB, growth {watch.growth >> 10} KiB, "
                  f"high-water growth {watch.hwm_growth >> 10} KiB")
            assert watch.growth < MEMORY_SLACK, watch.growth
            assert watch.hwm_growth < MEMORY_SLACK, watch.hwm_growth

    run(main())
