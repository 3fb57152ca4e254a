"""Config loading: bad configs give exact messages, good configs give the schema's dataclasses with defaults."""
import decimal
import ipaddress
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmesh.config.load import config_from_dict, config_to_dict, load_config, loads_config
from fastmesh.config.schema import AccessLog, Admin, Cluster, Config, Demo, Endpoint, Listener, Route
from fastmesh.config.schema import HealthCheck, Outlier, SuccessRate
from fastmesh.config.values import format_duration, ip_literal, parse_address, parse_duration, plain_decimal
from fastmesh.config.values import shortest_decimal
from fastmesh.errors import ConfigError, ConfigErrors

# The smallest valid config, in parts so that each bad row changes one thing.
LISTENER = '[[listeners]]\nname = "in"\nlisten = "127.0.0.1:4140"\ncluster = "echo"\n'
CLUSTER = '[clusters.echo]\nendpoints = ["127.0.0.1:9001"]\n'
MINIMAL = LISTENER + CLUSTER


def with_endpoints(endpoints: str) -> str:
    return LISTENER + f"[clusters.echo]\nendpoints = {endpoints}\n"


# An http listener with its default cluster, and one route table to add keys to (HTTP + ROUTE + "key = ...").
HTTP = LISTENER + 'protocol = "http"\n'
HTTP_NO_DEFAULT = '[[listeners]]\nname = "web"\nlisten = "127.0.0.1:8080"\nprotocol = "http"\n'
ROUTE = '[[listeners.routes]]\ncluster = "echo"\n'


def http_route(*lines: str) -> str:
    return HTTP + ROUTE + "".join(line + "\n" for line in lines) + CLUSTER


HTTP_ONLY = 'only for listeners with protocol = "http" (this one is "tcp")'
PROTECTED = ('["connection", "content-length", "host", "keep-alive", "proxy-connection", "te", "trailer", '
             '"transfer-encoding", "upgrade"]')
HEADER_VALUE = "a header value without control characters (CR, LF, NUL, ...) or whitespace at either end"
R0 = "listeners[0].routes[0]"


BALANCERS = '["round_robin", "least_request", "random", "ewma", "ring_hash", "maglev"]'
TOP_KEYS = ('["admin", "busy_poll", "cluster_templates", "clusters", "demo", "drain_timeout", "event_sinks", '
            '"listeners", "max_connections", "naming", "ticket_secret_rotation", "tracing", "workers"]')
DURATION = 'a duration like "250ms", "1s", "2m" or "1h"'
BUSY_POLL_TEXT = "0s"        # the default busy_poll as config_to_dict writes it
MAX_CONNECTIONS = 'a whole number from 1 to 16777216, or "auto" (derived from the fd limit)'

