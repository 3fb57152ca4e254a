"""Discovery sources in-process against real servers on loopback (dnsmasq, etcd) and files: what each finds, how
it keeps the last good set when its server fails, and the `discovery` config keys."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fastmesh._testbase.discovery_servers import Dnsmasq, Etcd, missing
from fastmesh._testbase.run import env, fastmesh_argv
from fastmesh.config.load import config_from_dict, config_to_dict, loads_config
from fastmesh.config.schema import Discovery, Endpoint
from fastmesh.discovery.base import SourceError
from fastmesh.discovery.dns import DnsSource
from fastmesh.discovery.etcd import EtcdSource, prefix_end
from fastmesh.discovery.file import FileSource, parse_file
from fastmesh.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0                 # seconds any one expected change may take
LISTENER = '[[listeners]]\nname = "in"\nlisten = "127.0.0.1:4140"\ncluster = "c"\n'


def cluster(discovery: str, extra: str = "") -> str:
    return LISTENER + f"[clusters.c]\ndiscovery = {discovery}\n{extra}"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "f.toml")
    return [str(e) for e in getattr(info.value, "errors", [info.value])]


# ---- config ----

def test_the_issue_keys_load_and_round_trip() -> None:
    text = LISTENER + """
[clusters.c]
discovery = { kind = "file", path = "users.json" }
[clusters.db]
discovery = { kind = "dns_srv", name = "_db._tcp.svc.test", resolvers = ["127.0.0.1:5353"] }
[clusters.web]
discovery = { kind = "dns", name = "web.svc.test", port = 8080, resolvers = ["127.0.0.1:5353"] }
[clusters.api]
discovery = { kind = "etcd", endpoints = ["127.0.0.1:2379"], prefix = "/services/api/" }
"""
    cfg = loads_config(text, "f.toml")
    assert cfg.clusters["c"].discovery == Discovery(kind="file", path="users.json")
    assert cfg.clusters["c"].endpoints == []
    assert cfg.clusters["db"].discovery == Discovery(kind="dns_srv", name="_db._tcp.svc.test",
                                                     resolvers=[("127.0.0.1", 5353)])
    web = cfg.clusters["web"].discovery
    assert web is not None and (web.port, web.hold, web.min_ttl, web.max_ttl) == (8080, 30.0, 1.0, 300.0)
    api = cfg.clusters["api"].discovery
    assert api is not None and api.endpoints == [("127.0.0.1", 2379)] and api.prefix == "/services/api/"
    dumped = config_to_dict(cfg)
    assert dumped["clusters"]["web"]["discovery"] == {
        "kind": "dns", "name": "web.svc.test", "port": 8080, "resolvers": ["127.0.0.1:5353"], "hold": "30s",
        "min_ttl": "1s", "max_ttl": "5m", "timeout": "2s"}
    assert config_from_dict(dumped, "f.toml") == cfg


def test_listed_endpoints_beside_discovery_are_the_set_until_it_answers() -> None:
    cfg = loads_config(cluster('{ kind = "file", path = "x.json" }', 'endpoints = ["127.0.0.1:9001"]\n'))
    assert cfg.clusters["c"].endpoints == [Endpoint("127.0.0.1", 9001)]
    assert loads_config(cluster('{ kind = "file", path = "x.json" }', "endpoints = []\n")).clusters["c"].endpoints == []


@pytest.mark.parametrize("discovery, message", [
    ('{ kind = "consul" }', 'f.toml: clusters.c.discovery.kind: expected one of the discovery kinds '
                            '["file", "dns", "dns_srv", "etcd", "plugin"], got "consul"'),
    ('{ kind = "dns", name = "web.svc.test" }', 'f.toml: clusters.c.discovery.port: missing key (expected a value '
                                                'for kind = "dns")'),
    ('{ kind = "etcd", prefix = "/a/" }', 'f.toml: clusters.c.discovery.endpoints: missing key (expected a value '
                                          'for kind = "etcd")'),
    ('{ kind = "file", path = "a.json", name = "x.test" }',
     'f.toml: clusters.c.discovery.name: expected no name with kind = "file" (it is for ["dns", "dns_srv"]), '
     'got "x.test"'),
    ('{ kind = "dns_srv", name = "_a._tcp.x", hold = "soon" }',
     'f.toml: clusters.c.discovery.hold: expected a duration like "250ms", "1s", "2m" or "1h", got "soon"'),
    ('{ kind = "dns_srv", name = "_a._tcp.x", min_ttl = "10m" }',
     'f.toml: clusters.c.discovery.min_ttl: expected at most max_ttl (5m), got "10m"'),
    ('{ kind = "dns", name = "bad name", port = 80 }',
     'f.toml: clusters.c.discovery.name: expected a DNS name like "web.svc.test", got "bad name"'),
    ('{ kind = "etcd", endpoints = [], prefix = "/a/" }',
     'f.toml: clusters.c.discovery.endpoints: expected at least one "host:port", got []'),
])
def test_bad_discovery_settings_are_named(discovery: str, message: str) -> None:
    assert errors(cluster(discovery)) == [message]


def test_a_cluster_needs_endpoints_or_discovery() -> None:
    assert errors(LISTENER + "[clusters.c]\nbalancer = \"random\"\n") == [
        "f.toml: clusters.c.endpoints: missing key (expected at least one endpoint (or discovery))"]


# ---- file ----

def test_endpoint_files_json_and_toml() -> None:
    assert parse_file(b'[{"address": "127.0.0.1:9001", "weight": 2, "zone": "a"}, "[::1]:9002"]', "x.json") == [
        Endpoint("127.0.0.1", 9001, 2), Endpoint("::1", 9002)]
    assert parse_file(b'{"endpoints": ["127.0.0.1:9001"]}', "x.json") == [Endpoint("127.0.0.1", 9001)]
    assert parse_file(b'endpoints = [{ address = "10.0.0.1:80", weight = 5 }]', "x.toml") == [
        Endpoint("10.0.0.1", 80, 5)]


@pytest.mark.parametrize("data, message", [
    (b"[", "x.json: invalid JSON (Expecting value: line 1 column 2 (char 1))"),
    (b'{"hosts": []}', 'x.json: expected an array of endpoints (or a table with only "endpoints")'),
    (b'["web:80"]', "x.json: endpoint 0: address 'web:80' is not \"ip:port\""),
    (b'[{"address": "127.0.0.1:1", "weight": 0}]', "x.json: endpoint 0: weight must be a whole number from 1 "
                                                   "to 1000, got 0"),
    (b'[{"address": "127.0.0.1:1", "port": 2}]', "x.json: endpoint 0: unknown key 'port' (expected address, "
                                                 "weight, priority, zone, metadata)"),
    (b'["127.0.0.1:1", "127.0.0.1:1"]', "x.json: 127.0.0.1:1 is listed twice"),
])
def test_bad_endpoint_files_say_why(data: bytes, message: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_file(data, "x.json")
    assert str(info.value) == message and info.value.kind == "parse"


def _parsed(parse: Any, item: Any) -> tuple[str, Any]:
    try:
        return "ok", parse(item)
    except SourceError as exc:
        return "error", str(exc)


def test_compiled_endpoint_parsing_agrees_with_the_python_parser() -> None:
    # _core/endpoints.pyx takes the common spellings in C and hands every other item to parse_endpoint: for any
    # item, both give the same Endpoint (a real one: type, fields, hash) or the same error.
    import random
    from fastmesh.discovery.base import parse_endpoint, parse_endpoints
    items: list[Any] = [
        "1.2.3.4:80", "0.0.0.0:1", "255.255.255.255:65535", "01.2.3.4:80", "1.2.3.4:080", "1.2.3.4:0",
        "1.2.3.4:65536", "1.2.3.4:123456", "256.1.1.1:1", "1000.1.1.1:1", "1.2.3:4", "1.2.3.4.5:6", "1.2.3.4",
        "1.2.3.4:", ":80", "", " 1.2.3.4:1", "1.2.3.4:1 ", "1.2.3.4:8\u0660", "\ud800", "[::1]:80",
        "[0:0:0:0:0:0:0:1]:80", "[2001:DB8::1]:443", "::1:80", "web:80",
        {"address": "1.2.3.4:5"}, {"address": "1.2.3.4:5", "weight": 1000, "priority": 65535, "zone": "z",
                                   "metadata": {"rack": 1}},
        {"address": "[2001:db8::1]:443", "weight": 3, "priority": 2}, {"address": "1.2.3.4:5", "weight": True},
        {"address": "1.2.3.4:5", "weight": 0}, {"address": "1.2.3.4:5", "weight": 1001},
        {"address": "1.2.3.4:5", "weight": 2.0}, {"address": "1.2.3.4:5", "weight": None},
        {"address": "1.2.3.4:5", "weight": 10 ** 30}, {"address": "1.2.3.4:5", "priority": -1},
        {"address": "1.2.3.4:5", "priority": 65536}, {"address": "1.2.3.4:5", "port": 1}, {"weight": 1},
        {"address": 5}, 5, None, [], ["1.2.3.4:5"], {"address": None}, {"address": None, "weight": 1},
        {"address": "1.2.3.4:5", "zone": None, "metadata": None}, {"address": "1.2.3.4:5", "priority": None},
        {"address": "1.2.3.4:5", "zone": "z", "extra": 1}, {"address": "1.2.3.4:5", "weight": 2, "extra": 1},
    ]
    rnd = random.Random(11)
    octets = ["0", "1", "9", "01", "00", "99", "100", "199", "200", "249", "250", "255", "256", "300", "", "a"]
    ports = ["1", "0", "00", "08", "443", "6553", "65535", "65536", "99999", "", "1a"]
    items += [f"{'.'.join(rnd.choice(octets) for _ in range(4))}:{rnd.choice(ports)}" for _ in range(3000)]
    items += ["".join(rnd.choice("0123456789.:[]af ") for _ in range(rnd.randint(0, 16))) for _ in range(3000)]
    for item in items:
        python = _parsed(lambda i: parse_endpoint(i, "x.json: endpoint 0"), item)
        compiled = _parsed(lambda i: parse_endpoints([i], "x.json")[0], item)
        assert compiled == python, item
        if python[0] == "ok":
            made, expected = compiled[1], python[1]
            assert type(made) is Endpoint and vars(made) == vars(expected) and hash(made) == hash(expected)
    # The error names the first bad item's index; a set is taken whole.
    with pytest.raises(SourceError, match="x.json: endpoint 2: address 'web:80'"):
        parse_endpoints(["1.2.3.4:1", {"address": "[::1]:2"}, "web:80", "bad"], "x.json")
    assert parse_endpoints([], "x.json") == []


def test_an_address_listed_twice_in_two_spellings_is_refused() -> None:
    with pytest.raises(SourceError, match=r"^x.json: \[::1\]:80 is listed twice$"):
        parse_file(b'["[::1]:80", "1.2.3.4:80", "[0:0::1]:80"]', "x.json")
    with pytest.raises(SourceError, match=r"^x.json: 1.2.3.4:80 is listed twice$"):
        parse_file(b'["[::1]:80", "1.2.3.4:80", {"address": "1.2.3.4:80", "weight": 3}]', "x.json")
    with pytest.raises(SourceError, match=r"^x.json: endpoint 3: address 'web:1' is not"):   # a bad item first
        parse_file(b'["1.2.3.4:80", "1.2.3.4:80", "1.2.3.4:81", "web:1"]', "x.json")


class Sets:
    """The endpoint sets a source published, for waiting on the next one."""

    def __init__(self) -> None:
        self.sets: list[list[Endpoint]] = []

    def __call__(self, endpoints: list[Endpoint]) -> None:
        self.sets.append(endpoints)

    async def wait_for(self, wanted: list[Endpoint], within: float = WAIT) -> None:
        deadline = time.monotonic() + within
        while not self.sets or self.sets[-1] != wanted:
            assert time.monotonic() < deadline, f"still {self.sets[-1:]} (wanted {wanted})"
            await asyncio.sleep(0.01)


async def running(source: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_file_source_follows_renames_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "eps.json"
        path.write_text('["127.0.0.1:9001"]')
        sets = Sets()
        # A long poll interval: the changes below are seen through inotify.
        source = FileSource("c", Discovery(kind="file", path="eps.json", interval=30.0), str(tmp_path), sets)
        task = await running(source)
        try:
            await sets.wait_for([Endpoint("127.0.0.1", 9001)])
            began = time.monotonic()
            (tmp_path / "eps.new").write_text('["127.0.0.1:9002", {"address": "127.0.0.1:9003", "weight": 4}]')
            (tmp_path / "eps.new").rename(path)
            await sets.wait_for([Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.1", 9003, 4)], within=2.0)
            assert time.monotonic() - began < 2.0
            path.write_text("[oops")
            deadline = time.monotonic() + WAIT
            while not source.state.errors["parse"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert sets.sets[-1] == [Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.1", 9003, 4)]
            assert "invalid JSON" in source.state.last_error and source.state.endpoints == 2
            path.unlink()
            while not source.state.errors["missing"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            path.write_text("[]")
            await sets.wait_for([])
        finally:
            await stop(task)
    asyncio.run(main())


# ---- DNS (dnsmasq) ----

needs_dnsmasq = pytest.mark.skipif(missing("dnsmasq") is not None, reason=str(missing("dnsmasq")))


def dns(server: Dnsmasq, kind: str, name: str, **options: Any) -> Discovery:
    return Discovery(kind=kind, name=name, resolvers=[("127.0.0.1", server.port)], min_ttl=0.1, timeout=0.5,
                     **options)


@needs_dnsmasq
def test_dns_a_records_follow_the_server_and_survive_its_outage(tmp_path: Path) -> None:
    async def main() -> None:
        server = Dnsmasq(tmp_path)
        server.set_hosts({"web.svc.test": ["127.0.0.1", "127.0.0.2"]})
        server.start()
        sets = Sets()
        source = DnsSource("c", dns(server, "dns", "web.svc.test", port=8080), ".", sets)
        task = await running(source)
        try:
            await sets.wait_for([Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.2", 8080)])
            assert source.state.detail["ttl"] == 0       # dnsmasq's local TTL: the lookups come at min_ttl
            server.set_hosts({"web.svc.test": ["127.0.0.3"]})
            await sets.wait_for([Endpoint("127.0.0.3", 8080)])
            server.stop()                               # nobody answers: timeouts, the set stays
            updates = source.state.updates
            deadline = time.monotonic() + WAIT
            while source.state.errors["timeout"] + source.state.errors["unreachable"] < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert sets.sets[-1] == [Endpoint("127.0.0.3", 8080)] and source.state.updates == updates
            server.start()
            server.set_hosts({"web.svc.test": ["127.0.0.4"]})
            await sets.wait_for([Endpoint("127.0.0.4", 8080)])
            assert source.state.last_error == ""
        finally:
            await stop(task)
            server.stop()
    asyncio.run(main())


@needs_dnsmasq
def test_dns_nxdomain_keeps_the_set_for_the_hold_time_then_empties_it(tmp_path: Path) -> None:
    async def main() -> None:
        server = Dnsmasq(tmp_path)
        server.set_hosts({"web.svc.test": ["127.0.0.1"]})
        server.start()
        sets = Sets()
        source = DnsSource("c", dns(server, "dns", "web.svc.test", port=80, hold=1.0), ".", sets)
        task = await running(source)
        try:
            await sets.wait_for([Endpoint("127.0.0.1", 80)])
            server.set_hosts({})
            gone = time.monotonic()
            await sets.wait_for([], within=WAIT)
            held = time.monotonic() - gone
            assert 0.9 <= held < 5.0, held             # the hold (1 s) passed first, and not much more
            assert source.state.errors["nxdomain"] >= 2
            # Back within a hold: never emptied.
            server.set_hosts({"web.svc.test": ["127.0.0.1"]})
            await sets.wait_for([Endpoint("127.0.0.1", 80)])
            count = len(sets.sets)
            server.set_hosts({})
            await asyncio.sleep(0.4)
            server.set_hosts({"web.svc.test": ["127.0.0.1"]})
            await asyncio.sleep(1.2)
            assert [] not in sets.sets[count:]
        finally:
            await stop(task)
            server.stop()
    asyncio.run(main())


@needs_dnsmasq
def test_dns_srv_ports_weights_and_priority_tiers(tmp_path: Path) -> None:
    async def main() -> None:
        server = Dnsmasq(tmp_path)
        server.set_hosts({"db1.svc.test": ["127.0.0.1"], "db2.svc.test": ["127.0.0.2"]})
        server.set_srv("_db._tcp.svc.test", [("db1.svc.test", 9001, 0, 5), ("db2.svc.test", 9002, 0, 1),
                                             ("db2.svc.test", 9003, 1, 1)])
        server.start()
        sets = Sets()
        source = DnsSource("c", dns(server, "dns_srv", "_db._tcp.svc.test"), ".", sets)
        task = await running(source)
        try:
            # Every tier is published with its priority; the data plane serves the first with an eligible endpoint.
            await sets.wait_for([Endpoint("127.0.0.1", 9001, 5), Endpoint("127.0.0.2", 9002, 1),
                                 Endpoint("127.0.0.2", 9003, 1, 1)])
            assert source.state.detail["standby"] == ["db2.svc.test:9003 (priority 1)"]
            server.set_hosts({"db1.svc.test": ["127.0.0.7"], "db2.svc.test": ["127.0.0.2"]})   # a target moves
            await sets.wait_for([Endpoint("127.0.0.2", 9002, 1), Endpoint("127.0.0.2", 9003, 1, 1),
                                 Endpoint("127.0.0.7", 9001, 5)])
            server.set_srv("_db._tcp.svc.test", [("db2.svc.test", 9003, 1, 1)])    # only the standby tier left
            await sets.wait_for([Endpoint("127.0.0.2", 9003, 1, 1)])
        finally:
            await stop(task)
            server.stop()
    asyncio.run(main())


# ---- etcd ----

needs_etcd = pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))


def test_prefix_end() -> None:
    assert prefix_end(b"/services/api/") == b"/services/api0"
    assert prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\x00"


def etcd_source(server: Etcd, sets: Sets, prefix: str = "/services/api/") -> EtcdSource:
    host, port = server.address.split(":")
    return EtcdSource("api", Discovery(kind="etcd", endpoints=[(host, int(port))], prefix=prefix, timeout=1.0),
                      ".", sets)


@needs_etcd
def test_etcd_watch_follows_puts_and_deletes_and_resumes_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        server = Etcd(tmp_path)
        server.start()
        sets = Sets()
        server.put("/services/api/a", {"address": "127.0.0.1:9001", "weight": 1})
        server.put("/services/other/x", {"address": "127.0.0.1:9999"})
        source = etcd_source(server, sets)
        task = await running(source)
        try:
            await sets.wait_for([Endpoint("127.0.0.1", 9001)])
            server.put("/services/api/b", {"address": "127.0.0.1:9002", "weight": 3})
            await sets.wait_for([Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002, 3)])
            server.put("/services/api/c", "not json")
            server.delete("/services/api/a")
            await sets.wait_for([Endpoint("127.0.0.1", 9002, 3)])
            assert source.state.errors["parse"] == 1
            server.stop()
            deadline = time.monotonic() + WAIT
            while not source.state.errors["connect"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert sets.sets[-1] == [Endpoint("127.0.0.1", 9002, 3)]        # the last good set stays
            server.start()
            server.put("/services/api/d", {"address": "127.0.0.1:9004"})
            await sets.wait_for([Endpoint("127.0.0.1", 9002, 3), Endpoint("127.0.0.1", 9004)])
            assert source.state.watch_restarts >= 1 and source.state.errors["compacted"] == 0
        finally:
            await stop(task)
            server.stop()
    asyncio.run(main())


@needs_etcd
def test_etcd_watch_from_a_compacted_revision_reads_the_prefix_again(tmp_path: Path) -> None:
    async def main() -> None:
        server = Etcd(tmp_path)
        server.start()
        sets = Sets()
        first = server.put("/services/api/a", {"address": "127.0.0.1:9001"})
        server.put("/services/api/b", {"address": "127.0.0.1:9002"})
        last = server.delete("/services/api/a")
        server.compact(last)
        source = etcd_source(server, sets)
        source.revision = first             # as if the watch broke at `first` and everything since was compacted
        task = await running(source)
        try:
            await sets.wait_for([Endpoint("127.0.0.1", 9002)])
            assert source.state.errors["compacted"] == 1 and source.revision >= last
            server.put("/services/api/c", {"address": "127.0.0.1:9003"})
            await sets.wait_for([Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.1", 9003)])
        finally:
            await stop(task)
            server.stop()
    asyncio.run(main())


# ---- fastmesh check ----

def check(tmp: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / "fm.toml").write_text(text)
    return subprocess.run(fastmesh_argv("check", *args, str(tmp / "fm.toml")), env=env(), capture_output=True,
                          text=True, timeout=60)


def test_check_reads_endpoint_files_but_touches_no_network(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text('[{"address": "127.0.0.1:9001", "weight": 2}]')
    # The etcd and DNS servers named here do not exist: without --resolve they are not asked.
    text = LISTENER.replace('"c"', '"users"') + """
