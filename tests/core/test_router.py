"""Compiled router (fastmesh._core.router): matching, target rewriting and header edits, driven with request bytes."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmesh._core.http1.parser import HttpParseError
from fastmesh._core.router import Router, request_parts
from fastmesh.config.load import loads_config
from fastmesh.dataplane.routes import build_router

CLUSTERS = ["web", "api", "static", "canary"]


def req(target: bytes = b"/", *lines: bytes, method: bytes = b"GET", host: bytes | None = b"example.com",
        version: bytes = b"HTTP/1.1") -> bytes:
    head = [method + b" " + target + b" " + version]
    if host is not None:
        head.append(b"Host: " + host)
    return b"\r\n".join(head + list(lines)) + b"\r\n\r\n"


def router(*routes: dict) -> Router:
    return Router(list(routes), CLUSTERS)


# ---- order and defaults ----

def test_first_matching_route_wins() -> None:
    r = router({"path_prefix": "/api/", "cluster": "api"}, {"path_prefix": "/api/v2/", "cluster": "canary"},
               {"cluster": "web"})
    assert r.match_request(req(b"/api/v2/x")) == 0           # the broader route is listed first
    assert r.match_request(req(b"/other")) == 2
    assert [r.cluster_index(i) for i in range(len(r))] == [1, 3, 0]


def test_no_match_and_no_default_is_minus_one() -> None:
    r = router({"path": "/only", "cluster": "api"})
    assert r.match_request(req(b"/other")) == -1
    assert Router([], CLUSTERS).match_request(req()) == -1


def test_route_without_conditions_matches_everything_but_connect() -> None:
    r = router({"cluster": "static"})
    for raw in (req(), req(b"*", method=b"OPTIONS"), req(b"/x", host=None, version=b"HTTP/1.0"),
                req(b"http://a.example/b")):
        assert r.match_request(raw) == 0
    # A tunnel is opened only where a route asks for it by naming CONNECT.
    connect = req(b"example.com:443", method=b"CONNECT")
    assert r.match_request(connect) == -1
    assert router({"cluster": "static"}, {"methods": ["CONNECT"], "cluster": "api"}).match_request(connect) == 1


def test_listener_default_cluster_is_the_last_route() -> None:
    cfg = loads_config("""
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
cluster = "web"
[[listeners.routes]]
path_prefix = "/api/"
cluster = "api"
[[listeners]]
name = "bare"
listen = "127.0.0.1:8081"
protocol = "http"
[[listeners.routes]]
path_prefix = "/api/"
cluster = "api"
[clusters.web]
endpoints = ["127.0.0.1:9001"]
[clusters.api]
endpoints = ["127.0.0.1:9002"]
""")
    names = ["api", "web"]   # the caller fixes the indexes
    with_default = build_router(cfg.listeners[0], names)
    assert len(with_default) == 2
    assert with_default.match_request(req(b"/api/x")) == 0 and with_default.cluster_index(0) == 0
    assert with_default.match_request(req(b"/")) == 1 and with_default.cluster_index(1) == 1
    without = build_router(cfg.listeners[1], names)
    assert len(without) == 1 and without.match_request(req(b"/")) == -1


# ---- host ----

@pytest.mark.parametrize("host, matched", [
    (b"api.example.com", True),
    (b"API.Example.COM", True),          # case-insensitive
    (b"api.example.com:8080", True),     # the port is ignored
    (b"api.example.com.", True),         # the final dot names the same host
    (b"api.example.com.:80", True),
    (b"api.example.co", False),
    (b"xapi.example.com", False),
    (b"api.example.com.evil", False),
    (b"", False),
])
def test_exact_host(host: bytes, matched: bool) -> None:
    r = router({"host": "api.example.com", "cluster": "api"})
    assert r.match_request(req(host=host)) == (0 if matched else -1)


@pytest.mark.parametrize("host, matched", [
    (b"a.example.com", True),
    (b"a.b.example.com", True),
    (b"A.EXAMPLE.COM:443", True),
    (b"example.com", False),             # the wildcard needs a label of its own
    (b"aexample.com", False),
    (b"example.com.evil", False),
    (b"a.example.org", False),
])
def test_wildcard_host(host: bytes, matched: bool) -> None:
    r = router({"host": "*.Example.com", "cluster": "api"})
    assert r.match_request(req(host=host)) == (0 if matched else -1)


def test_ip_literal_hosts() -> None:
    r = router({"host": "[::1]", "cluster": "api"}, {"host": "10.0.0.1", "cluster": "static"})
    assert r.match_request(req(host=b"[::1]:8080")) == 0
    assert r.match_request(req(host=b"[::1]")) == 0
    assert r.match_request(req(host=b"10.0.0.1:80")) == 1
    assert r.match_request(req(host=b"10.0.0.10")) == -1


def test_request_without_host_fails_host_conditions() -> None:
    r = router({"host": "example.com", "cluster": "api"}, {"cluster": "web"})
    assert r.match_request(req(host=None, version=b"HTTP/1.0")) == 1


def test_absolute_form_authority_wins_over_host() -> None:
    # RFC 9112 section 3.2.2: with an absolute-form target the Host line is ignored.
    r = router({"host": "api.example.com", "path": "/v1", "cluster": "api"}, {"cluster": "web"})
    assert r.match_request(req(b"http://api.example.com/v1", host=b"other.example")) == 0
    assert r.match_request(req(b"http://other.example/v1", host=b"api.example.com")) == 1
    assert r.match_request(req(b"https://API.example.com:8443/v1?q=1", host=b"x")) == 0
    # (userinfo in the target is refused by the parser: tests/conformance/test_smuggling.py)


# ---- path ----

def test_exact_path_ignores_the_query() -> None:
    r = router({"path": "/exact", "cluster": "api"})
    assert r.match_request(req(b"/exact")) == 0
    assert r.match_request(req(b"/exact?x=1&y=/exact")) == 0
    assert r.match_request(req(b"/exact/")) == -1
    assert r.match_request(req(b"/exac")) == -1
    assert r.match_request(req(b"/EXACT")) == -1       # paths are case-sensitive


def test_path_prefix_is_a_byte_prefix() -> None:
    r = router({"path_prefix": "/api/", "cluster": "api"}, {"path_prefix": "/img", "cluster": "static"})
    assert r.match_request(req(b"/api/")) == 0
    assert r.match_request(req(b"/api/users?id=7")) == 0
    assert r.match_request(req(b"/api")) == -1
    assert r.match_request(req(b"/imgs/a.png")) == 1   # no segment boundary is implied
    assert r.match_request(req(b"/x?/api/")) == -1     # the query is not the path


def test_paths_are_compared_as_sent() -> None:
    # No percent-decoding or dot-segment removal (documented in router.pyx).
    r = router({"path_prefix": "/admin/", "cluster": "api"})
    assert r.match_request(req(b"/%61dmin/")) == -1
    assert r.match_request(req(b"/x/../admin/")) == -1


def test_path_regex() -> None:
    r = router({"path_regex": "^/v[0-9]+/", "cluster": "api"}, {"path_regex": r"\.png$", "cluster": "static"})
    assert r.match_request(req(b"/v12/items")) == 0
    assert r.match_request(req(b"/v/items")) == -1
    assert r.match_request(req(b"/a/b.png?size=2")) == 1   # searched in the path only
    assert r.match_request(req(b"/a/b.png.txt")) == -1
    assert r.match_request(req(b"http://h.example/v2/")) == 0


def test_path_regex_sees_non_ascii_paths_decoded_as_utf8() -> None:
    r = router({"path_regex": "^/café$", "cluster": "api"}, {"path_regex": "^/x.$", "cluster": "static"})
    assert r.match_request(req("/café".encode())) == 0
    assert r.match_request(req(b"/x\xff")) == 1    # invalid UTF-8 still decodes (surrogateescape): one char


def test_regex_routes_run_after_cheaper_conditions() -> None:
    r = router({"path_regex": "^/", "methods": ["POST"], "cluster": "api"}, {"cluster": "web"})
    assert r.match_request(req(b"/a")) == 1
    assert r.match_request(req(b"/a", method=b"POST")) == 0


def test_absolute_form_path() -> None:
    r = router({"path": "/", "cluster": "api"})
    assert r.match_request(req(b"http://a.example")) == 0       # no path means "/"
    assert r.match_request(req(b"http://a.example?x=1")) == 0
    assert r.match_request(req(b"http://a.example/")) == 0
    assert r.match_request(req(b"http://a.example/b")) == -1


# ---- methods and headers ----

def test_methods() -> None:
    r = router({"methods": ["GET", "POST"], "cluster": "api"}, {"methods": ["PURGE"], "cluster": "static"})
    assert r.match_request(req(method=b"GET")) == 0
    assert r.match_request(req(method=b"POST")) == 0
    assert r.match_request(req(method=b"HEAD")) == -1      # HEAD is its own method
    assert r.match_request(req(method=b"PURGE")) == 1      # a token the parser has no id for
    assert r.match_request(req(method=b"PURG")) == -1
    assert r.match_request(req(method=b"PURGES")) == -1
    assert r.match_request(req(method=b"get")) == -1       # methods are case-sensitive


def test_header_names_fold_case_and_values_are_exact() -> None:
    r = router({"headers": {"X-Env": "canary"}, "cluster": "canary"}, {"cluster": "web"})
    assert r.match_request(req(b"/", b"x-env: canary")) == 0
    assert r.match_request(req(b"/", b"X-ENV:   canary  ")) == 0       # OWS is not part of the value
    assert r.match_request(req(b"/", b"x-env: Canary")) == 1
    assert r.match_request(req(b"/", b"x-env: canary2")) == 1
    assert r.match_request(req(b"/", b"x-envy: canary")) == 1
    assert r.match_request(req(b"/")) == 1
    assert r.match_request(req(b"/", b"x-env: stable", b"X-Env: canary")) == 0   # any line of that name


def test_all_header_conditions_must_hold() -> None:
    r = router({"headers": {"x-a": "1", "x-b": ""}, "cluster": "api"})
    assert r.match_request(req(b"/", b"x-b:", b"x-a: 1")) == 0
    assert r.match_request(req(b"/", b"x-a: 1")) == -1
    assert r.match_request(req(b"/", b"x-b: ", b"x-a: 2")) == -1


# ---- explain ----

def test_explain_names_the_first_failing_condition() -> None:
    r = router(
        {"host": "api.example.com", "cluster": "api"},
        {"path_prefix": "/api/", "cluster": "api"},
        {"path_regex": "^/v1", "cluster": "api"},
        {"methods": ["POST"], "cluster": "api"},
        {"headers": {"x-a": "1", "X-Env": "canary"}, "cluster": "canary"},
        {"host": "example.com", "path": "/", "methods": ["GET"], "headers": {"x-a": "1"}, "cluster": "static"},
        {"cluster": "web"},
    )
    raw = req(b"/", b"x-a: 1")
    assert r.explain(raw) == [
        {"route": 0, "cluster": "api", "matched": False, "failed": "host"},
        {"route": 1, "cluster": "api", "matched": False, "failed": "path"},
        {"route": 2, "cluster": "api", "matched": False, "failed": "path"},
        {"route": 3, "cluster": "api", "matched": False, "failed": "method"},
        {"route": 4, "cluster": "canary", "matched": False, "failed": "header x-env"},
        {"route": 5, "cluster": "static", "matched": True, "failed": None},
        {"route": 6, "cluster": "web", "matched": True, "failed": None},   # shadowed, still reported
    ]
    assert r.match_request(raw) == 5


# ---- the upstream target ----

@pytest.mark.parametrize("target, route, upstream", [
    (b"/api/users?id=1", 0, b"/users?id=1"),
    (b"/api/", 0, b"/"),
    (b"/api/users", 1, b"/api/users"),             # a route without rewrite
    (b"/api/users", -1, b"/api/users"),            # no route
    (b"/other/x", 0, b"/other/x"),                 # used with a path its prefix does not cover: unchanged
    (b"/old/a/b?q", 2, b"/new/longer/a/b?q"),
    (b"/old?q", 2, b"/new/longer?q"),
    (b"http://h.example/api/x?y", 0, b"/x?y"),    # absolute-form becomes origin-form
    (b"http://h.example", -1, b"/"),
    (b"http://h.example?q=1", -1, b"/?q=1"),
    (b"https://h.example:8443/p", 1, b"/p"),
])
def test_rewrite_target(target: bytes, route: int, upstream: bytes) -> None:
    r = router({"path_prefix": "/api/", "rewrite_prefix": "/", "cluster": "api"},
               {"path_prefix": "/", "cluster": "web"},
               {"path_prefix": "/old", "rewrite_prefix": "/new/longer", "cluster": "static"})
    assert r.target_for(req(target), route) == upstream


def test_rewrite_to_a_slash_does_not_double_it() -> None:
    r = router({"path_prefix": "/api", "rewrite_prefix": "/", "cluster": "api"})
    assert r.target_for(req(b"/api/users?x"), 0) == b"/users?x"
    assert r.target_for(req(b"/api"), 0) == b"/"
    assert r.target_for(req(b"/apix"), 0) == b"/x"


def test_rewrite_growth_is_bounded() -> None:
    # The codec renders the rewritten path straight into its output: max_growth bounds what it must reserve.
    r = router({"path_prefix": "/a", "rewrite_prefix": "/abcdef", "cluster": "api"})
    assert r.max_growth == 5
    raw = req(b"/a/x?q")
    assert r.target_for(raw, 0) == b"/abcdef/x?q"
    assert len(r.target_for(raw, 0)) == len(b"/a/x?q") + r.max_growth
    assert r.target_for(req(b"/b"), 0) == b"/b"


def test_rewrite_target_keeps_connect_and_asterisk_targets() -> None:
    r = router({"cluster": "web"})
    assert r.target_for(req(b"example.com:443", method=b"CONNECT"), 0) == b"example.com:443"
    assert r.target_for(req(b"*", method=b"OPTIONS"), 0) == b"*"


def test_request_parts() -> None:
    assert request_parts(req(b"/a/b?c=d", host=b"Ex.Com:80")) == (b"Ex.Com", b"/a/b", b"?c=d")
    assert request_parts(req(b"http://[::1]:80/p", host=b"x")) == (b"[::1]", b"/p", b"")
    assert request_parts(req(b"h.example:443", method=b"CONNECT", host=b"x")) == (b"h.example", b"", b"")
    assert request_parts(req(b"*", method=b"OPTIONS")) == (b"example.com", b"*", b"")
    assert request_parts(req(b"/", host=b"h.example:")) == (b"h.example", b"/", b"")


# ---- header edits (rendered by the codec: tests/core/test_exchange.py) ----

def test_remove_list_is_lowercased_and_added_fields_keep_their_case() -> None:
    r = router({"remove_request_headers": ["X-Secret", "cookie"], "add_request_headers": {"X-A": "b c", "x-empty": ""},
                "add_response_headers": {"X-Served-By": "fm"}, "cluster": "api"}, {"cluster": "web"})
    assert r.request_edits(0) == [("remove", b"x-secret", b""), ("remove", b"cookie", b""), ("add", b"X-A", b"b c"),
                                  ("add", b"x-empty", b"")]
    assert r.response_edits(0) == [("add", b"X-Served-By", b"fm")]
    assert r.request_edits(1) == [] and r.response_edits(1) == []
    with pytest.raises(IndexError):
        r.request_edits(2)


# ---- building ----

@pytest.mark.parametrize("spec, message", [
    ({"cluster": "nope"}, "cluster 'nope'"),
    ({"cluster": "api", "paht": "/"}, "unknown keys"),
    ({"cluster": "api", "path": "/a", "path_regex": "b"}, "only one of"),
    ({"cluster": "api", "path": "/a", "rewrite_prefix": "/"}, "rewrite_prefix needs path_prefix"),
    ({"cluster": "api", "path_prefix": "/a", "rewrite_prefix": "x"}, "starting with '/'"),
    ({"cluster": "api", "path": "/a b"}, "cannot appear"),
    ({"cluster": "api", "host": "a.example:80"}, "not a host"),
    ({"cluster": "api", "host": "*"}, "not a host"),
    ({"cluster": "api", "methods": ["GET POST"]}, "not a method"),
    ({"cluster": "api", "headers": {"x a": "1"}}, "not a header name"),
    ({"cluster": "api", "add_request_headers": {"x-a": "1\r\nx-b: 2"}}, "control characters"),
    ({"cluster": "api", "add_response_headers": {"x-a": "\x00"}}, "control characters"),
    ({"cluster": "api", "remove_request_headers": [""]}, "not a header name"),
    ({"cluster": "api", "methods": "GET"}, "methods is a list of str"),
])
def test_bad_specs_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        router(spec)


def test_bad_request_heads_raise() -> None:
    r = router({"cluster": "web"})
    with pytest.raises(HttpParseError):
        r.match_request(b"GET / HTTP/1.1\r\n\r\n")         # no Host
    with pytest.raises(ValueError, match="incomplete"):
        r.match_request(b"GET / HTTP/1.1\r\nHost: a\r\n")


# ---- the C matcher agrees with a plain model of the documented rules ----

def model_match(routes: list[dict], method: str, host: str, path: str, headers: list[tuple[str, str]]) -> int:
    for i, route in enumerate(routes):
        pattern = route.get("host")
        if pattern is not None:
            if pattern.startswith("*."):
                if not (host.endswith(pattern[1:]) and len(host) > len(pattern) - 1):
                    continue
            elif host != pattern:
                continue
        if "path" in route and path != route["path"]:
            continue
        if "path_prefix" in route and not path.startswith(route["path_prefix"]):
            continue
        if "methods" in route and method not in route["methods"]:
            continue
        if any((name.lower(), value) not in {(n.lower(), v) for n, v in headers}
               for name, value in route.get("headers", {}).items()):
            continue
        return i
    return -1


HOSTS = ["a.example.com", "b.a.example.com", "example.com", "other.org"]
HOST_PATTERNS = HOSTS + ["*.example.com", "*.a.example.com"]
PATHS = ["/", "/api", "/api/", "/api/v1", "/static/x.png"]
METHODS = ["GET", "POST", "HEAD", "PURGE"]
HEADERS = [("x-env", "canary"), ("x-env", "stable"), ("x-user", "1")]

route_specs = st.fixed_dictionaries({}, optional={
    "host": st.sampled_from(HOST_PATTERNS),
    "path": st.sampled_from(PATHS),
    "methods": st.lists(st.sampled_from(METHODS), min_size=1, max_size=2),
    "headers": st.dictionaries(st.sampled_from(["x-env", "X-User"]), st.sampled_from(["canary", "stable", "1"]),
                               max_size=2),
}).flatmap(lambda d: st.just(d) if "path" in d else st.one_of(
    st.just(d), st.sampled_from(PATHS).map(lambda p: {**d, "path_prefix": p})))


@settings(max_examples=300, deadline=None)
@given(routes=st.lists(route_specs, max_size=6), method=st.sampled_from(METHODS), host=st.sampled_from(HOSTS),
       upper=st.booleans(), port=st.sampled_from(["", ":8080"]), path=st.sampled_from(PATHS),
       headers=st.lists(st.sampled_from(HEADERS), max_size=3))
def test_matches_the_model(routes, method, host, upper, port, path, headers) -> None:
    specs = [{**spec, "cluster": "web"} for spec in routes]
    sent = [(name.upper() if upper else name, value) for name, value in headers]
    raw = req(path.encode() + b"?q=1", *[f"{n}: {v}".encode() for n, v in sent], method=method.encode(),
              host=((host.upper() if upper else host) + port).encode())
    assert router(*specs).match_request(raw) == model_match(specs, method, host, path, headers)
