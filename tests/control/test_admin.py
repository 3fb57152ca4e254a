"""The admin server of a real `fastmesh run` (2 workers, backends this test starts): liveness, readiness flipping
with the endpoints, /clusters, /config against `fastmesh check --json`, JSON errors, and `fastmesh stat` (tcp
and http listeners: requests/s, success rate and latency measured while traffic runs)."""
from __future__ import annotations

import errno
import http.client
import http.server
import json
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmesh.cli import stat as statcli
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import READY, Run, env
from fastmesh.admin.rates import stats_body
from fastmesh.config.load import loads_config
from fastmesh.dataplane.stats import Snapshot, StatsLayout

WAIT = 15.0         # seconds any one expected event may take before the test fails


# ---- a real backend: echoes what it reads, then closes after the client's FIN ----

class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(WAIT)
        try:
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        except OSError:
            pass


class EchoBackend:
    """A threaded TCP echo server on 127.0.0.1:port; stop() closes it, start() can bring it back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: socketserver.ThreadingTCPServer | None = None
        self.start()

    def start(self) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        socketserver.ThreadingTCPServer.daemon_threads = True
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), _Echo)
                break
            except OSError as e:
                # While it was down, the port (an ephemeral one) may be some connection's local port for a moment.
                if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# ---- real HTTP backends: one answers 200 to everything, the other 503 ----

class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"           # keep-alive, so the proxy's pool reuses connections
    disable_nagle_algorithm = True          # head and body are two writes: no delayed-ACK wait between them
    status = 200

    def do_GET(self) -> None:
        body = b"ok\n" if self.status == 200 else b"busy\n"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass                                # quiet: pytest shows stderr of failing tests


class HttpAnswerBackend:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every GET with `status`; stop() closes it."""

    def __init__(self, status: int) -> None:
        handler = type(f"Answer{status}", (_Answer,), {"status": status})
        http.server.ThreadingHTTPServer.daemon_threads = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange(port: int, payload: bytes) -> bytes:
    """One proxied connection: send payload, half-close, read until the proxy closes; the bytes echoed back."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def poke(port: int) -> None:
    """One proxied connection that may fail: with no endpoint reachable the proxy closes (or resets) it."""
    try:
        exchange(port, b"ping")
    except OSError:             # reset, or ENOTCONN when the proxy closed before our half-close
        pass


# ---- a real `fastmesh run` ----

class Running(Run):
    """A `fastmesh run` this test started: its config, log, admin address and helpers to query it."""

    def __init__(self, tmp_path: Path, clusters: dict[str, list[str]], workers: int = 2,
                 admin_port: int | None = None, listeners: str | None = None) -> None:
        """`listeners` (TOML) replaces the default: one tcp listener "front" on self.port to the first cluster."""
        self.port, self.admin_port = free_ports(2)
        self.admin_port = admin_port or self.admin_port
        eps = "".join(f"[clusters.{name}]\nendpoints = [{', '.join(repr(e) for e in addrs)}]\n"
                      for name, addrs in clusters.items()).replace("'", '"')
        first = next(iter(clusters))
        if listeners is None:
            listeners = f'[[listeners]]\nname = "front"\nlisten = "127.0.0.1:{self.port}"\ncluster = "{first}"\n'
        super().__init__(tmp_path, f"""
workers = {workers}
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{self.admin_port}"
{listeners}
{eps}""", WAIT)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=WAIT)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, headers, body = self.request("GET", path)
        assert headers["content-type"] == "application/json", (path, headers)
        return status, json.loads(body)


Start = Callable[..., Running]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start `fastmesh run` with these clusters and wait until every worker serves; stopped afterwards."""
    started: list[Running] = []

    def factory(clusters: dict[str, list[str]], workers: int = 2, listeners: str | None = None) -> Running:
        fm = Running(tmp_path, clusters, workers, listeners=listeners)
        started.append(fm)
        fm.wait_log(READY)
        return fm
    yield factory
    for fm in started:
        fm.stop()


