"""Micro-benchmark of what a request filter plugin adds per request, measured in a C loop.

bench_filter(raw, chain, COUNT) parses the head once, then per round does what the HTTP/1 codec adds for a route
with filters: build the FilterRequest (two copies), call the chain (dataplane/filters.py: a Python call per
filter) and join the filter's edits to the request's edit list. Filters:
  - noop:  returns None (the floor: what any synchronous filter costs before it does anything)
  - tag:   sets a request field and an answer field (two edits joined)
  - token: the worked example mypkg.auth:CheckToken with a good token (reads a field, removes it, sets x-user)
Routes without filters pay none of this: one pointer test per request in the codec.
Run: pytest bench/micro/test_filters.py -o addopts="" (per-request ns in extra_info)
"""
import sys
from pathlib import Path

import pytest

from fastmesh._core.filters import bench_filter
from fastmesh.config.schema import FilterSpec
from fastmesh.dataplane.filters import FilterChain, FilterEntry

COUNT = 20_000
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
HEAD = (b"GET /api/users/42?expand=1 HTTP/1.1\r\nHost: api.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
        b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.5\r\n"
        b"Authorization: Bearer s3cret\r\nCookie: session=abc; theme=dark\r\nConnection: keep-alive\r\n\r\n")
FILTERS = {
    "noop": FilterSpec(plugin="fastmesh._testbase.plugins:Noop"),
    "tag": FilterSpec(plugin="fastmesh._testbase.plugins:Tag", config={"value": "bench"}),
    "token": FilterSpec(plugin="mypkg.auth:CheckToken", config={"tokens": {"s3cret": "alice"}}),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filter_per_request(benchmark, name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        chain = FilterChain([FilterEntry(FILTERS[name], name)])
    finally:
        sys.path.remove(str(EXAMPLES))
    assert bench_filter(HEAD, chain, 10) == 10
    benchmark(bench_filter, HEAD, chain, COUNT)
    benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.median / COUNT * 1e9, 1)
