"""fastmesh config for the benchmark: one worker, one listener (tcp or http) to a one-endpoint cluster."""
from __future__ import annotations

import os
import sys

NAME = "fastmesh"
# bench/macro/ -> the repository root, so `python -m fastmesh` imports the in-place build
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(listen_port: int, backend_port: int, admin_port: int, protocol: str = "tcp", pool_max_idle: int = 64,
           tls: tuple[str, str, str] | None = None, upstream_tls: bool = False, workers: int = 1,
           busy_poll: str | None = None) -> str:
    """config.toml text, as `fastmesh run` reads it; the admin port is a free one so parallel runs never collide.

    protocol "http" makes the listener an HTTP/1.1 proxy with pooled keep-alive upstream connections; every
    other setting keeps fastmesh's defaults (so it adds Via, X-Forwarded-For/-Proto and an x-request-id).
    pool_max_idle (default 64, fastmesh's) is raised for the HTTP/2 workload to the streams in flight, as nginx's
    upstream keepalive is: each stream's try needs an HTTP/1.1 connection of its own.
    tls: (cert, key, _): the listener terminates TLS (ALPN h2 and http/1.1, fastmesh's default for http).
    upstream_tls: the cluster originates TLS to the backend (not verified, like HAProxy's `ssl verify none`).
    workers: 0 serves from the supervisor process itself (the "fastmesh-single" row).
    busy_poll: the top-level busy_poll (a duration) when the run compares busy polling; fastmesh's default otherwise.
    """
    tls_line = f'tls = {{ cert = "{tls[0]}", key = "{tls[1]}" }}\n' if tls is not None else ""
    cluster_tls = "tls = { verify = false }\n" if upstream_tls else ""
    busy_line = f'busy_poll = "{busy_poll}"\n' if busy_poll is not None else ""
    return f"""\
workers = {workers}
{busy_line}
[admin]
listen = "127.0.0.1:{admin_port}"

[[listeners]]
name = "{protocol}-in"
listen = "127.0.0.1:{listen_port}"
protocol = "{protocol}"
cluster = "backend"
{tls_line}
[clusters.backend]
endpoints = ["127.0.0.1:{backend_port}"]
balancer = "round_robin"
connect_timeout = "1s"
pool_max_idle = {pool_max_idle}
{cluster_tls}"""


def argv(conf_path: str) -> list[str]:
    """The supervisor; it spawns the worker process that does the relaying (the one measured)."""
    return [sys.executable, "-m", "fastmesh", "run", conf_path]


def env() -> dict[str, str]:
    """Our environment with the repository first on sys.path, so the checked-out fastmesh is the one run."""
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO_ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def available() -> str | None:
    """None when `python -m fastmesh` can be run from this checkout, else why not."""
    if not os.path.exists(os.path.join(REPO_ROOT, "fastmesh", "__main__.py")):
        return "fastmesh/__main__.py does not exist yet (`python -m fastmesh run` not implemented)"
    return None