BAD = [
    # top level
    ("workers = -1\n" + MINIMAL, 'workers: expected a whole number >= 0 or "auto", got -1'),
    ('workers = "many"\n' + MINIMAL, 'workers: expected a whole number >= 0 or "auto", got "many"'),
    ("workers = true\n" + MINIMAL, 'workers: expected a whole number >= 0 or "auto", got true'),
    ("max_connections = 0\n" + MINIMAL, f'max_connections: expected {MAX_CONNECTIONS}, got 0'),
    ('max_connections = "lots"\n' + MINIMAL, f'max_connections: expected {MAX_CONNECTIONS}, got "lots"'),
    ("max_connections = 16777217\n" + MINIMAL, f'max_connections: expected {MAX_CONNECTIONS}, got 16777217'),
    ('drain_timeout = "10"\n' + MINIMAL, f'drain_timeout: expected {DURATION}, got "10"'),
    ("drain_timeout = 10\n" + MINIMAL, f"drain_timeout: expected {DURATION}, got 10"),
    ('drain_timeout = "1d"\n' + MINIMAL, f'drain_timeout: expected {DURATION}, got "1d"'),
    ('busy_poll = "11ms"\n' + MINIMAL, 'busy_poll: expected a duration from "0s" to "10ms", got "11ms"'),
    ('busy_poll = "50us"\n' + MINIMAL, f'busy_poll: expected {DURATION}, got "50us"'),
    ("busy_poll = 0\n" + MINIMAL, f"busy_poll: expected {DURATION}, got 0"),
    ("listner = 1\n" + MINIMAL, 'listner: unknown key (did you mean "listeners"?)'),
    ('colour = "red"\n' + MINIMAL, f"colour: unknown key (expected one of {TOP_KEYS})"),
    ("", "expected [[listeners]] and [clusters.NAME] tables, got nothing"),
    ("# only a comment\n", "expected [[listeners]] and [clusters.NAME] tables, got nothing"),
    # admin
    ('[admin]\nlisten = "9990"\n' + MINIMAL, 'admin.listen: expected "host:port", got "9990"'),
    ("[admin]\nport = 9990\n" + MINIMAL, 'admin.port: unknown key (expected one of ["listen"])'),
    ("admin = 5\n" + MINIMAL, "admin: expected a table, got 5"),
    ('[admin]\nlisten = "127.0.0.1:4140"\n' + MINIMAL,
     'listeners[0].listen: expected an address not used by admin.listen, got "127.0.0.1:4140"'),
    # listeners
    ("listeners = []\n" + CLUSTER, "listeners: expected at least one listener, got []"),
    ('[listeners]\nname = "in"\n' + CLUSTER, "listeners: expected an array of [[listeners]] tables, got a table"),
    ('listeners = ["in"]\n' + CLUSTER, 'listeners[0]: expected a table, got "in"'),
    (LISTENER.replace("4140", "70000") + CLUSTER,
     'listeners[0].listen: expected "host:port" with a port from 1 to 65535, got "127.0.0.1:70000"'),
    (LISTENER.replace("4140", "0") + CLUSTER,
     'listeners[0].listen: expected "host:port" with a port from 1 to 65535, got "127.0.0.1:0"'),
    (LISTENER.replace("4140", "http") + CLUSTER,
     'listeners[0].listen: expected "host:port" with a numeric port, got "127.0.0.1:http"'),
    (LISTENER.replace("127.0.0.1:4140", "127.0.0.1") + CLUSTER,
     'listeners[0].listen: expected "host:port", got "127.0.0.1"'),
    (LISTENER.replace("127.0.0.1:4140", "::1:80") + CLUSTER,
     'listeners[0].listen: expected "host:port" with IPv6 in brackets ("[::1]:80"), got "::1:80"'),
    (LISTENER.replace("127.0.0.1:4140", "[1.2.3.4]:80") + CLUSTER,
     'listeners[0].listen: expected "[host]:port" with an IPv6 address in the brackets, got "[1.2.3.4]:80"'),
    (LISTENER.replace("127.0.0.1", "10.0.0.256") + CLUSTER,
     'listeners[0].listen: expected "host:port" where host is an IP address or a hostname, got "10.0.0.256:4140"'),
    (LISTENER + 'protocol = "udp"\n' + CLUSTER,
     'listeners[0].protocol: expected one of the protocols ["tcp", "http"], got "udp"'),
    (LISTENER + 'protocol = "https"\n' + CLUSTER,
     'listeners[0].protocol: expected one of the protocols ["tcp", "http"], got "https" '
     '(for HTTPS, protocol = "http" with a tls table)'),
    (LISTENER + 'protocol = "grpc"\n' + CLUSTER,
     'listeners[0].protocol: expected one of the protocols ["tcp", "http"], got "grpc" '
     '(gRPC is served on http listeners)'),
    # http-only keys on a tcp listener (protocol given or left at its default)
    (LISTENER + 'header_timeout = "5s"\n' + CLUSTER, f"listeners[0].header_timeout: {HTTP_ONLY}"),
    (LISTENER + 'protocol = "tcp"\nmax_headers = 10\n' + CLUSTER, f"listeners[0].max_headers: {HTTP_ONLY}"),
    (LISTENER + ROUTE + CLUSTER, f"listeners[0].routes: {HTTP_ONLY}"),
    (LISTENER + 'access_log = { format = "json" }\n' + CLUSTER, f"listeners[0].access_log: {HTTP_ONLY}"),
    (LISTENER + "forwarded_headers = false\n" + CLUSTER, f"listeners[0].forwarded_headers: {HTTP_ONLY}"),
    (LISTENER + 'request_id_header = ""\n' + CLUSTER, f"listeners[0].request_id_header: {HTTP_ONLY}"),
    (LISTENER + "max_request_line = 1024\n" + CLUSTER, f"listeners[0].max_request_line: {HTTP_ONLY}"),
    (LISTENER + "max_header_bytes = 1024\n" + CLUSTER, f"listeners[0].max_header_bytes: {HTTP_ONLY}"),
    (LISTENER + 'body_timeout = "5s"\n' + CLUSTER, f"listeners[0].body_timeout: {HTTP_ONLY}"),
    (LISTENER + "max_hedaers = 10\n" + CLUSTER, 'listeners[0].max_hedaers: unknown key (did you mean "max_headers"?)'),
    # http listeners
    (HTTP_NO_DEFAULT + CLUSTER, "listeners[0].cluster: missing key (expected the name of a cluster, a service, or "
                                "[[listeners.routes]]: an http listener needs one of them)"),
    (HTTP_NO_DEFAULT + "routes = []\n" + CLUSTER, "listeners[0].routes: expected at least one route, got []"),
    (HTTP + 'routes = "all"\n' + CLUSTER,
     'listeners[0].routes: expected an array of [[listeners.routes]] tables, got "all"'),
    (HTTP + 'header_timeout = "0s"\n' + CLUSTER,
     'listeners[0].header_timeout: expected a duration above "0s", got "0s"'),
    (HTTP + "body_timeout = 30\n" + CLUSTER, f"listeners[0].body_timeout: expected {DURATION}, got 30"),
    (HTTP + "max_headers = 0\n" + CLUSTER, "listeners[0].max_headers: expected a whole number from 1 to 100, got 0"),
    (HTTP + "max_headers = 101\n" + CLUSTER,
     "listeners[0].max_headers: expected a whole number from 1 to 100, got 101"),
    (HTTP + "max_request_line = 10\n" + CLUSTER,
     "listeners[0].max_request_line: expected a whole number from 64 to 1048576, got 10"),
    (HTTP + "max_header_bytes = 100000000\n" + CLUSTER,
     "listeners[0].max_header_bytes: expected a whole number from 64 to 16777216, got 100000000"),
    (HTTP + 'forwarded_headers = "yes"\n' + CLUSTER,
     'listeners[0].forwarded_headers: expected true or false, got "yes"'),
    (HTTP + 'request_id_header = "x id"\n' + CLUSTER,
     "listeners[0].request_id_header: expected a header name (letters, digits and !#$%&'*+-.^_`|~), "
     'or "" for none, got "x id"'),
    (HTTP + 'access_log = { format = "xml" }\n' + CLUSTER,
     'listeners[0].access_log.format: expected one of the formats ["plain", "json"], got "xml"'),
    (HTTP + 'access_log = { path = "" }\n' + CLUSTER,
     'listeners[0].access_log.path: expected a file path, or "-" for stderr, got ""'),
    (HTTP + 'access_log = { fromat = "json" }\n' + CLUSTER,
     'listeners[0].access_log.fromat: unknown key (did you mean "format"?)'),
    (HTTP + 'access_log = "-"\n' + CLUSTER, 'listeners[0].access_log: expected a table, got "-"'),
    # routes
    (HTTP + '[[listeners.routes]]\nhost = "a.example"\n' + CLUSTER,
     f"{R0}.cluster: missing key (expected the name of a cluster, or service = a logical name)"),
    (HTTP + '[[listeners.routes]]\ncluster = "nope"\n' + CLUSTER,
     f'{R0}.cluster: expected one of the clusters ["echo"], got "nope"'),
    (http_route('paht = "/"'), f'{R0}.paht: unknown key (did you mean "path"?)'),
    (http_route('path = "/a"', 'path_prefix = "/b"'),
     f'{R0}.path_prefix: expected only one of ["path", "path_prefix", "path_regex"] per route ("path" is set), '
     'got "/b"'),
    (http_route('path_regex = "^/v1"', 'path = "/a"'),
     f'{R0}.path: expected only one of ["path", "path_prefix", "path_regex"] per route ("path_regex" is set), '
     'got "/a"'),
    (http_route('path = "/a"', 'rewrite_prefix = "/"'),
     f'{R0}.rewrite_prefix: expected rewrite_prefix only together with "path_prefix", got "/"'),
    (http_route('path_regex = "^/v[0-9+/"'),
     f"{R0}.path_regex: expected a Python regular expression (unterminated character set at position 3), "
     'got "^/v[0-9+/"'),
    (http_route('path = "api"'),
     f'{R0}.path: expected a path starting with "/" (no spaces, control characters, "?" or "#"), got "api"'),
    (http_route('path_prefix = "/a?b"'),
     f'{R0}.path_prefix: expected a path starting with "/" (no spaces, control characters, "?" or "#"), '
     'got "/a?b"'),
    (http_route('path_prefix = "/a"', 'rewrite_prefix = "/with space"'),
     f'{R0}.rewrite_prefix: expected a path starting with "/" (no spaces, control characters, "?" or "#"), '
     'got "/with space"'),
    (http_route('host = "api.example.com:8080"'),
     f'{R0}.host: expected a host name like "api.example.com" or "*.example.com" (no port), '
     'got "api.example.com:8080"'),
    (http_route('host = "*"'),
     f'{R0}.host: expected a host name like "api.example.com" or "*.example.com" (no port), got "*"'),
    (http_route('host = "a.*.example.com"'),
     f'{R0}.host: expected a host name like "api.example.com" or "*.example.com" (no port), '
     'got "a.*.example.com"'),
    (http_route('host = "*.10.0.0.1"'),
     f'{R0}.host: expected a host name like "api.example.com" or "*.example.com" (no port), got "*.10.0.0.1"'),
    (http_route("methods = []"), f"{R0}.methods: expected at least one method, got []"),
    (http_route('methods = "GET"'), f'{R0}.methods: expected an array of methods like ["GET", "HEAD"], got "GET"'),
    (http_route('methods = ["GET", "get"]'), f'{R0}.methods[1]: expected an HTTP method in upper case, like "GET", '
                                             'got "get"'),
    (http_route('methods = ["GET POST"]'), f'{R0}.methods[0]: expected an HTTP method in upper case, like "GET", '
                                           'got "GET POST"'),
    (http_route('headers = { "x env" = "a" }'),
     f"{R0}.headers.\"x env\": expected a header name (letters, digits and !#$%&'*+-.^_`|~), got \"x env\""),
    (http_route('headers = { x-env = "a\\r\\nx-evil: 1" }'),
     f'{R0}.headers.x-env: expected {HEADER_VALUE}, got "a\\r\\nx-evil: 1"'),
    (http_route('headers = { x-env = "canary " }'), f'{R0}.headers.x-env: expected {HEADER_VALUE}, got "canary "'),
    (http_route('headers = { x-env = 1 }'), f"{R0}.headers.x-env: expected {HEADER_VALUE}, got 1"),
    (http_route('headers = { X-Env = "a", x-env = "b" }'),
     f'{R0}.headers.x-env: expected a header name not already listed (as "X-Env"), got "x-env"'),
    (http_route('headers = "x-env"'),
     f'{R0}.headers: expected a table of header names and values like {{ "x-env" = "canary" }}, got "x-env"'),
    (http_route('add_request_headers = { Content-Length = "0" }'),
     f"{R0}.add_request_headers.Content-Length: expected a header name other than {PROTECTED}, "
     'got "Content-Length"'),
    (http_route('add_response_headers = { x-a = "nul\\u0000" }'),
     f'{R0}.add_response_headers.x-a: expected {HEADER_VALUE}, got "nul\\u0000"'),
    (http_route('remove_request_headers = ["Host"]'),
     f'{R0}.remove_request_headers[0]: expected a header name other than {PROTECTED}, got "Host"'),
    (http_route('remove_request_headers = ["x-a", "X-A"]'),
     f"{R0}.remove_request_headers[1]: expected a header name not already listed at "
     f'{R0}.remove_request_headers[0], got "X-A"'),
    (http_route('remove_request_headers = "x-a"'),
     f'{R0}.remove_request_headers: expected an array of header names like ["x-secret"], got "x-a"'),
    (LISTENER.replace('"echo"', '"nope"') + CLUSTER,
     'listeners[0].cluster: expected one of the clusters ["echo"], got "nope"'),
    (LISTENER.replace('cluster = "echo"\n', "") + CLUSTER,
     "listeners[0].cluster: missing key (expected the name of a cluster, or service = a logical name)"),
    (LISTENER + "backlog = 0\n" + CLUSTER, "listeners[0].backlog: expected a whole number from 1 to 65535, got 0"),
    (LISTENER + "max_connections = -1\n" + CLUSTER,
     "listeners[0].max_connections: expected a whole number from 0 to 16777216, got -1"),
    (LISTENER + 'max_connections = "auto"\n' + CLUSTER,
     'listeners[0].max_connections: expected a whole number from 0 to 16777216, got "auto"'),
    (LISTENER + 'splice = "yes"\n' + CLUSTER, 'listeners[0].splice: expected true or false, got "yes"'),
    (LISTENER + 'idle_timeout = "0s"\n' + CLUSTER,
     'listeners[0].idle_timeout: expected a duration above "0s", got "0s"'),
    (LISTENER.replace('"in"', '"my listener"') + CLUSTER,
     'listeners[0].name: expected a name of letters, digits, "_", "-" and ".", got "my listener"'),
    (LISTENER + LISTENER.replace("4140", "4141") + CLUSTER,
     'listeners[1].name: expected a name not used by listeners[0], got "in"'),
    (LISTENER + LISTENER.replace('"in"', '"in2"') + CLUSTER,
     'listeners[1].listen: expected an address not used by listeners[0].listen, got "127.0.0.1:4140"'),
    (LISTENER.replace("127.0.0.1", "[::1]") + LISTENER.replace("127.0.0.1", "[0:0::1]").replace('"in"', '"b"')
     + CLUSTER, 'listeners[1].listen: expected an address not used by listeners[0].listen, got "[0:0::1]:4140"'),
    # clusters
    (LISTENER, "clusters: missing key (expected at least one [clusters.NAME] table)"),
    ("clusters = 3\n" + LISTENER, "clusters: expected a table of clusters like [clusters.NAME], got 3"),
    (LISTENER + "[clusters]\n", "clusters: expected at least one [clusters.NAME] table, got an empty table"),
    (MINIMAL + 'balancr = "rr"\n', 'clusters.echo.balancr: unknown key (did you mean "balancer"?)'),
    (MINIMAL + 'balancer = "rr"\n', f'clusters.echo.balancer: expected one of the balancers {BALANCERS}, got "rr"'),
    (MINIMAL + "connect_attempts = 0\n", "clusters.echo.connect_attempts: expected a whole number >= 1, got 0"),
    (MINIMAL + 'connect_timeout = "0s"\n',
     'clusters.echo.connect_timeout: expected a duration above "0s", got "0s"'),
    (MINIMAL + 'response_timeout = "0s"\n',
     'clusters.echo.response_timeout: expected a duration above "0s", got "0s"'),
    (MINIMAL + "pool_max_idle = -1\n", "clusters.echo.pool_max_idle: expected a whole number >= 0, got -1"),
    (MINIMAL + "limits = { max_pending = -1 }\n",
     "clusters.echo.limits.max_pending: expected a whole number >= 0, got -1"),
    (MINIMAL + "limits = { max_requests = 0 }\n",
     "clusters.echo.limits.max_requests: expected a whole number >= 1, got 0"),
    (MINIMAL + "pool_idle_timeout = 5\n", f"clusters.echo.pool_idle_timeout: expected {DURATION}, got 5"),
    (LISTENER.replace('"echo"', '"my cluster"') + '[clusters."my cluster"]\nendpoints = ["127.0.0.1:9001"]\n',
     'clusters."my cluster": expected a cluster name of letters, digits, "_", "-" and ".", got "my cluster"'),
    (with_endpoints("[]"), "clusters.echo.endpoints: expected at least one endpoint, got []"),
    (with_endpoints('"127.0.0.1:9001"'),
     'clusters.echo.endpoints: expected an array of endpoints like ["127.0.0.1:9001"], got "127.0.0.1:9001"'),
    (with_endpoints('["127.0.0.1:9001", "10.0.0.1"]'),
     'clusters.echo.endpoints[1]: expected "host:port", got "10.0.0.1"'),
    (with_endpoints("[9001]"),
     'clusters.echo.endpoints[0]: expected "host:port" or { address = "host:port", weight = N }, got 9001'),
    (with_endpoints('["127.0.0.1:9001", "127.0.0.1:9001"]'),
     'clusters.echo.endpoints[1]: expected an endpoint not already listed at clusters.echo.endpoints[0], '
     'got "127.0.0.1:9001"'),
    (with_endpoints('[{ address = "127.0.0.1:9001", weight = 0 }]'),
     "clusters.echo.endpoints[0].weight: expected a whole number from 1 to 1000, got 0"),
    (with_endpoints('[{ address = "127.0.0.1:9001", weight = 1001 }]'),
     "clusters.echo.endpoints[0].weight: expected a whole number from 1 to 1000, got 1001"),
    (with_endpoints('[{ address = "127.0.0.1:9001", weight = 1.5 }]'),
     "clusters.echo.endpoints[0].weight: expected a whole number from 1 to 1000, got 1.5"),
    (with_endpoints("[{ weight = 2 }]"), 'clusters.echo.endpoints[0].address: missing key (expected "host:port")'),
    (with_endpoints('[{ address = "127.0.0.1:9001", wieght = 2 }]'),
     'clusters.echo.endpoints[0].wieght: unknown key (did you mean "weight"?)'),
    # demo
    (MINIMAL + '[demo]\nbackends = ["9001"]\n', 'demo.backends[0]: expected "host:port", got "9001"'),
    (MINIMAL + '[demo]\nbackends = ["127.0.0.1:4140"]\n',
     'demo.backends[0]: expected an address not used by listeners[0].listen, got "127.0.0.1:4140"'),
    (MINIMAL + '[demo]\nbackend = ["127.0.0.1:9001"]\n', 'demo.backend: unknown key (did you mean "backends"?)'),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_config_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "bad.toml")
    assert str(info.value) == f"bad.toml: {message}"
    assert not isinstance(info.value, ConfigErrors)   # each row has exactly one problem