@pytest.fixture
def backends() -> Iterator[Callable[[int], list[EchoBackend]]]:
    made: list[EchoBackend] = []

    def factory(count: int) -> list[EchoBackend]:
        new = [EchoBackend(port) for port in free_ports(count)]
        made.extend(new)
        return new
    yield factory
    for b in made:
        b.stop()


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Poll check() until it returns something true (bounded); returns that."""
    deadline = time.monotonic() + WAIT
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


# ---- tests ----

def test_live_config_clusters_errors_and_stat(start: Start, backends: Callable[[int], list[EchoBackend]],
                                              tmp_path: Path) -> None:
    (live,) = backends(1)
    (dead_port,) = free_ports(1)
    dead = f"127.0.0.1:{dead_port}"
    fm = start({"web": [live.address, dead]})

    assert fm.get_json("/live") == (200, {"live": True})

    # /config is the effective config, exactly what `fastmesh check --json` prints.
    check = subprocess.run([sys.executable, "-m", "fastmesh", "check", "--json", str(fm.config)], env=env(),
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert fm.get_json("/config") == (200, json.loads(check.stdout))

    # Traffic until the dead endpoint has been tried: /clusters shows it down, the live one up.
    for i in range(8):
        assert exchange(fm.port, b"x" * i) == b"x" * i

    def settled() -> Any:
        # The client has its echo; the worker closes the relay a moment later (both FINs passed).
        status, clusters = fm.get_json("/clusters")
        assert status == 200
        web = {e["address"]: e for e in clusters["web"]["endpoints"]}
        return (web, clusters) if web[live.address]["active"] == 0 else None
    web, clusters = wait_for(settled, "the relays to close")
    assert web[dead]["state"] in ("down", "probing") and web[dead]["healthy"] is False
    assert web[dead]["connect_failures"] >= 1 and web[dead]["connections"] == 0
    assert web[live.address]["state"] == "up" and web[live.address]["connections"] == 8
    assert web[live.address]["active"] == 0 and web[live.address]["weight"] == 1
    assert clusters["web"]["endpoints_up"] == 1 and clusters["web"]["upstream_connections"] == 8
    assert fm.get_json("/ready") == (200, {"ready": True})      # one endpoint not known down is enough

    # Errors are JSON with a message; 405 names the allowed methods.
    status, headers, body = fm.request("GET", "/nope")
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "Not Found" and "/nope" in json.loads(body)["message"]
    status, headers, body = fm.request("POST", "/ready", headers={"Content-Length": "0"})
    assert status == 405 and headers["allow"] == "GET, HEAD" and "POST" in json.loads(body)["message"]
    status, headers, body = fm.request("DELETE", "/metrics")
    assert status == 405 and json.loads(body)["status"] == 405
    status, headers, body = fm.request("HEAD", "/clusters")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0

    # Raw protocol: keep-alive serves several requests on one connection; garbage gets a JSON 400 and a close.
    with socket.create_connection(("127.0.0.1", fm.admin_port), timeout=WAIT) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\nGET /live?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        replies = _read_replies(sock, 2)
        assert [r[0] for r in replies] == [200, 200]
        sock.sendall(b"BREW /pot HTCPCP/1.0\r\n\r\n")           # not HTTP at all: 400, as the proxy answers
        ((status, body),) = _read_replies(sock, 1)
        assert status == 400 and "message" in json.loads(body)
        assert sock.recv(1) == b""                                  # and the connection is closed
    with socket.create_connection(("127.0.0.1", fm.admin_port), timeout=WAIT) as sock:
        sock.sendall(b"GET /live HTTP/2.0\r\n\r\n")
        ((status, body),) = _read_replies(sock, 1)
        assert status == 505 and "message" in json.loads(body)
        assert sock.recv(1) == b""
    with socket.create_connection(("127.0.0.1", fm.admin_port), timeout=WAIT) as sock:
        sock.sendall(b"GET\r\n\r\n")
        ((status, body),) = _read_replies(sock, 1)
        assert status == 400 and json.loads(body)["error"] == "Bad Request"

    # `fastmesh stat` against the running instance, by config file and by address.
    for where in ([str(fm.config)], ["--admin", f"127.0.0.1:{fm.admin_port}"]):
        result = subprocess.run([sys.executable, "-m", "fastmesh", "stat", *where, "--interval", "0.3"],
                                env=env(), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["LISTENER", "PROTOCOL", "CLUSTER", "CONN/S", "ACTIVE", "FAILED/S", "IN/S",
                                    "OUT/S"]
        assert lines[1].split()[:3] == ["front", "tcp", "web"]
        assert not any(line.startswith("LISTENER") and "RPS" in line for line in lines)   # no http listener
        tables = stat_tables(result.stdout)
        assert tables["CLUSTER"]["web"]["UP/TOTAL"] == "1/2"
        assert tables["CLUSTER"]["web"]["RPS"] == "-"                 # no http listener sends to it
        assert "2 worker(s) serving" in result.stdout


def stat_tables(output: str) -> dict[str, dict[str, dict[str, str]]]:
    """`fastmesh stat` output -> table ("HTTP" or "TCP" listeners, "CLUSTER") -> row name -> column -> cell."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    for block in output.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines or lines[0].split()[0] not in ("LISTENER", "CLUSTER"):
            continue
        header = lines[0].split()
        kind = header[0] if header[0] == "CLUSTER" else ("HTTP" if "RPS" in header else "TCP")
        rows = [line.split() for line in lines[1:]]
        assert all(len(row) == len(header) for row in rows), block
        tables[kind] = {row[0]: dict(zip(header, row)) for row in rows}
    return tables


