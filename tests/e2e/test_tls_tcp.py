"""TLS on tcp listeners end to end: termination, SNI, ALPN, resumption, origination, passthrough, and the bad-input
matrix (each a clean refusal, a counter and a log line, while good clients go on being served)."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import echo, start_backends
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pki, TlsEchoBackend

pytestmark = pytest.mark.timeout(120)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return f'"{value}"'


def config(port: int, endpoints: list[str], tls: dict[str, Any] | None = None,
           cluster_tls: dict[str, Any] | None = None, **listener: Any) -> str:
    text = f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{port}"\ncluster = "backend"\n'
    for k, v in listener.items():
        text += f"{k} = {_toml(v)}\n"
    if tls is not None:
        text += f"tls = {_toml(tls)}\n"
    text += f"[clusters.backend]\nendpoints = {_toml(endpoints)}\n"
    if cluster_tls is not None:
        text += f"tls = {_toml(cluster_tls)}\n"
    return text


async def start(text: str) -> tuple[Proxy, int]:
    proxy = Proxy.from_toml(text)
    await proxy.start()
    return proxy, proxy.addresses["edge"][1]


async def tls_echo(port: int, ctx: ssl.SSLContext, name: str | None, payload: bytes = b"ping") -> tuple[bytes, Any]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), 10)
    writer.write(payload)
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    obj = writer.get_extra_info("ssl_object")
    writer.close()
    return got, obj


def tls_stats(proxy: Proxy) -> dict[str, Any]:
    return proxy.stats()["tls"]["listeners"]["edge"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_termination_relays_plaintext_both_ways_byte_exact(pki: Pki) -> None:
    """16 MiB each way through a terminating listener at once: checksums equal."""
    server = pki.issue("web.test")

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        proxy, port = await start(config(free_port(), [backend.address], {"cert": server.cert, "key": server.key}))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                       server_hostname="web.test", limit=1 << 22)
        size = 16 << 20
        chunk = os.urandom(1 << 20)
        sent = hashlib.sha256()

        async def send() -> None:
            for i in range(size // len(chunk)):
                block = i.to_bytes(8, "little") + chunk[8:]
                sent.update(block)
                writer.write(block)
                await writer.drain()

        sender = asyncio.create_task(send())
        got, total = hashlib.sha256(), 0
        while total < size:
            data = await asyncio.wait_for(reader.read(1 << 20), 20)
            assert data
            got.update(data)
            total += len(data)
        await sender
        writer.close()
        stats = proxy.stats()
        await proxy.stop()
        await backend.stop()
        assert total == size and got.hexdigest() == sent.hexdigest()
        assert stats["listeners"]["edge"]["bytes_in"] == size == stats["listeners"]["edge"]["bytes_out"]
        assert stats["tls"]["listeners"]["edge"]["handshakes"] == 1

    run(main())


def test_backend_half_close_reaches_the_client_as_close_notify(pki: Pki) -> None:
    """The backend's FIN becomes our close_notify (the client reads EOF), and the client may still send after it."""
    server = pki.issue("web.test")
    received: list[bytes] = []

    async def speak_then_listen(backend: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\n")
        writer.write_eof()
        received.append(await reader.read())

    async def main() -> None:
        from fastmesh._testbase.backends import Backend
        backend = await Backend(speak_then_listen).start()
        proxy, port = await start(config(free_port(), [backend.address], {"cert": server.cert, "key": server.key}))

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with pki.client_context().wrap_socket(raw, server_hostname="web.test") as s:
                    got = b""
                    while chunk := s.recv(100):
                        got += chunk
                    s.sendall(b"late words")
                    return got

        got = await asyncio.to_thread(client)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        await proxy.stop()
        await backend.stop()
        assert got == b"banner\n"
        assert received == [b"late words"]

    run(main())


def test_sni_picks_the_certificate_exact_then_wildcard_then_default(pki: Pki) -> None:
    default = pki.issue("default.test")
    exact = pki.issue("api.example.test")
    wild = pki.issue("*.apps.test")

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        tls = {"cert": default.cert, "key": default.key,
               "certificates": [{"cert": exact.cert, "key": exact.key}, {"cert": wild.cert, "key": wild.key}]}
        proxy, port = await start(config(free_port(), [backend.address], tls))
        seen = {}
        for name in ("api.example.test", "x.apps.test", "API.Example.Test", "default.test"):
            _, obj = await tls_echo(port, pki.client_context(), name)
            seen[name] = obj.getpeercert()["subjectAltName"]
        # No SNI, or a name nobody serves: the default certificate (verification off to see which one it is).
        loose = ssl.create_default_context()
        loose.check_hostname = False
        loose.verify_mode = ssl.CERT_NONE
        _, obj = await tls_echo(port, loose, "unknown.test")
        unknown = obj.getpeercert(binary_form=True)
        await proxy.stop()
        await backend.stop()
        assert seen["api.example.test"] == (("DNS", "api.example.test"),)
        assert seen["API.Example.Test"] == (("DNS", "api.example.test"),)
        assert seen["x.apps.test"] == (("DNS", "*.apps.test"),)
        assert seen["default.test"] == (("DNS", "default.test"),)
        assert unknown == ssl.PEM_cert_to_DER_cert(Path(default.cert).read_text().split("-----END CERTIFICATE-----")[0]
                                                   + "-----END CERTIFICATE-----\n")

    run(main())


def test_alpn_prefers_our_order_and_openssl_s_client_sees_it(pki: Pki) -> None:
    server = pki.issue("web.test")

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        proxy, port = await start(config(free_port(), [backend.address],
                                         {"cert": server.cert, "key": server.key, "alpn": ["h2", "http/1.1"]}))
        _, both = await tls_echo(port, pki.client_context(alpn=["http/1.1", "h2"]), "web.test")
        _, old = await tls_echo(port, pki.client_context(alpn=["http/1.1"]), "web.test")
        _, other = await tls_echo(port, pki.client_context(alpn=["spdy/3"]), "web.test")
        s_client = None
        if shutil.which("openssl"):
            s_client = await asyncio.to_thread(
                subprocess.run, ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "web.test",
                                 "-alpn", "h2", "-CAfile", pki.ca_file, "-verify_return_error"],
                input=b"", capture_output=True, timeout=20)
        await proxy.stop()
        await backend.stop()
        assert both.selected_alpn_protocol() == "h2"
        assert old.selected_alpn_protocol() == "http/1.1"
        assert other.selected_alpn_protocol() is None          # nothing in common: no ALPN, not a refusal
        if s_client is not None:
            assert b"ALPN protocol: h2" in s_client.stdout, s_client.stdout[-2000:]
            assert b"Verify return code: 0 (ok)" in s_client.stdout

    run(main())


