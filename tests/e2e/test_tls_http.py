"""TLS on http listeners and HTTPS upstreams end to end: curl (HTTP/1.1 and h2 by ALPN), openssl s_client, h2load,
grpcio with TLS credentials, Python ssl with client certificates (identity header, allow lists), upstream HTTPS
pools (HTTP/1 and h2), and bad input on a TLS http listener (a clean refusal, nothing else disturbed)."""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from fastmesh import Proxy
from fastmesh._testbase.h2_backend import H2Backend
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pem, Pki

pytestmark = pytest.mark.timeout(120)

CLIENT_ID = "spiffe://mesh.test/ns/web/sa/frontend"
OTHER_ID = "spiffe://mesh.test/ns/batch/sa/cron"


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


def config(endpoints: list[str], tls: dict[str, Any] | None, cluster: dict[str, Any] | None = None,
           routes: list[dict[str, Any]] | None = None, **listener: Any) -> str:
    text = f'[[listeners]]\nname = "edge"\nprotocol = "http"\nlisten = "127.0.0.1:{free_port()}"\n'
    text += 'cluster = "backend"\n' if routes is None else ""
    for k, v in listener.items():
        text += f"{k} = {_toml(v)}\n"
    if tls is not None:
        text += f"tls = {_toml(tls)}\n"
    for route in routes or ():
        text += "[[listeners.routes]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in route.items())
    text += f"[clusters.backend]\nendpoints = {_toml(endpoints)}\n"
    for k, v in (cluster or {}).items():
        text += f"{k} = {_toml(v)}\n"
    return text


async def start(text: str) -> tuple[Proxy, int]:
    proxy = Proxy.from_toml(text)
    await proxy.start()
    return proxy, proxy.addresses["edge"][1]


def tls_stats(proxy: Proxy, kind: str = "listeners", name: str = "edge") -> dict[str, Any]:
    return dict(proxy.stats()["tls"][kind].get(name, {}))


async def https_get(port: int, ctx: ssl.SSLContext, path: str = "/echo", headers: dict[str, str] | None = None
                    ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over Python's ssl: (status, lowercased headers, body)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="web.test"), 10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: web.test\r\n{extra}Connection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), fields, body


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def server(pki: Pki) -> Pem:
    return pki.issue("web.test", "127.0.0.1")


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_curl_https_http1_and_h2_by_alpn(pki: Pki, server: Pem) -> None:
    """curl over https: HTTP/1.1 and --http2 (ALPN h2 goes to the HTTP/2 codec); the backend sees
    X-Forwarded-Proto: https either way."""

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {"cert": server.cert, "key": server.key}))
            url = f"https://web.test:{port}/echo"
            common = ["--cacert", pki.ca_file, "--resolve", f"web.test:{port}:127.0.0.1", "-o", "-",
                      "-w", "\n%{http_version}"]
            h1 = await asyncio.to_thread(curl, "--http1.1", *common, url)
            h2 = await asyncio.to_thread(curl, "--http2", *common, url)
            stats = tls_stats(proxy)
            await proxy.stop()
        for result, version in ((h1, "1.1"), (h2, "2")):
            assert result.returncode == 0, result.stderr
            body, _, got = result.stdout.rpartition("\n")
            assert got == version
            echoed = json.loads(body)
            headers = {k.lower(): v for k, v in echoed["headers"]}
            assert headers["x-forwarded-proto"] == "https"
            assert "fastmesh-client-identity" not in headers
        assert stats["handshakes"] == 2 and not stats["failed"]

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_alpn_choice(pki: Pki, server: Pem) -> None:
    """s_client offering h2 gets h2; offering http/1.1 only gets http/1.1; with http2 disabled h2 is never
    chosen."""

    def alpn(port: int, offer: str) -> str:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "web.test",
                              "-CAfile", pki.ca_file, "-alpn", offer], input=b"", capture_output=True,
                             timeout=30).stdout.decode("latin-1")
        lines = [line for line in out.splitlines() if line.startswith("ALPN protocol")]
        return lines[0].split(":", 1)[1].strip() if lines else "none"

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {"cert": server.cert, "key": server.key}))
            plain, _ = await start(config([backend.address], {"cert": server.cert, "key": server.key})
                                   .replace('protocol = "http"\n', 'protocol = "http"\nhttp2 = { enabled = false }\n'))
            plain_port = plain.addresses["edge"][1]
            got = [await asyncio.to_thread(alpn, port, "h2,http/1.1"),
                   await asyncio.to_thread(alpn, port, "http/1.1"),
                   await asyncio.to_thread(alpn, plain_port, "h2,http/1.1")]
            await proxy.stop()
            await plain.stop()
        assert got == ["h2", "http/1.1", "http/1.1"]

    run(main())


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) is not installed")
def test_h2load_over_tls(server: Pem) -> None:
    """h2load over TLS (ALPN h2), 4 clients x 8 streams: every request answered 2xx."""

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {"cert": server.cert, "key": server.key}))
            out = await asyncio.to_thread(subprocess.run, ["h2load", "-n", "400", "-c", "4", "-m", "8",
                                                           f"https://127.0.0.1:{port}/status/200"],
                                          capture_output=True, text=True, timeout=60)
            stats = tls_stats(proxy)
            await proxy.stop()
        assert "400 succeeded" in out.stdout and "400 2xx" in out.stdout, out.stdout + out.stderr
        assert "Application protocol: h2" in out.stdout
        assert stats["handshakes"] == 4

    run(main())


