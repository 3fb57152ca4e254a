"""Hot reload in one process: new routes and endpoints take effect while a keep-alive load runs, and no request
fails; a listener added or removed by a reload is opened or closed; an invalid config changes nothing."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import socket

import httpx
import pytest

from fastmesh import ConfigError, Proxy, loads_config
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.inproc import web_config
from fastmesh._testbase.net import free_port

pytestmark = pytest.mark.timeout(120)


def config(port: int, routes: list[tuple[str, str]], clusters: dict[str, list[str]], extra: str = "") -> str:
    text = f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\ncluster = "default"\n'
    for prefix, cluster in routes:
        text += f'[[listeners.routes]]\npath_prefix = "{prefix}"\ncluster = "{cluster}"\n'
    text += extra
    for name, endpoints in clusters.items():
        eps = ", ".join(f'"{e}"' for e in endpoints)
        text += f'[clusters.{name}]\nendpoints = [{eps}]\n'
    return text


def test_reloads_under_keep_alive_load_fail_no_request() -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            backends = [await stack.enter_async_context(HttpBackend(f"b{i}")) for i in range(4)]
            port = free_port()
            versions = []
            for i in range(10):
                a, b = backends[i % 4], backends[(i + 1) % 4]
                versions.append(config(port, [("/v", "versioned")], {
                    "default": [backends[0].address, backends[1].address] if i % 2 else [backends[2].address],
                    "versioned": [a.address, b.address]}))
            proxy = await stack.enter_async_context(Proxy.from_toml(versions[0]))
            stop = asyncio.Event()
            results = {"ok": 0, "failed": []}

            async def client(n: int) -> None:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                    while not stop.is_set():
                        path = "/v/x" if n % 2 else "/plain"
                        try:
                            resp = await http.get(path)
                            if resp.status_code == 200:
                                results["ok"] += 1
                            else:
                                results["failed"].append((path, resp.status_code, resp.headers.get("fastmesh-error")))
                        except httpx.HTTPError as exc:
                            results["failed"].append((path, repr(exc)))

            clients = [asyncio.create_task(client(n)) for n in range(8)]
            await asyncio.sleep(0.3)
            for i, text in enumerate(versions[1:] + versions[:1], start=1):
                await proxy.reload(loads_config(text))
                await asyncio.sleep(0.15)
                if i == 5:
                    with pytest.raises(ConfigError):          # an invalid config never reaches the proxy
                        loads_config(text.replace('path_prefix = "/v"', 'path_prefx = "/v"'))
            # The last version routes /v to backends 0 and 1: new requests must land there.
            before = [b.requests for b in backends]
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            assert results["failed"] == []
            assert results["ok"] > 200
            grew = [b.requests - n for b, n in zip(backends, before)]
            # versions[0]: default -> backend 2 only; versioned -> backends 0 and 1; backend 3 idle.
            assert grew[3] == 0 and grew[2] > 0 and grew[0] > 0 and grew[1] > 0, grew
            assert proxy.active_connections == 0 or proxy.active_connections <= 8

    asyncio.run(main())


def test_reload_opens_and_closes_listeners() -> None:
    async def main() -> None:
        async with HttpBackend("b") as backend:
            p1, p2 = free_port(), free_port()
            base = config(p1, [], {"default": [backend.address]})
            second = (f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{p2}"\nprotocol = "tcp"\n'
                      f'cluster = "default"\n')
            async with Proxy.from_toml(base) as proxy:
                await proxy.reload(loads_config(second + base))
                assert proxy.addresses["raw"] == ("127.0.0.1", p2)
                reader, writer = await asyncio.open_connection("127.0.0.1", p2)
                writer.write(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
                await proxy.reload(loads_config(base))   # the tcp listener goes; its open relay stays
                assert "raw" not in proxy.addresses
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", p2), timeout=1).close()
                writer.write(b"GET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 202")
                writer.close()
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://127.0.0.1:{p1}/status/200")).status_code == 200

    asyncio.run(main())


def test_reload_that_cannot_bind_changes_nothing() -> None:
    async def main() -> None:
        async with HttpBackend("b") as backend:
            p1 = free_port()
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            base = config(p1, [], {"default": [backend.address]})
            clash = (f'[[listeners]]\nname = "more"\nlisten = "127.0.0.1:{busy.getsockname()[1]}"\n'
                     f'protocol = "tcp"\ncluster = "default"\n')
            async with Proxy.from_toml(base) as proxy:
                with pytest.raises(OSError):
                    await proxy.reload(loads_config(clash + base))
                assert set(proxy.addresses) == {"web"}
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://127.0.0.1:{p1}/status/200")).status_code == 200
            busy.close()

    asyncio.run(main())


def test_reloads_do_not_pile_up_retired_acceptors() -> None:
    # Every reload replaces a tcp listener's acceptor; one whose connections have all ended must be let go (the
    # memory soak found one more TcpProxy alive per reload).
    async def main() -> None:
        async with HttpBackend("b") as backend:
            web, raw = free_port(), free_port()

            def version(i: int) -> str:
                relay = f'[[listeners]]\nname = "raw"\nlisten = "127.0.0.1:{raw}"\nprotocol = "tcp"\n'
                relay += 'cluster = "default"\n'
                return relay + config(web, [(f"/v{i}", "default")], {"default": [backend.address]})

            async with Proxy.from_toml(version(0)) as proxy:
                for i in range(1, 7):
                    reader, writer = await asyncio.open_connection("127.0.0.1", raw)
                    writer.write(b"GET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
                    writer.close()
                    await reader.read()
                    await proxy.reload(loads_config(version(i)))
                await asyncio.sleep(0.1)
                gc.collect()
                alive = [o for o in gc.get_objects() if type(o).__name__ == "TcpProxy"]
                assert len(alive) <= 2, f"{len(alive)} TcpProxy objects after 6 reloads"

    asyncio.run(main())


def test_reload_changes_the_forwarded_fields_on_a_kept_alive_connection():
    # An exchange lists its own header edits once per connection and listener rules: a reload that changes the
    # rules must reach the next request on a connection that was already open.
    async def main():
        async with HttpBackend("web") as backend:
            text = web_config([backend.address])
            async with Proxy.from_toml(text) as proxy:
                host, port = proxy.addresses["web"]
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:

                    async def seen() -> dict[str, str]:
                        r = await http.get("/echo")
                        assert r.status_code == 200
                        return {k.lower(): v for k, v in r.json()["headers"]}

                    first = await seen()
                    assert "x-forwarded-for" in first and "via" in first and len(first["x-request-id"]) == 32
                    changed = text.replace('protocol = "http"\n', 'protocol = "http"\nforwarded_headers = false\n'
                                                                  'request_id_header = "x-trace"\n')
                    assert changed != text
                    await proxy.reload(loads_config(changed))
                    second = await seen()          # the same keep-alive connection
                    assert "x-forwarded-for" not in second and "via" not in second
                    assert "x-request-id" not in second and len(second["x-trace"]) == 32
                    assert backend.requests == 2

    asyncio.run(main())