def test_session_tickets_resume(pki: Pki) -> None:
    server = pki.issue("web.test")

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        proxy, port = await start(config(free_port(), [backend.address], {"cert": server.cert, "key": server.key}))
        ctx = pki.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2      # the session is there right after the handshake

        def resume() -> list[bool]:
            """Three connections, each offering the previous one's session (blocking sockets: asyncio cannot)."""
            out = []
            sess = None
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="web.test", session=sess) as s:
                        s.sendall(b"y")
                        s.recv(1)
                        out.append(s.session_reused)
                        sess = s.session
            return out

        later = await asyncio.to_thread(resume)
        stats = tls_stats(proxy)
        await proxy.stop()
        await backend.stop()
        assert later == [False, True, True]
        assert stats["resumed"] == 2 and stats["handshakes"] == 3

    run(main())


# ---- the bad-input matrix ---------------------------------------------------------------------------------------

def _handshake(port: int, ctx: ssl.SSLContext, name: str | None = "web.test", send: bytes = b"x") -> str:
    """Connect, handshake and exchange one byte in a thread: "ok" or the error's text."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(send)
                got = s.recv(1)
                return "ok" if got == send[:1] else f"closed ({got!r})"
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes and read what comes back until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def _hello(name: str = "web.test") -> bytes:
    """The first flight of a real ClientHello (made by Python's ssl with memory BIOs)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _metrics(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The proxy's counters as /metrics renders them, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families
    from fastmesh.admin.metrics import ProcessInfo, render
    from fastmesh.dataplane.stats import Snapshot
    assert proxy._stats_layout is not None and proxy._stats_block is not None
    text = render(Snapshot.of_block(proxy._stats_layout, proxy._stats_block),
                  ProcessInfo(version="t", started=0.0, config_hash="x", workers=1, workers_ready=1)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_bad_inputs_each_refused_counted_and_logged(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    server = pki.issue("web.test")
    client = pki.issue("spiffe://mesh.test/ns/a/sa/client")
    expired = pki.issue("spiffe://mesh.test/ns/a/sa/old", expired=True)
    stranger = pki.issue("spiffe://other.test/ns/a/sa/x", ca=pki.other)

    async def main() -> dict[str, Any]:
        (backend,) = await start_backends(1, echo)
        proxy, port = await start(config(free_port(), [backend.address], {
            "cert": server.cert, "key": server.key, "client_ca": pki.ca_file, "strict_sni": True,
            "handshake_timeout": "1s"}))
        good = pki.client_context(client)
        outcome: dict[str, str] = {}

        def matrix() -> None:
            outcome["good"] = _handshake(port, good)
            outcome["expired"] = _handshake(port, pki.client_context(expired))
            outcome["untrusted"] = _handshake(port, pki.client_context(stranger))
            outcome["missing"] = _handshake(port, pki.client_context())
            outcome["unknown_sni"] = _handshake(port, good, "nobody.test")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old = pki.client_context(client, maximum=ssl.TLSVersion.TLSv1)
                old.minimum_version = ssl.TLSVersion.TLSv1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            outcome["tls1.0"] = _handshake(port, old)
            outcome["garbage"] = repr(_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + _hello()))
            # A ClientHello trickled a byte at a time, slower than handshake_timeout allows.
            hello = _hello()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                started = time.monotonic()
                try:
                    for i in range(len(hello)):
                        s.sendall(hello[i:i + 1])
                        time.sleep(0.05)
                    outcome["trickle_slow"] = repr(s.recv(100))
                except OSError as exc:
                    outcome["trickle_slow"] = f"cut after {time.monotonic() - started:.1f}s: {exc}"
            outcome["good_after"] = _handshake(port, good)

        await asyncio.to_thread(matrix)
        await asyncio.sleep(0.3)                 # the sweep's tick
        stats = tls_stats(proxy)
        relayed = proxy.stats()["listeners"]["edge"]
        metrics = _metrics(proxy)
        await proxy.stop()
        await backend.stop()
        return {"outcome": outcome, "stats": stats, "relayed": relayed, "metrics": metrics}

    with caplog.at_level(logging.WARNING, logger="fastmesh.tls"):
        result = run(main())
    outcome, failed = result["outcome"], result["stats"]["failed"]
    assert outcome["good"] == "ok" and outcome["good_after"] == "ok", outcome
    for case in ("expired", "untrusted", "missing", "unknown_sni", "tls1.0"):
        assert outcome[case] != "ok", (case, outcome[case])
    assert outcome["garbage"] == "b''", outcome["garbage"]      # closed without a byte of ours
    assert failed == {"bad_certificate": 2, "no_client_cert": 1, "unknown_sni": 1, "version": 1, "not_tls": 1,
                      "timeout": 1}, failed
    assert result["stats"]["handshakes"] == 2
    metrics = result["metrics"]
    assert metrics[("fastmesh_tls_handshakes_total", (("listener", "edge"),))] == 2
    failures = "fastmesh_tls_handshake_failures_total"
    assert metrics[(failures, (("listener", "edge"), ("reason", "bad_certificate")))] == 2
    assert metrics[(failures, (("listener", "edge"), ("reason", "cipher")))] == 0
    assert result["relayed"]["failed"] == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # One line per reason and second at most: the untrusted client's line is held back (and counted above).
    for reason, text in (("bad_certificate", "certificate has expired"),
                         ("no_client_cert", "peer did not return a certificate"),
                         ("unknown_sni", "no certificate for the server name"), ("version", "unsupported protocol"),
                         ("not_tls", "http request"), ("timeout", "handshake_timeout")):
        assert f"refused: {reason} (" in logged and text in logged, (reason, text, logged)


def test_handshake_trickled_byte_by_byte_in_time_succeeds(pki: Pki) -> None:
    """A client that sends its ClientHello one byte per write, quickly: reassembled, served."""
    server = pki.issue("web.test")

    async def main() -> str:
        (backend,) = await start_backends(1, echo)
        proxy, port = await start(config(free_port(), [backend.address], {"cert": server.cert, "key": server.key}))

        def trickle() -> str:
            ctx = pki.client_context()
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_hostname="web.test")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    try:
                        obj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        out = outgoing.read()
                        for i in range(len(out)):
                            s.sendall(out[i:i + 1])
                        incoming.write(s.recv(65536))
                obj.write(b"hi")
                s.sendall(outgoing.read())
                while True:
                    try:
                        return obj.read(2).decode()
                    except ssl.SSLWantReadError:
                        incoming.write(s.recv(65536))

        answer = await asyncio.to_thread(trickle)
        await proxy.stop()
        await backend.stop()
        return answer

    assert run(main()) == "hi"


# ---- origination and passthrough -------------------------------------------------------------------------------

def test_origination_verifies_the_server_name_and_presents_a_client_certificate(pki: Pki, tmp_path: Path) -> None:
    backend_cert = pki.issue("web.svc.test")
    mesh_id = pki.issue("spiffe://mesh.test/ns/edge/sa/fastmesh")

    async def main() -> tuple[bytes, list[Any], bytes, dict[str, Any]]:
        backend = await TlsEchoBackend(pki.server_context(backend_cert, client_ca=pki.ca_file)).start()
        proxy, port = await start(config(free_port(), [backend.address], cluster_tls={
            "ca": pki.ca_file, "server_name": "web.svc.test", "cert": mesh_id.cert, "key": mesh_id.key}))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"plain in, TLS out")
        got = await asyncio.wait_for(reader.readexactly(17), 10)
        writer.close()
        stats = proxy.stats()["tls"]["clusters"]["backend"]
        await proxy.stop()
        # The same backend under a name the cluster does not expect: refused, the client is closed.
        wrong, port2 = await start(config(free_port(), [backend.address], cluster_tls={
            "ca": pki.ca_file, "server_name": "db.svc.test", "cert": mesh_id.cert, "key": mesh_id.key}))
        reader, writer = await asyncio.open_connection("127.0.0.1", port2)
        writer.write(b"x")
        try:
            refused = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:                # closed with the client's byte unread: a reset
            refused = b""
        writer.close()
        await wrong.stop()
        await backend.stop()
        return got, backend.peers, refused, stats

    got, peers, refused, stats = run(main())
    assert got == b"plain in, TLS out"
    assert peers[0]["subjectAltName"] == (("URI", "spiffe://mesh.test/ns/edge/sa/fastmesh"),)
    assert refused == b""
    assert stats["handshakes"] == 1 and stats["failed"] == 0


