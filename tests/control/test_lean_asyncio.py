"""`fastmesh run` imports asyncio without `ssl` (process/lean_asyncio.py); whoever imports ssl later gets asyncio's
TLS as usual. Each case runs in a fresh interpreter: this one has asyncio and ssl loaded already."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fastmesh._testbase.tls import Pki

BEFORE = """
import sys
from fastmesh.process.lean_asyncio import import_asyncio_without_ssl
import_asyncio_without_ssl()
import asyncio
assert "asyncio" in sys.modules
assert not {"ssl", "_ssl", "_hashlib"} & set(sys.modules), sorted({"ssl", "_ssl", "_hashlib"} & set(sys.modules))
"""


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_asyncio_without_ssl_serves_plain_tcp() -> None:
    out = python(BEFORE + """
async def main():
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"plain\\n")
    print((await reader.readline()).decode().strip())
    writer.close()
    server.close()
asyncio.run(main())
print("ssl" in sys.modules)
""")
    assert out.split() == ["plain", "False"]


def test_a_later_import_ssl_gives_asyncio_its_tls(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    server = pki.issue("web.test")
    out = python(BEFORE + f"""
import ssl
import asyncio.sslproto
assert asyncio.sslproto.ssl is ssl and asyncio.sslproto.SSLAgainErrors
server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
server_ctx.load_cert_chain({str(server.cert)!r}, {str(server.key)!r})
client_ctx = ssl.create_default_context(cafile={str(pki.ca_file)!r})

async def main():
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
    srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    host, port = srv.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port, ssl=client_ctx, server_hostname="web.test")
    writer.write(b"over tls\\n")
    print((await reader.readline()).decode().strip(), writer.get_extra_info("ssl_object").version())
    writer.close()
    srv.close()
asyncio.run(main())
""")
    assert out.startswith("over tls TLS")


def test_nothing_is_blocked_when_asyncio_is_already_loaded() -> None:
    out = python("""
import sys, asyncio
from fastmesh.process.lean_asyncio import import_asyncio_without_ssl
import_asyncio_without_ssl()
print("ssl" in sys.modules, sys.modules["asyncio.sslproto"].ssl is sys.modules["ssl"])
""")
    assert out.split() == ["True", "True"]