[clusters.users]
discovery = { kind = "file", path = "users.json" }
[clusters.api]
discovery = { kind = "etcd", endpoints = ["127.0.0.1:1"], prefix = "/services/api/" }
[clusters.broken]
discovery = { kind = "file", path = "broken.json" }
"""
    (tmp_path / "broken.json").write_text("[")
    done = check(tmp_path, text)
    assert done.returncode == 0, done.stderr
    assert "# cluster users: file " in done.stdout and "1 endpoint(s): 127.0.0.1:9001 (weight 2)" in done.stdout
    assert "api" not in done.stdout.split("# cluster")[-1]
    assert "warning: cluster broken: parse: broken.json: invalid JSON" in done.stderr


@needs_etcd
def test_check_resolve_asks_each_source_once(tmp_path: Path) -> None:
    server = Etcd(tmp_path)
    server.start()
    try:
        server.put("/services/api/a", {"address": "127.0.0.1:9001", "weight": 3})
        text = LISTENER.replace('"c"', '"api"') + f"""
[clusters.api]
discovery = {{ kind = "etcd", endpoints = ["{server.address}"], prefix = "/services/api/" }}
"""
        done = check(tmp_path, text, "--resolve")
        assert done.returncode == 0, done.stderr
        assert "# cluster api: etcd /services/api/: 1 endpoint(s): 127.0.0.1:9001 (weight 3)" in done.stdout
        done = check(tmp_path, text + '[clusters.dns]\ndiscovery = { kind = "dns", name = "x.svc.test", port = 1, '
                                      'resolvers = ["127.0.0.1:1"], timeout = "200ms" }\n', "--resolve", "--json")
        assert done.returncode == 1
        resolved = json.loads(done.stdout)["resolved"]
        assert resolved["api"]["endpoints"] == [{"address": "127.0.0.1:9001", "weight": 3}]
        assert resolved["dns"]["error"].startswith(("unreachable: ", "timeout: "))
    finally:
        server.stop()
