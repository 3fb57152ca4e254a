"""Micro-benchmark of Router.match over a 10-route table, measured in a C loop.

bench_match(raw, COUNT) parses the head once and then runs COUNT matches without returning to Python,
so a round's time / COUNT is the C cost of one match (the parse is amortised away). Requests:
  - first:    taken by route 0 (host + prefix + method);
  - middle:   a browser request taken by route 3 (/static/);
  - default:  a request that fails every condition route and falls to the listener default (route 9);
  - header:   taken by route 5, which scans the request's header lines for x-env;
  - regex:    the same table with a path_regex route in front of the default, reached and failed: the
              cost of decoding the path to str and running re (see router.pyx).
test_view_and_match adds building the request view to each match (what a request pays for routing).
Run: pytest bench/micro/test_router.py -o addopts="" (per-match ns in extra_info)
"""
import pytest

from fastmesh._core.router import Router

COUNT = 100_000
CLUSTERS = ["web", "api", "internal", "static", "admin", "blog", "canary"]

TABLE = [
    {"host": "api.example.com", "path_prefix": "/v1/users", "methods": ["GET"], "cluster": "api"},
    {"host": "api.example.com", "path_prefix": "/v1/orders", "cluster": "api"},
    {"host": "*.internal.example.com", "cluster": "internal"},
    {"path_prefix": "/static/", "methods": ["GET", "HEAD"], "cluster": "static"},
    {"path": "/healthz", "cluster": "web"},
    {"path_prefix": "/app/", "headers": {"x-env": "canary"}, "cluster": "canary"},
    {"host": "admin.example.com", "path_prefix": "/admin/", "cluster": "admin"},
    {"path_prefix": "/api/", "methods": ["POST", "PUT"], "cluster": "api"},
    {"host": "www.example.com", "path_prefix": "/blog/", "cluster": "blog"},
    {"cluster": "web"},
]
REGEX_TABLE = TABLE[:8] + [{"path_regex": r"^/v[0-9]+/items/[0-9]+$", "cluster": "api"}, TABLE[9]]


def browser(target: bytes, host: bytes = b"www.example.com", extra: bytes = b"") -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\n"
        b"Host: " + host + b"\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Referer: https://www.example.com/index.html\r\n"
        b"Connection: keep-alive\r\n" + extra +
        b"Cookie: session=8f2b1c3d4e5f60718293a4b5c6d7e8f9; theme=dark; lang=en\r\n"
        b"\r\n"
    )


CASES = {
    "first": (TABLE, browser(b"/v1/users/42", host=b"api.example.com"), 0),
    "middle": (TABLE, browser(b"/static/app/main.3f9a1c.js?v=20240601"), 3),
    "default": (TABLE, browser(b"/index.html?utm_source=x"), 9),
    "header": (TABLE, browser(b"/app/home", extra=b"X-Env: canary\r\n"), 5),
    "regex": (REGEX_TABLE, browser(b"/index.html?utm_source=x"), 9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_match(benchmark, case):
    table, raw, expected = CASES[case]
    router = Router(table, CLUSTERS)
    assert len(router) == 10 and router.match_request(raw) == expected
    benchmark.extra_info["matches_per_round"] = COUNT
    total = benchmark(router.bench_match, raw, COUNT)
    assert total == expected * COUNT
    benchmark.extra_info["ns_per_match"] = round(benchmark.stats.stats.median / COUNT * 1e9, 1)


@pytest.mark.parametrize("case", list(CASES))
def test_view_and_match(benchmark, case):
    """What a request pays for routing: the request view built from the parsed head (http1/view.pyx: host and
    path located), then the match. (Before the view existed, match() located host and path itself.)"""
    table, raw, expected = CASES[case]
    router = Router(table, CLUSTERS)
    benchmark.extra_info["matches_per_round"] = COUNT
    total = benchmark(router.bench_match, raw, COUNT, True)
    assert total == expected * COUNT
    benchmark.extra_info["ns_per_view_and_match"] = round(benchmark.stats.stats.median / COUNT * 1e9, 1)