def test_client_identity_header_set_by_fastmesh_only(pki: Pki, server: Pem) -> None:
    """A verified client certificate's SPIFFE URI goes upstream in fastmesh-client-identity; a client's own copy
    of the field is always stripped (with or without a certificate)."""
    client = pki.issue(CLIENT_ID)

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {
                "cert": server.cert, "key": server.key, "client_ca": pki.ca_file, "require_client_cert": False}))
            spoof = {"fastmesh-client-identity": OTHER_ID}
            with_cert = await https_get(port, pki.client_context(client), headers=spoof)
            without = await https_get(port, pki.client_context(), headers=spoof)
            await proxy.stop()
        for status, _, body in (with_cert, without):
            assert status == 200
        seen = [[v for k, v in json.loads(r[2])["headers"] if k.lower() == "fastmesh-client-identity"]
                for r in (with_cert, without)]
        assert seen == [[CLIENT_ID], []]

    run(main())


def test_allow_identities_per_route(pki: Pki, server: Pem) -> None:
    """A route that allows some identities: the allowed one (exact or by prefix) passes, another identity and a
    client without a certificate get 403 `fastmesh-error: forbidden`, counted and logged."""
    frontend, cron = pki.issue(CLIENT_ID), pki.issue(OTHER_ID)

    async def main() -> None:
        async with HttpBackend("b") as backend:
            routes = [{"path_prefix": "/exact/", "cluster": "backend", "allow_identities": [CLIENT_ID]},
                      {"path_prefix": "/ns/", "cluster": "backend",
                       "allow_identities": ["spiffe://mesh.test/ns/web/*"]},
                      {"path_prefix": "/", "cluster": "backend"}]
            proxy, port = await start(config([backend.address], {
                "cert": server.cert, "key": server.key, "client_ca": pki.ca_file, "require_client_cert": False},
                routes=routes))
            results = {}
            for name, ctx in (("frontend", pki.client_context(frontend)), ("cron", pki.client_context(cron)),
                              ("none", pki.client_context())):
                for path in ("/exact/x", "/ns/x", "/open"):
                    status, fields, _ = await https_get(port, ctx, path)
                    results[name, path] = (status, fields.get("fastmesh-error"))
            classes = proxy.stats()["http"]["edge"]["responses"]
            requests = backend.requests
            await proxy.stop()
        ok, denied = (200, None), (403, "forbidden")
        assert results == {
            ("frontend", "/exact/x"): ok, ("frontend", "/ns/x"): ok, ("frontend", "/open"): ok,
            ("cron", "/exact/x"): denied, ("cron", "/ns/x"): denied, ("cron", "/open"): ok,
            ("none", "/exact/x"): denied, ("none", "/ns/x"): denied, ("none", "/open"): ok,
        }
        assert requests == 5                       # the refused ones never left
        assert classes["4xx"] == 4

    run(main())


