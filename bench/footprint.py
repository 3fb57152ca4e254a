"""Instance footprint at idle: start `fastmesh run`, wait until it serves, print RSS and PSS per process and in total.

    python -m bench.footprint                          # quickstart-like, workers 0, 1, 2 and 4, with and without demo
    python -m bench.footprint --workers 0 --demo-only  # one process (`workers = 0`: the supervisor serves)
    python -m bench.footprint --workers 1 --no-demo    # one case
    python -m bench.footprint --workers 1 --conns 2000 # also the memory per idle L4 connection (held through the proxy)
    python -m bench.footprint --workers 1 --maps       # also each process's memory by kind of mapping
    python -m bench.footprint --workers 1 --pages      # also what the worker's copied pages hold (as root)
    python -m bench.footprint --workers 1 --merge-pages --settle 20   # with FASTMESH_MERGE_PAGES=1 (KSM running)
    python -m bench.footprint --workers 1 --instances 4                # four instances side by side, all counted
    python -m bench.footprint --workers 1 --keep-page-cache  # without dropping the extensions' cached pages first
    python -m bench.footprint --workers 0,1 --no-demo --against haproxy   # and HAProxy of the same shape, same run
    python -m bench.footprint --workers 1 --optimize   # the instance under PYTHONOPTIMIZE=2 (no docstrings, no asserts)

The config is examples/quickstart.toml's shape (a tcp and an http listener in front of three demo backends, the admin
server) on ports the kernel hands out, so it never collides with a quickstart someone else is running. RSS counts
every page a process maps; PSS (proportional set size, from /proc/PID/smaps_rollup) divides each shared page among the
processes sharing it, so the PSS column adds up to what the instance costs the machine.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):     # `python bench/footprint.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.macro import haproxy_conf, procs  # noqa: E402
from bench.macro.procstat import descendants  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quickstart_config(workers: int, demo: bool, tcp_cluster_port: int | None = None) -> tuple[str, dict[str, int]]:
    """examples/quickstart.toml on free ports; returns (TOML text, ports by role)."""
    ports = {"tcp": free_port(), "http": free_port(), "admin": free_port()}
    backends = [free_port() for _ in range(3)]
    eps = ", ".join(f'"127.0.0.1:{p}"' for p in backends)
    held = f'"127.0.0.1:{tcp_cluster_port}"' if tcp_cluster_port else eps
    text = f"""workers = {workers}
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:{ports['admin']}"

[[listeners]]
name = "quickstart"
listen = "127.0.0.1:{ports['tcp']}"
protocol = "tcp"
cluster = "{'held' if tcp_cluster_port else 'demo'}"

[[listeners]]
name = "quickstart-http"
listen = "127.0.0.1:{ports['http']}"
protocol = "http"
cluster = "demo"

[[listeners.routes]]
path_prefix = "/hello/"
rewrite_prefix = "/"
cluster = "demo"
add_response_headers = {{ "x-route" = "hello" }}

