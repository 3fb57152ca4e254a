"""The PROXY protocol end to end, with HAProxy (Debian's haproxy) as the real peer on 127.0.0.1: its send-proxy and
send-proxy-v2 in front of fastmesh listeners with proxy_protocol, and its accept-proxy behind fastmesh clusters
that send the header; refusals of connections that bring none. Clients connect from other loopback addresses
(127.0.0.5, 127.0.0.6) so the address a header carries differs from the one fastmesh's socket sees (HAProxy's)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import echo, start_backends
from fastmesh._testbase.curl import CURL
from fastmesh._testbase.http_backend import HttpBackend, read_response
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pki

HAPROXY = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy") or None
pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")]

DEFAULTS = """global
    maxconn 200
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def haproxy(tmp_path: Path, config: str, port: int) -> AsyncIterator[None]:
    """HAProxy in the foreground with `config`, until it listens on `port`; stopped by its PID afterwards."""
    path = tmp_path / f"haproxy-{port}.cfg"
    path.write_text(DEFAULTS + config)
    assert HAPROXY is not None
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "haproxy exited"
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("haproxy did not start listening")
        yield
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


async def get(port: int, path: str, source: str, *, requests: int = 1) -> list[bytes]:
    """`requests` GETs on one keep-alive connection from `source` to 127.0.0.1:port: their bodies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    bodies = []
    try:
        for _ in range(requests):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: pp.test\r\n\r\n".encode())
            resp = await asyncio.wait_for(read_response(reader), 20)
            assert resp.status == 200, resp
            bodies.append(resp.body)
    finally:
        writer.close()
    return bodies


def forwarded_for(body: bytes) -> str:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}["x-forwarded-for"]


async def wait_for(what, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_send_proxy_gives_fastmesh_the_client_address(tmp_path, send):
    """HAProxy relays clients from 127.0.0.5 with a PROXY header: the backend's X-Forwarded-For and fastmesh's
    access log name 127.0.0.5, not HAProxy's 127.0.0.1; HTTP/2 by prior knowledge gets it too."""
    async def main():
        fm, hp = free_port(), free_port()
        log = tmp_path / "access.jsonl"
        async with HttpBackend("web-0") as backend:
            proxy = Proxy.from_toml(
                f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{fm}"\nprotocol = "http"\ncluster = "web"\n'
                f'proxy_protocol = true\naccess_log = {{ format = "json", path = "{log}" }}\n'
                f'[clusters.web]\nendpoints = ["{backend.address}"]\n')
            await proxy.start()
            try:
                async with haproxy(tmp_path, f"frontend fe\n    mode tcp\n    bind 127.0.0.1:{hp}\n"
                                   f"    default_backend be\nbackend be\n    mode tcp\n"
                                   f"    server fm 127.0.0.1:{fm} {send}\n", hp):
                    bodies = await get(hp, "/echo", "127.0.0.5", requests=2)
                    assert [forwarded_for(b) for b in bodies] == ["127.0.0.5", "127.0.0.5"]
                    if CURL is not None:
                        out = await asyncio.create_subprocess_exec(
                            CURL, "-s", "--max-time", "20", "--http2-prior-knowledge", "--interface", "127.0.0.6",
                            f"http://127.0.0.1:{hp}/echo", stdout=asyncio.subprocess.PIPE)
                        body, _ = await asyncio.wait_for(out.communicate(), 30)
                        assert forwarded_for(body) == "127.0.0.6"
                    records = await wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2
                                             and [json.loads(x) for x in log.read_text().splitlines()])
                    assert records[0]["client"] == "127.0.0.5"
                stats = proxy.stats()["proxy_protocol"]["edge"]
                assert stats["passed"] >= 2 and stats["refused"] == {}
            finally:
                await proxy.stop()

    run(main())


