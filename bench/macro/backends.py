"""Start the backends the workloads talk to (iperf3, nginx HTTP, the hold/echo server, a TLS sink), pinned to the load
cpu."""
from __future__ import annotations

import os
import sys

from . import nginx_conf, procs

HTTP_BODY = r"fastmesh bench: a small static response\n"   # nginx reads the \n escape as a newline


def iperf3(p: procs.Procs, cpu: int) -> int:
    """iperf3 server (serves one test at a time, which is how the harness runs them); returns its port."""
    port = procs.free_port()
    proc = p.start("backend-iperf3", ["iperf3", "-s", "-p", str(port), "-B", "127.0.0.1"], cpu)
    procs.wait_listening(port, proc)
    return port


def http(p: procs.Procs, cpu: int | None, tmp: str, nofile: int) -> int:
    """nginx (one worker) answering every request with the same small body; returns its port."""
    port = procs.free_port()
    prefix = os.path.join(tmp, "backend-nginx")
    os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf.backend_config(prefix, port, nofile, HTTP_BODY))
    proc = p.start("backend-nginx", nginx_conf.argv(prefix, conf), cpu)
    procs.wait_listening(port, proc)
    return port


def hold(p: procs.Procs, cpu: int) -> int:
    """The echo-and-hold server for the idle-connection workload; returns its port."""
    port = procs.free_port()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hold_backend.py")
    proc = p.start("backend-hold", [sys.executable, script, str(port)], cpu)
    procs.wait_listening(port, proc)
    return port


def tls_sink(p: procs.Procs, cpu: int, tmp: str) -> int:
    """The TLS sink for the bulk TLS stream (tls_stream.py), with a certificate of its own; returns its port."""
    from .proxies import _certificate
    folder = os.path.join(tmp, "backend-tlssink")
    os.makedirs(folder, exist_ok=True)
    cert, key, _ = _certificate(folder)
    port = procs.free_port()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls_stream.py")
    proc = p.start("backend-tlssink", [sys.executable, script, "sink", str(port), cert, key], cpu)
    procs.wait_listening(port, proc)
    return port