async def keepalive_gets(port: int, ctx: ssl.SSLContext | None, requests: list[tuple[str, dict[str, str]]]
                         ) -> list[tuple[int, dict[str, str]]]:
    """Several HTTP/1.1 requests on one connection (TLS when ctx is set), one after the other: (status, the fields
    the echo backend received, names lowercased) for each."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="web.test" if ctx is not None else None), 10)
    out = []
    for path, headers in requests:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: web.test\r\n{extra}\r\n".encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").split("\r\n")
        fields = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in head[1:] if line))
        body = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 10)
        sent = {}
        for k, v in json.loads(body)["headers"]:
            sent.setdefault(k.lower(), []).append(v)
        out.append((int(head[0].split()[1]), sent))
    writer.close()
    return out


FORGED = [("/f/1", {}), ("/f/2", {"FastMesh-Client-Identity": OTHER_ID}), ("/3", {}),
          ("/f/4", {"fastmesh-client-identity": OTHER_ID, "x-other": "1"}), ("/5", {})]


def test_identity_in_access_log_filters_and_keepalive_forgeries(pki: Pki, server: Pem, tmp_path: Path) -> None:
    """On one keep-alive connection whose requests alternate between carrying a forged fastmesh-client-identity
    and not: the backend gets fastmesh's verified identity (or none) and never the client's copy, a filter sees the
    identity as request.identity, and the access log's client_identity field names it ("-" without one)."""
    client = pki.issue(CLIENT_ID)
    log = tmp_path / "access.log"

    async def main() -> tuple[list[Any], list[Any], list[str]]:
        async with HttpBackend("b") as backend:
            routes = [{"path_prefix": "/f/", "cluster": "backend",
                       "filters": [{"plugin": "fastmesh._testbase.plugins:ShowIdentity"}]},
                      {"path_prefix": "/", "cluster": "backend"}]
            proxy, port = await start(config(
                [backend.address], {"cert": server.cert, "key": server.key, "client_ca": pki.ca_file,
                                    "require_client_cert": False}, routes=routes,
                access_log={"format": "plain", "path": str(log), "fields": ["path", "status", "client_identity"]}))
            with_cert = await keepalive_gets(port, pki.client_context(client), FORGED)
            without = await keepalive_gets(port, pki.client_context(), FORGED)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2 * len(FORGED):
                await asyncio.sleep(0.05)
            await proxy.stop()
        return with_cert, without, log.read_text().splitlines()

    with_cert, without, lines = run(main())
    for results, identity in ((with_cert, CLIENT_ID), (without, None)):
        assert [status for status, _ in results] == [200] * len(FORGED)
        assert [sent.get("fastmesh-client-identity") for _, sent in results] == \
            [[identity] if identity else None] * len(FORGED)
        assert [sent.get("x-seen-identity") for _, sent in results] == \
            [[identity or "-"], [identity or "-"], None, [identity or "-"], None]
    assert lines == [f"{path} 200 {CLIENT_ID}" for path, _ in FORGED] + [f"{path} 200 -" for path, _ in FORGED]


def test_forged_identity_removed_on_cleartext_keepalive() -> None:
    """A cleartext listener (no client certificates at all) drops a client's fastmesh-client-identity whichever
    request of a keep-alive connection carries it, and forwards the others untouched; identity_header = "" lets
    the field through (off means off)."""
    async def main() -> tuple[list[Any], list[Any]]:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], None))
            on = await keepalive_gets(port, None, FORGED)
            await proxy.stop()
            proxy, port = await start(config([backend.address], None, identity_header=""))
            off = await keepalive_gets(port, None, FORGED)
            await proxy.stop()
        return on, off

    on, off = run(main())
    assert [(status, sent.get("fastmesh-client-identity")) for status, sent in on] == [(200, None)] * len(FORGED)
    assert [sent.get("x-other") for _, sent in on] == [None, None, None, ["1"], None]
    assert [sent.get("fastmesh-client-identity") for _, sent in off] == [None, [OTHER_ID], None, [OTHER_ID], None]