def test_tcp_listener_strips_the_header_and_relays_the_rest(tmp_path):
    """A tcp listener that takes v2 only: the echo backend gets the client's bytes without the header; HAProxy's v1
    header is refused as the wrong version."""
    async def main():
        (backend,) = await start_backends(1, echo)
        fm, v2_port, v1_port = free_port(), free_port(), free_port()
        proxy = Proxy.from_toml(
            f'[[listeners]]\nname = "tcp-in"\nlisten = "127.0.0.1:{fm}"\nprotocol = "tcp"\ncluster = "echo"\n'
            f'proxy_protocol = "v2"\n[clusters.echo]\nendpoints = ["{backend.address}"]\n')
        await proxy.start()
        try:
            async with haproxy(tmp_path, f"frontend v2\n    mode tcp\n    bind 127.0.0.1:{v2_port}\n"
                               f"    default_backend v2\nbackend v2\n    mode tcp\n"
                               f"    server fm 127.0.0.1:{fm} send-proxy-v2\n"
                               f"frontend v1\n    mode tcp\n    bind 127.0.0.1:{v1_port}\n"
                               f"    default_backend v1\nbackend v1\n    mode tcp\n"
                               f"    server fm 127.0.0.1:{fm} send-proxy\n", v2_port):
                reader, writer = await asyncio.open_connection("127.0.0.1", v2_port, local_addr=("127.0.0.5", 0))
                writer.write(b"hello through the gate")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 20) == b"hello through the gate"
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", v1_port)
                writer.write(b"never relayed")
                assert await asyncio.wait_for(reader.read(), 20) == b""
                writer.close()
            stats = await wait_for(lambda: proxy.stats()["proxy_protocol"]["tcp-in"]["refused"]
                                   and proxy.stats()["proxy_protocol"]["tcp-in"])
            assert stats["passed"] >= 1 and stats["refused"] == {"version": 1}   # (the start-up probe may pass too)
        finally:
            await proxy.stop()
            await backend.stop()

    run(main())


def test_tls_listener_reads_the_header_before_the_client_hello(tmp_path):
    """A tcp listener terminating TLS behind HAProxy's send-proxy-v2 (HAProxy relays the TLS bytes as they are): the
    header comes off first, the handshake follows, the bytes inside reach the backend."""
    pki = Pki(tmp_path)
    cert = pki.issue("edge.test")

    async def main():
        (backend,) = await start_backends(1, echo)
        fm, hp = free_port(), free_port()
        proxy = Proxy.from_toml(
            f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{fm}"\nprotocol = "tcp"\ncluster = "echo"\n'
            f'proxy_protocol = true\ntls = {{ cert = "{cert.cert}", key = "{cert.key}" }}\n'
            f'[clusters.echo]\nendpoints = ["{backend.address}"]\n')
        await proxy.start()
        try:
            async with haproxy(tmp_path, f"frontend fe\n    mode tcp\n    bind 127.0.0.1:{hp}\n"
                               f"    default_backend be\nbackend be\n    mode tcp\n"
                               f"    server fm 127.0.0.1:{fm} send-proxy-v2\n", hp):
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", hp, ssl=pki.client_context(), server_hostname="edge.test",
                    local_addr=("127.0.0.5", 0)), 20)
                writer.write(b"inside TLS")
                assert await asyncio.wait_for(reader.readexactly(10), 20) == b"inside TLS"
                assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
                writer.close()
            assert proxy.stats()["tls"]["listeners"]["edge"]["handshakes"] >= 1
            assert proxy.stats()["proxy_protocol"]["edge"]["refused"] == {}
        finally:
            await proxy.stop()
            await backend.stop()

    run(main())


