"""tcp listeners sending to a service whose clusters originate TLS: each connection's context is the resolved one's."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from fastmesh import Proxy, loads_config
from fastmesh._testbase.backends import Backend, greet, hold
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pem, Pki, TlsEchoBackend

pytestmark = pytest.mark.timeout(120)

RELOAD_WAIT = 15.0          # seconds a change on disk may take to reach new handshakes (inotify or the 1 s poll)
CHECK = ('health_check = { type = "tcp", interval = "100ms", timeout = "100ms", unhealthy = 1, healthy = 1, '
         'jitter = "0%" }\n')
MESH_ID = "spiffe://mesh.test/ns/edge/sa/one"


def config(port: int, rules: list[str], tls_address: str, clear_address: str, tls: dict[str, str],
           clear_extra: str = "", extra: str = "", tls_extra: str = "") -> str:
    """A tcp listener sending to service "db"; cluster `t` originates TLS with `tls`, cluster `c` is cleartext."""
    table = ", ".join(f'"{r}"' for r in rules)
    tls_table = ", ".join(f'{k} = "{v}"' for k, v in tls.items())
    return (f'[[listeners]]\nname = "tcp-in"\nlisten = "127.0.0.1:{port}"\nprotocol = "tcp"\nservice = "db"\n'
            f'{extra}[naming]\nrules = [{table}]\n'
            f'[clusters.t]\nendpoints = ["{tls_address}"]\ntls = {{ {tls_table} }}\n{tls_extra}'
            f'[clusters.c]\nendpoints = ["{clear_address}"]\n{clear_extra}')


def mesh_tls(pki: Pki, client: Pem, server_name: str = "db.svc.test") -> dict[str, str]:
    return {"ca": pki.ca_file, "server_name": server_name, "cert": client.cert, "key": client.key}


async def exchange(proxy: Proxy, payload: bytes = b"ping\n") -> str:
    """One connection through the listener: the backend's first line, then `payload` echoed back; "" when the
    connection was closed before a line came."""
    host, port = proxy.addresses["tcp-in"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
        except ConnectionResetError:            # closed with bytes unread: a reset
            return ""
        if not line:
            return ""
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        return line.decode().strip().removeprefix("hello from ")
    finally:
        writer.close()


def cluster_tls(proxy: Proxy, name: str) -> dict[str, Any]:
    return proxy.stats()["tls"]["clusters"][name]


def context_status(proxy: Proxy, name: str) -> list[dict[str, Any]]:
    return [c for c in proxy.tls_status() if c["kind"] == "cluster" and c["name"] == name]


def uris(backend: TlsEchoBackend) -> list[str]:
    return [next(v for k, v in peer["subjectAltName"] if k == "URI") for peer in backend.peers]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_split_originates_tls_to_the_tls_cluster_and_relays_cleartext_to_the_other(pki: Pki) -> None:
    """A 50/50 split: connections resolved to `t` handshake with its CA, server name and client certificate (the
    backend requires one), those resolved to `c` reach a plain TCP server in cleartext; both relay both ways."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        clear = await Backend(greet, "c").start()
        proxy = Proxy.from_toml(config(free_port(), ["/svc/db => 0.5 * /cluster/t & 0.5 * /cluster/c"],
                                       tls_backend.address, clear.address, mesh_tls(pki, client)))
        await proxy.start()
        try:
            got = [await exchange(proxy, f"ping {i}\n".encode()) for i in range(40)]
            assert set(got) == {"t", "c"}, got
            stats = cluster_tls(proxy, "t")
            listener = proxy.stats()["listeners"]["tcp-in"]
        finally:
            await proxy.stop()
            await tls_backend.stop()
            await clear.stop()
        assert stats["handshakes"] == got.count("t") and stats["failed"] == 0, stats
        assert stats["resumed"] >= 1, stats              # the endpoint's session is kept between connections
        assert "c" not in proxy.stats()["tls"]["clusters"]
        assert uris(tls_backend) == [MESH_ID] * got.count("t")
        assert clear.connections == got.count("c")
        assert listener["failed"] == 0 and listener["accepted"] == 40, listener
        assert listener["service"] == "db" and listener["clusters"] == {"t": got.count("t"), "c": got.count("c")}
    asyncio.run(main())


