"""Instructions the proxy spends per request, counted by callgrind: a figure a busy shared machine cannot move.

Each build (a directory with an in-place build, e.g. the two bench/revisions.py keeps under --builds) runs one
in-process Proxy under callgrind, counting only inside Reactor.poll (the dispatch of each epoll batch, where all of
the data path runs; asyncio's own loop is left out): an http listener and a tcp listener to one nginx backend.
After a warm-up the counters are zeroed (callgrind_control -z), a client sends `--requests` keep-alive GETs over
one connection, and the counts are dumped; instructions (Ir) / requests is the cost of one request. The http
listener is measured twice: HTTP/1.1 requests, then HTTP/2 ones (prior knowledge, one stream after another on one
connection, by the `h2` package; the column is left out when it is not installed).

    python -m bench.callgrind_requests /tmp/fm-revs/before /tmp/fm-revs/after --requests 3000

`--whole` counts every instruction of the process instead (the event loop's own work per wakeup included: how
the worker's loop is chosen, FASTMESH_LOOP, shows there and not in the dispatch alone):

    FASTMESH_LOOP=uvloop python -m bench.callgrind_requests . --whole; python -m bench.callgrind_requests . --whole

`--filter REF` puts a request filter plugin on the http listener (e.g. fastmesh._testbase.plugins:Noop, a filter
that does nothing; fastmesh._testbase.plugins:NoopResponse, a response filter that does nothing): the difference to
a run without it is what the plugin path costs per request.
`--rate-limit RATE` sends the http listener's requests through a route limited to RATE (e.g. "999999999/s", burst
1,000,000, keyed by the client's address, so no request is refused): what a token taken per request costs;
`--rate-limit none` sends them through the same route without a limit (the baseline for that difference).
`--header "NAME: VALUE"` adds a field to every request (e.g. a W3C traceparent, to count what continuing a trace
costs), and `--listener-line LINE` a line to the http listener's table (e.g. `tracing = { start = true }`).
`--single` runs `fastmesh run` with `workers = 0` instead of a bare Proxy: the data plane on the supervisor's loop,
beside the admin server and the supervisor's timers (with `--whole`, what sharing that loop costs per request).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.macro import backends, procs   # noqa: E402

# Every byte of the data path is moved from the reactor's dispatch of an epoll batch: only it is counted.
POLL = "__pyx_f_8fastmesh_5_core_7reactor_7Reactor_poll"
SERVE = """
import asyncio, sys
from fastmesh import Proxy
try:                        # the loop a worker runs on (FASTMESH_LOOP), where the build has the choice
    from fastmesh.process.loop import loop_factory
except ImportError:
    import uvloop
    loop_factory = lambda: uvloop.new_event_loop
async def main():
    async with Proxy.from_toml(open(sys.argv[1]).read()):
        print("up", flush=True)
        await asyncio.sleep(3600)
