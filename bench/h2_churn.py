"""Upstream connects per request when HTTP/2 clients are bridged to an HTTP/1 cluster (h2 -> h1).

Every stream of an HTTP/2 client becomes a request on an HTTP/1 keep-alive connection of the cluster's pool, so
h2load's c8 x m16 keeps up to 128 requests in flight at one endpoint. A pool that keeps fewer idle connections than
that closes connections when a burst ends and opens new ones for the next: this counts it. An in-process proxy with
the cluster's defaults (or `--cluster` TOML lines) in front of one test backend; h2load runs `--rounds` times.

    python -m bench.h2_churn --requests 20000 --rounds 3

Prints, per round, the requests h2load saw answered and the upstream connections the pool opened, and the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastmesh import Proxy   # noqa: E402
from fastmesh._testbase.http_backend import HttpBackend   # noqa: E402
from fastmesh._testbase.net import free_port   # noqa: E402


async def main(args: argparse.Namespace) -> None:
    h2load = shutil.which("h2load")
    if h2load is None:
        sys.exit("h2load (Debian nghttp2-client) is not installed")
    async with HttpBackend("b") as backend:
        port = free_port()
        cfg = (f'[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\ncluster = "web"\n'
               f'[clusters.web]\nendpoints = ["{backend.address}"]\n{args.cluster}\n')
        async with Proxy.from_toml(cfg) as proxy:
            for r in range(args.rounds):
                opened = proxy.stats()["pools"]["web"]["opened"]
                proc = await asyncio.create_subprocess_exec(
                    h2load, f"-c{args.clients}", f"-m{args.streams}", f"-n{args.requests}",
                    f"http://127.0.0.1:{port}/x", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out, _ = await proc.communicate()
                m = re.search(r"(\d+) succeeded", out.decode())
                ok = int(m.group(1)) if m else 0
                connects = proxy.stats()["pools"]["web"]["opened"] - opened
                print(f"round {r + 1}: {ok} requests answered, {connects} upstream connects, "
                      f"{connects / max(ok, 1):.4f} connects per request", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cluster", default="", help="extra TOML lines for the cluster (e.g. 'pool_max_idle = 8')")
    asyncio.run(main(p.parse_args()))
