"""gRPC unary latency, direct and through fastmesh: p50 / p99 of a grpcio client at low concurrency.

    python -m bench.macro.grpc_latency [--calls 3000] [--concurrency 1,4] [--rounds 2]

A grpcio server (fastmesh._testbase.grpc_backends: Echo over generic handlers) and `fastmesh run` (one worker, an
http listener, an h2 cluster) run as their own processes; the client calls Echo/Unary with a 16-byte message
from `concurrency` threads, each on its own channel, waiting for each answer before the next call. Direct and
proxied trials alternate `rounds` times; the report gives each trial's p50 / p99 and the median of the added
latency (proxied minus direct). Issue 10's target: fastmesh adds at most 0.15 ms at p50. On a shared machine the
spread between rounds says how much to trust the numbers.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from fastmesh._testbase.grpc_backends import NO_PROXY, SERVICE
from fastmesh._testbase.net import free_port

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = b"0123456789abcdef"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _wait_port(port: int, timeout: float = 15.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _calls(target: str, calls: int, out: list[float]) -> None:
    with grpc.insecure_channel(target, options=NO_PROXY) as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Unary")
        for _ in range(min(200, calls)):
            echo(PAYLOAD, timeout=5)                      # warm-up: connection, HPACK tables, code paths
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            echo(PAYLOAD, timeout=5)
            out.append((time.perf_counter_ns() - t0) / 1e6)


def trial(target: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(p50, p99) in ms over every call of `concurrency` clients."""
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    threads = [threading.Thread(target=_calls, args=(target, calls // concurrency, samples[i]))
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = sorted(x for s in samples for x in s)
    return flat[len(flat) // 2], flat[min(len(flat) - 1, int(len(flat) * 0.99))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    backend_port, proxy_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "grpc.toml"
        cfg.write_text(f'workers = 1\ndrain_timeout = "1s"\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
                       f'[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{proxy_port}"\nprotocol = "http"\n'
                       'cluster = "echo"\n'
                       f'[clusters.echo]\nendpoints = ["127.0.0.1:{backend_port}"]\nprotocol = "h2"\n')
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "fastmesh._testbase.grpc_backends",
                                           str(backend_port)], env=_env(), stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, "-m", "fastmesh", "run", str(cfg), "--log-level",
                                           "warning"], env=_env(), stdout=subprocess.DEVNULL))
            _wait_port(backend_port)
            _wait_port(proxy_port)
            print(f"gRPC unary, {args.calls} calls per trial, {PAYLOAD!r} each way; ms")
            print(f"{'clients':>7} {'round':>5} {'direct p50':>10} {'p99':>7} {'fastmesh p50':>12} {'p99':>7} "
                  f"{'added p50':>9} {'p99':>7}")
            for conc in (int(c) for c in args.concurrency.split(",")):
                added50, added99 = [], []
                for r in range(args.rounds):
                    d50, d99 = trial(f"127.0.0.1:{backend_port}", args.calls, conc)
                    p50, p99 = trial(f"127.0.0.1:{proxy_port}", args.calls, conc)
                    added50.append(p50 - d50)
                    added99.append(p99 - d99)
                    print(f"{conc:>7} {r + 1:>5} {d50:>10.3f} {d99:>7.3f} {p50:>12.3f} {p99:>7.3f} "
                          f"{p50 - d50:>9.3f} {p99 - d99:>7.3f}")
                print(f"{conc:>7} {'med':>5} {'':>10} {'':>7} {'':>12} {'':>7} {statistics.median(added50):>9.3f} "
                      f"{statistics.median(added99):>7.3f}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
