"""Micro-benchmark of what naming adds to routing, per request, measured in a C loop.

bench_target(raw, pools, COUNT) parses the head once and then runs COUNT route matches, each followed by the
target cluster's resolution (router.pyx target(): the route's cluster, or naming.pyx's walk for a service),
without returning to Python. Cases, each over one route:
  - cluster:   `cluster = "v1"`: no naming (the baseline);
  - rewrite:   `service = "users"` through "/svc => /cluster" (one rule, one liveness check);
  - fallback:  "/svc/users => /cluster/v1 | /cluster/v2" with v1's endpoint out (a skipped branch);
  - split:     "0.9 * /cluster/v1 & 0.1 * /cluster/v2" (two liveness checks and one xorshift draw);
  - override:  the split, on a trusted listener, with a fastmesh-naming field (the cached override table).
Service routes count each resolution (and override) into a stats block, as in a worker.
Run: pytest bench/micro/test_naming.py -o addopts="" (per-request ns in extra_info)
"""
import socket

import pytest

from fastmesh._core.balance.factory import make_balancer
from fastmesh._core.cluster import Cluster
from fastmesh._core.naming import OVERRIDE_SLOTS, RESOLUTION_SLOTS
from fastmesh._core.stats import HEADER_SIZE, StatsBlock
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.reactor import Reactor
from fastmesh.config.load import loads_config
from fastmesh.dataplane.naming import build_names
from fastmesh.dataplane.routes import build_router

COUNT = 100_000
CLUSTERS = ("v1", "v2")


def router(route: str, rules: str, trust: bool = False):
    clusters = "\n".join(f'[clusters.{c}]\nendpoints = ["127.0.0.1:{9200 + i}"]' for i, c in enumerate(CLUSTERS))
    cfg = loads_config(f"""
[[listeners]]
name = "web"
listen = "127.0.0.1:4141"
protocol = "http"
trust_naming = {"true" if trust else "false"}
[[listeners.routes]]
{route}
{clusters}
[naming]
rules = [{rules}]
""")
    names = build_names(cfg)
    services = len(names.current.services) if names.current is not None else 0
    if services:                    # count resolutions and overrides into a block, as a worker does
        names.attach_stats(StatsBlock(HEADER_SIZE + services * RESOLUTION_SLOTS + OVERRIDE_SLOTS), HEADER_SIZE,
                           services)
    return build_router(cfg.listeners[0], list(cfg.clusters), names)


def pools():
    reactor = Reactor()
    return [HttpPool(reactor, Cluster(c, [(socket.AF_INET, "127.0.0.1", 9200 + i)],
                                      make_balancer("round_robin", [1], seed=1))) for i, c in enumerate(CLUSTERS)]


HEAD = (b"GET /users/42 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n")
SPLIT = '"/svc/users => 0.9 * /cluster/v1 & 0.1 * /cluster/v2"'
CASES = {
    "cluster": ('cluster = "v1"', '"/svc => /cluster"', False, b""),
    "rewrite": ('service = "v1"', '"/svc => /cluster"', False, b""),
    "fallback": ('service = "users"', '"/svc/users => /cluster/v1 | /cluster/v2"', False, b""),
    "split": ('service = "users"', SPLIT, False, b""),
    "override": ('service = "users"', SPLIT, True, b"fastmesh-naming: /svc/users => /cluster/v2\r\n"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_target(benchmark, case: str) -> None:
    route, rules, trust, extra = CASES[case]
    r = router(route, rules, trust)
    ps = pools()
    if case == "fallback":
        ps[0].cluster.set_health(0, False)
    raw = HEAD + extra + b"\r\n"
    total = r.bench_target(raw, ps, 1000)
    assert total >= 0
    benchmark.pedantic(r.bench_target, args=(raw, ps, COUNT), rounds=5, iterations=1)
    benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.min / COUNT * 1e9, 1)
