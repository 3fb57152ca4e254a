"""tcp listeners sending to a logical name: the naming table resolved per connection, real sockets and backends."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fastmesh import ConfigError, Proxy, loads_config
from fastmesh._testbase.backends import Backend, greet
from fastmesh._testbase.net import free_port
from fastmesh._testbase.tls import Pki

pytestmark = pytest.mark.timeout(120)

CHECK = ('health_check = { type = "tcp", interval = "100ms", timeout = "100ms", unhealthy = 1, healthy = 1, '
         'jitter = "0%" }\n')


def config(port: int, endpoints: dict[str, str], rules: list[str], extra: str = "") -> str:
    """One tcp listener sending to service "db"; one cluster per entry of `endpoints` (name -> address)."""
    text = (f'[[listeners]]\nname = "tcp-in"\nlisten = "127.0.0.1:{port}"\nprotocol = "tcp"\nservice = "db"\n'
            f'[naming]\nrules = [{", ".join(repr(r).replace(chr(39), chr(34)) for r in rules)}]\n')
    for name, address in endpoints.items():
        text += f'[clusters.{name}]\nendpoints = ["{address}"]\n{extra}'
    return text


async def greeting(proxy: Proxy) -> tuple[str, asyncio.StreamWriter]:
    """Connect through the listener and read the backend's first line ("" when the connection was closed)."""
    host, port = proxy.addresses["tcp-in"]
    reader, writer = await asyncio.open_connection(host, port)
    line = await asyncio.wait_for(reader.readline(), 10)
    return line.decode().strip().removeprefix("hello from "), writer


async def one_greeting(proxy: Proxy) -> str:
    name, writer = await greeting(proxy)
    writer.close()
    return name


async def backends(*names: str) -> list[Backend]:
    return [await Backend(greet, name).start() for name in names]


def test_service_follows_a_rule_and_a_reloaded_table_moves_new_connections() -> None:
    async def main() -> None:
        a, b = await backends("a", "b")
        port = free_port()
        eps = {"a": a.address, "b": b.address}
        proxy = Proxy.from_toml(config(port, eps, ["/svc/db => /cluster/a"]))
        await proxy.start()
        try:
            assert [await one_greeting(proxy) for _ in range(5)] == ["a"] * 5
            await proxy.reload(loads_config(config(port, eps, ["/svc/db => /cluster/b"])))
            assert [await one_greeting(proxy) for _ in range(5)] == ["b"] * 5
        finally:
            await proxy.stop()
            await a.stop()
            await b.stop()
    asyncio.run(main())


def test_held_connection_keeps_relaying_after_the_table_changes() -> None:
    async def main() -> None:
        a, b = await backends("a", "b")
        port = free_port()
        eps = {"a": a.address, "b": b.address}
        proxy = Proxy.from_toml(config(port, eps, ["/svc/db => /cluster/a"]))
        await proxy.start()
        try:
            host, lport = proxy.addresses["tcp-in"]
            reader, writer = await asyncio.open_connection(host, lport)
            assert await asyncio.wait_for(reader.readline(), 10) == b"hello from a\n"
            await proxy.reload(loads_config(config(port, eps, ["/svc/db => /cluster/b"])))
            assert await one_greeting(proxy) == "b"
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"      # echoed by a, not dropped
            writer.close()
        finally:
            await proxy.stop()
            await a.stop()
            await b.stop()
    asyncio.run(main())


def test_split_over_2000_connections_lands_within_3_percent_of_its_weights() -> None:
    async def main() -> None:
        a, b = await backends("a", "b")
        port = free_port()
        proxy = Proxy.from_toml(config(port, {"a": a.address, "b": b.address},
                                       ["/svc/db => 0.8 * /cluster/a & 0.2 * /cluster/b"]))
        await proxy.start()
        try:
            got: dict[str, int] = {}
            for _ in range(40):
                names = await asyncio.gather(*(one_greeting(proxy) for _ in range(50)))
                for n in names:
                    got[n] = got.get(n, 0) + 1
            assert set(got) == {"a", "b"} and sum(got.values()) == 2000, got
            assert abs(got["b"] / 2000 - 0.2) <= 0.03, got
        finally:
            await proxy.stop()
            await a.stop()
            await b.stop()
    asyncio.run(main())