def test_passthrough_routes_by_sni_without_decrypting(pki: Pki) -> None:
    a, b = pki.issue("a.test"), pki.issue("b.test")

    async def main() -> dict[str, Any]:
        ba = await TlsEchoBackend(pki.server_context(a), banner=b"A").start()
        bb = await TlsEchoBackend(pki.server_context(b), banner=b"B").start()
        port = free_port()
        text = (f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{port}"\ncluster = "a"\n'
                f'sni_routes = {{ "b.test" = "b", "*.b.test" = "b" }}\n'
                f'[clusters.a]\nendpoints = ["{ba.address}"]\n[clusters.b]\nendpoints = ["{bb.address}"]\n')
        proxy, port = await start(text)
        out = {}
        for name in ("a.test", "b.test"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                           server_hostname=name)
            banner = await asyncio.wait_for(reader.readexactly(1), 10)
            writer.write(b"hello")
            out[name] = banner + await asyncio.wait_for(reader.readexactly(5), 10)
            writer.close()
        out["garbage"] = await asyncio.to_thread(_raw, port, b"\x00" * 64)
        await asyncio.sleep(0.1)
        out["stats"] = tls_stats(proxy)
        await proxy.stop()
        await ba.stop()
        await bb.stop()
        return out

    out = run(main())
    assert out["a.test"] == b"Ahello" and out["b.test"] == b"Bhello"
    assert out["garbage"] == b""
    assert out["stats"]["failed"] == {"not_tls": 1}


