"""TLS operations end to end: certificate files reloaded when they change on disk (rewritten in place or renamed
into place) while a connection made with the old certificate stays open, bad replacements kept out and reported,
and identity allow lists on tcp listeners checked with openssl s_client client certificates."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fastmesh import Proxy
from fastmesh._testbase.backends import echo, start_backends
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pem, Pki, install

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")]

RELOAD_WAIT = 15.0          # seconds a change on disk may take to reach new handshakes (inotify or the 1 s poll)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def listener_config(port: int, backend: str, tls: str) -> str:
    return (f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{port}"\ncluster = "backend"\ntls = {tls}\n'
            f'[clusters.backend]\nendpoints = ["{backend}"]\n')


def serial_of(port: int, pki: Pki, name: str = "web.test") -> int:
    """The serial number of the certificate a new handshake gets (a blocking client: run it in a thread)."""
    from cryptography import x509
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pki.client_context().wrap_socket(raw, server_hostname=name) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def serial_in(pem: Pem) -> int:
    from cryptography import x509
    return int(x509.load_pem_x509_certificate(Path(pem.cert).read_bytes()).serial_number)


class SClient:
    """`openssl s_client` holding one connection open: send a line, read its echo."""

    def __init__(self, port: int, pki: Pki, *extra: str) -> None:
        self.proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "web.test", "-CAfile",
             pki.ca_file, "-verify_return_error", "-quiet", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def echo(self, line: bytes, timeout: float = 10.0) -> bytes:
        """Send line and read what comes back until its newline (b"" when the connection ends first)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return b""
        got = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not got.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
        return got.rstrip(b"\n")

    def close(self) -> str:
        """End it (by its pid) and return what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


async def wait_for_serial(port: int, pki: Pki, serial: int) -> int:
    """Poll new handshakes until one gets `serial` (or RELOAD_WAIT passes); the last serial seen."""
    deadline = time.monotonic() + RELOAD_WAIT
    seen = await asyncio.to_thread(serial_of, port, pki)
    while seen != serial and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = await asyncio.to_thread(serial_of, port, pki)
    return seen


def context_status(proxy: Proxy, kind: str = "listener", name: str = "edge") -> dict[str, Any]:
    (status,) = [c for c in proxy.tls_status() if c["kind"] == kind and c["name"] == name]
    return status


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_certificate_rewritten_in_place_then_renamed_into_place_reaches_new_handshakes_only(
        pki: Pki, tmp_path: Path) -> None:
    """A connection made with the first certificate keeps working across both replacements; each new handshake
    gets the certificate on disk."""
    live = Pem(str(tmp_path / "live.pem"), str(tmp_path / "live.key"))
    first, second, third = pki.issue("web.test"), pki.issue("web.test"), pki.issue("web.test")
    install(first, live)

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        proxy = Proxy.from_toml(listener_config(free_port(), backend.address,
                                                f'{{ cert = "{live.cert}", key = "{live.key}" }}'))
        await proxy.start()
        port = proxy.addresses["edge"][1]
        held = SClient(port, pki)
        try:
            assert await asyncio.to_thread(held.echo, b"before") == b"before"
            assert await asyncio.to_thread(serial_of, port, pki) == serial_in(first)

            # 1. Rewritten in place (truncate and write, key then certificate), as `cp` does.
            install(second, live)
            assert await wait_for_serial(port, pki, serial_in(second)) == serial_in(second)
            assert await asyncio.to_thread(held.echo, b"after rewrite") == b"after rewrite"

            # 2. Written beside and renamed into place (atomic), as cert-manager and certbot do.
            install(third, live, renamed=True)
            assert await wait_for_serial(port, pki, serial_in(third)) == serial_in(third)
            assert await asyncio.to_thread(held.echo, b"after rename") == b"after rename"
            status = context_status(proxy)
        finally:
            held.close()
            await proxy.stop()
            await backend.stop()
        assert status["reloads"] == 2 and status["error"] is None and status["reload_failures"] == 0
        assert status["reloaded_at"] is not None

    run(main())


def test_bad_replacements_keep_the_old_certificate_and_say_why(pki: Pki, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, a key of another certificate and an expired certificate are each refused: handshakes go on with
    the certificate in use, the status and the log say why; a good file then clears the error."""
    caplog.set_level(logging.INFO, logger="fastmesh.tls")
    live = Pem(str(tmp_path / "live.pem"), str(tmp_path / "live.key"))
    good, other, expired, fixed = (pki.issue("web.test"), pki.issue("web.test"),
                                   pki.issue("web.test", expired=True), pki.issue("web.test"))
    install(good, live)

    async def wait_for_error(proxy: Proxy, text: str) -> dict[str, Any]:
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline:
            status = context_status(proxy)
            if status["error"] and text in status["error"]:
                return status
            await asyncio.sleep(0.1)
        return context_status(proxy)

    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        proxy = Proxy.from_toml(listener_config(free_port(), backend.address,
                                                f'{{ cert = "{live.cert}", key = "{live.key}" }}'))
        await proxy.start()
        port = proxy.addresses["edge"][1]
        held = SClient(port, pki)
        try:
            assert await asyncio.to_thread(held.echo, b"hi") == b"hi"
            Path(live.cert).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
            garbage = await wait_for_error(proxy, "certificate")
            assert await asyncio.to_thread(serial_of, port, pki) == serial_in(good)

            Path(live.cert).write_bytes(Path(other.cert).read_bytes())      # the key is still good's
            mismatch = await wait_for_error(proxy, "mismatch")
            assert await asyncio.to_thread(serial_of, port, pki) == serial_in(good)

            install(expired, live)
            too_old = await wait_for_error(proxy, "expired")
            assert await asyncio.to_thread(serial_of, port, pki) == serial_in(good)
            assert await asyncio.to_thread(held.echo, b"still here") == b"still here"

            install(fixed, live)
            assert await wait_for_serial(port, pki, serial_in(fixed)) == serial_in(fixed)
            healed = context_status(proxy)
        finally:
            held.close()
            await proxy.stop()
            await backend.stop()
        assert "certificate" in garbage["error"] and live.cert in garbage["error"]
        assert "key values mismatch" in mismatch["error"]
        assert "expired at" in too_old["error"]
        assert too_old["reload_failures"] >= 3
        assert healed["error"] is None and healed["reloads"] == 1
        refusals = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
        assert any("expired" in m for m in refusals) and any("mismatch" in m for m in refusals)
        assert any("TLS files reloaded" in r.getMessage() for r in caplog.records)

    run(main())