def test_fallback_takes_the_second_cluster_while_the_first_has_no_endpoint_up() -> None:
    async def main() -> None:
        (b,) = await backends("b")
        dead = free_port()                 # nothing listens there: the health check marks it down
        port = free_port()
        proxy = Proxy.from_toml(config(port, {"a": f"127.0.0.1:{dead}", "b": b.address},
                                       ["/svc/db => /cluster/a | /cluster/b"], extra=CHECK))
        await proxy.start()
        try:
            deadline = time.monotonic() + 10
            while proxy.stats()["clusters"]["a"][0]["healthy"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [await one_greeting(proxy) for _ in range(20)] == ["b"] * 20
            assert proxy.stats()["listeners"]["tcp-in"]["failed"] == 0
        finally:
            await proxy.stop()
            await b.stop()
    asyncio.run(main())


def test_bang_refuses_the_connection_and_counts_it_failed() -> None:
    async def main() -> None:
        (a,) = await backends("a")
        port = free_port()
        proxy = Proxy.from_toml(config(port, {"a": a.address}, ["/svc => /cluster", "/svc/db => !"]))
        await proxy.start()
        try:
            assert await one_greeting(proxy) == ""           # closed at accept: EOF before any byte
            assert await one_greeting(proxy) == ""
            stats = proxy.stats()["listeners"]["tcp-in"]
            assert stats["failed"] == 2 and stats["accepted"] == 2, stats
            assert a.connections == 0
        finally:
            await proxy.stop()
            await a.stop()
    asyncio.run(main())


def test_explain_shows_the_naming_of_a_tcp_listener() -> None:
    from fastmesh.admin.explain import Question, explain
    cfg = loads_config(config(free_port(), {"a": "127.0.0.1:1", "b": "127.0.0.1:2"},
                              ["/svc/db => /cluster/a | /cluster/b"]))
    out = explain(cfg, Question(listener="tcp-in"), {"a": False, "b": True})
    assert out["cluster"]["name"] == "b"
    assert "cluster a has no endpoint up: skipped" in "\n".join(out["naming"]["steps"])
    assert "service db" in out["outcome"]


def test_cluster_and_service_together_is_an_error_naming_the_key() -> None:
    text = config(1, {"a": "127.0.0.1:1"}, ["/svc/db => /cluster/a"])
    text = text.replace('service = "db"\n', 'service = "db"\ncluster = "a"\n')
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.service"):
        loads_config(text)


def test_a_service_naming_no_cluster_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.service"):
        loads_config(config(1, {"a": "127.0.0.1:1"}, ["/svc/other => /cluster/a"]))


def test_no_cluster_and_no_service_on_a_tcp_listener_says_what_is_missing() -> None:
    text = config(1, {"a": "127.0.0.1:1"}, ["/svc/db => /cluster/a"]).replace('service = "db"\n', "")
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.cluster.*service"):
        loads_config(text)


def test_a_cluster_originating_tls_is_accepted_beside_a_tcp_service_listener(tmp_path: Path) -> None:
    """Its relays to that cluster originate TLS (test_tcp_service_tls.py); the config is no longer refused."""
    pki = Pki(tmp_path)
    text = config(1, {"a": "127.0.0.1:1"}, ["/svc/db => /cluster/a"]) + f'tls = {{ ca = "{pki.ca_file}" }}\n'
    cfg = loads_config(text)
    assert cfg.listeners[0].service == "db" and cfg.clusters["a"].tls is not None


def test_sni_routes_beside_service_is_an_error_naming_the_key() -> None:
    text = config(1, {"a": "127.0.0.1:1"}, ["/svc/db => /cluster/a"]).replace(
        'service = "db"\n', 'service = "db"\nsni_routes = { "a.test" = "a" }\n')
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.sni_routes"):
        loads_config(text)


def test_fastmesh_run_follows_a_watched_table_for_new_connections_and_explains_it(tmp_path: Path) -> None:
    """Two workers; the table in a watched file is rewritten: new connections go to b, one held open stays on a."""
    import httpx

    from fastmesh._testbase.run import AsyncRun, replace_file

    async def main() -> None:
        a, b = await backends("a", "b")
        table = tmp_path / "naming.dtab"
        table.write_text("/svc/db => /cluster/a\n")
        port, admin = free_port(), free_port()
        text = (f'workers = 2\ndrain_timeout = "2s"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                f'[[listeners]]\nname = "tcp-in"\nlisten = "127.0.0.1:{port}"\nprotocol = "tcp"\nservice = "db"\n'
                f'[clusters.a]\nendpoints = ["{a.address}"]\n[clusters.b]\nendpoints = ["{b.address}"]\n'
                '[naming]\nsource = { kind = "file", path = "naming.dtab" }\n')
        run = AsyncRun(tmp_path, text)
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.readline(), 10) == b"hello from a\n"
            async with httpx.AsyncClient() as client:
                got = (await client.get(f"http://127.0.0.1:{admin}/explain?listener=tcp-in", timeout=5)).json()
            assert got["cluster"]["name"] == "a" and got["naming"]["service"] == "db", got
            replace_file(table, "/svc/db => /cluster/b\n")
            await run.wait_log(r"discovery update applied by 2 worker\(s\) .*naming table changed")
            names = []
            for _ in range(20):
                r2, w2 = await asyncio.open_connection("127.0.0.1", port)
                names.append((await asyncio.wait_for(r2.readline(), 10)).decode().strip())
                w2.close()
            assert names == ["hello from b"] * 20, names
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"      # the held relay still runs
            writer.close()
        finally:
            await run.stop()
            await a.stop()
            await b.stop()
    asyncio.run(main())


