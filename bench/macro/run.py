"""Entry point of the macro benchmark: run each workload through each proxy, interleaved, and report medians and ratios.

Run from the repository root:  python -m bench.macro.run [--quick] [--only ...] [--repeat N] [--duration S]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):    # also runnable as `python bench/macro/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    __package__ = "bench.macro"
    import bench.macro  # noqa: F401  (the parent package must be imported for the relative imports below)

from . import backends, procs, proxies, report, workloads
from .fastmesh_conf import REPO_ROOT

# tools each workload needs on the load side
_TOOLS = {"iperf": ["iperf3"], "http-keepalive": ["wrk", "nginx"], "http-close": ["wrk", "nginx"],
          "http-l7": ["wrk", "nginx"], "http-l7-c512": ["wrk", "nginx"], "http-latency": ["wrk", "nginx"],
          "h2": ["h2load", "nginx"], "https": ["wrk", "nginx", "openssl"], "h2tls": ["h2load", "nginx", "openssl"],
          "idle": [],
          "idle-http": ["nginx"], "idle-h2": ["nginx"], "tls-bulk": ["openssl"],
          "idle-https": ["nginx", "openssl"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.macro.run", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None,
                    help="trials per workload and proxy (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of load per trial (default 10; 3 with --quick)")
    ap.add_argument("--conns", type=int, default=None, help="idle connections held for the RSS workload (default 5000)")
    ap.add_argument("--only", default="", help="comma list of workloads and/or proxies to run: "
                    f"workloads {','.join(workloads.ALL)}; proxies {','.join(proxies.ALL)}")
    ap.add_argument("--quick", action="store_true", help="one short trial of each (about a minute)")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="core the proxies are pinned to (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="core for load generators and backends (default 1)")
    ap.add_argument("--busy-poll", default=None, metavar="DURATION",
                    help="busy polling in the proxies that have it: fastmesh's busy_poll = DURATION (e.g. 0.1ms) and "
                    "HAProxy's busy-polling; default: none (each proxy's default)")
    ap.add_argument("--out", default=None, help="JSON result path (default bench/results/macro-<time>.json)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the generated configs and logs")
    a = ap.parse_args(argv)
    a.repeat = a.repeat or (1 if a.quick else 3)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.conns = a.conns or 5000
    return a


def select(only: str) -> tuple[list[str], list[str]]:
    """Split --only into workloads and proxies; an empty side means all of that side."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in workloads.ALL and n not in proxies.ALL]
    if bad:
        sys.exit(f"--only: unknown name(s) {', '.join(bad)}")
    ws = [w for w in workloads.ALL if w in names] or list(workloads.ALL)
    ps = [p for p in proxies.ALL if p in names] or list(proxies.ALL)
    return ws, ps


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else "?"