def _ms(cell: str) -> float:
    """A latency cell ("1.25ms", "2.10s") in milliseconds."""
    return float(cell[:-2]) if cell.endswith("ms") else float(cell[:-1]) * 1000


def test_stat_shows_requests_success_and_latency(start: Start, backends: Callable[[int], list[EchoBackend]]
                                                 ) -> None:
    """An http listener in front of a good backend (default route) and one answering 503 (/busy/), and a tcp
    listener: with traffic through both during the interval, `fastmesh stat` shows the http listener's and each
    cluster's requests/s, success rate and latency, the tcp listener's connections and bytes; then, with no
    traffic, no success rate."""
    good, busy = HttpAnswerBackend(200), HttpAnswerBackend(503)
    (echo,) = backends(1)
    http_port, tcp_port = free_ports(2)
    listeners = f"""
[[listeners]]
name = "front"
listen = "127.0.0.1:{http_port}"
protocol = "http"
cluster = "good"
[[listeners.routes]]
path_prefix = "/busy/"
cluster = "busy"
[[listeners]]
name = "raw"
listen = "127.0.0.1:{tcp_port}"
protocol = "tcp"
cluster = "echo"
"""
    try:
        fm = start({"good": [good.address], "busy": [busy.address], "echo": [echo.address]}, listeners=listeners)
        stat = subprocess.Popen([sys.executable, "-m", "fastmesh", "stat", "--admin", f"127.0.0.1:{fm.admin_port}",
                                 "--interval", "1.5"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # Traffic until stat has printed (so through its whole interval): 3 good requests to 1 busy one.
        statuses: dict[int, int] = {}
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=WAIT)
        deadline = time.monotonic() + 30
        try:
            while stat.poll() is None:
                assert time.monotonic() < deadline, "fastmesh stat did not finish"
                for path in ("/", "/a", "/busy/x", "/b"):
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                assert exchange(tcp_port, b"hello") == b"hello"
                time.sleep(0.01)
        finally:
            conn.close()
        out, err = stat.communicate(timeout=WAIT)
        print(out)
        assert stat.returncode == 0, err
        assert statuses[200] > 0 and statuses[503] > 0 and set(statuses) == {200, 503}
        assert all(len(line) <= 100 for line in out.splitlines()), out
        tables = stat_tables(out)
        front = tables["HTTP"]["front"]
        assert front["PROTOCOL"] == "http" and front["CLUSTER"] == "good,busy"
        assert float(front["RPS"]) > 0
        assert 0 < float(front["SUCCESS"].rstrip("%")) < 100          # a quarter of its requests got 503
        assert 0 < _ms(front["P50"]) <= _ms(front["P99"])
        raw = tables["TCP"]["raw"]
        assert raw["CLUSTER"] == "echo" and float(raw["CONN/S"]) > 0 and raw["IN/S"].endswith("B")
        clusters = tables["CLUSTER"]
        assert clusters["good"]["SUCCESS"] == "100.0%" and float(clusters["good"]["RPS"]) > 0
        assert clusters["busy"]["SUCCESS"] == "0.0%" and float(clusters["busy"]["RPS"]) > 0
        assert _ms(clusters["good"]["P99"]) > 0 and clusters["good"]["UP/TOTAL"] == "1/1"
        # The tcp-only cluster has no request columns, but its connections.
        assert clusters["echo"]["RPS"] == "-" and clusters["echo"]["SUCCESS"] == "-"
        assert float(clusters["echo"]["CONN/S"]) > 0

        # No traffic in the interval: 0 requests/s and no success rate or latency (not 100% or 0%).
        quiet = subprocess.run([sys.executable, "-m", "fastmesh", "stat", "--admin", f"127.0.0.1:{fm.admin_port}",
                                "--interval", "0.3"], env=env(), capture_output=True, text=True, timeout=30)
        assert quiet.returncode == 0, quiet.stderr
        front = stat_tables(quiet.stdout)["HTTP"]["front"]
        assert (front["RPS"], front["SUCCESS"], front["P50"], front["P99"]) == ("0.0", "-", "-", "-")
    finally:
        good.stop()
        busy.stop()


def test_stat_render_of_listeners_sharing_a_cluster() -> None:
    """Two http listeners sending to one cluster, counted into a real stats block: each listener has its own
    requests/s and success rate, but latency only the cluster has (durations are kept per cluster)."""
    layout = StatsLayout(loads_config(
        '[[listeners]]\nname = "a"\nlisten = "127.0.0.1:1"\nprotocol = "http"\ncluster = "c"\n'
        '[[listeners]]\nname = "b"\nlisten = "127.0.0.1:2"\nprotocol = "http"\ncluster = "c"\n'
        '[clusters.c]\nendpoints = ["127.0.0.1:3", "127.0.0.1:4"]\n'))
    block = layout.new_block()
    before = stats_body(Snapshot(layout, block.snapshot(), {}, taken=1000.0))
    pair = {r.listener: r.offset for r in layout.requests}
    for status in (200, 200, 200, 500):
        block.count_status(pair["a"], status)
        block.observe(layout.durations["c"].offset, 0.004)
    block.count_status(pair["b"], 204)
    block.observe(layout.durations["c"].offset, 0.004)
    after = stats_body(Snapshot(layout, block.snapshot(), {}, taken=1002.0))
    text = statcli.render(json.loads(json.dumps(before)), json.loads(json.dumps(after)))
    tables = stat_tables(text)
    a, b, c = tables["HTTP"]["a"], tables["HTTP"]["b"], tables["CLUSTER"]["c"]
    assert (a["RPS"], a["SUCCESS"], a["P50"], a["P99"]) == ("2.0", "75.0%", "-", "-")
    assert (b["RPS"], b["SUCCESS"]) == ("0.5", "100.0%")
    assert (c["RPS"], c["SUCCESS"], c["UP/TOTAL"]) == ("2.5", "80.0%", "2/2")
    assert 2.5 < _ms(c["P50"]) <= _ms(c["P99"]) <= 5.0            # interpolated inside the (2.5, 5] ms bucket
    assert "no P50/P99 for a, b: it shares a cluster" in text
    assert "TCP" not in tables                                     # no tcp listener: no tcp table


def test_stat_render_of_a_tcp_listener_sending_to_a_service() -> None:
    """A tcp listener with `service`: its CLUSTER cell names the clusters its connections were resolved to (most
    first), or its service before any connection."""
    layout = StatsLayout(loads_config(
        '[[listeners]]\nname = "t"\nlisten = "127.0.0.1:1"\nprotocol = "tcp"\nservice = "db"\n'
        '[naming]\nrules = ["/svc/db => 0.7 * /cluster/a & 0.3 * /cluster/b"]\n'
        '[clusters.a]\nendpoints = ["127.0.0.1:3"]\n[clusters.b]\nendpoints = ["127.0.0.1:4"]\n'))
    block = layout.new_block()
    before = stats_body(Snapshot(layout, block.snapshot(), {}, taken=1000.0))
    assert stat_tables(statcli.render(before, before))["TCP"]["t"]["CLUSTER"] == "service:db"
    (routed,) = layout.routed
    block[routed.offset] = 3            # cluster a
    block[routed.offset + 1] = 5        # cluster b
    after = stats_body(Snapshot(layout, block.snapshot(), {}, taken=1002.0))
    assert after["listeners"]["t"]["service"] == "db" and after["listeners"]["t"]["clusters"] == {"a": 3, "b": 5}
    assert stat_tables(statcli.render(before, after))["TCP"]["t"]["CLUSTER"] == "b,a"


def test_stat_reports_an_unreachable_admin_server(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    result = subprocess.run([sys.executable, "-m", "fastmesh", "stat", "--admin", f"127.0.0.1:{port}"],
                            env=env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot reach the admin server at 127.0.0.1:{port}" in result.stderr


def test_ready_flips_with_the_endpoints(start: Start, backends: Callable[[int], list[EchoBackend]]) -> None:
    pair = backends(2)
    fm = start({"pair": [b.address for b in pair]})
    assert fm.get_json("/ready") == (200, {"ready": True})
    for b in pair:
        b.stop()

    def not_ready() -> Any:
        # Each connection now fails on both endpoints; the workers that take them mark them down.
        poke(fm.port)
        status, body = fm.get_json("/ready")
        return body if status == 503 else None
    body = wait_for(not_ready, "/ready to answer 503")
    assert body["ready"] is False and body["reasons"] == ["cluster pair: every endpoint is down"]
    assert "every endpoint is down" in body["message"]
    status, clusters = fm.get_json("/clusters")
    assert all(not e["healthy"] for e in clusters["pair"]["endpoints"])

    for b in pair:
        b.start()                                   # the same ports again

    def ready_again() -> bool:
        poke(fm.port)
        return fm.get_json("/ready")[0] == 200
    wait_for(ready_again, "/ready to answer 200 again")


def test_run_refuses_a_busy_admin_address(tmp_path: Path, backends: Callable[[int], list[EchoBackend]]) -> None:
    (b,) = backends(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fm = Running(tmp_path, {"c": [b.address]}, admin_port=busy.getsockname()[1])
        try:
            assert fm.proc.wait(WAIT) == 1
        finally:
            fm.stop()
    assert f"admin server: cannot listen on 127.0.0.1:{fm.admin_port}" in fm.log()
    assert "started (pid" not in fm.log()                     # no worker was spawned


def _read_replies(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read `count` HTTP replies (Content-Length framed) from sock: (status, body) each."""
    data = b""
    replies = []
    while len(replies) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"\r\nContent-Length: (\d+)", head)[1])   # type: ignore[index]
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed mid-body"
            data += chunk
        replies.append((int(head.split(b" ")[1]), data[:length]))
        data = data[length:]
    return replies