def test_every_problem_is_reported_in_file_order() -> None:
    text = ('workers = -1\n[[listeners]]\nname = "in"\nlisten = "127.0.0.1"\ncluster = "nope"\nsplice = 1\n'
            + CLUSTER + 'balancr = "x"\n')
    with pytest.raises(ConfigErrors) as info:
        loads_config(text, "many.toml")
    err = info.value
    assert str(err).splitlines() == [
        'many.toml: workers: expected a whole number >= 0 or "auto", got -1',
        'many.toml: listeners[0].listen: expected "host:port", got "127.0.0.1"',
        'many.toml: listeners[0].cluster: expected one of the clusters ["echo"], got "nope"',
        "many.toml: listeners[0].splice: expected true or false, got 1",
        'many.toml: clusters.echo.balancr: unknown key (did you mean "balancer"?)',
    ]
    # The aggregate reads as its first error, so code that looks at one error still works.
    assert isinstance(err, ConfigError)
    assert (err.file, err.key, err.expected, err.got) == ("many.toml", "workers", 'a whole number >= 0 or "auto"', "-1")
    assert len(err.errors) == 5 and err.errors[1].key == "listeners[0].listen"


def test_error_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(with_endpoints('["127.0.0.1:9001", "10.0.0.1"]'), "quick.toml")
    err = info.value
    assert (err.file, err.key, err.expected, err.got) == (
        "quick.toml", "clusters.echo.endpoints[1]", '"host:port"', '"10.0.0.1"')
    assert err.errors == (err,)