def test_fallback_to_the_tls_cluster_while_the_cleartext_one_is_down(pki: Pki) -> None:
    """`c | t` with c's only endpoint down: every connection takes the TLS cluster, and is relayed over TLS."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        proxy = Proxy.from_toml(config(free_port(), ["/svc/db => /cluster/c | /cluster/t"], tls_backend.address,
                                       f"127.0.0.1:{free_port()}", mesh_tls(pki, client), clear_extra=CHECK))
        await proxy.start()
        try:
            deadline = time.monotonic() + 10
            while proxy.stats()["clusters"]["c"][0]["healthy"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            got = [await exchange(proxy) for _ in range(10)]
            assert got == ["t"] * 10, got
            assert cluster_tls(proxy, "t")["handshakes"] == 10
            assert proxy.stats()["listeners"]["tcp-in"]["failed"] == 0
        finally:
            await proxy.stop()
            await tls_backend.stop()
    asyncio.run(main())


def test_a_client_certificate_changed_on_disk_reaches_the_next_connection(pki: Pki, tmp_path: Path) -> None:
    """The TLS cluster's client certificate replaced on disk: reloaded in place (one context for the cluster, as
    for a tcp listener with a cluster), and the next connection resolved to it presents the new one."""
    live = Pem(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    first, second = pki.issue(MESH_ID), pki.issue("spiffe://mesh.test/ns/edge/sa/two")
    shutil.copyfile(first.cert, live.cert)
    shutil.copyfile(first.key, live.key)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        clear = await Backend(greet, "c").start()
        proxy = Proxy.from_toml(config(free_port(), ["/svc/db => /cluster/t"], tls_backend.address, clear.address,
                                       mesh_tls(pki, live)))
        await proxy.start()
        try:
            assert await exchange(proxy) == "t"
            for src, dst in ((second.key, live.key), (second.cert, live.cert)):
                shutil.copyfile(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
            deadline = time.monotonic() + RELOAD_WAIT
            while context_status(proxy, "t")[0]["reloads"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await exchange(proxy) == "t"
            (status,) = context_status(proxy, "t")
        finally:
            await proxy.stop()
            await tls_backend.stop()
            await clear.stop()
        assert status["reloads"] == 1 and status["certificates"][0]["uris"] == ["spiffe://mesh.test/ns/edge/sa/two"]
        assert uris(tls_backend) == [MESH_ID, "spiffe://mesh.test/ns/edge/sa/two"]
    asyncio.run(main())


def test_a_failed_upstream_handshake_closes_the_client_and_counts_a_failure(pki: Pki) -> None:
    """The TLS cluster expects another server name than its endpoint's certificate carries: the handshake fails,
    the client's connection is closed without a byte, the listener counts it failed, the cluster's TLS the failed
    handshake and the endpoint a failed connect; connections resolved to the cleartext cluster go on being served."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        clear = await Backend(greet, "c").start()
        port = free_port()
        tls = mesh_tls(pki, client, server_name="other.svc.test")
        proxy = Proxy.from_toml(config(port, ["/svc/db => /cluster/t"], tls_backend.address, clear.address, tls))
        await proxy.start()
        try:
            assert await exchange(proxy) == ""
            listener = proxy.stats()["listeners"]["tcp-in"]
            assert listener["failed"] == 1 and listener["accepted"] == 1, listener
            stats = cluster_tls(proxy, "t")
            assert stats["failed"] >= 1 and stats["handshakes"] == 0, stats
            assert proxy.stats()["clusters"]["t"][0]["connect_failures"] >= 1
            await proxy.reload(loads_config(config(port, ["/svc/db => /cluster/c"], tls_backend.address,
                                                   clear.address, tls)))
            assert await exchange(proxy) == "c"
        finally:
            await proxy.stop()
            await tls_backend.stop()
            await clear.stop()
        assert tls_backend.peers == [] or all(p is None for p in tls_backend.peers)
    asyncio.run(main())


