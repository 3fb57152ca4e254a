"""Upstream TLS handshake counts per cluster under `fastmesh run` (2 workers): in /stats, /clusters and /metrics,
summed over the workers, for a tcp listener's relay and an http listener's pool to real TLS backends, failed
handshakes with a backend whose certificate is not trusted, and kept when a worker is killed and replaced."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import running
from fastmesh._testbase.tls import Pki

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0
CONNECTIONS = 6     # new connections through each listener


def config(pki: Pki, raw: int, web: int, wrong: int, admin: int, good: str, bad: str) -> str:
    trust = f'[clusters.{{name}}.tls]\nca = "{pki.ca_file}"\nserver_name = "backend.test"\n'
    return f"""
workers = 2
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "raw"
listen = "127.0.0.1:{raw}"
protocol = "tcp"
cluster = "secure_tcp"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "secure_http"
[[listeners]]
name = "wrong"
listen = "127.0.0.1:{wrong}"
protocol = "tcp"
cluster = "untrusted"
[clusters.secure_tcp]
endpoints = ["{good}"]
{trust.format(name="secure_tcp")}
[clusters.secure_http]
endpoints = ["{good}"]
{trust.format(name="secure_http")}
[clusters.untrusted]
endpoints = ["{bad}"]
connect_attempts = 1
{trust.format(name="untrusted")}
[clusters.plain]
endpoints = ["{good}"]
"""


def http_once(port: int) -> bytes:
    """One HTTP/1.1 request on a new connection, read until the proxy or the backend closes it (a reset: the proxy
    closed it with our request unread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: backend.test\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def admin_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as reply:
        return json.loads(reply.read())


def admin_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_upstream_tls_handshakes_per_cluster_are_merged_over_the_workers(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    good_ctx = pki.server_context(pki.issue("backend.test"))
    bad_ctx = pki.server_context(pki.issue("backend.test", ca=pki.other))     # a CA the clusters do not trust
    raw, web, wrong, admin = free_ports(4)

    async def main() -> None:
        async with HttpBackend("good", ssl=good_ctx) as good, HttpBackend("bad", ssl=bad_ctx) as bad:
            text = config(pki, raw, web, wrong, admin, good.address, bad.address)
            async with running(tmp_path, text, wait=WAIT) as run:
                for _ in range(CONNECTIONS):
                    answer = await asyncio.to_thread(http_once, raw)        # relayed: the backend's own answer
                    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
                    answer = await asyncio.to_thread(http_once, web)
                    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
                    answer = await asyncio.to_thread(http_once, wrong)      # closed: no endpoint to relay to
                    assert answer == b"", answer[:200]
                await asyncio.to_thread(check, run.log())
                # A worker killed and replaced: what it counted stays in the instance's totals.
                before = admin_json(admin, "/stats")["clusters"]["secure_tcp"]["tls"]
                victim = int(admin_json(admin, "/stats")["workers"]["0"]["pid"])
                os.kill(victim, signal.SIGKILL)
                await run.wait_log(r"w0 \(pid \d+\) ready", count=2)
                after = admin_json(admin, "/stats")["clusters"]["secure_tcp"]["tls"]
                assert after == before, (before, after)

    def check(log: str) -> None:
        stats = admin_json(admin, "/stats")
        assert len(stats["workers"]) == 2
        clusters = stats["clusters"]
        # The tcp relay makes one upstream handshake per connection, whichever worker took it.
        tcp = clusters["secure_tcp"]["tls"]
        assert tcp["handshakes"] == CONNECTIONS and tcp["failed"] == 0, tcp
        assert 0 <= tcp["resumed"] <= tcp["handshakes"], tcp
        # The http pool may reuse an upstream connection: at least one handshake, at most one per request.
        http = clusters["secure_http"]["tls"]
        assert 1 <= http["handshakes"] <= CONNECTIONS and http["failed"] == 0, http
        # Every connect to the untrusted backend is a failed handshake (one attempt per connection).
        untrusted = clusters["untrusted"]["tls"]
        assert untrusted == {"handshakes": 0, "resumed": 0, "failed": CONNECTIONS}, untrusted
        assert "TLS handshake with" in log and "failed" in log
        assert "tls" not in clusters["plain"]             # a plain cluster has no TLS counts
        # /clusters shows the counts beside the cluster's TLS files and certificates.
        shown = admin_json(admin, "/clusters")["secure_tcp"]["tls"]
        assert shown["handshakes"] == CONNECTIONS and "files" in shown
        metrics = admin_metrics(admin)
        for cluster, counts in (("secure_tcp", tcp), ("secure_http", http), ("untrusted", untrusted)):
            labels = (("cluster", cluster),)
            assert metrics[("fastmesh_upstream_tls_handshakes_total", labels)] == counts["handshakes"]
            assert metrics[("fastmesh_upstream_tls_resumed_total", labels)] == counts["resumed"]
            assert metrics[("fastmesh_upstream_tls_handshake_failures_total", labels)] == counts["failed"]
        assert ("fastmesh_upstream_tls_handshakes_total", (("cluster", "plain"),)) not in metrics

    asyncio.run(main())
