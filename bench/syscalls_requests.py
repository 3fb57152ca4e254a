"""System calls a proxy's worker makes per HTTP/1.1 request, counted by `strace -c`: a figure load cannot blur.

One nginx backend, then each proxy named (fastmesh and/or haproxy, one worker, HTTP mode, the configs of
bench/macro) in turn; strace is attached to the worker, a client sends its requests, strace is detached and
its table divided by the requests answered. Two clients: `seq`, one keep-alive connection sending `--requests`
GETs one after another (each request its own wakeup: the floor is one read and one write per side), and `c64`,
wrk with 64 connections for `--duration` seconds (wakeups then carry several connections' events; strace slows
the worker, so the batching differs from an untraced run).

    python -m bench.syscalls_requests --requests 2000              # fastmesh and haproxy
    FASTMESH_LOOP=uvloop python -m bench.syscalls_requests --only fastmesh
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.callgrind_requests import requests as sequential   # noqa: E402
from bench.macro import backends, loadgen, procs, proxies      # noqa: E402


def traced(pid: int, out: str, client) -> int:
    """Run client() with strace -c attached to pid; returns what client() returns (requests answered)."""
    st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)                                 # strace attaches to every thread before the client starts
    try:
        return client()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)


def table(path: str, requests: int) -> dict[str, float]:
    """strace -c's table as {syscall: calls per request}, with 'total'."""
    got: dict[str, float] = {}
    for line in open(path):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m:
            got[m[2]] = int(m[1]) / requests
    got["total"] = got.pop("total", sum(got.values()))
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="fastmesh,haproxy", help="proxies, comma-separated")
    ap.add_argument("--requests", type=int, default=2000, help="requests of the sequential client")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of wrk -c64")
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="fastmesh-syscalls-")
    p = procs.Procs(tmp)
    nofile = procs.raise_nofile()
    rows: list[tuple[str, str, dict[str, float]]] = []
    try:
        backend = backends.http(p, None, tmp, nofile)
        for name in a.only.split(","):
            run = proxies.start(name, p, os.path.join(tmp, name), backend, None, nofile, mode="http")
            try:
                pid = run.workers[0]
                sequential(run.port, 200)           # warm-up: pooled upstream connections, buffers
                out = os.path.join(tmp, f"{name}-seq.txt")
                n = traced(pid, out, lambda: (sequential(run.port, a.requests), a.requests)[1])
                rows.append((name, "seq", table(out, n)))
                out = os.path.join(tmp, f"{name}-c64.txt")
                n = traced(pid, out, lambda: loadgen.wrk(run.port, a.duration, 0, 64, False)["requests"])
                rows.append((name, "c64", table(out, n)))
            finally:
                proxies.stop(p, run)
    finally:
        p.stop_all()
    calls = sorted({c for _, _, t in rows for c, v in t.items() if c != "total" and v >= 0.01})
    print("| proxy | client | syscalls/request | " + " | ".join(calls) + " |")
    print("|---|---|---:|" + "---:|" * len(calls))
    for name, client, t in rows:
        print(f"| {name} | {client} | {t['total']:.2f} | " + " | ".join(f"{t.get(c, 0):.2f}" for c in calls) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