def test_cluster_client_certificate_and_ca_are_reloaded(pki: Pki, tmp_path: Path) -> None:
    """A cluster's client certificate replaced on disk: the next upstream connection presents the new one."""
    from fastmesh._testbase.tls import TlsEchoBackend
    live = Pem(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    first = pki.issue("spiffe://mesh.test/ns/edge/sa/one")
    second = pki.issue("spiffe://mesh.test/ns/edge/sa/two")
    install(first, live)
    server = pki.issue("api.test")

    async def main() -> list[str]:
        backend = await TlsEchoBackend(pki.server_context(server, client_ca=pki.ca_file)).start()
        port = free_port()
        text = (f'[[listeners]]\nname = "edge"\nlisten = "127.0.0.1:{port}"\ncluster = "api"\n'
                f'[clusters.api]\nendpoints = ["{backend.address}"]\n'
                f'tls = {{ ca = "{pki.ca_file}", server_name = "api.test", cert = "{live.cert}", '
                f'key = "{live.key}" }}\n')
        proxy = Proxy.from_toml(text)
        await proxy.start()

        async def one() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
            writer.close()

        try:
            await one()
            install(second, live, renamed=True)
            deadline = time.monotonic() + RELOAD_WAIT
            while context_status(proxy, "cluster", "api")["reloads"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await one()
            status = context_status(proxy, "cluster", "api")
        finally:
            await proxy.stop()
            await backend.stop()
        assert status["reloads"] == 1 and status["certificates"][0]["uris"] == ["spiffe://mesh.test/ns/edge/sa/two"]
        return [next(v for k, v in peer["subjectAltName"] if k == "URI") for peer in backend.peers]

    assert run(main()) == ["spiffe://mesh.test/ns/edge/sa/one", "spiffe://mesh.test/ns/edge/sa/two"]


# ---- identities on tcp listeners --------------------------------------------------------------------------------

def test_allow_identities_on_a_tcp_listener(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """openssl s_client with client certificates: an exact identity and one under a wildcard path get through;
    another identity, a certificate without a URI SAN and no certificate at all are refused at the handshake,
    counted (denied, no_client_cert) and logged with the identity."""
    caplog.set_level(logging.INFO, logger="fastmesh.tls")
    server = pki.issue("web.test")
    exact = pki.issue("spiffe://mesh.test/ns/web/sa/api")
    under = pki.issue("spiffe://mesh.test/ns/batch/sa/nightly")
    outside = pki.issue("spiffe://mesh.test/ns/web/sa/admin")
    sibling = pki.issue("spiffe://mesh.test/ns/batchy/sa/x")       # a prefix of the text, not of the path
    nameless = pki.issue("client.test")

    def s_client(port: int, cert: Pem | None) -> bytes:
        client = SClient(port, pki, *(("-cert", cert.cert, "-key", cert.key) if cert else ()))
        try:
            return client.echo(b"hello", timeout=5.0)
        finally:
            client.close()

    async def main() -> dict[str, Any]:
        (backend,) = await start_backends(1, echo)
        tls = (f'{{ cert = "{server.cert}", key = "{server.key}", client_ca = "{pki.ca_file}", allow_identities = '
               f'["spiffe://mesh.test/ns/web/sa/api", "spiffe://mesh.test/ns/batch/*"] }}')
        proxy = Proxy.from_toml(listener_config(free_port(), backend.address, tls))
        await proxy.start()
        port = proxy.addresses["edge"][1]
        try:
            got = {name: await asyncio.to_thread(s_client, port, cert) for name, cert in
                   (("exact", exact), ("under", under), ("outside", outside), ("sibling", sibling),
                    ("nameless", nameless), ("none", None))}
            stats = proxy.stats()["tls"]["listeners"]["edge"]
        finally:
            await proxy.stop()
            await backend.stop()
        return {"got": got, "stats": stats}

    out = run(main())
    assert out["got"] == {"exact": b"hello", "under": b"hello", "outside": b"", "sibling": b"", "nameless": b"",
                          "none": b""}
    assert out["stats"]["handshakes"] == 2
    assert out["stats"]["failed"].get("denied") == 3 and out["stats"]["failed"].get("no_client_cert") == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "identity spiffe://mesh.test/ns/web/sa/admin is not in allow_identities" in logged
    assert "denied" in logged


def test_allow_identities_needs_a_required_client_certificate(pki: Pki) -> None:
    from fastmesh.errors import ConfigError
    server = pki.issue("web.test")
    base = f'cert = "{server.cert}", key = "{server.key}"'
    for tls, key in ((f'{{ {base}, allow_identities = ["spiffe://td/x"] }}', "allow_identities"),
                     (f'{{ {base}, client_ca = "{pki.ca_file}", require_client_cert = false, '
                      f'allow_identities = ["spiffe://td/x"] }}', "allow_identities"),
                     (f'{{ {base}, client_ca = "{pki.ca_file}", allow_identities = ["spiffe://td/*/x"] }}',
                      "allow_identities[0]"),
                     (f'{{ {base}, client_ca = "{pki.ca_file}", allow_identities = ["web"] }}',
                      "allow_identities[0]")):
        with pytest.raises(ConfigError) as info:
            Proxy.from_toml(listener_config(free_port(), "127.0.0.1:1", tls))
        assert f"listeners[0].tls.{key}" in str(info.value)


def test_identity_refusal_leaves_other_clients_alone(pki: Pki) -> None:
    """While denied clients are refused, an allowed Python ssl client keeps its connection and new ones work."""
    server = pki.issue("web.test")
    allowed = pki.issue("spiffe://mesh.test/ns/web/sa/api")
    denied = pki.issue("spiffe://other.test/ns/web/sa/api")

    def talk(port: int, cert: Pem) -> str:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with pki.client_context(cert).wrap_socket(raw, server_hostname="web.test") as s:
                    s.sendall(b"x")
                    return "ok" if s.recv(1) == b"x" else "closed"
        except (ssl.SSLError, OSError) as exc:
            return type(exc).__name__

    async def main() -> list[str]:
        (backend,) = await start_backends(1, echo)
        tls = (f'{{ cert = "{server.cert}", key = "{server.key}", client_ca = "{pki.ca_file}", '
               f'allow_identities = ["spiffe://mesh.test/ns/web/sa/api"] }}')
        proxy = Proxy.from_toml(listener_config(free_port(), backend.address, tls))
        await proxy.start()
        port = proxy.addresses["edge"][1]
        try:
            return [await asyncio.to_thread(talk, port, c) for c in (allowed, denied, denied, allowed)]
        finally:
            await proxy.stop()
            await backend.stop()

    results = run(main())
    assert results[0] == "ok" and results[3] == "ok"
    assert results[1] != "ok" and results[2] != "ok"


PERIOD_MARGIN = 0.3        # seconds after a period boundary before a handshake meant for that period starts


async def at_period(n: int, period: float) -> None:
    """Wait until PERIOD_MARGIN into period n (wall clock, the proxy's clock for ticket keys): a handshake started
    then finishes in that period, well clear of the boundary, even on a busy machine."""
    while time.time() < n * period + PERIOD_MARGIN:
        await asyncio.sleep(0.02)


def test_ticket_keys_rotate_every_ticket_rotation_and_the_previous_key_still_decrypts(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """ticket_rotation = "3s": a ticket from period e resumes in period e+1 (and is renewed), not in e+2. Each
    handshake starts PERIOD_MARGIN into its period and the period it really ran in (start and end) is recorded; a
    refused ticket's debug line (the period its key is from) goes into the failure message."""
    server = pki.issue("web.test")
    period = 3.0

    ctx = pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)

    def connect(port: int, session: Any) -> tuple[bool, Any]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="web.test", session=session) as s:
                return s.session_reused, s.session

    async def timed(port: int, session: Any) -> tuple[int, int, bool, Any]:
        began = int(time.time() // period)
        reused, got = await asyncio.to_thread(connect, port, session)
        return began, int(time.time() // period), reused, got

    async def main() -> tuple[int, list[tuple[int, int, bool]]]:
        (backend,) = await start_backends(1, echo)
        tls = f'{{ cert = "{server.cert}", key = "{server.key}", ticket_rotation = "3s" }}'
        proxy = Proxy.from_toml(listener_config(free_port(), backend.address, tls))
        await proxy.start()
        port = proxy.addresses["edge"][1]
        out = []
        try:
            issued = int(time.time() // period) + 1
            await at_period(issued, period)
            began, ended, _, first = await timed(port, None)
            out.append((began - issued, ended - issued, True))
            for n in (0, 1, 2):
                await at_period(issued + n, period)
                began, ended, reused, _ = await timed(port, first)
                out.append((began - issued, ended - issued, reused))
        finally:
            await proxy.stop()
            await backend.stop()
        return issued, out

    with caplog.at_level(logging.DEBUG, logger="fastmesh.tls"):
        issued, got = run(main())
    refused = [r.getMessage() for r in caplog.records if "session ticket refused" in r.getMessage()]
    assert got == [(0, 0, True), (0, 0, True), (1, 1, True), (2, 2, False)], refused
    assert len(refused) == 1 and f"its key is from period {issued}, this worker accepts periods {issued + 1} to " \
        f"{issued + 3}" in refused[0]


# ---- under `fastmesh run`: two workers, the admin server, fastmesh check ------------------------------------------

def _admin_json(port: int, path: str) -> Any:
    import json
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def _admin_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _resumed_handshakes(port: int, pki: Pki, count: int) -> list[bool]:
    """One full handshake, then `count` new connections each offering its session (TLS 1.2: the session is
    there right after the handshake); whether each resumed."""
    ctx = pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="web.test") as s:
            session = s.session
    out = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="web.test", session=session) as s:
                out.append(s.session_reused)
    return out


def _fd_targets(pid: int) -> list[str]:
    """What a process's open fds point at (one closed meanwhile is left out)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return out


def test_the_ticket_secret_rotates_and_tickets_still_resume_on_every_worker_a_restarted_one_too(
        pki: Pki, tmp_path: Path) -> None:
    """ticket_secret_rotation = "3s" (the master secret ratchets every 3 s) with ticket_rotation = "3s": after
    three generations, w0 is killed and its replacement gets the supervisor's ratcheted secret; a ticket issued in
    one period then resumes in the next (a new generation) on 30 connections over SO_REUSEPORT, both workers
    (the restarted one included); one period later it no longer does."""
    import signal
    from fastmesh._testbase.run import Run
    server = pki.issue("web.test")
    port, backend, admin, period = free_port(), free_port(), free_port(), 3.0
    text = f"""
workers = 2
ticket_secret_rotation = "3s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
cluster = "backend"
tls = {{ cert = "{server.cert}", key = "{server.key}", ticket_rotation = "3s" }}
[clusters.backend]
endpoints = ["127.0.0.1:{backend}"]
[demo]
backends = ["127.0.0.1:{backend}"]
"""
    ctx = pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)

    def connect(session: Any) -> tuple[bool, Any]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="web.test", session=session) as s:
                return s.session_reused, s.session

    def at(n: int) -> None:
        while time.time() < n * period + PERIOD_MARGIN:
            time.sleep(0.02)

    fm = Run(tmp_path, text)
    try:
        fm.wait_log(r"ready: \d+ worker\(s\) serving")
        at(int(time.time() // period) + 3)
        old = int(fm.wait_log(r"w0 started \(pid (\d+)\)")[0][1])
        os.kill(old, signal.SIGKILL)
        new = int(fm.wait_log(r"w0 started \(pid (\d+)\)", count=2)[1][1])
        fm.wait_log(rf"w0 \(pid {new}\) ready")
        issued = int(time.time() // period) + 1
        at(issued)
        _, session = connect(None)
        at(issued + 1)
        resumed = [connect(session)[0] for _ in range(30)]
        late = int(time.time() // period)
        at(issued + 2)
        expired = connect(session)[0]
        log = fm.log()
    finally:
        fm.stop()
    assert late == issued + 1, "the 30 handshakes ran into the next period"
    assert resumed == [True] * 30
    assert not expired
    assert new != old and len(set(re.findall(r"w\d+ started \(pid (\d+)\)", log))) == 3


def test_openssl_is_bound_only_once_a_reload_adds_a_tls_listener(pki: Pki, tmp_path: Path) -> None:
    """Started without a tls table, neither the supervisor nor its two workers map OpenSSL (openssl.pyx binds it
    on first use; asyncio is imported without ssl); a reload that adds a TLS listener then serves TLS from each
    worker, having bound it there."""
    import signal
    from fastmesh._testbase.run import Run, openssl_at_start, openssl_mapped
    server = pki.issue("web.test")
    plain, secure, backend, admin = free_port(), free_port(), free_port(), free_port()
    text = f"""
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "plain"
listen = "127.0.0.1:{plain}"
cluster = "backend"
[clusters.backend]
endpoints = ["127.0.0.1:{backend}"]
[demo]
backends = ["127.0.0.1:{backend}"]
"""
    added = f"""
[[listeners]]
name = "edge"
listen = "127.0.0.1:{secure}"
cluster = "backend"
tls = {{ cert = "{server.cert}", key = "{server.key}" }}
"""
    bare = openssl_at_start()
    ctx = pki.client_context()
    fm = Run(tmp_path, text)
    try:
        fm.wait_log(r"ready: \d+ worker\(s\) serving")
        workers = [int(m[1]) for m in fm.wait_log(r"w\d started \(pid (\d+)\)", count=2)]
        if not bare:        # else this interpreter maps it at start anyway
            assert not any(openssl_mapped(pid) for pid in (fm.proc.pid, *workers))
        fm.config.write_text(text + added)
        fm.proc.send_signal(signal.SIGHUP)
        fm.wait_log(r"config reloaded \(SIGHUP\)")
        answers = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", secure), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="web.test") as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                    answers.append(s.recv(100).split(b"\r\n")[0])
        bound = [bool(openssl_mapped(pid)) for pid in workers]
    finally:
        fm.stop()
    assert answers == [b"HTTP/1.1 200 OK"] * 10
    assert bound == [True, True]


@pytest.mark.parametrize("zygote", ["1", "0"], ids=["forked-workers", "fresh-interpreters"])
def test_two_workers_share_tickets_without_the_secret_in_their_environment_and_report_expiry(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zygote: str) -> None:
    """Under `fastmesh run` with two workers: sessions resume whichever worker accepts (30 connections over
    SO_REUSEPORT all reach one worker with odds of 2^-29); no worker has the ticket secret in its environment or
    still holds its memfd; /metrics, /tls and /clusters show each certificate's expiry as made; `fastmesh check`
    warns within --cert-warn-days; a bad replacement is visible in /tls and /metrics."""
    import datetime
    from fastmesh._testbase.run import Run, fastmesh_argv, env
    monkeypatch.setenv("FASTMESH_ZYGOTE", zygote)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    server = pki.issue("web.test", not_after=now + datetime.timedelta(days=10))
    client = pki.issue("spiffe://mesh.test/ns/edge/sa/proxy", not_after=now + datetime.timedelta(days=40))
    admin, port, backend = free_port(), free_port(), free_port()
    text = f"""
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
cluster = "backend"
tls = {{ cert = "{server.cert}", key = "{server.key}" }}
[[listeners]]
name = "out"
listen = "127.0.0.1:{free_port()}"
cluster = "api"
[clusters.backend]
endpoints = ["127.0.0.1:{backend}"]
[clusters.api]
endpoints = ["127.0.0.1:{free_port()}"]
tls = {{ ca = "{pki.ca_file}", server_name = "api.test", cert = "{client.cert}", key = "{client.key}" }}
[demo]
backends = ["127.0.0.1:{backend}"]
"""
    fm = Run(tmp_path, text)
    try:
        fm.wait_log(r"ready: \d+ worker\(s\) serving")
        resumed = _resumed_handshakes(port, pki, 30)
        pids = [int(pid) for pid in re.findall(r"w\d+ started \(pid (\d+)\)", fm.log())]
        environs = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in pids}
        fds = {pid: _fd_targets(pid) for pid in pids}
        metrics = _admin_metrics(admin)
        view = _admin_json(admin, "/tls")
        clusters = _admin_json(admin, "/clusters")

        checks = {days: subprocess.run(fastmesh_argv("check", str(fm.config), "--cert-warn-days", days), env=env(),
                                       capture_output=True, text=True, timeout=60) for days in ("5", "14", "45")}

        Path(server.cert).write_bytes(b"garbage\n")
        deadline = time.monotonic() + RELOAD_WAIT
        while len(_admin_json(admin, "/tls")["listeners"]["edge"]["errors"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        broken = _admin_json(admin, "/tls")["listeners"]["edge"]
        broken_metrics = _admin_metrics(admin)
        still = _resumed_handshakes(port, pki, 2)
    finally:
        fm.stop()

    assert len(pids) == 2
    assert resumed == [True] * 30
    for pid, environ in environs.items():
        assert b"TICKET" not in environ
        assert not re.search(rb"=[0-9a-f]{64}(\0|$)", environ), "a 32-byte hex secret in the environment"
        assert not any("fastmesh-tickets" in target for target in fds[pid]), "the secret's memfd is still open"

    def expiry(labels: tuple[tuple[str, str], ...]) -> float:
        return metrics[("fastmesh_tls_cert_expiry_seconds", tuple(sorted(labels)))]
    assert abs(expiry((("listener", "edge"), ("cert", server.cert), ("names", "web.test")))
               - (now + datetime.timedelta(days=10)).timestamp()) <= 2
    assert abs(expiry((("cluster", "api"), ("cert", client.cert), ("names", "spiffe://mesh.test/ns/edge/sa/proxy")))
               - (now + datetime.timedelta(days=40)).timestamp()) <= 2
    assert metrics[("fastmesh_tls_cert_reload_error", (("listener", "edge"),))] == 0
    (edge_cert,) = view["listeners"]["edge"]["certificates"]
    assert edge_cert["names"] == ["web.test"] and 9.9 * 86400 < edge_cert["expires_in"] <= 10 * 86400
    assert clusters["api"]["tls"]["certificates"][0]["uris"] == ["spiffe://mesh.test/ns/edge/sa/proxy"]
    assert clusters["api"]["tls"]["certificates"][0]["not_after_utc"] == \
        (now + datetime.timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert all(c.returncode == 0 for c in checks.values())
    assert "certificate" not in checks["5"].stderr
    assert f"warning: listener edge: certificate {server.cert} expires in" in checks["14"].stderr
    assert "cluster api" not in checks["14"].stderr
    assert f"warning: cluster api: certificate {client.cert} expires in" in checks["45"].stderr

    assert set(broken["errors"]) == {"w0", "w1"} and all(server.cert in e for e in broken["errors"].values())
    assert broken["reload_failures"] >= 2
    assert broken_metrics[("fastmesh_tls_cert_reload_error", (("listener", "edge"),))] == 1
    assert still == [True, True]


def test_an_expired_certificate_at_start_is_served_and_reported_everywhere(pki: Pki, tmp_path: Path) -> None:
    """A listener certificate and a cluster client certificate that have already expired at start (a renewal that
    failed): the instance starts and serves (a client that does not check dates completes its handshake, one that
    does gets "certificate has expired"), the log names each file, /clusters and /tls flag them (`expired`,
    negative `expires_in`), fastmesh_tls_cert_expires_in_seconds is negative, and `fastmesh check` says EXPIRED.
    An expired replacement written over the expired file is then taken (the one in use is no better)."""
    from fastmesh._testbase.run import Run, fastmesh_argv, env
    server, replacement = pki.issue("web.test", expired=True), pki.issue("web.test", expired=True)
    client = pki.issue("spiffe://mesh.test/ns/edge/sa/proxy", expired=True)
    admin, port, backend = free_port(), free_port(), free_port()
    text = f"""
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
cluster = "backend"
tls = {{ cert = "{server.cert}", key = "{server.key}" }}
[[listeners]]
name = "out"
listen = "127.0.0.1:{free_port()}"
cluster = "api"
[clusters.backend]
endpoints = ["127.0.0.1:{backend}"]
[clusters.api]
endpoints = ["127.0.0.1:{free_port()}"]
tls = {{ ca = "{pki.ca_file}", server_name = "api.test", cert = "{client.cert}", key = "{client.key}" }}
[demo]
backends = ["127.0.0.1:{backend}"]
"""
    fm = Run(tmp_path, text)
    try:
        fm.wait_log(r"ready: \d+ worker\(s\) serving")
        fm.wait_log(rf"listener edge: certificate {server.cert} expired at .* and is still served")
        fm.wait_log(rf"cluster api: certificate {client.cert} expired at .* and is still served")
        lax = pki.client_context()
        lax.check_hostname = False
        lax.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with lax.wrap_socket(raw, server_hostname="web.test") as s:
                s.sendall(b"ping\n")
                answer = s.recv(100)
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                pki.client_context().wrap_socket(raw, server_hostname="web.test").close()
        clusters = _admin_json(admin, "/clusters")
        view = _admin_json(admin, "/tls")
        metrics = _admin_metrics(admin)
        checked = subprocess.run(fastmesh_argv("check", str(fm.config)), env=env(), capture_output=True, text=True,
                                 timeout=60)
        log = fm.log()
        # The one in use has expired: an expired replacement is no worse, and is taken (not refused).
        Path(server.cert).write_bytes(Path(replacement.cert).read_bytes())
        Path(server.key).write_bytes(Path(replacement.key).read_bytes())
        deadline = time.monotonic() + RELOAD_WAIT
        while _admin_json(admin, "/tls")["listeners"]["edge"]["reloads"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        replaced = _admin_json(admin, "/tls")["listeners"]["edge"]
    finally:
        fm.stop()
    assert replaced["reloads"] == 1 and replaced["errors"] == {} and replaced["expired"] == [server.cert]
    assert answer.startswith(b"hello from")          # the demo backend answered through the expired certificate
    assert clusters["api"]["tls"]["expired"] == [client.cert]
    (row,) = clusters["api"]["tls"]["certificates"]
    assert row["expired"] is True and row["expires_in"] < -86400
    assert view["listeners"]["edge"]["expired"] == [server.cert]
    assert metrics[("fastmesh_tls_cert_expires_in_seconds",
                    (("cert", server.cert), ("listener", "edge"), ("names", "web.test")))] < -86400
    assert metrics[("fastmesh_tls_cert_expires_in_seconds", (("cert", client.cert), ("cluster", "api"),
                                                             ("names", "spiffe://mesh.test/ns/edge/sa/proxy")))] < 0
    assert checked.returncode == 0
    assert f"warning: listener edge: certificate {server.cert} EXPIRED on" in checked.stderr
    assert f"warning: cluster api: certificate {client.cert} EXPIRED on" in checked.stderr
    assert log.count(f"certificate {server.cert} expired at") == 1      # once, not at every poll