with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
"""


def config(http_port: int, tcp_port: int, backend_port: int, filter_ref: str = "", rate_limit: str = "",
           listener_line: str = "") -> str:
    filters = f'filters = [{{ plugin = "{filter_ref}" }}]\n' if filter_ref else ""
    filters += f"{listener_line}\n" if listener_line else ""
    if rate_limit:
        filters += '[[listeners.routes]]\npath_prefix = "/"\ncluster = "b"\n'
    if rate_limit and rate_limit != "none":
        filters += f'rate_limit = {{ rate = "{rate_limit}", burst = 1000000, key = "client_ip" }}\n'
    return (f'drain_timeout = "100ms"\n'
            f'[[listeners]]\nname = "http"\nlisten = "127.0.0.1:{http_port}"\nprotocol = "http"\ncluster = "b"\n'
            f'{filters}'
            f'[[listeners]]\nname = "tcp"\nlisten = "127.0.0.1:{tcp_port}"\nprotocol = "tcp"\ncluster = "b"\n'
            f'[clusters.b]\nendpoints = ["127.0.0.1:{backend_port}"]\n')


EXTRA: list[tuple[str, str]] = []     # --header fields, sent with every request


def requests(port: int, count: int) -> None:
    """count keep-alive GETs on one connection, each answer read whole (nginx sends Content-Length)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in EXTRA).encode("latin-1")
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\nAccept: */*\r\n" + extra + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = b""
        for _ in range(count):
            s.sendall(req)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?i)content-length: *(\d+)", buf[:end])
                    total = end + 4 + (int(m[1]) if m else 0)
                    if len(buf) >= total:
                        buf = buf[total:]
                        break
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the proxy closed the connection")
                buf += chunk


def h2_requests(port: int, count: int) -> None:
    """count GETs as HTTP/2 streams on one connection (prior knowledge), one after another, each answer read whole."""
    import h2.config
    import h2.connection
    import h2.events
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    head = [(":method", "GET"), (":scheme", "http"), (":authority", "bench"), (":path", "/"),
            ("user-agent", "callgrind"), ("accept", "*/*"), *((n.lower(), v) for n, v in EXTRA)]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        conn.initiate_connection()
        for _ in range(count):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, head, end_stream=True)
            s.sendall(conn.data_to_send())
            done = False
            while not done:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the proxy closed the connection")
                for ev in conn.receive_data(chunk):
                    if isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        done = True
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        raise RuntimeError(f"stream {sid} reset ({ev.error_code})")
                s.sendall(conn.data_to_send())


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until 127.0.0.1:port accepts (the process is slow to start under valgrind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the proxy did not listen within {timeout:.0f}s")


def measure(root: str, tmp: str, backend_port: int, count: int, filter_ref: str = "", rate_limit: str = "",
            whole: bool = False, listener_line: str = "", single: bool = False) -> dict[str, float]:
    out: dict[str, float] = {}
    http_port, tcp_port = procs.free_port(), procs.free_port()
    conf = os.path.join(tmp, "fm.toml")
    text = config(http_port, tcp_port, backend_port, filter_ref, rate_limit, listener_line)
    if single:      # `fastmesh run` with workers = 0: the supervisor's loop (admin server, timers) serves too
        text = f'workers = 0\n{text}[admin]\nlisten = "127.0.0.1:{procs.free_port()}"\n'
    with open(conf, "w") as f:
        f.write(text)
    script = os.path.join(tmp, "serve.py")
    with open(script, "w") as f:
        f.write(SERVE)
    prefix = os.path.join(tmp, f"cg-{os.path.basename(root)}")
    collect = ["--collect-atstart=yes"] if whole else ["--collect-atstart=no", f"--toggle-collect={POLL}"]
    command = ["-m", "fastmesh", "run", conf, "--log-level", "warning"] if single else [script, conf]
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", *collect,
                             f"--callgrind-out-file={prefix}.%p", sys.executable, *command], cwd=tmp,
                            env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        if single:
            wait_listening(http_port, proc)
            wait_listening(tcp_port, proc)
        else:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up", "the proxy did not start"
        for mode, listener, client in MODES:
            if client is h2_requests and not HAVE_H2:
                continue
            port = http_port if listener == "http" else tcp_port
            client(port, 200)                                    # warm-up: pools, buffers, branch caches
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            client(port, count)
            subprocess.run(["callgrind_control", "-d", mode, str(proc.pid)], check=True, capture_output=True)
            time.sleep(0.5)
            dumps = sorted(glob.glob(f"{prefix}.{proc.pid}.*"), key=lambda d: int(d.rsplit(".", 1)[1]))
            text = open(dumps[-1]).read()
            ir = int(re.search(r"^summary: (\d+)", text, re.M)[1])
            out[mode] = ir / count
    finally:
        proc.terminate()
        proc.wait(30)
    return out


# (column, listener, client) in the order they run.
MODES = (("http", "http", requests), ("h2", "http", h2_requests), ("tcp", "tcp", requests))
try:
    import h2   # noqa: F401
    HAVE_H2 = True
except ImportError:
    HAVE_H2 = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+", help="directories holding an in-place build of fastmesh")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--keep", help="copy the callgrind dumps here (for callgrind_annotate)")
    ap.add_argument("--filter", default="", metavar="REF", help="a request filter plugin on the http listener")
    ap.add_argument("--rate-limit", default="", metavar="RATE", help='a route limited to RATE (e.g. "999999999/s")')
    ap.add_argument("--whole", action="store_true", help="count the whole process, not only the reactor's dispatch")
    ap.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="a field every request carries (repeatable)")
    ap.add_argument("--listener-line", default="", metavar="LINE", help="a TOML line for the http listener's table")
    ap.add_argument("--single", action="store_true",
                    help="run `fastmesh run` with workers = 0 (the supervisor serves) instead of a bare Proxy")
    a = ap.parse_args(argv)
    EXTRA[:] = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in a.header)]
    tmp = tempfile.mkdtemp(prefix="fastmesh-callgrind-")
    p = procs.Procs(tmp)
    try:
        backend_port = backends.http(p, os.sched_getaffinity(0).pop(), tmp, procs.raise_nofile())
        rows = {root: measure(root, tmp, backend_port, a.requests, a.filter, a.rate_limit, a.whole, a.listener_line,
                              a.single)
                for root in map(os.path.abspath, a.builds)}
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
            for dump in glob.glob(os.path.join(tmp, "cg-*.*.*")):
                shutil.copy2(dump, a.keep)
        names = {"http": "http instructions/request", "h2": "http/2 instructions/request",
                 "tcp": "tcp relay instructions/request"}
        cols = [m for m, _, _ in MODES if all(m in got for got in rows.values())]
        print("| build | " + " | ".join(names[m] for m in cols) + " |\n|---|" + "---:|" * len(cols))
        for root, got in rows.items():
            print(f"| {root} | " + " | ".join(f"{got[m]:,.0f}" for m in cols) + " |")
        if len(rows) == 2:
            (_, x), (_, y) = rows.items()
            print("| ratio | " + " | ".join(f"{y[m] / x[m]:.3f}" for m in cols) + " |")
        return 0
    finally:
        p.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
