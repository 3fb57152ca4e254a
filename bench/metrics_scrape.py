"""What a /metrics scrape costs the supervisor: `fastmesh run` with 2 workers, scraped back to back, median and p99.

The scrape sums the workers' shared stats blocks and asks each worker over the control link for the counts its
Python layer keeps (filters, span export, sinks). The listener has a filter and the PROXY protocol so every family
is there. `--root` runs another build (a checkout built in place) to compare revisions:

    python -m bench.metrics_scrape                          # this checkout, 300 scrapes
    python -m bench.metrics_scrape --root /path/to/other/checkout --scrapes 300
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.macro import procs   # noqa: E402

CONFIG = """
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
protocol = "http"
cluster = "web"
proxy_protocol = true
filters = [{{ plugin = "fastmesh._testbase.plugins:Noop" }}]
[clusters.web]
endpoints = ["127.0.0.1:{backend}"]
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout (built in place) to run")
    ap.add_argument("--scrapes", type=int, default=300)
    a = ap.parse_args(argv)
    admin, port, backend = procs.free_port(), procs.free_port(), procs.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "fastmesh.toml")
        with open(conf, "w") as f:
            f.write(CONFIG.format(admin=admin, port=port, backend=backend))
        proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "run", conf], cwd=tmp,
                                env=dict(os.environ, PYTHONPATH=a.root), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{admin}/metrics"
            deadline = time.monotonic() + 30
            while True:
                try:
                    body = urllib.request.urlopen(url, timeout=5).read()
                    if b'fastmesh_workers_ready 2' in body:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("fastmesh did not start")
                time.sleep(0.1)
            took = []
            for _ in range(a.scrapes):
                began = time.perf_counter()
                body = urllib.request.urlopen(url, timeout=5).read()
                took.append((time.perf_counter() - began) * 1000)
            took.sort()
            print(f"{a.root}: {a.scrapes} scrapes of {len(body)} bytes: median {statistics.median(took):.2f} ms, "
                  f"p99 {took[int(len(took) * 0.99) - 1]:.2f} ms")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