def test_upstream_https_pool_reuses_and_resumes(pki: Pki, server: Pem) -> None:
    """A cluster with tls = { ca, server_name }: requests reach an HTTPS backend (made with Python's ssl); keep-alive
    reuses the TLS connection, and a new connection resumes the last session."""
    backend_cert = pki.issue("api.svc.test")

    async def main() -> None:
        ctx = pki.server_context(backend_cert)
        async with HttpBackend("tls-b", ssl=ctx) as backend:
            proxy, port = await start(config(
                [backend.address], None, {"tls": {"ca": pki.ca_file, "server_name": "api.svc.test"},
                                          "pool_max_idle": 0}))
            answers = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answers.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            stats = tls_stats(proxy, "clusters", "backend")
            await proxy.stop()
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 200")
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["tls"] is True
        assert stats["handshakes"] == 3 and stats["failed"] == 0
        assert stats["resumed"] >= 1

    run(main())


def test_upstream_session_resumes_across_a_reload_that_left_the_cluster_tls_alone(pki: Pki, server: Pem) -> None:
    """A config reload that changes something else (a listener setting, another cluster) keeps the cluster's TLS
    client context and so its sessions: the first upstream connection after the reload resumes (the HTTPS backend
    says so); a reload that changes the cluster's TLS settings starts afresh (a full handshake). The pool's TLS
    context is among those the proxy watches and reports."""
    from fastmesh.config.load import loads_config
    backend_cert = pki.issue("api.svc.test")

    async def get(port: int) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        return dict(json.loads(answer.partition(b"\r\n\r\n")[2]))

    async def main() -> tuple[list[bool], list[tuple[str, str, list[str]]]]:
        async with HttpBackend("tls-b", ssl=pki.server_context(backend_cert)) as backend:
            cluster = {"tls": {"ca": pki.ca_file, "server_name": "api.svc.test"}, "pool_max_idle": 0}
            text = config([backend.address], None, cluster)
            proxy, port = await start(text)
            try:
                seen = [(await get(port))["tls_resumed"], (await get(port))["tls_resumed"]]
                other = text.replace("[clusters.backend]", f'[clusters.spare]\nendpoints = ["127.0.0.1:{free_port()}"]'
                                     f"\n[clusters.backend]")
                await proxy.reload(loads_config(other.replace('cluster = "backend"',
                                                              'cluster = "backend"\nidle_timeout = "77s"')))
                seen.append((await get(port))["tls_resumed"])
                changed = other.replace('server_name = "api.svc.test"', 'server_name = "api.svc.test", alpn = '
                                        '["http/1.1"]').replace('"server_name" = "api.svc.test"',
                                                                '"server_name" = "api.svc.test", "alpn" = ["http/1.1"]')
                assert changed != other
                await proxy.reload(loads_config(changed))
                seen.append((await get(port))["tls_resumed"])
                seen.append((await get(port))["tls_resumed"])
                watched = [(c["kind"], c["name"], c["files"]) for c in proxy.tls_status()]
            finally:
                await proxy.stop()
        return seen, watched

    seen, watched = run(main())
    assert seen == [False, True, True, False, True]
    # The HTTP pool's TLS is watched (its files reloaded when they change) and reported like a tcp listener's.
    assert watched == [("cluster", "backend", [pki.ca_file])]


