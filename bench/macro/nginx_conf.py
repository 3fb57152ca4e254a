"""nginx configs: the stream (L4) and HTTP (L7) proxies under test, and the HTTP backend with a small static body."""
from __future__ import annotations

import os
import re
import subprocess

NAME = "nginx"
BINARY = "nginx"


def stream_module() -> str | None:
    """Path of the dynamic stream module (Debian: libnginx-mod-stream), or None when nginx is built without it.

    The module directory comes from `nginx -V` (--modules-path) so no path of a given machine is written here.
    """
    try:
        info = subprocess.run([BINARY, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    if re.search(r"--with-stream(\s|$)", info):
        return ""       # built in statically: nothing to load
    m = re.search(r"--modules-path=(\S+)", info)
    if not m:
        return None
    path = os.path.join(m.group(1), "ngx_stream_module.so")
    return path if os.path.exists(path) else None


def _main(prefix: str, nofile: int) -> str:
    """Top of every config: one worker, foreground, logs to stderr, files kept in the temp prefix.

    worker_connections counts both sides of a relayed connection, so it is sized to the fd limit.
    """
    return f"""\
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
pid {prefix}/nginx.pid;
error_log stderr error;
events {{ worker_connections {nofile - 100}; }}
"""


def proxy_config(prefix: str, listen_port: int, backend_port: int, nofile: int, module: str,
                 tls: tuple[str, str, str] | None = None) -> str:
    """nginx as an L4 TCP proxy (stream module), one worker. tls: (cert, key, _): `listen ... ssl` with that
    certificate and `proxy_ssl on` to the backend (not verified: nginx's default)."""
    load = f"load_module {module};\n" if module else ""
    ssl, listen_ssl = "", ""
    if tls is not None:
        listen_ssl = " ssl"
        ssl = (f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
               "        proxy_ssl on;\n")
    return load + _main(prefix, nofile) + f"""\
stream {{
    server {{
        listen 127.0.0.1:{listen_port}{listen_ssl} backlog=4096;
{ssl}        proxy_pass 127.0.0.1:{backend_port};
        proxy_connect_timeout 1s;
        proxy_timeout 10m;
    }}
}}
"""


def http_proxy_config(prefix: str, listen_port: int, backend_port: int, nofile: int, h2: bool = False,
                      keepalive: int = 64, tls: tuple[str, str, str] | None = None) -> str:
    """nginx as an HTTP (L7) proxy, one worker, with keep-alive connections to the backend kept in the upstream.

    keepalive 64 idle upstream connections (as many as wrk's connections); HTTP/1.1 and an empty
    Connection header upstream, without which nginx sends `Connection: close` and opens a connection per
    request. keepalive_requests is raised on both sides, as on the backend, so that nginx's default of
    1,000 requests per connection does not mix reconnects into the measurement (HAProxy has no such cap).
    h2: the listen socket takes HTTP/2 with prior knowledge (`http2`); keepalive_requests caps HTTP/2 streams
    per connection too (nginx 1.19.7+), so it stays raised; `keepalive` is then the streams in flight.
    """
    http2 = " http2" if h2 else ""
    ssl = ""
    if tls is not None:          # TLS with ALPN h2 and http/1.1 (http2 on an ssl listen socket)
        http2 = " ssl http2"
        ssl = f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
    return _main(prefix, nofile) + f"""\
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 10m;
{_temp_paths(prefix)}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive {keepalive};
        keepalive_requests 100000000;
        keepalive_timeout 10m;
    }}
    server {{
        listen 127.0.0.1:{listen_port}{http2} backlog=4096;
{ssl}        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
        }}
    }}
}}
"""


def _temp_paths(prefix: str) -> str:
    """Temp directories inside the prefix: nginx's compiled-in ones may not exist or be writable."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "".join(f"    {kind}_temp_path {prefix}/tmp;\n" for kind in kinds)


def backend_config(prefix: str, port: int, nofile: int, body: str) -> str:
    """nginx as the HTTP backend: a fixed small response, no access log, unlimited keep-alive requests.

    keepalive_requests is raised because the default (1000) would make wrk reconnect during the
    keep-alive workload and mix connection setup into it.
    """
    return _main(prefix, nofile) + f"""\
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 10m;
{_temp_paths(prefix)}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def argv(prefix: str, conf_path: str) -> list[str]:
    """Master plus one worker; the worker (the master's child) is the process measured."""
    return [BINARY, "-p", prefix, "-c", conf_path, "-e", "stderr"]
