"""HAProxy configs for the benchmark: one thread, one listener to one backend, in TCP mode (splice) or HTTP mode."""
from __future__ import annotations

NAME = "haproxy"
BINARY = "haproxy"


def maxconn(nofile: int) -> int:
    """The largest maxconn whose file descriptors fit under nofile.

    HAProxy needs about 2 fds per connection plus, with splice, one pipe (2 fds) per 4 connections,
    and refuses to start when it cannot raise its limit that far (an unprivileged container cannot).
    """
    return int((nofile - 500) / 2.5)


def _busy(busy: bool) -> str:
    """`busy-polling` (HAProxy's pollers never sleep: a null timeout each time) when the run compares busy polling."""
    return "    busy-polling\n" if busy else ""


def config(listen_port: int, backend_port: int, maxconn: int, tls: tuple[str, str, str] | None = None,
           busy: bool = False) -> str:
    """haproxy.cfg text; the timeouts are long so that held idle connections are not cut during the RSS phase.
    tls: (cert, key, cert+key file): `ssl crt` on the bind and `ssl verify none` on the server line (TLS
    terminated and originated again; splice cannot carry TLS records, so HAProxy copies as fastmesh does)."""
    bind_ssl = f" ssl crt {tls[2]}" if tls is not None else ""
    server_ssl = " ssl verify none" if tls is not None else ""
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
{_busy(busy)}    log stderr format raw local0 err

defaults
    mode tcp
    # splice(2) both ways, as a production L4 setup would run it
    option splice-request
    option splice-response
    timeout connect 1s
    timeout client 10m
    timeout server 10m

frontend tcp_in
    bind 127.0.0.1:{listen_port}{bind_ssl}
    default_backend backend

backend backend
    server s1 127.0.0.1:{backend_port}{server_ssl}
"""


def http_config(listen_port: int, backend_port: int, maxconn: int, h2: bool = False,
                tls: tuple[str, str, str] | None = None, busy: bool = False) -> str:
    """haproxy.cfg text for the L7 workloads: HTTP mode, keep-alive on both sides, idle server connections shared.

    http-keep-alive is HAProxy's default mode already and is written out so the intent is visible;
    `http-reuse always` lets any request take any idle server connection (the default, safe, keeps a
    connection to the client that opened it first). No log, no header added: HAProxy's defaults.
    h2: the clients speak HTTP/2 with prior knowledge (`proto h2` on the bind); the server side stays HTTP/1.1.
    tls: (cert, key, cert+key file): `ssl crt` on the bind with ALPN h2 and http/1.1.
    busy: `busy-polling` in the global section (bench/macro/run.py --busy-poll).
    """
    proto = " proto h2" if h2 else ""
    if tls is not None:
        proto = f" ssl crt {tls[2]} alpn h2,http/1.1"
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
{_busy(busy)}    log stderr format raw local0 err

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 10m
    timeout server 10m
    timeout http-request 10s
    timeout http-keep-alive 10m

frontend http_in
    bind 127.0.0.1:{listen_port}{proto}
    default_backend backend

backend backend
    server s1 127.0.0.1:{backend_port}
"""


def argv(conf_path: str) -> list[str]:
    """-db keeps HAProxy in the foreground as one process (no master/worker), so its PID is the one to measure."""
    return [BINARY, "-db", "-f", conf_path]


def quickstart_config(ports: dict[str, int], backends: list[int], maxconn: int) -> str:
    """examples/quickstart.toml's shape in HAProxy's terms, for the idle footprint (bench/footprint.py --against):
    a tcp frontend and an http one (keep-alive, as ours), both balancing round robin over the same three backends."""
    servers = "".join(f"    server s{i} 127.0.0.1:{port}\n" for i, port in enumerate(backends, 1))
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
    log stderr format raw local0 err

defaults
    timeout connect 1s
    timeout client 10m
    timeout server 10m

frontend tcp_in
    mode tcp
    bind 127.0.0.1:{ports['tcp']}
    default_backend tcp_demo

backend tcp_demo
    mode tcp
    balance roundrobin
{servers}
frontend http_in
    mode http
    option http-keep-alive
    bind 127.0.0.1:{ports['http']}
    default_backend http_demo

backend http_demo
    mode http
    balance roundrobin
{servers}"""
