"""Micro-benchmark of the HTTP/1 request-head parser against httptools (llhttp) and h11.

Two requests: a typical browser GET (8 header lines) and one with about 2 KB of headers. For fastmesh:
  - c-loop:   bench_parse_request(data, COUNT) parses COUNT times in C; round time / COUNT = one parse;
  - py-len:   request_head_length(data), the cheapest Python call (one parse, returns the head length);
  - py-dict:  parse_request_bytes(data), which also builds bytes for every name and value (a test helper).
For httptools, one parser is reused (keep-alive) and fed the same bytes: with no callbacks installed
(llhttp alone) and with on_url/on_header/on_headers_complete (how a server really uses it: one Python call
per header). h11 runs a fresh Connection per request up to the Request event.
Run: pytest bench/micro/test_http1_parser.py --benchmark-enable -o addopts=""   (per-request ns in extra_info;
the -o drops the --benchmark-skip that pyproject.toml adds for normal test runs)
"""
import h11
import httptools
import pytest

from fastmesh._core.http1.parser import bench_parse_request, parse_request_bytes, request_head_length

COUNT = 1_000  # short rounds: on a shared machine the median then skips preempted ones

BROWSER = (
    b"GET /static/app/main.3f9a1c.js?v=20240601 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/index.html\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=8f2b1c3d4e5f60718293a4b5c6d7e8f9; theme=dark; lang=en\r\n"
    b"\r\n"
)
LARGE = (
    b"POST /api/v2/orders/12345/items?expand=true HTTP/1.1\r\n"
    b"Host: api.internal.example.com:8443\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 0\r\n"
    b"Authorization: Bearer " + b"eyJhbGciOiJSUzI1NiJ9." * 16 + b"\r\n"
    b"Cookie: " + b"; ".join(b"c%02d=%s" % (i, b"v" * 40) for i in range(12)) + b"\r\n"
    + b"".join(b"X-Trace-%d: %s\r\n" % (i, b"0123456789abcdef" * 4) for i in range(12))
    + b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"\r\n"
)
REQUESTS = {"browser-8-headers": BROWSER, "2kb-headers": LARGE}


def test_requests_are_what_the_names_say():
    assert len(parse_request_bytes(BROWSER)[1]["headers"]) == 8
    assert 2000 <= len(LARGE) <= 2600
    for data in REQUESTS.values():
        assert request_head_length(data) == len(data)


def record(benchmark, per_call_divisor=1):
    benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.median / per_call_divisor * 1e9, 1)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_fastmesh_c_loop(benchmark, name):
    data = REQUESTS[name]
    total = benchmark(bench_parse_request, data, COUNT)
    assert total > 0
    record(benchmark, COUNT)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_fastmesh_python_call(benchmark, name):
    data = REQUESTS[name]
    assert benchmark(request_head_length, data) == len(data)
    record(benchmark)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_fastmesh_python_dict(benchmark, name):
    data = REQUESTS[name]
    consumed, _ = benchmark(parse_request_bytes, data)
    assert consumed == len(data)
    record(benchmark)


class NoCallbacks:
    """httptools installs no Python callback: llhttp runs alone."""


class Callbacks:
    """What a server built on httptools installs: one Python call per URL and per header."""

    def __init__(self):
        self.headers = []
        self.url = b""
        self.done = 0

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.done += 1
        self.headers = []


@pytest.mark.parametrize("proto", [NoCallbacks, Callbacks], ids=["no-callbacks", "callbacks"])
@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_httptools(benchmark, name, proto):
    data = REQUESTS[name]
    handler = proto()
    parser = httptools.HttpRequestParser(handler)
    benchmark(parser.feed_data, data)
    if isinstance(handler, Callbacks):
        assert handler.done > 0
    record(benchmark)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_h11(benchmark, name):
    data = REQUESTS[name]

    def parse():
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        return conn.next_event()

    assert isinstance(benchmark(parse), h11.Request)
    record(benchmark)