def test_missing_key_has_no_got() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(LISTENER.replace('name = "in"\n', "") + CLUSTER, "m.toml")
    assert (info.value.key, info.value.expected, info.value.got) == ("listeners[0].name", "a listener name", None)
    assert str(info.value) == "m.toml: listeners[0].name: missing key (expected a listener name)"


def test_errors_survive_pickling() -> None:
    # Reload may validate in one process and report in another.
    with pytest.raises(ConfigErrors) as info:
        loads_config("workers = -1\ndrain_timeout = 1\n" + MINIMAL, "p.toml")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ConfigErrors and str(copy) == str(info.value)
    single = pickle.loads(pickle.dumps(info.value.errors[1]))
    assert str(single) == "p.toml: drain_timeout: expected " + DURATION + ", got 1"
    assert single.got == "1"


# ---- good configs ----

FULL = """
workers = "auto"
drain_timeout = "2m"
[admin]
listen = "[::1]:9991"
[[listeners]]
name = "tcp-in"
listen = "0.0.0.0:4140"
protocol = "tcp"
cluster = "echo"
idle_timeout = "250ms"
backlog = 128
splice = false
[[listeners]]
name = "tcp-in-2"
listen = "localhost:4141"
cluster = "echo"
[clusters.echo]
endpoints = ["127.0.0.1:9001", { address = "[::1]:9002", weight = 3 }, { address = "backend.example:80" }]
balancer = "least_request"
connect_timeout = "1.5s"
connect_attempts = 5
[demo]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
"""


def test_minimal_config_gets_schema_defaults() -> None:
    cfg = loads_config(MINIMAL, "good.toml")
    assert cfg == Config(
        listeners=[Listener(name="in", host="127.0.0.1", port=4140, cluster="echo")],
        clusters={"echo": Cluster(name="echo", endpoints=[Endpoint("127.0.0.1", 9001)])},
        source="good.toml",
    )
    # The defaults as the schema defines them today, spelled out once so a change is noticed here.
    assert (cfg.workers, cfg.max_connections, cfg.drain_timeout, cfg.admin, cfg.demo) == (
        1, "auto", 10.0, Admin("127.0.0.1", 9990), None)
    listener = cfg.listeners[0]
    assert (listener.protocol, listener.idle_timeout, listener.backlog, listener.max_connections, listener.splice) == (
        "tcp", 3600.0, 1024, 0, True)
    cluster = cfg.clusters["echo"]
    assert (cluster.balancer, cluster.connect_timeout, cluster.connect_attempts) == ("round_robin", 1.0, 3)


def test_zero_pending_and_zero_retries_mean_none() -> None:
    """max_pending = 0 is "no queue" (refuse at once at max_connections), max_retries = 0 "no retry at once"."""
    cfg = loads_config(MINIMAL + "limits = { max_pending = 0, max_retries = 0 }\n", "good.toml")
    limits = cfg.clusters["echo"].limits
    assert (limits.max_pending, limits.max_retries, limits.max_connections) == (0, 0, 1024)


def test_full_config() -> None:
    cfg = loads_config(FULL)
    assert cfg == Config(
        listeners=[
            Listener(name="tcp-in", host="0.0.0.0", port=4140, cluster="echo", protocol="tcp", idle_timeout=0.25,
                     backlog=128, splice=False),
            Listener(name="tcp-in-2", host="localhost", port=4141, cluster="echo"),
        ],
        clusters={"echo": Cluster(
            name="echo",
            endpoints=[Endpoint("127.0.0.1", 9001), Endpoint("::1", 9002, 3), Endpoint("backend.example", 80)],
            balancer="least_request", connect_timeout=1.5, connect_attempts=5)},
        workers="auto",
        drain_timeout=120.0,
        admin=Admin("::1", 9991),
        demo=Demo(backends=[Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)]),
        source="<string>",
    )
    assert cfg.worker_count() >= 1


def test_empty_demo_and_admin_tables() -> None:
    cfg = loads_config("[admin]\n[demo]\n" + MINIMAL)
    assert cfg.admin == Admin() and cfg.demo == Demo(backends=[])


def test_config_to_dict_fills_every_default() -> None:
    assert config_to_dict(loads_config(MINIMAL)) == {
        "workers": 1,
        "max_connections": "auto",
        "drain_timeout": "10s",
        "busy_poll": BUSY_POLL_TEXT,
        "ticket_secret_rotation": "24h",
        "admin": {"listen": "127.0.0.1:9990"},
        "listeners": [{"name": "in", "listen": "127.0.0.1:4140", "protocol": "tcp", "cluster": "echo",
                       "idle_timeout": "1h", "backlog": 1024, "max_connections": 0, "splice": True}],
        "clusters": {"echo": {"endpoints": [{"address": "127.0.0.1:9001", "weight": 1}], "balancer": "round_robin",
                              "protocol": "http1",
                              "connect_timeout": "1s", "connect_attempts": 3, "response_timeout": "15s",
                              "pool_max_idle": 1024, "pool_idle_timeout": "1m",
                              "h2_keepalive_interval": "0s", "h2_keepalive_timeout": "10s", "timeout": "0s",
                              "per_try_timeout": "0s",
                              "retries": {"attempts": 3, "on": ["connect-failure"], "budget_percent": 20.0,
                                          "min_per_second": 10.0, "backoff": "25ms", "max_backoff": "250ms",
                                          "grpc_status": []},
                              "limits": {"max_connections": 1024, "max_pending": 1024, "max_requests": 1024,
                                         "max_retries": 3}, "slow_start": "0s",
                              "adaptive_concurrency": False,
                              "outlier": {"consecutive_failures": 5, "base_ejection": "5s", "max_ejection": "5m",
                                          "max_ejected_percent": 50}}},
    }


def test_connection_limits() -> None:
    cfg = loads_config("max_connections = 5000\n" + LISTENER + "max_connections = 100\n" + CLUSTER)
    assert (cfg.max_connections, cfg.listeners[0].max_connections) == (5000, 100)


@pytest.mark.parametrize("text", [MINIMAL, FULL, "drain_timeout = \"0s\"\n" + MINIMAL,
                                  'busy_poll = "0.05ms"\n' + MINIMAL,
                                  "max_connections = 10\n" + LISTENER + "max_connections = 3\n" + CLUSTER])
def test_round_trip(text: str) -> None:
    cfg = loads_config(text, "rt.toml")
    as_dict = config_to_dict(cfg)
    assert config_from_dict(as_dict, "rt.toml") == cfg
    assert config_to_dict(config_from_dict(as_dict)) == as_dict


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["quickstart.toml", "grpc.toml", "discovery-etcd.toml", "mesh/frontend.toml",
                                  "mesh/backend.toml"])
def test_example_configs_survive_the_trip_workers_get_them_by(name: str, tmp_path: Path) -> None:
    # A reload reaches the workers as config_to_dict's JSON, never as the file's TOML: what they build must be
    # what the supervisor checked, for every config we ship (the mesh's TLS file paths, relative to the config's
    # folder, included: its certificates made as its README says).
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("certs", "plugins"))
    if name.startswith("mesh/"):
        subprocess.run(["sh", str(tmp_path / "examples" / "mesh" / "make-certs.sh")], check=True, capture_output=True,
                       timeout=60)
    path = tmp_path / "examples" / name
    cfg = load_config(path)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg))), str(path)) == cfg


