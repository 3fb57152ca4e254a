"""The `fastmesh` command as a user runs it: check, --version, usage errors, and run refusing a busy address."""
from __future__ import annotations

import importlib
import json
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fastmesh._testbase.configs import USERS_ROUTE, http_listener
from fastmesh._testbase.discovery_servers import Etcd, missing
from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import env
from fastmesh.config.load import config_to_dict, load_config, loads_config

TIMEOUT = 30        # seconds any one command may take before the test fails


def fastmesh(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m fastmesh ARGS` against this checkout and wait for it (bounded)."""
    return subprocess.run([sys.executable, "-m", "fastmesh", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def config_text(listen_port: int, backend_port: int, admin_port: int) -> str:
    return f"""
workers = 1
[admin]
listen = "127.0.0.1:{admin_port}"
[[listeners]]
name = "front"
listen = "127.0.0.1:{listen_port}"
cluster = "back"
[clusters.back]
endpoints = ["127.0.0.1:{backend_port}"]
"""


# An http listener whose one route sends to the logical name "users" (the naming tests add clusters and rules).
USERS_LISTENER = http_listener(4141) + USERS_ROUTE


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(config_text(free_port(), free_port(), free_port()))
    return path


def test_check_prints_effective_config_as_toml(good_config: Path, tmp_path: Path) -> None:
    result = fastmesh("check", str(good_config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {good_config}: valid")
    printed = tomllib.loads(result.stdout)
    # Defaults the file left out are filled in...
    assert printed["listeners"][0]["idle_timeout"] == "1h"
    assert printed["clusters"]["back"]["balancer"] == "round_robin"
    assert printed["drain_timeout"] == "10s"
    # ...and the text is itself a config that means exactly the same.
    cfg = load_config(good_config)
    assert printed == config_to_dict(cfg)
    assert config_to_dict(loads_config(result.stdout)) == config_to_dict(cfg)


def test_check_json(good_config: Path, tmp_path: Path) -> None:
    result = fastmesh("check", "--json", str(good_config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == config_to_dict(load_config(good_config))


def test_check_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('workers = -1\n[[listeners]]\nname = "x"\nlisten = "127.0.0.1:99999"\ncluster = "nope"\n'
                   '[clusters.a]\nendpoints = ["127.0.0.1:1"]\n')
    result = fastmesh("check", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{bad}: workers: expected") for line in lines), result.stderr
    assert any("listeners[0].listen" in line and "65535" in line for line in lines), result.stderr
    assert any("listeners[0].cluster" in line and '"a"' in line for line in lines), result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = fastmesh("check", "missing.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "missing.toml" in result.stderr and "cannot read" in result.stderr


def test_version_names_the_core_build(tmp_path: Path) -> None:
    from fastmesh._version import __version__
    build_info = importlib.import_module("fastmesh._core.build_info")
    result = fastmesh("--version", cwd=tmp_path)
    assert result.returncode == 0
    kind = "debug" if build_info.DEBUG else "release"
    assert result.stdout.strip() == f"fastmesh {__version__} (core: {kind} build)"


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    result = fastmesh(cwd=tmp_path)
    assert result.returncode == 2
    assert "{run,check,demo,stat,explain,plugins}" in result.stderr
    assert "_worker" not in result.stderr      # the supervisor's internal command stays out of the help


@pytest.mark.parametrize("command", ["run", "check", "demo", "stat", "explain", "plugins"])
def test_each_command_help_explains_every_option(tmp_path: Path, command: str) -> None:
    result = fastmesh(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: fastmesh {command}"), result.stderr
    # An option whose help is only its default ("--log-level ... (default: info)") tells a new user nothing.
    assert not re.search(r"^\s+\(default:", result.stdout, re.MULTILINE), result.stdout
    if command in ("run", "demo"):
        assert "log lines of this level and above" in result.stdout


def test_bad_log_level_is_a_usage_error(good_config: Path, tmp_path: Path) -> None:
    result = fastmesh("run", str(good_config), "--log-level", "loud", cwd=tmp_path)
    assert result.returncode == 2
    assert "--log-level" in result.stderr


def test_run_with_invalid_config_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = -1\n")
    result = fastmesh("run", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert "workers: expected" in result.stderr
    assert "not starting" in result.stderr
    assert "started (pid" not in result.stderr


def _run_against_busy_port(tmp_path: Path, reuse_port: bool) -> tuple[subprocess.CompletedProcess[str], int, float]:
    port = free_port()
    cfg = tmp_path / "busy.toml"
    cfg.write_text(config_text(port, free_port(), free_port()))
    with socket.socket() as blocker:
        if reuse_port:
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        began = time.monotonic()
        result = fastmesh("run", str(cfg), cwd=tmp_path)
        return result, port, time.monotonic() - began


def test_run_refuses_an_address_in_use(tmp_path: Path) -> None:
    result, port, elapsed = _run_against_busy_port(tmp_path, reuse_port=False)
    assert result.returncode == 1
    assert re.search(rf"listener 'front' cannot use 127\.0\.0\.1:{port}: address already in use", result.stderr), \
        result.stderr
    assert "started (pid" not in result.stderr     # reported once, before any worker starts
    assert result.stderr.count("address already in use") == 1
    assert elapsed < 10


def test_run_refuses_a_port_another_reuseport_server_listens_on(tmp_path: Path) -> None:
    # SO_REUSEPORT lets the bind pass; without the extra check two servers would silently share the traffic.
    result, port, _ = _run_against_busy_port(tmp_path, reuse_port=True)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}: another process is already listening there" in result.stderr, result.stderr
    assert "started (pid" not in result.stderr


@pytest.mark.parametrize("busy", ["admin", "demo"])
def test_run_says_why_the_admin_or_a_demo_port_is_busy(tmp_path: Path, busy: str) -> None:
    # The admin server and demo backends bind after the listeners were checked: same words as for a listener.
    admin_port, demo_port = free_port(), free_port()
    cfg = tmp_path / "busy.toml"
    cfg.write_text(config_text(free_port(), demo_port, admin_port) + f'[demo]\nbackends = ["127.0.0.1:{demo_port}"]\n')
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", admin_port if busy == "admin" else demo_port))
        blocker.listen()
        result = fastmesh("run", str(cfg), cwd=tmp_path)
    assert result.returncode == 1
    what = f"admin server: cannot listen on 127.0.0.1:{admin_port}" if busy == "admin" else \
        f"demo backend 1 cannot listen on 127.0.0.1:{demo_port}"
    assert f"{what}: address already in use (another program is listening there)" in result.stderr, result.stderr
    assert "started (pid" not in result.stderr


def test_check_reads_a_watched_naming_table_and_resolve_fails_on_a_broken_one(tmp_path: Path) -> None:
    (tmp_path / "fastmesh.toml").write_text(USERS_LISTENER + """[clusters.v1]
endpoints = ["127.0.0.1:9001"]
[naming]
rules = ["/svc/users => /cluster/v1"]
source = { kind = "file", path = "naming.dtab" }
""")
    (tmp_path / "naming.dtab").write_text("/svc/users => /cluster/v1 # v1 only\n")
    good = fastmesh("check", "fastmesh.toml", "--resolve", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "# naming table: file " in good.stdout and "1 rule(s): /svc/users => /cluster/v1" in good.stdout
    (tmp_path / "naming.dtab").write_text("/svc/users => v1\n")
    bad = fastmesh("check", "fastmesh.toml", "--resolve", cwd=tmp_path)
    assert bad.returncode == 1
    assert "failed: parse: naming.dtab: rule 0 ('/svc/users => v1'): column 15: destination: expected a path" \
        in bad.stdout
    offline = fastmesh("check", "fastmesh.toml", cwd=tmp_path)
    assert offline.returncode == 0 and "warning: naming table: parse: naming.dtab" in offline.stderr


@pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
def test_check_resolve_lists_the_clusters_templates_would_make(tmp_path: Path) -> None:
    """A real etcd lists three names under a template's prefix; the table names one; max_clusters = 2: check
    --resolve lists the two clusters `fastmesh run` would make (the named one first), with what their own prefixes
    hold, and the refused name; without --resolve (no network) the one the table names is still listed."""
    etcd = Etcd(tmp_path)
    etcd.start()
    try:
        for i in (1, 2, 3):
            etcd.put(f"/services/users-v{i}/a", {"address": f"127.0.0.1:{9000 + i}", "weight": i})
        (tmp_path / "fastmesh.toml").write_text(USERS_LISTENER + f"""[clusters.fixed]
endpoints = ["127.0.0.1:9000"]
[naming]
rules = ["/svc/users => /cluster/users-v1 | /cluster/fixed"]
[cluster_templates."users-*"]
discovery = {{ kind = "etcd", endpoints = ["{etcd.address}"], prefix = "/services/{{name}}/" }}
max_clusters = 2
""")
        got = fastmesh("check", "fastmesh.toml", "--resolve", cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        assert "# cluster users-v1 (template users-*): etcd /services/users-v1/: 1 endpoint(s): 127.0.0.1:9001 " \
               "(weight 1)" in got.stdout, got.stdout
        assert "# cluster users-v2 (template users-*): etcd /services/users-v2/: 1 endpoint(s): 127.0.0.1:9002 " \
               "(weight 2)" in got.stdout, got.stdout
        assert "# cluster users-v3" not in got.stdout
        assert "# template users-*: would make users-v1, users-v2; named by the table: users-v1; listed under " \
               "/services/: users-v1, users-v2, users-v3; refused (max_clusters): users-v3" in got.stdout, got.stdout
        as_json = json.loads(fastmesh("check", "fastmesh.toml", "--resolve", "--json", cwd=tmp_path).stdout)
        assert as_json["templates"]["users-*"]["clusters"] == ["users-v1", "users-v2"]
        assert as_json["resolved"]["users-v2"]["template"] == "users-*"
        assert as_json["resolved"]["users-v2"]["endpoints"] == [{"address": "127.0.0.1:9002", "weight": 2}]
        offline = fastmesh("check", "fastmesh.toml", cwd=tmp_path)
        assert offline.returncode == 0, offline.stderr
        assert "# template users-*: would make users-v1; named by the table: users-v1" in offline.stdout
        etcd.stop()                         # a prefix that cannot be listed is a failure of --resolve
        down = fastmesh("check", "fastmesh.toml", "--resolve", cwd=tmp_path)
        assert down.returncode == 1
        assert "# template users-*: would make users-v1; named by the table: users-v1; listing /services/ " \
               "failed: " in down.stdout, down.stdout
    finally:
        etcd.stop()


def test_explain_limits_line_with_one_worker_names_no_count(tmp_path: Path) -> None:
    # With one worker the instance's limits are that worker's: "(1 worker count together)" said nothing true.
    port, admin = free_port(), free_port()
    cfg = tmp_path / "one.toml"
    cfg.write_text(f'workers = 1\n[admin]\nlisten = "127.0.0.1:{admin}"\n' + http_listener(port)
                   + 'cluster = "back"\n[clusters.back]\nendpoints = ["127.0.0.1:9"]\n')
    result = fastmesh("explain", f"http://127.0.0.1:{port}/x", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    limits = next(line for line in result.stdout.splitlines() if line.startswith("limits"))
    assert limits.endswith("retries in flight; for the instance"), limits


def test_explain_without_an_instance_names_the_address_and_the_way_on(tmp_path: Path) -> None:
    port = free_port()      # nothing listens there
    result = fastmesh("explain", "http://127.0.0.1:4141/", "--admin", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"fastmesh explain: cannot reach the admin server at 127.0.0.1:{port}: " in result.stderr, result.stderr
    assert "give CONFIG to explain from the config alone" in result.stderr


def test_a_reader_that_stops_early_gets_no_traceback(good_config: Path, tmp_path: Path) -> None:
    # `fastmesh check x.toml | head -1`: the pipe closes before fastmesh writes (it is still importing then).
    proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "check", str(good_config)], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141       # as a process killed by SIGPIPE is reported by the shell