[clusters.demo]
endpoints = [{eps}]
balancer = "round_robin"
"""
    if tcp_cluster_port:
        text += f"\n[clusters.held]\nendpoints = [{held}]\n"
    if demo:
        text += f"\n[demo]\nbackends = [{eps}]\n"
    return text, ports


def memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss and their anonymous/file parts in KiB, from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0])
    return out


MAP_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def mapping_group(path: str) -> str:
    """Which part of the process a mapping (the path column of /proc/PID/maps) belongs to."""
    name = os.path.basename(path)
    if not path or path == "[anon]":
        return "anonymous: pymalloc arenas, large blocks, thread arenas"
    if path == "[heap]":
        return "[heap]: malloc (Python's large objects, C libraries)"
    if path.startswith("["):
        return "other kernel mappings ([stack], [vvar], ...)"
    if os.sep + os.path.join("fastmesh", "_core") + os.sep in path:
        return "fastmesh/_core extensions"
    if name.startswith("libpython"):
        return "libpython"
    if name.startswith(("libcrypto", "libssl")):
        return "OpenSSL (libcrypto, libssl)"
    if ".cpython-" in name or "lib-dynload" in path:
        return "other extensions (stdlib, uvloop, ...)"
    return "other files (libc, the interpreter, ...)"


def mappings_kb(pid: int) -> dict[str, dict[str, int]]:
    """MAP_FIELDS in KiB summed by mapping_group, from /proc/PID/smaps."""
    out: dict[str, dict[str, int]] = {}
    group: dict[str, int] | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if "-" in parts[0] and not parts[0].endswith(":"):
                name = mapping_group(parts[5].strip() if len(parts) > 5 else "")
                group = out.setdefault(name, dict.fromkeys(MAP_FIELDS, 0))
            elif group is not None and parts[0][:-1] in MAP_FIELDS:
                group[parts[0][:-1]] += int(parts[1])
    return out


def report_maps(result: dict[str, object]) -> None:
    """Per process, its memory by kind of mapping (--maps)."""
    for name, pid, _ in rows_of(result):
        maps = result["maps"]
        assert isinstance(maps, dict)
        print(f"\n{name} (pid {pid}), MiB by mapping")
        print("| mapping | " + " | ".join(MAP_FIELDS) + " |")
        print("|---|" + "---|" * len(MAP_FIELDS))
        groups = maps[pid]
        for group, m in sorted(groups.items(), key=lambda kv: -kv[1]["Pss"]):
            print(f"| {group} | " + " | ".join(mib(m[k]) for k in MAP_FIELDS) + " |")
        total = {k: sum(m[k] for m in groups.values()) for k in MAP_FIELDS}
        print("| **total** | " + " | ".join(mib(total[k]) for k in MAP_FIELDS) + " |")


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def ready_answer(admin_port: int) -> int | None:
    """GET /ready's status over a plain socket: an HTTP client library would load ssl, and with it OpenSSL, into
    this process, whose pages of libcrypto would then be shared with the instance's and lower its PSS."""
    try:
        with socket.create_connection(("127.0.0.1", admin_port), timeout=1) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: fastmesh\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def ksm_running() -> bool:
    try:
        with open("/sys/kernel/mm/ksm/run") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def wait_ready(proc: subprocess.Popen, admin_port: int, workers: int, timeout: float) -> None:
    """Until the admin server answers /ready with 200 and every worker is a live child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fastmesh exited with {proc.returncode} before it was ready")
        if ready_answer(admin_port) == 200 and len(descendants(proc.pid)) >= workers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fastmesh not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_companion(workers: int, demo: bool, env: dict[str, str], tmp: str) -> subprocess.Popen:
    """Another instance of the same shape on its own ports, ready (for --instances: sidecars on one host)."""
    text, ports = quickstart_config(workers, demo)
    path = os.path.join(tmp, f"companion-{ports['admin']}.toml")
    with open(path, "w") as f:
        f.write(text)
    proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "run", path, "--log-level", "warning"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(proc, ports["admin"], workers, 60.0)
    except BaseException:
        stop(proc)
        raise
    return proc


def measure(workers: int, demo: bool, conns: int, settle: float, env: dict[str, str],
            pages: bool = False, companions: list[subprocess.Popen] | None = None) -> dict[str, object]:
    """One instance: start, wait, settle, read memory (and, with conns, the cost per held L4 connection). Companions,
    started before, are read at the same moment and count in the totals."""
    hold = None
    hold_port = free_port() if conns else None
    with tempfile.TemporaryDirectory(prefix="fastmesh-footprint-") as tmp:
        text, ports = quickstart_config(workers, demo, hold_port)
        path = os.path.join(tmp, "footprint.toml")
        with open(path, "w") as f:
            f.write(text)
        if hold_port:
            hold = subprocess.Popen([sys.executable, "-m", "bench.macro.hold_backend", str(hold_port)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert hold.stdout is not None
            hold.stdout.readline()
        log = open(os.path.join(tmp, "fastmesh.log"), "w+")
        proc = subprocess.Popen([sys.executable, "-m", "fastmesh", "run", path, "--log-level", "warning"], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_ready(proc, ports["admin"], workers, 60.0)
            except (RuntimeError, TimeoutError):
                log.seek(0)
                sys.stderr.write(log.read()[-3000:])
                raise
            time.sleep(settle)
            kids = descendants(proc.pid)      # the workers (forked from the supervisor, or fresh interpreters)
            if pages and kids:
                from bench.footprint_pages import report as report_pages
                report_pages(proc.pid, kids[0])
            rows = [("supervisor", proc.pid, memory_kb(proc.pid))]
            rows += [(f"worker {i}", pid, memory_kb(pid)) for i, pid in enumerate(kids)]
            for k, other in enumerate(companions or [], 2):
                rows += [(f"instance {k}: " + (f"worker {i - 1}" if i else "supervisor"), pid, memory_kb(pid))
                         for i, pid in enumerate([other.pid, *descendants(other.pid)])]
            result: dict[str, object] = {"workers": workers, "demo": demo, "rows": rows,
                                         "instances": 1 + len(companions or []),
                                         "rss": sum(m["Rss"] for _, _, m in rows),
                                         "pss": sum(m["Pss"] for _, _, m in rows),
                                         "maps": {pid: mappings_kb(pid) for _, pid, _ in rows}}
            if conns:
                from bench.macro.idleconns import open_held
                # The processes holding the connections: the workers, or with workers = 0 the supervisor itself.
                serving = kids if workers else [proc.pid]
                held, failed = open_held(ports["tcp"], conns, timeout=60.0)
                try:
                    time.sleep(1.0)
                    after = sum(memory_kb(pid)["Pss"] for pid in serving)
                    before = sum(m["Pss"] for _, pid, m in rows if pid in serving)
                    result["held"] = len(held)
                    result["per_conn_kib"] = (after - before) / max(1, len(held))
                    result["failed"] = failed
                finally:
                    for s in held:
                        s.close()
            return result
        finally:
            stop(proc)
            if hold is not None:
                hold.terminate()
                hold.wait()
            log.close()


def measure_haproxy(master_worker: bool, settle: float) -> dict[str, object]:
    """HAProxy with the quickstart's listeners (haproxy_conf.quickstart_config), idle: its process, or with -W its
    master and worker, measured as the instance is."""
    import resource
    ports = {"tcp": free_port(), "http": free_port()}
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    text = haproxy_conf.quickstart_config(ports, [free_port() for _ in range(3)], haproxy_conf.maxconn(nofile))
    with tempfile.TemporaryDirectory(prefix="fastmesh-footprint-") as tmp:
        path = os.path.join(tmp, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(text)
        argv = [haproxy_conf.BINARY, "-db", *(["-W"] if master_worker else []), "-f", path]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in ports.values():     # read from /proc/net/tcp: no connection disturbs the idle instance
                procs.wait_listening(port, proc, timeout=20.0)
            time.sleep(settle)
            kids = descendants(proc.pid)
            names = ["master", *(f"worker {i}" for i in range(len(kids)))] if master_worker else ["haproxy"]
            rows = [(name, pid, memory_kb(pid)) for name, pid in zip(names, [proc.pid, *kids])]
        finally:
            stop(proc)
    return {"proxy": "haproxy -W (master and worker)" if master_worker else "haproxy (one process)",
            "rows": rows, "rss": sum(m["Rss"] for _, _, m in rows), "pss": sum(m["Pss"] for _, _, m in rows)}


def report_against(summary: list[dict[str, object]], single: dict[str, object],
                   master_worker: dict[str, object]) -> None:
    """The instances beside HAProxy's (measure_haproxy: one process, master and worker), measured in this run: PSS
    and fastmesh's PSS over HAProxy's."""
    print("\nagainst HAProxy, same run (PSS ratio: fastmesh's over HAProxy's)")
    print("| instance | processes | RSS MiB | PSS MiB | PSS anon MiB | PSS ratio to haproxy (one process) "
          "| PSS ratio to haproxy -W |")
    print("|---|---|---|---|---|---|---|")
    bases = [int(str(single["pss"])), int(str(master_worker["pss"]))]
    for result in [single, master_worker, *summary]:
        name = str(result.get("proxy") or f"fastmesh, workers = {result['workers']}"
                   f"{', demo backends' if result.get('demo') else ''}")
        pss = int(str(result["pss"]))
        ratios = [f"{pss / base:.2f}x" for base in bases]
        anon = mib(sum(m["Pss_Anon"] for _, _, m in rows_of(result)))
        print(f"| {name} | {len(rows_of(result))} | {mib(int(str(result['rss'])))} | {mib(pss)} | {anon} | "
              + " | ".join(ratios) + " |")


def rows_of(result: dict[str, object]) -> list[tuple[str, int, dict[str, int]]]:
    rows = result["rows"]
    assert isinstance(rows, list)
    return rows


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def report(result: dict[str, object]) -> None:
    rows = result["rows"]
    assert isinstance(rows, list)
    print(f"\nworkers = {result['workers']}, demo backends {'on' if result['demo'] else 'off'}")
    print("| process | pid | RSS MiB | PSS MiB | PSS anon MiB | PSS file MiB |")
    print("|---|---|---|---|---|---|")
    for name, pid, m in rows:
        print(f"| {name} | {pid} | {mib(m['Rss'])} | {mib(m['Pss'])} | {mib(m['Pss_Anon'])} | {mib(m['Pss_File'])} |")
    rss = sum(m["Rss"] for _, _, m in rows)
    pss = sum(m["Pss"] for _, _, m in rows)
    print(f"| **total** | | {mib(rss)} | **{mib(pss)}** | | |")
    if "held" in result:
        print(f"idle L4 connections held: {result['held']} ({result['failed']} failed), "
              f"{result['per_conn_kib']:.2f} KiB PSS per connection (in the serving processes)")


def precompile(env: dict[str, str]) -> None:
    """Byte-compile fastmesh's modules and let the instance read (and write) bytecode caches, as an installed copy does.

    With PYTHONDONTWRITEBYTECODE set and no __pycache__ in a source tree, every module of ours is compiled from
    source at each start: the compiler's transient memory (a module's AST is several times its code) leaves the
    heap and pymalloc's arenas larger and more fragmented, about 2 MiB more PSS for the instance, which a
    `pip install`ed fastmesh (compiled at install time) never pays.
    """
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "fastmesh")], cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)


def drop_cached_extensions() -> None:
    """Drop fastmesh's compiled extensions from the page cache (the pages no process maps; POSIX_FADV_DONTNEED), so
    that every run starts from the files as the disk has them.

    Pages of a file written moments before (a build, a copy, a fresh `pip install`) stay in the cache as the write
    left them, and MADV_PAGEOUT then gives back fewer of the supervisor's pages (process/pageout.py): measured, about
    0.6 MiB more PSS in the supervisor, until the cache pages are dropped and read back in. Without this, two
    checkouts measured side by side differ by when their files were written, not by their code.
    """
    for folder, _, files in os.walk(os.path.join(ROOT, "fastmesh", "_core")):
        for name in files:
            if name.endswith(".so"):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2,4",
                        help="comma-separated worker counts, 0 for one process (default: %(default)s)")
    parser.add_argument("--no-demo", dest="demo", action="store_const", const=[False], default=[True, False],
                        help="only without the demo backends")
    parser.add_argument("--demo-only", dest="demo", action="store_const", const=[True],
                        help="only with the demo backends")
    parser.add_argument("--conns", type=int, default=0, help="also hold N idle L4 connections (default: 0)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait once ready (default: %(default)s)")
    parser.add_argument("--maps", action="store_true",
                        help="also print each process's memory by kind of mapping (from /proc/PID/smaps)")
    parser.add_argument("--pages", action="store_true",
                        help="also compare the first worker's pages with the supervisor's (bench/footprint_pages.py; "
                             "as root)")
    parser.add_argument("--no-bytecode", dest="bytecode", action="store_false",
                        help="leave PYTHONDONTWRITEBYTECODE as it is and do not byte-compile fastmesh first "
                             "(a source tree without __pycache__ then compiles every module at each start)")
    parser.add_argument("--merge-pages", action="store_true",
                        help="run with FASTMESH_MERGE_PAGES=1 (same-page merging; only counts while the kernel's "
                             "scanner runs: /sys/kernel/mm/ksm/run = 1, which this script leaves as it is). "
                             "Give merging time: --settle 20")
    parser.add_argument("--keep-page-cache", dest="drop_cache", action="store_false",
                        help="leave the extensions' pages in the page cache as they are (by default they are dropped "
                             "before each instance starts: see drop_cached_extensions)")
    parser.add_argument("--against", choices=["haproxy"], default=None,
                        help="also measure HAProxy with the same listeners, as one process and as master and worker "
                             "(-W), in this run, and print the ratios")
    parser.add_argument("--optimize", action="store_true",
                        help="run the instance under PYTHONOPTIMIZE=2 (-OO: no docstrings, no asserts; fastest to "
                             "start where the interpreter has its .opt-2.pyc files)")
    parser.add_argument("--instances", type=int, default=1,
                        help="run N instances of the same shape side by side (sidecars on one host) and count them "
                             "all (default: 1)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if args.optimize:
        env["PYTHONOPTIMIZE"] = "2"
    if args.merge_pages:
        env["FASTMESH_MERGE_PAGES"] = "1"
        if not ksm_running():
            print("note: the kernel's same-page merging is not running (/sys/kernel/mm/ksm/run is not 1): "
                  "nothing will be merged", file=sys.stderr)
    if args.bytecode:
        precompile(env)
    summary = []
    for demo in args.demo:
        for workers in (int(w) for w in args.workers.split(",")):
            with tempfile.TemporaryDirectory(prefix="fastmesh-footprint-") as tmp:
                companions: list[subprocess.Popen] = []
                if args.drop_cache:
                    drop_cached_extensions()
                try:
                    companions += [start_companion(workers, demo, env, tmp) for _ in range(args.instances - 1)]
                    result = measure(workers, demo, args.conns, args.settle, env, args.pages, companions)
                finally:
                    for other in companions:
                        stop(other)
            report(result)
            if args.maps:
                report_maps(result)
            summary.append(result)
    print("\nsummary (the whole instance; PSS counts each shared page once)")
    print("| demo backends | workers | instances | RSS MiB | PSS MiB | PSS anon MiB | PSS per further worker MiB |")
    print("|---|---|---|---|---|---|---|")
    for result in summary:
        pss, rss, n = int(str(result["pss"])), int(str(result["rss"])), int(str(result["workers"]))
        # What adding workers cost: this instance's PSS less the one-worker instance's, per worker added.
        one = [int(str(r["pss"])) for r in summary if r["demo"] == result["demo"] and r["workers"] == 1]
        count = int(str(result["instances"]))
        extra = mib((pss - one[0]) // ((n - 1) * count)) if one and n > 1 else "–"
        anon = mib(sum(m["Pss_Anon"] for _, _, m in rows_of(result)))
        print(f"| {'on' if result['demo'] else 'off'} | {n} | {count} | {mib(rss)} | {mib(pss)} | {anon} | {extra} |")
    if args.against:
        report_against(summary, measure_haproxy(False, args.settle), measure_haproxy(True, args.settle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