def _versions(ps: list[str]) -> dict[str, str]:
    v = {"python": platform.python_version(), "kernel": platform.release(),
         "iperf3": _version(["iperf3", "--version"]), "wrk": _version(["wrk", "--version"]),
         # "-dirty" when the checkout has uncommitted changes: the in-place build measured may not be HEAD's
         "fastmesh_commit": _version(["git", "-C", REPO_ROOT, "describe", "--always", "--dirty", "--abbrev=7"])}
    cmds = {"haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"], "envoy": ["envoy", "--version"]}
    for p in ps:
        if p in cmds:
            v[p] = _version(cmds[p])
    return v


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _summary(w: str, m: dict) -> str:
    """One progress line per trial."""
    keys = {"iperf": ("gbps", "Gbit/s"), "http-keepalive": ("rps", "req/s"), "http-close": ("rps", "conn/s"),
            "http-l7": ("rps", "req/s"), "http-l7-c512": ("rps", "req/s"), "http-latency": ("rps", "req/s"),
            "h2": ("rps", "req/s"), "https": ("rps", "req/s"), "h2tls": ("rps", "req/s"),
            "tls-bulk": ("gbps", "Gbit/s"), "idle": ("kb_per_conn", "KiB/conn"),
            "idle-http": ("kb_per_conn", "KiB/conn"), "idle-h2": ("kb_per_conn", "KiB/conn"),
            "idle-https": ("kb_per_conn", "KiB/conn")}
    k, unit = keys[w]
    text = f"{m[k]:.2f} {unit}" if m.get(k) is not None else "?"
    if m.get("p50_us") is not None:
        text += f", p50 {m['p50_us']:.0f} µs, p99 {m['p99_us']:.0f} µs"
    if m.get("cpu_pct") is not None:
        text += f", proxy CPU {m['cpu_pct']:.0f}%"
    if m.get("non_2xx") or m.get("socket_errors") or m.get("failed"):
        text += (f", NON-2XX {m['non_2xx']}, SOCKET ERRORS {m.get('socket_errors', 0)}, FAILED {m.get('failed', 0)}"
                 " (the load generator's output in the JSON)")
    return text


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    ws, ps = select(a.only)
    skipped: dict[str, str] = {}
    for w in list(ws):
        missing = [t for t in _TOOLS[w] if not shutil.which(t)]
        if missing:
            skipped[w] = f"missing {', '.join(missing)}"
            ws.remove(w)
    modes = {workloads.MODE[w] for w in ws}
    for name in list(ps):
        why = proxies.unavailable(name, modes)
        if why:
            skipped[name] = why
            ps.remove(name)
    for name, why in skipped.items():
        _log(f"skipping {name}: {why}")
    if not ws or not ps:
        _log("nothing to run")
        return 2
    if not {a.proxy_cpu, a.load_cpu} <= os.sched_getaffinity(0):
        sys.exit(f"cores {a.proxy_cpu} and {a.load_cpu} must both be available to this process")

    nofile = procs.raise_nofile()
    if nofile < 2 * a.conns + 100:
        _log(f"warning: open-file hard limit {nofile} is low for {a.conns} held connections")
    os.sched_setaffinity(0, {a.load_cpu})      # the harness itself stays off the proxy's core
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job of a
    # script); SIGTERM and SIGHUP unwind the same way, so the finally below ends every process we started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    tmp = tempfile.mkdtemp(prefix="fastmesh-bench-")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    p = procs.Procs(logdir)
    settings = workloads.Settings(duration=a.duration, load_cpu=a.load_cpu, conns=a.conns)
    trials: list[dict] = []
    # read before the trials: a colleague committing (or rebuilding) during a long run must not relabel it
    versions = _versions(ps)
    started = time.monotonic()
    try:
        ports: dict[str, int] = {}
        for kind in sorted({workloads.BACKEND[w] for w in ws}):
            ports[kind] = {"iperf3": lambda: backends.iperf3(p, a.load_cpu),
                           "http": lambda: backends.http(p, a.load_cpu, tmp, nofile),
                           "hold": lambda: backends.hold(p, a.load_cpu),
                           "tlssink": lambda: backends.tls_sink(p, a.load_cpu, tmp)}[kind]()
        for rep in range(a.repeat):
            order = ps[rep % len(ps):] + ps[:rep % len(ps)]     # rotate, so no proxy always runs first
            for w in ws:
                names = order
                if w == "http-latency" and "direct" not in order:
                    names = ["direct", *order]   # added latency is measured against the direct run
                for name in names:
                    if w in ("idle", "h2", "idle-h2", "idle-https") and name == "direct":
                        continue        # no proxy process to measure; and the backend speaks no HTTP/2
                    trials.append(_trial(p, tmp, rep, w, name, ports[workloads.BACKEND[w]], a, nofile, settings))
    except KeyboardInterrupt:
        _log("interrupted: stopping every process started")
    finally:
        # a second Ctrl-C must not cut the clean-up short and leave processes behind
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        p.stop_all()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if a.keep_tmp:
            _log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report.add_derived(trials)
    med = report.medians(trials)
    fmt_args = {"ka": settings.ka_connections, "close": settings.close_connections,
                "lat": settings.latency_connections, "conns": a.conns}
    shown = [n for n in proxies.ALL if n in ps or any(t["proxy"] == n for t in trials)]
    paired = report.paired_ratios(trials, ws)
    table = report.markdown(med, shown, ws, fmt_args, paired)
    cmd = "python -m bench.macro.run " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": cmd.strip(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "settings": {"repeat": a.repeat, "duration": a.duration, "busy_poll": a.busy_poll, "conns": a.conns,
                     "proxy_cpu": a.proxy_cpu, "load_cpu": a.load_cpu, "cpus": os.cpu_count(),
                     "wrk_keepalive_c": settings.ka_connections, "wrk_close_c": settings.close_connections,
                     "wrk_latency_c": settings.latency_connections},
        "versions": versions, "skipped": skipped, "trials": trials, "medians": med,
        "ratios_vs_haproxy": {w: {m: report.ratio(med, w, m) for m, _ in report.HEADLINE[w]} for w in ws},
        "paired_ratios_vs_haproxy": paired,
        "markdown": table,
    }
    out = a.out or os.path.join(REPO_ROOT, "bench", "results",
                                f"macro-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"<!-- {cmd.strip()}  ({result['date']}, {result['seconds']:.0f} s) -->\n")
    print(table)
    _log(f"results written to {out}")
    return 0 if all(not t.get("error") for t in trials) else 1


def _trial(p: procs.Procs, tmp: str, rep: int, w: str, name: str, backend_port: int,
           a: argparse.Namespace, nofile: int, settings: workloads.Settings) -> dict:
    """Start one proxy, run one workload through it, stop it; a failure is recorded, not raised."""
    t: dict = {"rep": rep, "workload": w, "proxy": name, "metrics": {}}
    run = None
    try:
        run = proxies.start(name, p, os.path.join(tmp, f"r{rep}-{w}-{name}"), backend_port, a.proxy_cpu, nofile,
                            workloads.MODE[w], workloads.upstream_idle(w, settings), a.busy_poll)
        t["metrics"] = workloads.run(w, run, settings)
        if t["metrics"].get("error"):
            t["error"] = t["metrics"]["error"]
    except Exception as e:  # one broken trial must not lose the others' numbers
        t["error"] = f"{type(e).__name__}: {e}"
    finally:
        if run is not None:
            proxies.stop(p, run)
    status = f"FAILED {t['error']}" if t.get("error") else _summary(w, t["metrics"])
    _log(f"[{rep + 1}/{a.repeat}] {w:15} {name:9} {status}")
    return t


if __name__ == "__main__":
    sys.exit(main())
