"""The workloads: one trial against one started proxy, with the proxy's CPU and RSS measured around the load."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from . import idleconns, loadgen, procstat
from .proxies import Running

# name -> the backend it needs, and the mode the proxies run in; the order of the report
ALL = ("iperf", "http-keepalive", "http-close", "http-l7", "http-l7-c512", "http-latency", "h2", "https", "h2tls",
       "tls-bulk", "idle", "idle-http", "idle-h2", "idle-https")
BACKEND = {"iperf": "iperf3", "http-keepalive": "http", "http-close": "http", "http-l7": "http",
           "http-l7-c512": "http", "http-latency": "http", "h2": "http", "https": "http", "h2tls": "http",
           "tls-bulk": "tlssink", "idle": "hold", "idle-http": "http", "idle-h2": "http", "idle-https": "http"}
# https: TLS terminated on the listener (HTTP/1.1 by ALPN); h2tls: the same listener, clients choosing h2 by ALPN;
# tlstcp: a tcp listener terminating TLS and originating it again to the backend (HAProxy: ssl on bind and server)
MODE = {"iperf": "tcp", "http-keepalive": "tcp", "http-close": "tcp", "http-l7": "http", "http-l7-c512": "http",
        "http-latency": "http", "h2": "h2", "https": "https", "h2tls": "https", "tls-bulk": "tlstcp", "idle": "tcp",
        "idle-http": "http", "idle-h2": "h2", "idle-https": "https"}


@dataclass
class Settings:
    """What every trial needs to know besides the proxy."""
    duration: float      # seconds of load per timed trial
    load_cpu: int        # core for load generators (backends are there too)
    conns: int           # idle connections held for the RSS workload
    ka_connections: int = 64      # wrk -c for keep-alive
    many_connections: int = 512   # wrk -c for keep-alive with many clients (http-l7-c512)
    close_connections: int = 16   # wrk -c for Connection: close
    latency_connections: int = 4  # wrk -c for the latency workload: light load, so queueing stays small
    h2_connections: int = 8       # h2load -c: HTTP/2 client connections
    h2_streams: int = 16          # h2load -m: concurrent streams per connection


def upstream_idle(workload: str, s: Settings) -> int:
    """Idle upstream connections a proxy with a cap keeps: one per request in flight (wrk's connections; for h2
    every stream of every connection)."""
    if workload in ("h2", "h2tls"):
        return s.h2_connections * s.h2_streams
    return s.many_connections if workload == "http-l7-c512" else s.ka_connections


def run(workload: str, proxy: Running, s: Settings) -> dict:
    """One trial; returns the metrics of that workload (see report.COLUMNS for their meaning)."""
    if workload == "iperf":
        return _iperf(proxy, s)
    if workload == "http-keepalive":
        return _http(proxy, s, close=False)
    if workload == "http-close":
        return _http(proxy, s, close=True)
    if workload == "http-l7":
        return _http(proxy, s, close=False)
    if workload == "http-l7-c512":
        return _http(proxy, s, close=False, connections=s.many_connections)
    if workload == "http-latency":
        return _http(proxy, s, close=False, connections=s.latency_connections, latency=True)
    if workload == "h2":
        return _h2(proxy, s)
    if workload == "https":
        _https_ready(proxy.port)
        load = lambda: loadgen.wrk(proxy.port, s.duration, s.load_cpu, s.ka_connections, False,  # noqa: E731
                                   scheme="https")
        return _per_request(proxy, *_measured(proxy, load))
    if workload == "h2tls":
        loadgen.h2_ready(proxy.port, scheme="https")
        load = lambda: loadgen.h2load(proxy.port, s.duration, s.load_cpu, s.h2_connections,  # noqa: E731
                                      s.h2_streams, scheme="https")
        return _per_request(proxy, *_measured(proxy, load))
    if workload == "tls-bulk":
        return _tls_bulk(proxy, s)
    if workload == "idle":
        return _idle(proxy, s)
    if workload == "idle-http":
        return _idle(proxy, s, ping=idleconns.HTTP_GET)
    if workload == "idle-h2":
        return _idle(proxy, s, ping=idleconns.H2_GET)
    if workload == "idle-https":
        return _idle(proxy, s, ping=idleconns.HTTP_GET, tls=True)
    raise ValueError(f"unknown workload {workload!r}")


def _cpu(proxy: Running) -> float:
    return sum(procstat.cpu_seconds(pid) for pid in proxy.workers)


def _rss(pids: list[int]) -> int:
    return sum(procstat.rss_kb(pid) for pid in pids)


def _measured(proxy: Running, load) -> tuple[dict, float, float]:
    """Run load() with the proxy's CPU time sampled just before and just after; returns (result, cpu s, wall s)."""
    cpu0, t0 = _cpu(proxy), time.monotonic()
    result = load()
    cpu1, t1 = _cpu(proxy), time.monotonic()
    for pid in proxy.workers:
        if not procstat.alive(pid):
            raise RuntimeError(f"{proxy.name} worker {pid} died during the load")
    return result, cpu1 - cpu0, t1 - t0


def _iperf(proxy: Running, s: Settings) -> dict:
    r, cpu, wall = _measured(proxy, lambda: loadgen.iperf3(proxy.port, s.duration, s.load_cpu))
    out = {"gbps": r["gbps"], "bytes": r["bytes"], "retransmits": r["retransmits"], "wall_s": wall}
    if proxy.workers:
        out.update(cpu_s=cpu, cpu_pct=100 * cpu / wall,
                   gbit_per_core=(r["bytes"] * 8 / 1e9) / cpu if cpu > 0 else None)
    return out