def test_connections_without_a_valid_header_are_refused():
    """No header, garbage, a header cut short and then silence (refused when proxy_protocol_timeout passes), a
    client that leaves mid-header: each closed without an answer and counted by reason; a valid one still passes."""
    async def main():
        fm = free_port()
        async with HttpBackend("web-0") as backend:
            proxy = Proxy.from_toml(
                f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{fm}"\nprotocol = "http"\ncluster = "web"\n'
                f'proxy_protocol = true\nproxy_protocol_timeout = "500ms"\n'
                f'[clusters.web]\nendpoints = ["{backend.address}"]\n')
            await proxy.start()
            try:
                async def closed_after(data: bytes, eof: bool = False) -> float:
                    reader, writer = await asyncio.open_connection("127.0.0.1", fm)
                    started = time.monotonic()
                    try:
                        for i in range(0, len(data), 4):      # trickled: the header arrives in pieces
                            writer.write(data[i:i + 4])
                            await asyncio.sleep(0.02)
                        if eof:
                            writer.write_eof()
                        assert await asyncio.wait_for(reader.read(), 10) == b""
                    except (RuntimeError, ConnectionError):
                        pass                                  # closed while we wrote: refused at its first bytes
                    writer.close()
                    return time.monotonic() - started

                await closed_after(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                await closed_after(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                waited = await closed_after(b"PROXY TCP4 10.1.2.3 ")
                assert 0.4 <= waited < 5.0, waited
                await closed_after(b"PROXY TCP4 10.1.2.3 10.0.0.1 4", eof=True)
                await closed_after(b"PROXY TCP4 10.1.2.3 10.0.0.1 4000 80\n")
                # A valid header in two pieces (the connection waits in the epoll set in between) passes.
                reader, writer = await asyncio.open_connection("127.0.0.1", fm)
                writer.write(b"PROXY TCP4 10.1.2.3 10.0.")
                await asyncio.sleep(0.1)
                writer.write(b"0.1 40000 80\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                resp = await asyncio.wait_for(read_response(reader), 20)
                assert forwarded_for(resp.body) == "10.1.2.3"
                writer.close()
                assert backend.requests == 1
                stats = proxy.stats()["proxy_protocol"]["edge"]
                assert stats["refused"] == {"not_proxy": 2, "timeout": 1, "closed": 1, "malformed": 1}
                assert stats["passed"] == 1 and stats["waiting"] == 0
            finally:
                await proxy.stop()

    run(main())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_clusters_send_the_header_haproxy_accepts(tmp_path, version):
    """Clusters with proxy_protocol in front of HAProxy's accept-proxy, which answers with the source it was told:
    over an http listener (the client's address and port; a keep-alive client's requests reuse its own upstream
    connection, another client gets its own) and over a tcp listener."""
    async def main():
        http_port, tcp_port, hp = free_port(), free_port(), free_port()
        proxy = Proxy.from_toml(
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{http_port}"\nprotocol = "http"\ncluster = "hp"\n'
            f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{tcp_port}"\nprotocol = "tcp"\ncluster = "hp"\n'
            f'[clusters.hp]\nendpoints = ["127.0.0.1:{hp}"]\nproxy_protocol = "{version}"\n')
        await proxy.start()
        try:
            async with haproxy(tmp_path, f"frontend fe\n    mode http\n    bind 127.0.0.1:{hp} accept-proxy\n"
                               '    http-request return status 200 content-type text/plain '
                               'lf-string "%[src] %[src_port] %[dst] %[dst_port]"\n', hp):
                reader, writer = await asyncio.open_connection("127.0.0.1", http_port, local_addr=("127.0.0.5", 0))
                sport = writer.get_extra_info("sockname")[1]
                seen = []
                for _ in range(3):
                    writer.write(b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
                    seen.append((await asyncio.wait_for(read_response(reader), 20)).body.decode())
                writer.close()
                assert seen == [f"127.0.0.5 {sport} 127.0.0.1 {http_port}"] * 3
                other = await get(http_port, "/", "127.0.0.6")
                assert other[0].decode().startswith("127.0.0.6 ")
                pool = proxy.stats()["pools"]["hp"]
                assert pool["opened"] == 2 and pool["reuses"] == 2
                # The tcp relay: the request bytes pass untouched after the header.
                raw = await get(tcp_port, "/", "127.0.0.5")
                assert raw[0].decode().startswith("127.0.0.5 ") and raw[0].decode().endswith(f" {tcp_port}")
        finally:
            await proxy.stop()

    run(main())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_header_passed_on_names_the_original_client_and_destination(tmp_path, version):
    """HAProxy (send-proxy-v2) in front of fastmesh listeners with proxy_protocol, whose cluster sends the header to a
    second HAProxy's accept-proxy: that one is told the original client (127.0.0.5 and its port) and the address the
    client connected to (the first HAProxy's address and port), not fastmesh's own listener address; over an http
    listener and a tcp one. A LOCAL header (HAProxy's health checks send one) leaves the connection's own ends."""
    async def main():
        http_port, tcp_port, front, back = free_port(), free_port(), free_port(), free_port()
        tcp_front = free_port()
        proxy = Proxy.from_toml(
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{http_port}"\nprotocol = "http"\ncluster = "hp"\n'
            f'proxy_protocol = true\n'
            f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{tcp_port}"\nprotocol = "tcp"\ncluster = "hp"\n'
            f'proxy_protocol = true\n'
            f'[clusters.hp]\nendpoints = ["127.0.0.1:{back}"]\nproxy_protocol = "{version}"\n')
        await proxy.start()
        try:
            async with haproxy(tmp_path, f"frontend fe\n    mode http\n    bind 127.0.0.1:{back} accept-proxy\n"
                               '    http-request return status 200 content-type text/plain '
                               'lf-string "%[src] %[src_port] %[dst] %[dst_port]"\n', back), \
                    haproxy(tmp_path, f"frontend fe\n    mode tcp\n    bind 127.0.0.7:{front}\n"
                            f"    bind 127.0.0.1:{tcp_front}\n    use_backend raw if {{ dst_port {tcp_front} }}\n"
                            "    default_backend web\n"
                            f"backend web\n    mode tcp\n    server fm 127.0.0.1:{http_port} send-proxy-v2\n"
                            f"backend raw\n    mode tcp\n    server fm 127.0.0.1:{tcp_port} send-proxy-v2\n",
                            tcp_front):
                reader, writer = await asyncio.open_connection("127.0.0.7", front, local_addr=("127.0.0.5", 0))
                sport = writer.get_extra_info("sockname")[1]
                seen = []
                for _ in range(2):
                    writer.write(b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
                    seen.append((await asyncio.wait_for(read_response(reader), 20)).body.decode())
                writer.close()
                assert seen == [f"127.0.0.5 {sport} 127.0.0.7 {front}"] * 2
                reader, writer = await asyncio.open_connection("127.0.0.1", tcp_front, local_addr=("127.0.0.6", 0))
                sport = writer.get_extra_info("sockname")[1]
                writer.write(b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
                raw = (await asyncio.wait_for(read_response(reader), 20)).body.decode()
                writer.close()
                assert raw == f"127.0.0.6 {sport} 127.0.0.1 {tcp_front}"
                # A client straight to the listener with a LOCAL header: the connection's own ends stand (and the
                # fd it reuses keeps no destination from an earlier connection).
                reader, writer = await asyncio.open_connection("127.0.0.1", http_port, local_addr=("127.0.0.6", 0))
                sport = writer.get_extra_info("sockname")[1]
                writer.write(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
                local = (await asyncio.wait_for(read_response(reader), 20)).body.decode()
                writer.close()
                assert local == f"127.0.0.6 {sport} 127.0.0.1 {http_port}"
        finally:
            await proxy.stop()

    run(main())


def test_alternating_clients_each_keep_their_own_pooled_connection(tmp_path):
    """A PROXY cluster's idle connections each wait for their own client: two keep-alive clients taking turns (never
    more than one request in flight) keep one upstream connection each, although the pool's recent peak use is one."""
    async def main():
        http_port, hp = free_port(), free_port()
        proxy = Proxy.from_toml(
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{http_port}"\nprotocol = "http"\ncluster = "hp"\n'
            f'[clusters.hp]\nendpoints = ["127.0.0.1:{hp}"]\nproxy_protocol = "v2"\n')
        await proxy.start()
        try:
            async with haproxy(tmp_path, f"frontend fe\n    mode http\n    bind 127.0.0.1:{hp} accept-proxy\n"
                               '    http-request return status 200 content-type text/plain lf-string "%[src]"\n', hp):
                clients = [await asyncio.open_connection("127.0.0.1", http_port, local_addr=(ip, 0))
                           for ip in ("127.0.0.5", "127.0.0.6")]
                for _ in range(3):
                    for (reader, writer), ip in zip(clients, ("127.0.0.5", "127.0.0.6")):
                        writer.write(b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n")
                        assert (await asyncio.wait_for(read_response(reader), 20)).body.decode() == ip
                for _, writer in clients:
                    writer.close()
                pool = proxy.stats()["pools"]["hp"]
                assert pool["opened"] == 2 and pool["reuses"] == 4
        finally:
            await proxy.stop()

    run(main())
