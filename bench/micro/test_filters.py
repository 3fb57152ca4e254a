"""Micro-benchmark of what a request filter plugin adds per request, measured in a C loop.

bench_filter(raw, chain, COUNT) parses the head once, then per round does what the HTTP/1 codec adds for a route
with filters: build the FilterRequest (two copies), call the chain (dataplane/filters.py: a Python call per
filter) and join the filter's edits to the request's edit list. Filters:
  - noop:  returns None (the floor: what any synchronous filter costs before it does anything)
  - tag:   sets a request field and an answer field (two edits joined)
  - token: the worked example mypkg.auth:CheckToken with a good token (reads a field, removes it, sets x-user)
Routes without filters pay none of this: one pointer test per request in the codec.

bench_respond(raw, response, chain, COUNT) does, per round, what a response filter adds for one answer: build the
FilterResponse (two copies of the answer head), call the chain's respond() (a Python call per response filter)
and join its edits. Response filters:
  - resp-noop:  returns None
  - resp-edit:  sets a field, removes one, adds two (fastmesh._testbase.plugins:RespTag)
  - resp-secure: the worked example mypkg.headers:SecureHeaders (hides two fields, sets two)
A route whose filters have no on_response pays none of it (one more pointer test per answer).
Run: pytest bench/micro/test_filters.py -o addopts="" (per-request ns in extra_info)
"""
import sys
from pathlib import Path

import pytest

from fastmesh._core.filters import bench_filter, bench_respond
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


RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n"
            b"X-Powered-By: PHP/8.2\r\nCache-Control: no-cache\r\nETag: \"abc123\"\r\n\r\n")
RESPONSE_FILTERS = {
    "resp-noop": FilterSpec(plugin="fastmesh._testbase.plugins:NoopResponse"),
    "resp-edit": FilterSpec(plugin="fastmesh._testbase.plugins:RespTag", config={"remove": ["etag"]}),
    "resp-secure": FilterSpec(plugin="mypkg.headers:SecureHeaders"),
}


@pytest.mark.parametrize("name", list(RESPONSE_FILTERS))
def test_response_filter_per_answer(benchmark, name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        chain = FilterChain([FilterEntry(RESPONSE_FILTERS[name], name)])
    finally:
        sys.path.remove(str(EXAMPLES))
    assert bench_respond(HEAD, RESPONSE, chain, 10) == 10
    benchmark(bench_respond, HEAD, RESPONSE, chain, COUNT)
    benchmark.extra_info["ns_per_answer"] = round(benchmark.stats.stats.median / COUNT * 1e9, 1)