def test_admin_stats_metrics_and_dashboard_show_the_service_and_the_clusters_its_connections_went_to(
        tmp_path: Path) -> None:
    """`fastmesh run` with two workers, a 50/50 split: /stats, /metrics and the dashboard's data show the listener's
    service and, per cluster, the connections it was resolved to, summed over the workers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from fastmesh._testbase.run import AsyncRun

    async def main() -> None:
        a, b = await backends("a", "b")
        port, admin = free_port(), free_port()
        text = (f'workers = 2\ndrain_timeout = "2s"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                + config(port, {"a": a.address, "b": b.address}, ["/svc/db => 0.5 * /cluster/a & 0.5 * /cluster/b"]))
        run = AsyncRun(tmp_path, text)
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            got: dict[str, int] = {"a": 0, "b": 0}
            for _ in range(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                got[(await asyncio.wait_for(reader.readline(), 10)).decode().strip().removeprefix("hello from ")] += 1
                writer.close()
            assert got["a"] and got["b"], got
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=5) as client:
                deadline = time.monotonic() + 10
                row = (await client.get("/stats")).json()["listeners"]["tcp-in"]
                while sum(row["clusters"].values()) < 30 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    row = (await client.get("/stats")).json()["listeners"]["tcp-in"]
                metrics = (await client.get("/metrics")).text
                data = (await client.get("/dashboard/data")).json()
        finally:
            await run.stop()
            await a.stop()
            await b.stop()
        assert row["service"] == "db" and row["cluster"] is None, row
        assert row["clusters"] == got and row["accepted"] == 30, row
        routed = {s.labels["cluster"]: s.value for family in text_string_to_metric_families(metrics)
                  for s in family.samples if s.name == "fastmesh_downstream_connections_routed_total"
                  and s.labels["listener"] == "tcp-in" and s.labels["service"] == "db"}
        assert routed == got, routed
        (card,) = [item for item in data["listeners"] if item["name"] == "tcp-in"]
        assert card["service"] == "db" and card["clusters"] == got, card
    asyncio.run(main())