def _tls_bulk(proxy: Running, s: Settings) -> dict:
    """One bulk TLS stream through the proxy (tls_stream.py send, pinned to the load cpu) to the TLS sink: Gbit/s
    the sink counted, and Gbit/s per second of proxy CPU (/proc/PID/stat of its workers)."""
    import json
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls_stream.py")
    argv = ["taskset", "-c", str(s.load_cpu), sys.executable, script, "send", str(proxy.port), str(s.duration)]

    def load() -> dict:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=s.duration + 60)
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(f"tls_stream send failed: {out.stderr.strip()[-300:]}")
        return dict(json.loads(out.stdout))
    r, cpu, wall = _measured(proxy, load)
    out = {"gbps": r["gbps"], "bytes": r["bytes"], "wall_s": wall, "cipher_client": r["cipher_client"],
           "cipher_backend": r["cipher_backend"]}
    if r["bytes"] < r["sent"]:
        out["error"] = f"the sink counted {r['bytes']} of {r['sent']} bytes sent"
    if proxy.workers:
        out.update(cpu_s=cpu, cpu_pct=100 * cpu / wall,
                   gbit_per_core=(r["bytes"] * 8 / 1e9) / cpu if cpu > 0 else None)
    return out


def _http_ready(port: int, timeout: float = 10.0) -> None:
    """Wait until one HTTP request through the proxy gets an answer (the worker may still be starting to accept)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if c.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"no HTTP answer through port {port} in {timeout:.0f}s ({last})")


def _https_ready(port: int, timeout: float = 10.0) -> None:
    """_http_ready over TLS (the benchmark's certificate is self-made: not verified)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    ctx.wrap_socket(raw, server_hostname="bench.test") as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if c.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"no HTTPS answer through port {port} in {timeout:.0f}s ({last})")


def _http(proxy: Running, s: Settings, close: bool, connections: int | None = None, latency: bool = False) -> dict:
    """wrk through the proxy (whatever its mode: the HTTP workloads differ only in how the proxy was started)."""
    _http_ready(proxy.port)
    c = connections or (s.close_connections if close else s.ka_connections)
    load = lambda: loadgen.wrk(proxy.port, s.duration, s.load_cpu, c, close, latency)  # noqa: E731
    return _per_request(proxy, *_measured(proxy, load))


def _h2(proxy: Running, s: Settings) -> dict:
    """h2load through the proxy: HTTP/2 (prior knowledge) from the clients, HTTP/1.1 to the backend."""
    loadgen.h2_ready(proxy.port)
    load = lambda: loadgen.h2load(proxy.port, s.duration, s.load_cpu, s.h2_connections, s.h2_streams)  # noqa: E731
    return _per_request(proxy, *_measured(proxy, load))


def _per_request(proxy: Running, r: dict, cpu: float, wall: float) -> dict:
    """A load generator's numbers with the proxy's CPU: share of a core and µs per request."""
    out = {k: v for k, v in r.items() if k != "seconds"}
    out["wall_s"] = wall
    if proxy.workers:
        out.update(cpu_s=cpu, cpu_pct=100 * cpu / wall,
                   us_per_req=1e6 * cpu / r["requests"] if r["requests"] else None)
    return out


def _idle(proxy: Running, s: Settings, ping: bytes = b"x", tls: bool = False) -> dict:
    """RSS after one warm-up connection, then with s.conns idle connections held; KB per held connection, and per
    connection of the second half (opened after the first half was held).
    At L7 (ping: an HTTP/1.1 or HTTP/2 request) each held connection answered one request (pooled upstream
    connections are kept up to the proxy's cap). tls: each client connection is TLS (HTTP/1.1 by ALPN)."""
    ctx = idleconns.tls_client() if tls else None
    warm, failed = idleconns.open_held(proxy.port, 1, timeout=10, ping=ping, tls=ctx)
    idleconns.close_all(warm)
    if failed:
        raise RuntimeError("the warm-up connection got no answer through the proxy")
    time.sleep(0.5)
    sup = [proxy.supervisor] if proxy.supervisor else []
    idle_kb, sup_idle_kb = _rss(proxy.workers), _rss(sup)
    # In two halves: the second half's growth is what each further idle connection costs once the proxy has
    # seen a burst (its pools and heap at their working size); the whole growth also holds that first burst's.
    held, failed = idleconns.open_held(proxy.port, s.conns // 2, timeout=120, ping=ping, tls=ctx)
    try:
        time.sleep(1.0)      # let the proxy settle (lazy frees, buffer pools) before reading RSS
        half_kb, first = _rss(proxy.workers), len(held)
        more, more_failed = idleconns.open_held(proxy.port, s.conns - s.conns // 2, timeout=120, ping=ping, tls=ctx)
        held += more
        failed += more_failed
        time.sleep(1.0)
        held_kb, sup_held_kb = _rss(proxy.workers), _rss(sup)
    finally:
        idleconns.close_all(held)
    out: dict = {"rss_idle_kb": idle_kb, "rss_held_kb": held_kb, "held": len(held), "conns_failed": failed,
                 "kb_per_conn": (held_kb - idle_kb) / len(held) if held else None,
                 "kb_per_further_conn": (held_kb - half_kb) / (len(held) - first) if len(held) > first else None}
    if sup:
        out.update(sup_rss_idle_kb=sup_idle_kb, sup_rss_held_kb=sup_held_kb)
    if failed:
        out["error"] = f"{failed} of {s.conns} connections failed"
    return out
