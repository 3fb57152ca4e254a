"""The plugin layer: references resolved once (dotted name or entry point), config tables checked with file and key
path, `fastmesh plugins` listing an installed distribution (a temp venv with examples/plugins installed), discovery
plugins through the supervisor's machinery, sinks fed off the request path."""
from __future__ import annotations

import asyncio
import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from fastmesh.config.load import loads_config
from fastmesh.errors import ConfigError, PluginError
from fastmesh.plugins import registry

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "plugins"
BASE = """
[[listeners]]
name = "edge"
listen = "127.0.0.1:18080"
protocol = "http"
cluster = "web"
{listener}
[clusters.web]
endpoints = ["127.0.0.1:9001"]
{cluster}
"""


@pytest.fixture(autouse=True)
def _examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def error_of(listener: str = "", cluster: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        loads_config(BASE.format(listener=listener, cluster=cluster), "edge.toml")
    return str(info.value)


@pytest.mark.parametrize("listener, message", [
    ('filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokenz = {} } }]',
     'edge.toml: listeners[0].filters[0].config.tokenz: unknown key (expected one of ["header", "realm", "tokens", '
     '"user_header"])'),
    ('filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokens = 3 } }]',
     "edge.toml: listeners[0].filters[0].config.tokens: expected a table of strings, got 3"),
    ('filters = [{ plugin = "mypkg.auth:CheckToken" }]',
     'edge.toml: listeners[0].filters[0].config.tokens: expected at least one token, like { "s3cret" = "alice" }, '
     'got an empty table'),
    ('filters = [{ plugin = "mypkg.extauth:AskAuthService" }]',
     "edge.toml: listeners[0].filters[0].config.url: missing key (expected a string)"),
    ('filters = [{ plugin = "mypkg.missing:X" }]',
     "edge.toml: listeners[0].filters[0].plugin: expected an importable module (importing mypkg.missing failed: "
     "No module named 'mypkg.missing'), got \"mypkg.missing:X\""),
    ('filters = [{ plugin = "mypkg.auth:Nope" }]',
     'edge.toml: listeners[0].filters[0].plugin: expected a name defined in mypkg.auth (it has no Nope), '
     'got "mypkg.auth:Nope"'),
    ('filters = [{ plugin = "mypkg.sinks:JsonLines", config = { path = "x" } }]',
     "edge.toml: listeners[0].filters[0].plugin: expected a filter plugin (a class with the method on_request() or "
     "on_response(); "
     'mypkg.sinks:JsonLines is a sink plugin), got "mypkg.sinks:JsonLines"'),
    ('filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokens = { a = "b" } }, failure_mode = "maybe" }]',
     'edge.toml: listeners[0].filters[0].failure_mode: expected one of the failure modes ["closed", "open"], '
     'got "maybe"'),
    ('log_sinks = [{ plugin = "mypkg.sinks:JsonLines" }]',
     "edge.toml: listeners[0].log_sinks[0].config.path: missing key (expected a string)"),
])
def test_config_errors_name_file_key_and_expected(listener: str, message: str) -> None:
    assert error_of(listener) == message


def test_discovery_plugin_config_checked() -> None:
    assert error_of(cluster='discovery = { kind = "plugin", plugin = "mypkg.registry:HttpRegistry", '
                            'config = { url = 5 } }') == \
        "edge.toml: clusters.web.discovery.config.url: expected a string, got 5"


def test_good_config_round_trips() -> None:
    from fastmesh.config.load import config_from_dict, config_to_dict
    text = BASE.format(listener='''
filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokens = { "t" = "u" } }, timeout = "250ms" }]
log_sinks = [{ plugin = "mypkg.sinks:JsonLines", config = { path = "r.jsonl" }, batch = 10 }]
access_log = { format = "json", fields = ["time", "request_id", "status"] }
[[listeners.routes]]
path_prefix = "/api/"
cluster = "web"
filters = [{ plugin = "mypkg.canary:CanaryCookie", config = { cluster = "web" } }]
''', cluster="")
    cfg = loads_config(text, "edge.toml")
    lst = cfg.listeners[0]
    assert lst.filters[0].timeout == 0.25 and lst.filters[0].failure_mode == "closed"
    assert lst.routes[0].filters[0].config == {"cluster": "web"}
    assert config_from_dict(config_to_dict(cfg), "edge.toml") == cfg


def test_resolve_once_and_errors() -> None:
    first = registry.resolve("mypkg.auth:CheckToken")
    assert registry.resolve("mypkg.auth:CheckToken") is first
    assert first.origin.startswith("module mypkg.auth (") and first.origin.endswith("auth.py)")
    assert registry.kinds_of(first.obj) == ["filter"]
    with pytest.raises(PluginError):
        registry.resolve("not a reference")


def test_changed_module_is_imported_again(tmp_path: Path) -> None:
    """A resolved plugin whose module file changed is imported again at its next resolve (even at the same size
    within the same second); one left alone is not; a rewrite that fails to import is a PluginError, tried again
    at the next resolve."""
    mod = tmp_path / "changingplug.py"
    source = "class F:\n    VERSION = {}\n\n    def on_request(self, request):\n        return None\n"
    mod.write_text(source.format(1))
    sys.path.insert(0, str(tmp_path))
    try:
        first = registry.resolve("changingplug:F")
        assert first.obj.VERSION == 1 and registry.resolve("changingplug:F") is first
        mod.write_text(source.format(2))
        second = registry.resolve("changingplug:F")
        assert second is not first and second.obj.VERSION == 2
        assert registry.resolve("changingplug:F") is second
        mod.write_text("syntax error here\n")
        for _ in range(2):
            with pytest.raises(PluginError, match="importing changingplug again"):
                registry.resolve("changingplug:F")
        mod.write_text(source.format(3))
        assert registry.resolve("changingplug:F").obj.VERSION == 3
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("changingplug", None)


def _venv_with_examples(tmp_path: Path) -> Path:
    """A venv that sees this interpreter's packages, with examples/plugins installed (no network: no build
    isolation, no dependencies)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The packages of the environment the tests run in (setuptools to build with, among them), whether that is a
    # venv or the interpreter's own: a .pth line each (system_site_packages would give only the base interpreter's).
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    outer = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(inner, "outer.pth").write_text("".join(f"{path}\n" for path in outer))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", str(EXAMPLES)], check=True, timeout=120,
                   capture_output=True)
    return python


def test_fastmesh_plugins_lists_installed_distribution(tmp_path: Path) -> None:
    python = _venv_with_examples(tmp_path)
    config = tmp_path / "edge.toml"
    # An entry-point name, not a module path: found through the installed distribution.
    config.write_text(BASE.format(listener='filters = [{ plugin = "check-token", config = { tokens = { a = "b" } } }]',
                                  cluster=""))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([str(python), "-m", "fastmesh", "plugins", "--json", str(config)], env=env, check=True,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    report = json.loads(out.stdout)
    by_name = {item["name"]: item for item in report["installed"]}
    # Every worked example README names is listed, the rate-limit ones too.
    assert set(by_name) >= {"check-token", "ask-auth", "canary", "secure-headers", "tenant-key", "ask-ratelimit",
                            "http-registry", "jsonl"}
    assert by_name["tenant-key"]["kinds"] == ["filter"] and by_name["ask-ratelimit"]["async"] is True
    assert by_name["check-token"]["kinds"] == ["filter"] and by_name["ask-auth"]["async"] is True
    assert by_name["secure-headers"]["kinds"] == ["filter"]          # a filter of answers only
    assert by_name["http-registry"]["kinds"] == ["discovery"] and by_name["jsonl"]["kinds"] == ["sink"]
    assert by_name["jsonl"]["distribution"] == "mypkg-fastmesh-plugins 1.0"
    (used,) = report["config"]
    assert used["key"] == "listeners[0].filters[0]" and used["ref"] == "check-token"
    assert used["origin"] == "entry point check-token of mypkg-fastmesh-plugins 1.0"
    table = subprocess.run([str(python), "-m", "fastmesh", "plugins"], env=env, check=True, capture_output=True,
                           text=True, timeout=60, cwd=tmp_path).stdout
    assert "check-token" in table and "mypkg.auth:CheckToken" in table and "mypkg-fastmesh-plugins 1.0" in table


def test_discovery_plugin_source_publishes_and_survives_failures() -> None:
    """The registry example against a registry served here: sets are published, a failing registry keeps the last
    good set (counted), and the watch comes back."""
    from fastmesh.config.schema import Discovery
    from fastmesh.discovery import plugin as plugin_source

    answers = [(200, ["127.0.0.1:9001"]), (500, None), (200, ["127.0.0.1:9002", {"address": "127.0.0.1:9003",
                                                                                 "weight": 3}])]

    async def registry_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        data = json.dumps(body).encode() if body is not None else b""
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(data), data))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(registry_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sets: list[list[str]] = []
        cfg = Discovery(kind="plugin", plugin="mypkg.registry:HttpRegistry",
                        config={"url": f"http://127.0.0.1:{port}/services/web", "interval": 0.05})
        plugin_source.RESTART_FIRST = 0.05
        source = plugin_source.PluginSource("web", cfg, ".", lambda eps: sets.append([e.address for e in eps]))
        async with server:
            task = asyncio.ensure_future(source.run())
            for _ in range(200):
                if len(sets) >= 2:
                    break
                await asyncio.sleep(0.02)
            task.cancel()
        assert sets[0] == ["127.0.0.1:9001"]
        assert sets[1] == ["127.0.0.1:9002", "127.0.0.1:9003"]
        assert source.state.errors["plugin"] == 1 and source.state.watch_restarts == 1
        assert source.state.as_dict()["kind"] == "plugin"
    asyncio.run(main())


def test_sink_batches_off_the_request_path() -> None:
    from fastmesh._testbase import plugins as test_plugins
    from fastmesh.config.schema import SinkSpec
    from fastmesh.plugins.sinks import SinkRunner

    async def main() -> None:
        test_plugins.RECORDS.clear()
        runner = SinkRunner(SinkSpec(plugin="fastmesh._testbase.plugins:Memory", batch=10, interval=0.05,
                                     max_pending=25), "test")
        for i in range(30):
            runner.add({"n": i})                      # only queued: nothing written yet
        assert test_plugins.RECORDS == [] and runner.dropped == 5
        for _ in range(100):
            if len(test_plugins.RECORDS) == 25:
                break
            await asyncio.sleep(0.01)
        assert [r["n"] for r in test_plugins.RECORDS] == list(range(5, 30))
        assert runner.plugin.batches == [10, 10, 5]
        failing = SinkRunner(SinkSpec(plugin="fastmesh._testbase.plugins:Memory", config={"fail": True},
                                      interval=0.01), "test")
        failing.add({"n": 1})
        await asyncio.sleep(0.1)
        assert failing.errors == 1 and failing.dropped == 1
        slow = SinkRunner(SinkSpec(plugin="fastmesh._testbase.plugins:Memory", config={"slow_ms": 20},
                                   interval=0.01), "test")
        slow.add({"n": 99})
        await slow.aclose()
        assert test_plugins.RECORDS[-1] == {"n": 99} and slow.written == 1
    asyncio.run(main())


def test_explain_lists_the_filters_a_request_passes() -> None:
    from fastmesh.admin.explain import explain, parse_query
    from fastmesh.cli.explain import render
    cfg = loads_config(BASE.format(listener='''
filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokens = { a = "b" } } }]
[[listeners.routes]]
path_prefix = "/api/"
cluster = "web"
filters = [{ plugin = "mypkg.extauth:AskAuthService", config = { url = "http://127.0.0.1:9/x" }, timeout = "300ms",
             failure_mode = "open" }]
'''.replace(',\n             failure_mode', ', failure_mode'), cluster=""), "edge.toml")
    api = explain(cfg, parse_query("method=GET&host=127.0.0.1:18080&path=/api/x"))
    assert [(f["plugin"], f["async"], f["timeout"], f["failure_mode"]) for f in api["filters"]] == [
        ("mypkg.auth:CheckToken", False, 1.0, "closed"), ("mypkg.extauth:AskAuthService", True, 0.3, "open")]
    other = explain(cfg, parse_query("method=GET&host=127.0.0.1:18080&path=/other"))
    assert [f["where"] for f in other["filters"]] == ["listeners.edge.filters[0]"]
    text = render({**api, "view": "config"})
    assert "filters   2, in this order" in text and "async, 0.3s timeout" in text
