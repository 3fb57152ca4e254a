"""The access log's file is closed: by close(), when its writer is dropped (a reload replaced it), and when the
Proxy stops; no ResourceWarning for it, whatever the order. Real Proxy, real backend, real client on 127.0.0.1."""
from __future__ import annotations

import asyncio
import gc
import http.client
import os
import sys
import warnings
from pathlib import Path

import pytest

from fastmesh import Proxy
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port
from fastmesh.config.schema import AccessLog
from fastmesh.dataplane.access_log import build_access_log

pytestmark = pytest.mark.timeout(60)
WAIT = 5.0
FIELDS = ("GET", "a.example", "/x", 200, 10, 20, "127.0.0.1:1", 0.0015, "rid", "127.0.0.2", "web", 0, 0, "", "", "")


def open_fds_to(path: Path) -> list[str]:
    """This process's file descriptors open on path."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                out.append(fd)
        except OSError:
            pass                                    # the fd listdir itself used, already closed
    return out


def test_writer_close_and_drop(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = build_access_log(AccessLog(format="json", path=str(path)), "web")
    assert writer is not None
    writer(FIELDS)
    assert open_fds_to(path)
    writer.close()
    writer.close()                                  # twice is fine
    writer(FIELDS)                                  # after close: dropped, not an error
    assert open_fds_to(path) == []
    assert path.read_text().count("\n") == 1 and '"duration_ms": 1.5' in path.read_text()

    # Dropped without close(): the file is closed, without a ResourceWarning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dropped = build_access_log(AccessLog(format="plain", path=str(path)), "web")
        assert dropped is not None
        dropped(FIELDS)
        del dropped
        gc.collect()
    assert open_fds_to(path) == []
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    assert '"GET a.example/x" 200 10 20 127.0.0.1:1 1.500ms' in path.read_text().splitlines()[1]

    # stderr is not ours to close.
    to_stderr = build_access_log(AccessLog(path="-"), "web")
    assert to_stderr is not None
    to_stderr.close()
    assert not sys.stderr.closed


def _config(backend: HttpBackend, port: int, log_path: Path) -> str:
    return (f'drain_timeout = "500ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\n'
            f'protocol = "http"\ncluster = "web"\naccess_log = {{ path = "{log_path}" }}\n'
            f'[clusters.web]\nendpoints = ["{backend.address}"]\n')


async def _get(port: int) -> int:
    def fetch() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()
    return await asyncio.to_thread(fetch)


async def _lines(path: Path, count: int) -> None:
    for _ in range(100):
        if path.exists() and path.read_text().count("\n") >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} lines in {path}")


def test_reload_closes_the_replaced_log_and_no_warning_after_stop(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    port = free_port()

    async def main() -> None:
        async with HttpBackend("web-0") as backend:
            proxy = Proxy.from_toml(_config(backend, port, first))
            await proxy.start()
            try:
                assert await _get(port) == 200
                await _lines(first, 1)
                # A reload that moves the log: the old file is closed as the listener takes its new writer.
                await proxy.reload(Proxy.from_toml(_config(backend, port, second)).config)
                gc.collect()
                assert open_fds_to(first) == []
                assert await _get(port) == 200
                await _lines(second, 1)
                assert first.read_text().count("\n") == 1
            finally:
                await proxy.stop()
            del proxy
            gc.collect()
            assert open_fds_to(second) == []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_stop_closes_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    port = free_port()

    async def main() -> None:
        async with HttpBackend("web-0") as backend:
            async with Proxy.from_toml(_config(backend, port, path)) as proxy:
                assert await _get(port) == 200
                await _lines(path, 1)
            assert proxy is not None                # still referenced: only stop() can have closed the file
            assert open_fds_to(path) == []

    asyncio.run(main())