def test_an_upstream_handshake_that_never_finishes_times_out_and_closes_the_client(pki: Pki) -> None:
    """The TLS cluster's endpoint accepts and never answers the ClientHello: after its connect_timeout the relay
    gives up (the sweep counts the timeout with the relay's own context), the client is closed and counted."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        silent = await Backend(hold, "silent").start()
        clear = await Backend(greet, "c").start()
        proxy = Proxy.from_toml(config(free_port(), ["/svc/db => /cluster/t"], silent.address, clear.address,
                                       mesh_tls(pki, client), tls_extra='connect_timeout = "300ms"\n'))
        await proxy.start()
        try:
            started = time.monotonic()
            assert await exchange(proxy) == ""
            assert time.monotonic() - started < 5
            assert proxy.stats()["listeners"]["tcp-in"]["failed"] == 1
            stats = cluster_tls(proxy, "t")
            assert stats["failed"] >= 1 and stats["handshakes"] == 0, stats     # one per connect attempt
        finally:
            await proxy.stop()
            await silent.stop()
            await clear.stop()
    asyncio.run(main())


def test_two_tcp_listeners_to_the_tls_cluster_share_one_context(pki: Pki) -> None:
    """A second tcp service listener, and a tcp listener with `cluster = "t"`, use the first one's context for `t`:
    one /tls entry (one watch, one reload), and each connection after the first resumes its session."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        clear = await Backend(greet, "c").start()
        more = (f'[[listeners]]\nname = "tcp-2"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "tcp"\n'
                f'service = "db"\n[[listeners]]\nname = "tcp-3"\nlisten = "127.0.0.1:{free_port()}"\n'
                'protocol = "tcp"\ncluster = "t"\n')
        proxy = Proxy.from_toml(config(free_port(), ["/svc/db => /cluster/t"], tls_backend.address, clear.address,
                                       mesh_tls(pki, client), extra=more))
        await proxy.start()
        try:
            for name in ("tcp-in", "tcp-2", "tcp-3"):
                reader, writer = await asyncio.open_connection(*proxy.addresses[name])
                assert await asyncio.wait_for(reader.readline(), 10) == b"hello from t\n"
                writer.close()
            assert len(context_status(proxy, "t")) == 1, proxy.tls_status()
            stats = cluster_tls(proxy, "t")
            assert stats["handshakes"] == 3 and stats["resumed"] == 2, stats
        finally:
            await proxy.stop()
            await tls_backend.stop()
            await clear.stop()
    asyncio.run(main())


def test_the_tls_cluster_shares_one_context_with_its_http_pool(pki: Pki) -> None:
    """An http listener beside the tcp service listener gives every cluster an HTTP pool: the service listener's
    relays to `t` use the pool's context (one /tls entry, one reload, one set of sessions), not a second one."""
    client = pki.issue(MESH_ID)

    async def main() -> None:
        tls_backend = await TlsEchoBackend(pki.server_context(pki.issue("db.svc.test"), client_ca=pki.ca_file),
                                           banner=b"hello from t\n").start()
        clear = await Backend(greet, "c").start()
        http = f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\ncluster = "c"\n'
        port = free_port()
        text = config(port, ["/svc/db => /cluster/t"], tls_backend.address, clear.address, mesh_tls(pki, client))
        proxy = Proxy.from_toml(http + text)
        await proxy.start()
        try:
            assert await exchange(proxy) == "t"
            assert len(context_status(proxy, "t")) == 1, proxy.tls_status()
            # A reload leaving the TLS settings alone keeps that context (and its sessions) in use.
            await proxy.reload(loads_config(http + text))
            assert await exchange(proxy) == "t"
            assert len(context_status(proxy, "t")) == 1, proxy.tls_status()
            stats = cluster_tls(proxy, "t")
            assert stats["handshakes"] == 2 and stats["resumed"] == 1, stats
        finally:
            await proxy.stop()
            await tls_backend.stop()
            await clear.stop()
    asyncio.run(main())