def test_config_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"listeners": None, "clusters": {"echo": {"endpoints": ["127.0.0.1:9001"]}}})
    assert str(info.value) == "<dict>: listeners: expected an array of [[listeners]] tables, got None"
    with pytest.raises(ConfigError) as info:
        config_from_dict([1, 2])   # type: ignore[arg-type]
    assert str(info.value) == "<dict>: expected a table, got [1, 2]"


# ---- http listeners and routes ----

FULL_HTTP = """
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
cluster = "web"
idle_timeout = "30s"
header_timeout = "5s"
body_timeout = "2m"
max_request_line = 4096
max_header_bytes = 32768
max_headers = 50
forwarded_headers = false
request_id_header = "X-Trace-Id"
access_log = { format = "json", path = "access.log" }

[[listeners.routes]]
host = "*.Example.com"
path_prefix = "/api/"
methods = ["GET", "POST", "PURGE"]
headers = { "X-Env" = "canary" }
cluster = "api"
rewrite_prefix = "/"
add_request_headers = { "X-A" = "b c" }
remove_request_headers = ["X-Secret"]
add_response_headers = { "x-served-by" = "fastmesh" }

[[listeners.routes]]
host = "api.example.com"
path_regex = "^/v[0-9]+/"
cluster = "api"

[[listeners.routes]]
path = "/healthz"
cluster = "web"

[[listeners]]
name = "edge"
listen = "127.0.0.1:8081"
protocol = "http"
access_log = {}
[[listeners.routes]]
host = "[::1]"
cluster = "web"

[clusters.web]
endpoints = ["127.0.0.1:9001"]
[clusters.api]
endpoints = ["127.0.0.1:9002"]
response_timeout = "2s"
pool_max_idle = 0
pool_idle_timeout = "5m"
"""


def test_http_listener_defaults() -> None:
    cfg = loads_config(HTTP + CLUSTER)
    listener = cfg.listeners[0]
    assert listener == Listener(name="in", host="127.0.0.1", port=4140, cluster="echo", protocol="http")
    # The defaults as the schema defines them today; the idle timeout is http's, not tcp's hour.
    assert (listener.idle_timeout, listener.header_timeout, listener.body_timeout, listener.max_request_line,
            listener.max_header_bytes, listener.max_headers, listener.forwarded_headers, listener.request_id_header,
            listener.access_log, listener.routes) == (60.0, 10.0, 60.0, 8192, 65536, 100, True, "x-request-id",
                                                      None, [])
    # body_timeout = "0s" lifts the limit on the whole body (idle_timeout still bounds each silence in it).
    assert loads_config(HTTP + 'body_timeout = "0s"\n' + CLUSTER).listeners[0].body_timeout == 0.0
    cluster = cfg.clusters["echo"]
    assert (cluster.response_timeout, cluster.pool_max_idle, cluster.pool_idle_timeout) == (15.0, 1024, 60.0)


def test_idle_timeout_default_follows_the_protocol() -> None:
    # Python-built configs get the same per-protocol default as loaded ones; an explicit value is kept.
    assert Listener("a", "127.0.0.1", 1, "c").idle_timeout == 3600.0
    assert Listener("a", "127.0.0.1", 1, "c", protocol="http").idle_timeout == 60.0
    assert Listener("a", "127.0.0.1", 1, "c", protocol="http", idle_timeout=5.0).idle_timeout == 5.0
    assert loads_config(HTTP + 'idle_timeout = "2h"\n' + CLUSTER).listeners[0].idle_timeout == 7200.0


def test_full_http_config() -> None:
    cfg = loads_config(FULL_HTTP)
    web, edge = cfg.listeners
    assert web == Listener(
        name="web", host="127.0.0.1", port=8080, cluster="web", protocol="http", idle_timeout=30.0,
        header_timeout=5.0, body_timeout=120.0, max_request_line=4096, max_header_bytes=32768, max_headers=50,
        forwarded_headers=False, request_id_header="X-Trace-Id", access_log=AccessLog(format="json", path="access.log"),
        routes=[
            Route(cluster="api", host="*.Example.com", path_prefix="/api/", methods=["GET", "POST", "PURGE"],
                  headers={"X-Env": "canary"}, rewrite_prefix="/", add_request_headers={"X-A": "b c"},
                  remove_request_headers=["X-Secret"], add_response_headers={"x-served-by": "fastmesh"}),
            Route(cluster="api", host="api.example.com", path_regex="^/v[0-9]+/"),
            Route(cluster="web", path="/healthz"),
        ])
    # No default cluster: a request no route matches is refused; an empty access_log table means "on, defaults".
    assert edge == Listener(name="edge", host="127.0.0.1", port=8081, protocol="http", access_log=AccessLog(),
                            routes=[Route(cluster="web", host="[::1]")])
    assert edge.cluster is None and edge.access_log == AccessLog("plain", "-")
    api = cfg.clusters["api"]
    assert (api.response_timeout, api.pool_max_idle, api.pool_idle_timeout) == (2.0, 0, 300.0)


def test_http_config_to_dict() -> None:
    data = config_to_dict(loads_config(FULL_HTTP))
    web, edge = data["listeners"]
    assert web["access_log"] == {"format": "json", "path": "access.log"}
    assert web["routes"][2] == {"path": "/healthz", "cluster": "web"}   # unset conditions and edits are left out
    assert web["routes"][0]["remove_request_headers"] == ["X-Secret"]
    assert "cluster" not in edge and edge["idle_timeout"] == "1m" and edge["request_id_header"] == "x-request-id"
    assert data["clusters"]["api"]["pool_idle_timeout"] == "5m"
    # tcp listeners show no http key.
    assert set(config_to_dict(loads_config(MINIMAL))["listeners"][0]) == {
        "name", "listen", "protocol", "cluster", "idle_timeout", "backlog", "max_connections", "splice"}


@pytest.mark.parametrize("text", [FULL_HTTP, HTTP + CLUSTER])
def test_http_round_trip(text: str) -> None:
    test_round_trip(text)


def test_check_output_reads_back() -> None:
    # `fastmesh check` prints config_to_dict as TOML: nested routes and header tables must survive that.
    from fastmesh.cli.check import to_toml
    cfg = loads_config(FULL_HTTP, "rt.toml")
    assert loads_config(to_toml(config_to_dict(cfg)), "rt.toml") == cfg


def test_tcp_listener_with_bad_routes_reports_the_protocol_once() -> None:
    # The http-only key is not parsed on a tcp listener, so the problems inside it are not reported too.
    with pytest.raises(ConfigError) as info:
        loads_config(LISTENER + '[[listeners.routes]]\ncluster = "nope"\npaht = 1\n' + CLUSTER, "t.toml")
    assert str(info.value) == f"t.toml: listeners[0].routes: {HTTP_ONLY}"
    assert info.value.expected == 'protocol = "http"'


def test_route_problems_are_all_reported() -> None:
    text = http_route('path = "/a"', 'path_prefix = "/b"', 'rewrite_prefix = "/c"', "methods = []")
    with pytest.raises(ConfigErrors) as info:
        loads_config(text, "r.toml")
    assert [e.key for e in info.value.errors] == [f"{R0}.methods", f"{R0}.path_prefix"]
    text = http_route('path = "/a"', 'rewrite_prefix = "/c"', 'host = "a b"')
    with pytest.raises(ConfigErrors) as info:
        loads_config(text, "r.toml")
    assert [e.key for e in info.value.errors] == [f"{R0}.host", f"{R0}.rewrite_prefix"]


# ---- files ----