def test_a_tcp_listener_and_an_http_pool_to_one_tls_cluster_share_its_context(pki: Pki, server: Pem) -> None:
    """An http listener and a tcp listener both sending to one cluster with tls: one client context (one session
    per endpoint, one reload, one /tls entry), so a connection through the tcp listener resumes the session an
    HTTP request made."""
    backend_cert = pki.issue("api.svc.test")

    async def main() -> tuple[bool, list[tuple[str, str]]]:
        async with HttpBackend("tls-b", ssl=pki.server_context(backend_cert)) as backend:
            cluster = {"tls": {"ca": pki.ca_file, "server_name": "api.svc.test"}, "pool_max_idle": 0}
            text = config([backend.address], None, cluster)
            raw = f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{free_port()}"\ncluster = "backend"\n'
            text = text.replace("[clusters.backend]", raw + "[clusters.backend]")
            proxy, port = await start(text)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.addresses["raw"][1])
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                answer = head + await asyncio.wait_for(reader.readexactly(length), 10)
                writer.close()
                contexts = [(c["kind"], c["name"]) for c in proxy.tls_status()]
            finally:
                await proxy.stop()
        return bool(json.loads(answer.partition(b"\r\n\r\n")[2])["tls_resumed"]), contexts

    resumed, contexts = run(main())
    assert contexts == [("cluster", "backend")]
    assert resumed


def test_upstream_handshake_failure_fails_over(pki: Pki, server: Pem) -> None:
    """An endpoint whose certificate does not match server_name fails like a refused connect: the request goes to
    the good endpoint, the failure is counted; with only the bad endpoint the client gets a 503."""
    good, wrong = pki.issue("api.svc.test"), pki.issue("other.svc.test")

    async def main() -> None:
        async with HttpBackend("good", ssl=pki.server_context(good)) as ok, \
                HttpBackend("bad", ssl=pki.server_context(wrong)) as bad:
            tls = {"tls": {"ca": pki.ca_file, "server_name": "api.svc.test"}, "balancer": "round_robin"}
            proxy, port = await start(config([bad.address, ok.address], None, tls))
            only_bad, bad_port = await start(config([bad.address], None, tls))
            bad_port = only_bad.addresses["edge"][1]
            statuses = []
            for _ in range(4):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                statuses.append((await asyncio.wait_for(reader.read(), 10))[:12])
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", bad_port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            refused = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            stats = tls_stats(proxy, "clusters", "backend")
            await proxy.stop()
            await only_bad.stop()
        assert statuses == [b"HTTP/1.1 200"] * 4
        assert stats["failed"] >= 1
        assert refused.startswith(b"HTTP/1.1 503") and b"fastmesh-error: connect failed" in refused

    run(main())


def test_h2_upstream_over_tls(pki: Pki, server: Pem) -> None:
    """A cluster with protocol = "h2" and tls: HTTP/2 over TLS (ALPN h2) to an h2 server; a TLS client's HTTP/1.1
    requests are carried there over one multiplexed connection."""
    backend_cert = pki.issue("h2.svc.test")

    async def main() -> None:
        ctx = pki.server_context(backend_cert)
        ctx.set_alpn_protocols(["h2"])
        backend = await H2Backend("h2tls", ssl=ctx).start()
        proxy, port = await start(config([backend.address], {"cert": server.cert, "key": server.key},
                                         {"protocol": "h2", "tls": {"ca": pki.ca_file, "server_name": "h2.svc.test"}}))
        results = await asyncio.gather(*(https_get(port, pki.client_context(), f"/p{i}") for i in range(6)))
        stats = tls_stats(proxy, "clusters", "backend")
        await proxy.stop()
        await backend.stop()
        assert [r[0] for r in results] == [200] * 6
        assert all(r[1]["x-backend"] == "h2tls" for r in results)
        assert backend.connections == 1 and stats["handshakes"] == 1

    run(main())


