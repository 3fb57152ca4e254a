"""RSS soak: mixed load through one fastmesh instance for --duration seconds, printing its memory as it goes.

    python -m bench.soak --duration 1800              # the 30-minute soak; --duration 600 for ten
    nice -n 10 python -m bench.soak --duration 600 --workers 2

The load, all on 127.0.0.1: `wrk -c64` keep-alive through an http listener to an nginx backend for the whole run;
every --burst-every seconds a burst of short connections (one request each, `Connection: close`) split over the http
and the tcp listener, a seventh of them to a route whose cluster's endpoint refuses connections (answered 503); every
--reload-every seconds the config file is changed (a response header's value) and the supervisor gets SIGHUP.
Every --interval seconds one line: elapsed seconds, the supervisor's and each worker's RSS and PSS (MiB). At the end,
the worker's growth from the end of the warm-up (--warmup seconds) to the end, and every burst's answers.
Set FASTMESH_MEMTRACE=DIR in the environment to have the workers write tracemalloc snapshots there
(fastmesh/process/memtrace.py).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):     # `python bench/soak.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.footprint import memory_kb, wait_ready  # noqa: E402
from bench.macro import backends, procs  # noqa: E402
from bench.macro.procstat import descendants  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(workers: int, ports: dict[str, int], generation: int) -> str:
    return f"""workers = {workers}
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:{ports['admin']}"

[[listeners]]
name = "soak-tcp"
listen = "127.0.0.1:{ports['tcp']}"
protocol = "tcp"
cluster = "nginx"

[[listeners]]
name = "soak-http"
listen = "127.0.0.1:{ports['http']}"
protocol = "http"
cluster = "nginx"

[[listeners.routes]]
path_prefix = "/fail/"
cluster = "refused"

[[listeners.routes]]
path_prefix = "/"
cluster = "nginx"
add_response_headers = {{ "x-soak-generation" = "{generation}" }}

[clusters.nginx]
endpoints = ["127.0.0.1:{ports['nginx']}"]

[clusters.refused]
endpoints = ["127.0.0.1:{ports['refused']}"]
"""


def one_request(port: int, path: str) -> int:
    """One request on its own connection; the answer's status (0 when the exchange failed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    except (OSError, ValueError, IndexError):
        return 0


def burst(ports: dict[str, int], count: int, threads: int = 8) -> dict[str, int]:
    """count short connections, half over the http and half over the tcp listener; every seventh to /fail/."""
    jobs = []
    for i in range(count):
        port = ports["http"] if i % 2 == 0 else ports["tcp"]
        path = "/fail/x" if i % 7 == 0 and port == ports["http"] else "/"
        jobs.append((port, path))
    outcome = {"ok": 0, "503": 0, "wrong": 0}
    lock = threading.Lock()

    def work(part: list[tuple[int, str]]) -> None:
        for port, path in part:
            status = one_request(port, path)
            want = 503 if path.startswith("/fail/") else 200
            key = ("503" if want == 503 else "ok") if status == want else "wrong"
            with lock:
                outcome[key] += 1

    pool = [threading.Thread(target=work, args=(jobs[k::threads],)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return outcome


def sample(supervisor: int) -> list[tuple[str, int, dict[str, int]]]:
    """(role, pid, memory) of the supervisor and each worker ("w")."""
    rows = [("sup", supervisor, memory_kb(supervisor))]
    for pid in descendants(supervisor):
        try:
            rows.append(("w", pid, memory_kb(pid)))
        except OSError:
            pass
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="wrk's keep-alive connections")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between lines (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before growth is counted")
    parser.add_argument("--burst-every", type=float, default=15.0)
    parser.add_argument("--burst-size", type=int, default=700)
    parser.add_argument("--reload-every", type=float, default=60.0)
    args = parser.parse_args(argv)
    nofile = procs.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="fastmesh-soak-")
    p = procs.Procs(tmp)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        ports = {"tcp": procs.free_port(), "http": procs.free_port(), "admin": procs.free_port(),
                 "refused": procs.free_port()}
        ports["nginx"] = backends.http(p, None, tmp, nofile)
        path = os.path.join(tmp, "soak.toml")
        generation = 0
        with open(path, "w") as f:
            f.write(config(args.workers, ports, generation))
        proxy = p.start("fastmesh", [sys.executable, "-m", "fastmesh", "run", path, "--log-level", "warning"],
                        None, cwd=ROOT, env=env)
        wait_ready(proxy, ports["admin"], args.workers, 60.0)    # before the refusing cluster's endpoint is down
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{int(args.duration)}s",
                                f"http://127.0.0.1:{ports['http']}/"], stdout=subprocess.PIPE, text=True)
        began = time.monotonic()
        next_line = next_burst = next_reload = 0.0
        series: list[tuple[float, int]] = []          # (elapsed, total worker RSS KiB)
        bursts = {"ok": 0, "503": 0, "wrong": 0, "count": 0}
        print("elapsed_s  RSS/PSS MiB of the supervisor (sup) and each worker (w)", flush=True)
        while not stopped.is_set():
            now = time.monotonic() - began
            if now >= args.duration or wrk.poll() is not None:
                break
            if now >= next_burst:
                next_burst += args.burst_every
                for key, value in burst(ports, args.burst_size).items():
                    bursts[key] += value
                bursts["count"] += 1
            if args.reload_every and now >= next_reload:
                if next_reload:
                    generation += 1
                    with open(path, "w") as f:
                        f.write(config(args.workers, ports, generation))
                    proxy.send_signal(signal.SIGHUP)
                next_reload += args.reload_every
            if now >= next_line:
                next_line += args.interval
                rows = sample(proxy.pid)
                workers_rss = sum(m["Rss"] for name, _, m in rows if name == "w")
                series.append((now, workers_rss))
                cells = "  ".join(f"{name} {m['Rss'] / 1024:.1f}/{m['Pss'] / 1024:.1f}" for name, _, m in rows)
                print(f"{now:8.0f}  {cells}", flush=True)
            time.sleep(0.2)
        rows = sample(proxy.pid)
        end = time.monotonic() - began
        workers_rss = sum(m["Rss"] for name, _, m in rows if name == "w")
        series.append((end, workers_rss))
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=30)
        running = proxy.poll() is None
        with open(os.path.join(tmp, "fastmesh.log"), errors="replace") as f:
            crashes = f.read().count("exited unexpectedly")
        print("\nwrk:", " | ".join(line.strip() for line in out.splitlines()
                                   if "Requests/sec" in line or "requests in" in line or "Non-2xx" in line
                                   or "Socket errors" in line))
        print(f"bursts: {bursts['count']}, answered 200: {bursts['ok']}, 503 as meant: {bursts['503']}, "
              f"wrong or failed: {bursts['wrong']}; reloads: {generation}; workers crashed: {crashes}; "
              f"supervisor {'running' if running else 'gone'}")
        after = [kb for t, kb in series if t >= args.warmup]
        if after:
            print(f"workers' RSS: {after[0] / 1024:.1f} MiB at {args.warmup:.0f} s, {after[-1] / 1024:.1f} MiB at "
                  f"{end:.0f} s (max {max(after) / 1024:.1f}): {(after[-1] - after[0]) / 1024:+.1f} MiB after warm-up")
        return 0 if bursts["wrong"] == 0 else 1
    finally:
        p.stop_all()


if __name__ == "__main__":
    sys.exit(main())