def test_load_from_file_names_the_path_as_given(tmp_path, monkeypatch) -> None:
    (tmp_path / "quick.toml").write_text(with_endpoints('["127.0.0.1:9001", "10.0.0.1"]'))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("quick.toml")
    assert str(info.value) == 'quick.toml: clusters.echo.endpoints[1]: expected "host:port", got "10.0.0.1"'
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "quick.toml")
    assert str(info.value).startswith(f"{tmp_path / 'quick.toml'}: clusters.echo.endpoints[1]: ")


def test_load_good_file(tmp_path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(FULL)
    cfg = load_config(str(path))
    assert cfg.source == str(path) and cfg.clusters["echo"].endpoints[1] == Endpoint("::1", 9002, 3)


def test_toml_syntax_error_names_line_and_column(tmp_path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text('workers = 1\nbroken = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # tomllib's own words follow; they are not ours to pin down.
    assert str(info.value).startswith(f"{path}: line 2, column 10: invalid TOML (")
    assert info.value.key == "" and info.value.expected == "valid TOML"
    with pytest.raises(ConfigError) as info:
        loads_config("a = [1,\n", "x.toml")
    assert str(info.value).startswith("x.toml: end of file: invalid TOML (")


def test_unreadable_and_non_utf8_files(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert str(info.value) == f"{tmp_path / 'absent.toml'}: cannot read the file (No such file or directory)"
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: invalid TOML (not UTF-8 at byte 11)"


# ---- durations and addresses ----

@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("0s", 0.0), ("0ms", 0.0),
    ("0.5ms", 0.0005), ("90m", 5400.0), ("1.25h", 4500.0), ("10s", 10.0), ("007s", 7.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "1", "s", "1 s", " 1s", "1s ", "-1s", "+1s", "1d", "1S", "1.s", ".5s", "1e3s", "1_000ms", "1m30s",
    "\u0661s",   # ARABIC-INDIC DIGIT ONE: a Unicode digit is still not a number here
])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0s"), (0.25, "250ms"), (0.001, "1ms"), (1.0, "1s"), (1.5, "1.5s"), (90.0, "90s"), (120.0, "2m"),
    (3600.0, "1h"), (5400.0, "90m"), (0.0005, "0.0005s"), (1e-05, "0.00001s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_format_duration_parses_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_plain_decimal_spells_repr_as_decimal_does(value: float) -> None:
    # The config's own formatter keeps the decimal module out of every process; decimal is the oracle here.
    assert plain_decimal(value) == f"{decimal.Decimal(repr(value)):f}"
    assert shortest_decimal(value) == f"{decimal.Decimal(repr(value)).normalize():f}"


def ipaddress_says(text: str) -> tuple[int, str] | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, str(address)


IP_TEXT = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xffff, 0x1234]), min_size=8, max_size=8).map(
        lambda groups: str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups)))),
    st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).exploded.upper()),
    st.text("0123456789abcdefABCDEF:.%", max_size=24),
    st.sampled_from(["fe80::1%eth0", "fe80::1%", "::1%a%b", "::ffff:1.2.3.4", "::ffff:01.2.3.4", "01.2.3.4",
                     "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:8::", "[::1]", " ::1", "::\u0661"]),
)


@given(IP_TEXT)
def test_ip_literal_accepts_and_spells_as_ipaddress_does(text: str) -> None:
    # fastmesh keeps ipaddress out of its processes; ipaddress is the oracle here. (3.13 spells IPv4-mapped IPv6
    # addresses with a dotted quad; ours keep hex groups, one spelling either way.)
    want = ipaddress_says(text)
    if want and want[0] == 6 and sys.version_info >= (3, 13):
        if ipaddress.IPv6Address(want[1].split("%")[0]).ipv4_mapped:
            return
    assert ip_literal(text) == want


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:80", "127.0.0.1", 80), ("0.0.0.0:65535", "0.0.0.0", 65535), ("[::1]:1", "::1", 1),
    ("[::]:4140", "::", 4140), ("localhost:9001", "localhost", 9001), ("backend.example.:443", "backend.example.", 443),
    ("my_db:5432", "my_db", 5432), ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
])
def test_parse_address(text: str, host: str, port: int) -> None:
    assert parse_address(text) == (host, port)


@pytest.mark.parametrize("text", [
    "", ":80", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80",
    "127.0.0.1:1e3", "::1:80", "[::1]", "[::1]80", "[::1:80", "[1.2.3.4]:80", "10.0.0.256:80", "1.2.3:80",
    "bad host:80", "-bad:80", "a..b:80", "x" * 64 + ":80", "127.0.0.1:" + "9" * 5000,
])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# ---- health checks and outlier ejection ----

HC = "clusters.echo.health_check"
OL = "clusters.echo.outlier"
STATUS = 'a status code from 100 to 599 or a range like "200-299"'

BAD_HEALTH = [
    (MINIMAL + 'health_check = { type = "http" }\n',
     f'{HC}.path: missing key (expected a path like "/healthz" (type = "http" sends GET to it))'),
    (MINIMAL + 'health_check = { type = "tcp", path = "/healthz" }\n',
     f'{HC}.path: only for checks with type = "http" (this one is "tcp")'),
    (MINIMAL + 'health_check = { expected_statuses = [200] }\n',
     f'{HC}.expected_statuses: only for checks with type = "http" (this one is "tcp")'),
    (MINIMAL + 'health_check = { type = "udp" }\n',
     f'{HC}.type: expected one of the check types ["http", "tcp", "grpc"], got "udp"'),
    (MINIMAL + 'health_check = { path = "healthz" }\n',
     f'{HC}.path: expected a path like "/healthz" (visible ASCII, no spaces or "#"), got "healthz"'),
    (MINIMAL + 'health_check = { path = "/a b" }\n',
     f'{HC}.path: expected a path like "/healthz" (visible ASCII, no spaces or "#"), got "/a b"'),
    (MINIMAL + 'health_check = { interval = "500ms" }\n',
     f'{HC}.timeout: expected a duration not above interval ("500ms"), got "1s"'),
    (MINIMAL + 'health_check = { interval = "2s", timeout = "3s" }\n',
     f'{HC}.timeout: expected a duration not above interval ("2s"), got "3s"'),
    (MINIMAL + 'health_check = { interval = "0s" }\n', f'{HC}.interval: expected a duration above "0s", got "0s"'),
    (MINIMAL + 'health_check = { interval = 2 }\n', f"{HC}.interval: expected {DURATION}, got 2"),
    (MINIMAL + 'health_check = { healthy = 0 }\n', f"{HC}.healthy: expected a whole number from 1 to 100, got 0"),
    (MINIMAL + 'health_check = { unhealthy = true }\n',
     f"{HC}.unhealthy: expected a whole number from 1 to 100, got true"),
    (MINIMAL + 'health_check = { path = "/h", expected_statuses = [99] }\n',
     f"{HC}.expected_statuses[0]: expected {STATUS}, got 99"),
    (MINIMAL + 'health_check = { path = "/h", expected_statuses = [200, "399-300"] }\n',
     f'{HC}.expected_statuses[1]: expected {STATUS}, got "399-300"'),
    (MINIMAL + 'health_check = { path = "/h", expected_statuses = ["2xx"] }\n',
     f'{HC}.expected_statuses[0]: expected {STATUS}, got "2xx"'),
    (MINIMAL + 'health_check = { path = "/h", expected_statuses = [] }\n',
     f"{HC}.expected_statuses: expected at least one status, got []"),
    (MINIMAL + 'health_check = { jitter = "60%" }\n',
     f'{HC}.jitter: expected a percentage from "0%" to "50%", got "60%"'),
    (MINIMAL + 'health_check = { jitter = 0.1 }\n', f'{HC}.jitter: expected a percentage from "0%" to "50%", got 0.1'),
    (MINIMAL + 'health_check = { heathy = 2 }\n', f'{HC}.heathy: unknown key (did you mean "healthy"?)'),
    (MINIMAL + "health_check = true\n", f"{HC}: expected a table, got true"),
    (MINIMAL + "outlier = 5\n", f"{OL}: expected false, true or a table like {{ consecutive_failures = 5 }}, got 5"),
    (MINIMAL + 'outlier = { consecutive_failures = 0 }\n',
     f"{OL}.consecutive_failures: expected a whole number from 1 to 1000, got 0"),
    (MINIMAL + 'outlier = { base_ejection = "0s" }\n', f'{OL}.base_ejection: expected a duration above "0s", got "0s"'),
    (MINIMAL + 'outlier = { base_ejection = "10s", max_ejection = "5s" }\n',
     f'{OL}.max_ejection: expected a duration not below base_ejection ("10s"), got "5s"'),
    (MINIMAL + 'outlier = { base_ejection = "10m" }\n',
     f'{OL}.max_ejection: expected a duration not below base_ejection ("10m"), got "5m"'),
    (MINIMAL + 'outlier = { max_ejected_percent = 101 }\n',
     f"{OL}.max_ejected_percent: expected a whole number from 0 to 100, got 101"),
    (MINIMAL + 'outlier = { max_ejected_percent = 50.0 }\n',
     f"{OL}.max_ejected_percent: expected a whole number from 0 to 100, got 50.0"),
    (MINIMAL + 'outlier = { success_rate = { threshold = 0 } }\n',
     f"{OL}.success_rate.threshold: expected a number above 0 and at most 1 (0.5 is 50%), got 0"),
    (MINIMAL + 'outlier = { success_rate = { threshold = 1.5 } }\n',
     f"{OL}.success_rate.threshold: expected a number above 0 and at most 1 (0.5 is 50%), got 1.5"),
    (MINIMAL + 'outlier = { success_rate = { window = "0s" } }\n',
     f'{OL}.success_rate.window: expected a duration above "0s", got "0s"'),
    (MINIMAL + 'outlier = { success_rate = { minimum_requests = 0 } }\n',
     f"{OL}.success_rate.minimum_requests: expected a whole number >= 1, got 0"),
    (MINIMAL + 'outlier = { success_rate = true }\n', f"{OL}.success_rate: expected a table, got true"),
    (MINIMAL + 'outlier = { consecutive = 3 }\n',
     f'{OL}.consecutive: unknown key (did you mean "consecutive_failures"?)'),
]