def test_grpc_with_tls_credentials(pki: Pki, server: Pem) -> None:
    """grpcio with TLS credentials through a TLS http listener to grpcio servers (h2 cluster, cleartext behind):
    unary and streaming calls; a route that allows only another identity answers PERMISSION_DENIED."""
    grpc = pytest.importorskip("grpc")
    from fastmesh._testbase.grpc_backends import GrpcClient, start_grpc_backends
    backends = start_grpc_backends(2)
    try:
        async def main() -> None:
            routes = [{"path_prefix": "/fastmesh.test.Echo/Who", "cluster": "backend",
                       "allow_identities": [OTHER_ID]},
                      {"path_prefix": "/", "cluster": "backend"}]
            proxy, port = await start(config([b.address for b in backends], {
                "cert": server.cert, "key": server.key}, {"protocol": "h2"}, routes=routes))
            creds = grpc.ssl_channel_credentials(root_certificates=Path(pki.ca_file).read_bytes())
            client = GrpcClient(f"127.0.0.1:{port}", [("grpc.ssl_target_name_override", "web.test")], creds)
            try:
                answers = [(await client.aunary(f"m{i}".encode()))[0] for i in range(6)]
                streamed = await asyncio.to_thread(client.server_stream, 5)
                with pytest.raises(grpc.RpcError) as denied:
                    await asyncio.to_thread(client.who)
            finally:
                client.close()
            stats = tls_stats(proxy)
            await proxy.stop()
            assert answers == [f"m{i}".encode() for i in range(6)]
            assert len(streamed) == 5
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert stats["handshakes"] >= 1

        run(main())
    finally:
        for b in backends:
            b.stop()


def test_bad_input_on_tls_http_listener(pki: Pki, server: Pem) -> None:
    """Garbage before the ClientHello, plain HTTP, TLS 1.0 offered and a handshake trickled past handshake_timeout:
    each is refused and counted by reason, while a good client is served throughout."""

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {
                "cert": server.cert, "key": server.key, "handshake_timeout": "1s"}))
            good = pki.client_context()

            async def raw(data: bytes) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                got = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                return got

            garbage = await raw(b"\x00garbage\r\n" * 20)
            plain = await raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await https_get(port, good))[0] == 200
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.load_verify_locations(pki.ca_file)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
            old.set_ciphers("ALL:@SECLEVEL=0")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await https_get(port, old)
            # A ClientHello trickled a byte at a time, never finished: cut off at handshake_timeout.
            hello = _client_hello()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            cut = False
            for byte in hello[:-1]:
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                except ConnectionError:
                    cut = True
                    break
                await asyncio.sleep(0.05)
                if reader.at_eof() or time.monotonic() - started > 8:
                    break
            try:
                tail = await asyncio.wait_for(reader.read(), 10)
            except ConnectionError:
                tail = b""
            writer.close()
            waited = time.monotonic() - started
            assert (await https_get(port, good))[0] == 200
            stats = tls_stats(proxy)
            await proxy.stop()
        assert garbage == b"" or not garbage.startswith(b"HTTP")
        assert not plain.startswith(b"HTTP/1.1 200")
        assert cut or tail == b"" or not tail.startswith(b"HTTP")
        assert 0.9 <= waited < 9
        failed = stats["failed"]
        assert failed.get("not_tls", 0) >= 2, failed
        assert failed.get("version", 0) + failed.get("cipher", 0) + failed.get("other", 0) >= 1, failed
        assert failed.get("timeout", 0) == 1, failed
        assert stats["handshakes"] == 2

    run(main())


def _client_hello() -> bytes:
    """A real ClientHello (from Python's ssl through a memory BIO) to trickle."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="web.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_idle_tls_keepalive_survives_and_closes_cleanly(pki: Pki, server: Pem) -> None:
    """Several requests on one TLS keep-alive connection (sent one by one, and pipelined), then a close_notify."""

    async def main() -> None:
        async with HttpBackend("b") as backend:
            proxy, port = await start(config([backend.address], {"cert": server.cert, "key": server.key}))
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                           server_hostname="web.test")
            for i in range(3):
                writer.write(f"GET /echo?i={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
            writer.write(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n" * 5
                         + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await proxy.stop()
        assert rest.count(b"HTTP/1.1 204") == 5 and rest.count(b"HTTP/1.1 200") == 1

    run(main())