def test_config_errors_name_the_file_and_key(pki: Pki, tmp_path: Path) -> None:
    from fastmesh.config.load import load_config
    from fastmesh.errors import ConfigError
    server = pki.issue("web.test")
    other = pki.issue("other.test")
    path = tmp_path / "fastmesh.toml"
    # A key that does not belong to the certificate: OpenSSL refuses it when the listener is built.
    path.write_text(config(free_port(), ["127.0.0.1:9"], {"cert": server.cert, "key": other.key}))
    with pytest.raises(ConfigError) as info:
        run(Proxy(load_config(path)).start())
    assert info.value.file == str(path) and info.value.key == "listeners[0].tls"
    assert "key values mismatch" in str(info.value) and "for certificate" in str(info.value)
    path.write_text(config(free_port(), ["127.0.0.1:9"], {"cert": "missing.pem", "key": server.key}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "listeners[0].tls.cert: expected a PEM certificate file, but" in str(info.value)
    assert str(tmp_path / "missing.pem") in str(info.value)


def test_tls_where_it_cannot_work_is_a_config_error(pki: Pki) -> None:
    from fastmesh.config.load import loads_config
    from fastmesh.errors import ConfigError
    text = config(free_port(), ["127.0.0.1:9"], cluster_tls={"ca": pki.ca_file}, sni_routes={"a.test": "backend"})
    with pytest.raises(ConfigError) as info:
        run(Proxy(loads_config(text)).start())
    assert info.value.key == "clusters.backend.tls" and "passes TLS through" in str(info.value)