@pytest.mark.parametrize("text, message", BAD_HEALTH)
def test_bad_health_and_outlier_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "h.toml")
    assert str(info.value) == f"h.toml: {message}"


def test_health_and_outlier_defaults() -> None:
    cluster = loads_config(MINIMAL).clusters["echo"]
    # No active checks unless asked; outlier ejection on with Linkerd 1's failure-accrual values.
    assert cluster.health_check is None
    assert cluster.outlier == Outlier(consecutive_failures=5, base_ejection=5.0, max_ejection=300.0,
                                      max_ejected_percent=50, success_rate=None)
    assert loads_config(MINIMAL + "outlier = true\n").clusters["echo"].outlier == Outlier()
    assert loads_config(MINIMAL + "outlier = false\n").clusters["echo"].outlier is None
    assert loads_config(MINIMAL + "outlier = {}\n").clusters["echo"].outlier == Outlier()


def test_health_check_type_follows_the_path() -> None:
    http = loads_config(MINIMAL + 'health_check = { path = "/healthz" }\n').clusters["echo"].health_check
    assert http == HealthCheck(type="http", path="/healthz", interval=5.0, timeout=1.0, healthy=2, unhealthy=3,
                               expected_statuses=[(200, 399)], jitter=10.0)
    tcp = loads_config(MINIMAL + "health_check = {}\n").clusters["echo"].health_check
    assert tcp is not None and (tcp.type, tcp.path) == ("tcp", None)
    assert HealthCheck(path="/x").type == "http" and HealthCheck().type == "tcp"


def test_full_health_and_outlier_config() -> None:
    text = MINIMAL + (
        'health_check = { path = "/healthz?deep=1", interval = "2s", timeout = "1s", healthy = 2, unhealthy = 3, '
        'expected_statuses = [200, 204, "300-399"], jitter = "12.5%" }\n'
        'outlier = { consecutive_failures = 3, base_ejection = "250ms", max_ejection = "1m", '
        'max_ejected_percent = 100, success_rate = { window = "30s", minimum_requests = 50, threshold = 0.9 } }\n')
    cluster = loads_config(text).clusters["echo"]
    assert cluster.health_check == HealthCheck(
        type="http", path="/healthz?deep=1", interval=2.0, timeout=1.0, healthy=2, unhealthy=3,
        expected_statuses=[(200, 200), (204, 204), (300, 399)], jitter=12.5)
    assert cluster.outlier == Outlier(consecutive_failures=3, base_ejection=0.25, max_ejection=60.0,
                                      max_ejected_percent=100,
                                      success_rate=SuccessRate(window=30.0, minimum_requests=50, threshold=0.9))
    out = config_to_dict(loads_config(text))["clusters"]["echo"]
    assert out["health_check"] == {"type": "http", "path": "/healthz?deep=1", "interval": "2s", "timeout": "1s",
                                   "healthy": 2, "unhealthy": 3, "expected_statuses": [200, 204, "300-399"],
                                   "jitter": "12.5%"}
    assert out["outlier"] == {"consecutive_failures": 3, "base_ejection": "250ms", "max_ejection": "1m",
                              "max_ejected_percent": 100,
                              "success_rate": {"window": "30s", "minimum_requests": 50, "threshold": 0.9}}


def test_health_config_to_dict() -> None:
    tcp = config_to_dict(loads_config(MINIMAL + 'health_check = { type = "tcp" }\noutlier = false\n'))
    assert tcp["clusters"]["echo"]["health_check"] == {"type": "tcp", "interval": "5s", "timeout": "1s",
                                                       "healthy": 2, "unhealthy": 3, "jitter": "10%"}
    assert tcp["clusters"]["echo"]["outlier"] is False
    assert "health_check" not in config_to_dict(loads_config(MINIMAL))["clusters"]["echo"]


@pytest.mark.parametrize("extra", [
    "",
    "outlier = false\n",
    'health_check = { type = "tcp", jitter = "0%" }\n',
    'health_check = { path = "/", expected_statuses = [204, "200-201"] }\n'
    'outlier = { success_rate = { threshold = 1 } }\n',
])
def test_health_round_trip(extra: str) -> None:
    cfg = loads_config(MINIMAL + extra, "rt.toml")
    as_dict = config_to_dict(cfg)
    assert config_from_dict(as_dict, "rt.toml") == cfg
    assert config_to_dict(config_from_dict(as_dict)) == as_dict


def test_health_problems_are_all_reported() -> None:
    with pytest.raises(ConfigErrors) as info:
        loads_config(MINIMAL + 'health_check = { healthy = 0, unhealthy = 0 }\n'
                     'outlier = { max_ejected_percent = -1 }\n')
    assert [e.key for e in info.value.errors] == [f"{HC}.healthy", f"{HC}.unhealthy", f"{OL}.max_ejected_percent"]


@pytest.mark.parametrize("value, message", [
    ('"yes"', 'clusters.echo.adaptive_concurrency: expected a table, got "yes"'),
    ("{ initial_limit = 2, min_limit = 4 }",
     "clusters.echo.adaptive_concurrency: expected min_limit <= initial_limit <= max_limit"),
    ("{ smoothing = 2 }", "clusters.echo.adaptive_concurrency.smoothing: expected a number above 0 and at most 1"),
])
def test_adaptive_concurrency_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(MINIMAL + f"adaptive_concurrency = {value}\n", "a.toml")
    assert message in str(info.value)


