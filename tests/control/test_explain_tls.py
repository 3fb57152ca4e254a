"""GET /explain and `fastmesh explain` show TLS the same way for tcp and http listeners: what the listener
terminates and what its cluster originates, against a real `fastmesh run` with certificates this test makes."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import env, running
from fastmesh._testbase.tls import Pki

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0


def config(pki: Pki, edge: int, web: int, admin: int) -> str:
    server = pki.issue("proxy.test")
    client = pki.issue("spiffe://test/proxy")
    # The same TLS on both listeners (a table of its own: inline tables take one line).
    terminated = f"""[listeners.tls]
cert = "{server.cert}"
key = "{server.key}"
client_ca = "{pki.ca_file}"
alpn = ["db/1"]
allow_identities = ["spiffe://test/*"]
"""
    return f"""
workers = 1
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{edge}"
protocol = "tcp"
cluster = "secure"
{terminated}[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "secure"
{terminated}[clusters.secure]
endpoints = ["127.0.0.1:1"]
[clusters.secure.tls]
ca = "{pki.ca_file}"
server_name = "backend.test"
cert = "{client.cert}"
key = "{client.key}"
alpn = ["db/1"]
"""


def explain_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fastmesh", "explain", *args], env=env(), capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tcp_and_http_listeners_show_their_tls_the_same_way(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    edge, web, admin = free_ports(3)
    text = config(pki, edge, web, admin)

    async def main() -> dict[str, dict[str, Any]]:
        async with running(tmp_path, text, wait=WAIT) as run:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=WAIT) as adm:
                got = {}
                for name in ("edge", "web"):
                    resp = await adm.get("/explain", params={"listener": name, "host": "proxy.test", "path": "/"})
                    assert resp.status_code == 200, resp.text
                    got[name] = resp.json()
                table = await asyncio.to_thread(explain_cli, "--admin", f"127.0.0.1:{admin}", "--listener",
                                                "edge", f"http://127.0.0.1:{edge}/")
                got["table"] = {"text": table}
            assert run.proc is not None
            return got

    got = asyncio.run(main())
    tcp, http = got["edge"], got["web"]
    assert tcp["listener"]["protocol"] == "tcp" and http["listener"]["protocol"] == "http"
    terminated = tcp["listener"]["tls"]
    assert terminated == http["listener"]["tls"]            # the same settings, shown the same way
    assert terminated["terminates"] is True and terminated["alpn"] == ["db/1"]
    assert terminated["client_ca"] == pki.ca_file and terminated["require_client_cert"] is True
    assert terminated["allow_identities"] == ["spiffe://test/*"] and terminated["min_version"] == "1.2"
    assert [c["cert"] for c in terminated["certificates"]] == [str(tmp_path / "cert1.pem")]
    originated = tcp["cluster"]["tls"]
    assert originated == {"originates": True, "ca": pki.ca_file, "verify": True, "server_name": "backend.test",
                          "client_cert": str(tmp_path / "cert2.pem"), "min_version": "1.2", "alpn": ["db/1"],
                          "session_reuse": True}
    assert http["cluster"]["tls"] == originated
    # The table: one line for each side, on a tcp listener too.
    table = got["table"]["text"]
    assert f"tls       terminated: certificate {tmp_path / 'cert1.pem'}; TLS 1.2+; ALPN db/1; client certificate " \
           f"required (CA {pki.ca_file}, identities spiffe://test/*)" in table, table
    assert f"tls       to the endpoints: verified against {pki.ca_file} as backend.test; client certificate " \
           f"{tmp_path / 'cert2.pem'}; TLS 1.2+; ALPN db/1" in table, table
    # From the config alone (no instance answering), the same.
    (tmp_path / "offline.toml").write_text(text.replace(f"127.0.0.1:{admin}", f"127.0.0.1:{free_ports(1)[0]}"))
    offline = explain_cli(f"http://127.0.0.1:{edge}/", str(tmp_path / "offline.toml"), "--listener", "edge")
    assert "tls       terminated: certificate" in offline and "tls       to the endpoints: verified" in offline