def test_adaptive_concurrency_on_off_and_round_trip() -> None:
    assert loads_config(MINIMAL).clusters["echo"].adaptive_concurrency is None
    on = loads_config(MINIMAL + "adaptive_concurrency = true\n").clusters["echo"].adaptive_concurrency
    assert on is not None and on.initial_limit == 20
    cfg = loads_config(MINIMAL + "adaptive_concurrency = { max_limit = 50 }\n")
    again = config_from_dict(config_to_dict(cfg), source=cfg.source)
    assert again == cfg and again.clusters["echo"].adaptive_concurrency.max_limit == 50


# ---- cluster protocol and gRPC ----

CL = "clusters.echo"
PROTOS = '["http1", "h2"]'
RG = f"{CL}.retries.grpc_status"
GRPC_STATUS = ('a gRPC status code from 1 to 16 or its name, like "unavailable" or "resource_exhausted" '
               '("ok" is never retried)')

BAD_GRPC = [
    (MINIMAL + 'protocol = "http2"\n', f'{CL}.protocol: expected one of the cluster protocols {PROTOS}, got "http2"'),
    (MINIMAL + 'protocol = 2\n', f'{CL}.protocol: expected one of the cluster protocols {PROTOS}, got 2'),
    (MINIMAL + 'retries = { grpc_status = ["unavailabel"] }\n',
     f'{CL}.retries.grpc_status[0]: expected {GRPC_STATUS}, got "unavailabel"'),
    (MINIMAL + 'retries = { grpc_status = ["ok"] }\n', f'{RG}[0]: expected {GRPC_STATUS}, got "ok"'),
    (MINIMAL + 'retries = { grpc_status = [14, 17] }\n', f'{RG}[1]: expected {GRPC_STATUS}, got 17'),
    (MINIMAL + 'retries = { grpc_status = [true] }\n', f'{RG}[0]: expected {GRPC_STATUS}, got true'),
    (MINIMAL + 'retries = { grpc_status = "unavailable" }\n',
     f'{CL}.retries.grpc_status: expected a list of gRPC statuses like ["unavailable"], got "unavailable"'),
    (MINIMAL + 'health_check = { type = "grpc", path = "/h" }\n',
     f'{HC}.path: only for checks with type = "http" (this one is "grpc")'),
    (MINIMAL + 'health_check = { service = "a.B" }\n',
     f'{HC}.service: only for checks with type = "grpc" (this one is "tcp")'),
    (MINIMAL + 'health_check = { type = "grpc", service = "a b" }\n',
     f'{HC}.service: expected a gRPC service name like "helloworld.Greeter" ("" asks about the whole server), '
     'got "a b"'),
]


@pytest.mark.parametrize("text, message", BAD_GRPC)
def test_bad_protocol_and_grpc_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "g.toml")
    assert str(info.value) == f"g.toml: {message}"


def test_cluster_protocol_and_grpc_retries() -> None:
    cluster = loads_config(MINIMAL).clusters["echo"]
    assert cluster.protocol == "http1"
    assert cluster.retries.grpc_status == []
    cluster = loads_config(MINIMAL + 'protocol = "h2"\n'
                           'retries = { grpc_status = ["UNAVAILABLE", "resource-exhausted", "14", 4] }\n'
                           ).clusters["echo"]
    assert cluster.protocol == "h2"
    assert cluster.retries.grpc_status == [4, 8, 14]      # codes, once each, in order
    hc = loads_config(MINIMAL + 'health_check = { type = "grpc" }\n').clusters["echo"].health_check
    assert hc is not None and hc.type == "grpc" and hc.service == "" and hc.path is None
    hc = loads_config(MINIMAL + 'health_check = { type = "grpc", service = "echo.Echo" }\n'
                      ).clusters["echo"].health_check
    assert hc is not None and hc.service == "echo.Echo"


@pytest.mark.parametrize("extra", [
    'protocol = "h2"\n',
    'protocol = "h2"\nretries = { grpc_status = ["unavailable", 8] }\n',
    'health_check = { type = "grpc", service = "echo.Echo", interval = "2s" }\n',
])
def test_protocol_and_grpc_round_trip(extra: str) -> None:
    cfg = loads_config(MINIMAL + extra, "rt.toml")
    as_dict = config_to_dict(cfg)
    assert config_from_dict(as_dict, "rt.toml") == cfg
    assert config_to_dict(config_from_dict(as_dict)) == as_dict
    assert as_dict["clusters"]["echo"]["protocol"] in ("http1", "h2")


@pytest.mark.parametrize("value, kept", [("true", "any"), ("false", None), ('"v1"', "v1"), ('"v2"', "v2")])
def test_listener_proxy_protocol(value: str, kept: str | None) -> None:
    cfg = loads_config(LISTENER + f"proxy_protocol = {value}\n" + CLUSTER)
    assert (cfg.listeners[0].proxy_protocol, cfg.listeners[0].proxy_protocol_timeout) == (kept, 5.0)
    test_round_trip(LISTENER + f'proxy_protocol = {value}\nproxy_protocol_timeout = "2s"\n' + CLUSTER)


def test_cluster_proxy_protocol() -> None:
    cfg = loads_config(LISTENER + CLUSTER + 'proxy_protocol = "v2"\n')
    assert cfg.clusters["echo"].proxy_protocol == "v2"
    assert config_to_dict(cfg)["clusters"]["echo"]["proxy_protocol"] == "v2"
    test_round_trip(LISTENER + CLUSTER + 'proxy_protocol = "v1"\n')


@pytest.mark.parametrize("text, message", [
    (LISTENER + 'proxy_protocol = "v3"\n' + CLUSTER,
     'listeners[0].proxy_protocol: expected true, false, "v1" or "v2", got "v3"'),
    (LISTENER + 'proxy_protocol_timeout = "0s"\n' + CLUSTER, "listeners[0].proxy_protocol_timeout: expected"),
    (LISTENER + CLUSTER + "proxy_protocol = true\n", 'clusters.echo.proxy_protocol: expected "v1" or "v2", got true'),
    (LISTENER + CLUSTER + 'protocol = "h2"\nproxy_protocol = "v2"\n',
     'clusters.echo.proxy_protocol: expected protocol = "http1" beside it'),
])
def test_bad_proxy_protocol(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "bad.toml")
    assert str(info.value).startswith(f"bad.toml: {message}")


def test_ticket_rotation_may_not_outlast_a_ticket_secret_generation(tmp_path: Path) -> None:
    """A period's ticket key comes from the master secret of the generation it starts in, and a worker keeps four
    generations: a listener's ticket_rotation longer than ticket_secret_rotation is refused, naming both."""
    from fastmesh._testbase.tls import Pki
    pem = Pki(tmp_path).issue("web.test")
    tls = f'tls = {{ cert = "{pem.cert}", key = "{pem.key}", ticket_rotation = "2h" }}\n'
    with pytest.raises(ConfigError) as info:
        loads_config('ticket_secret_rotation = "1h"\n' + LISTENER + tls + CLUSTER, "t.toml")
    assert str(info.value) == 't.toml: listeners[0].tls.ticket_rotation: expected at most ticket_secret_rotation ' \
        '("1h"), got "2h"'
    with pytest.raises(ConfigError) as info:
        loads_config('ticket_secret_rotation = "500ms"\n' + MINIMAL, "t.toml")
    assert str(info.value) == 't.toml: ticket_secret_rotation: expected a duration of at least "1s", got "500ms"'
    cfg = loads_config('ticket_secret_rotation = "2h"\n' + LISTENER + tls + CLUSTER, "t.toml")
    assert (cfg.ticket_secret_rotation, cfg.listeners[0].tls and cfg.listeners[0].tls.ticket_rotation) == (7200, 7200)
    assert config_to_dict(cfg)["ticket_secret_rotation"] == "2h"
    assert loads_config(MINIMAL).ticket_secret_rotation == 86400
