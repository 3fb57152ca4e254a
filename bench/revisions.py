"""Speed of two revisions side by side: each git revision built in its own temporary directory, then run
alternately under the same load (bench/metrics_overhead.py's method), so drift on a shared machine falls on both.

Used for refactors that must not cost speed, e.g. the exchange/codec split (docs/architecture.md):

    python -m bench.revisions main HEAD                        # http-l7 and the keep-alive tcp relay, 5 x 5 s
    python -m bench.revisions main HEAD --repeat 3 --builds /tmp/fm-builds   # keep and reuse the two builds

The table gives, per workload, the median req/s and µs of proxy CPU per request of each revision and their ratios
(after / before), and the per-repetition req/s ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):          # `python bench/revisions.py` as well as `python -m bench.revisions`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.macro import backends, fastmesh_conf, procs, proxies, workloads   # noqa: E402
from bench.metrics_overhead import start   # noqa: E402

REPO_ROOT = fastmesh_conf.REPO_ROOT
MODES = {"http": "http-l7", "tcp": "http-keepalive"}   # listener protocol -> the bench/macro workload that loads it


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(dest: str, rev: str) -> str:
    """git archive of rev into dest, built in place; returns the commit it is."""
    commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    if not os.path.exists(os.path.join(dest, "setup.py")):
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dest, capture_output=True,
                         text=True, env=dict(os.environ, FASTMESH_STATS="1", FASTMESH_DEBUG="0"))
    if out.returncode:
        raise RuntimeError(f"build of {rev} in {dest} failed:\n{out.stderr[-3000:]}")
    _log(f"built {rev} ({commit[:10]}) in {dest} ({time.monotonic() - started:.0f} s)")
    return commit


def summary(trials: list[dict], labels: tuple[str, str]) -> tuple[str, dict]:
    before, after = labels
    lines = [f"| workload | req/s {before} | req/s {after} | req/s ratio | µs/req {before} | µs/req {after} "
             "| µs/req ratio | per-repetition req/s ratios |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    result: dict = {}
    for mode in MODES:
        got = {b: [t for t in trials if t["mode"] == mode and t["build"] == b] for b in labels}
        if not all(got.values()):
            continue
        rps = {b: statistics.median(t["rps"] for t in got[b]) for b in labels}
        us = {b: statistics.median(t["us_per_req"] for t in got[b]) for b in labels}
        reps = sorted({t["rep"] for t in got[before]} & {t["rep"] for t in got[after]})
        per_rep = [next(t["rps"] for t in got[after] if t["rep"] == r)
                   / next(t["rps"] for t in got[before] if t["rep"] == r) for r in reps]
        result[mode] = {"rps": rps, "us_per_req": us, "rps_ratio": rps[after] / rps[before],
                        "us_ratio": us[after] / us[before], "rps_ratio_per_rep": per_rep}
        lines.append(f"| {MODES[mode]} | {rps[before]:,.0f} | {rps[after]:,.0f} | {rps[after] / rps[before]:.3f} "
                     f"| {us[before]:.2f} | {us[after]:.2f} | {us[after] / us[before]:.3f} "
                     f"| {', '.join(f'{r:.3f}' for r in per_rep)} |")
    return "\n".join(lines), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", help="the revision to compare against (e.g. main)")
    ap.add_argument("after", help="the revision under test (e.g. HEAD)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (each runs every mode with both builds)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of wrk load per trial")
    ap.add_argument("--modes", default="http,tcp", help="listener protocols to load: http, tcp or both")
    ap.add_argument("--builds", help="keep the two builds in DIR/before and DIR/after and reuse them when present")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--out", help="JSON file for every trial and the summary")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if not set(modes) <= set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    if not {a.proxy_cpu, a.load_cpu} <= os.sched_getaffinity(0):
        sys.exit(f"cores {a.proxy_cpu} and {a.load_cpu} must both be available to this process")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    labels = ("before", "after")
    tmp = tempfile.mkdtemp(prefix="fastmesh-revisions-")
    root = a.builds or os.path.join(tmp, "builds")
    p = procs.Procs(tmp)
    trials: list[dict] = []
    try:
        commits = {b: build(os.path.join(root, b), rev) for b, rev in zip(labels, (a.before, a.after))}
        os.sched_setaffinity(0, {a.load_cpu})      # the harness stays off the proxy's core
        nofile = procs.raise_nofile()
        backend_port = backends.http(p, a.load_cpu, tmp, nofile)
        settings = workloads.Settings(duration=a.duration, load_cpu=a.load_cpu, conns=0)
        loadavg = open("/proc/loadavg").read().split()[:3]
        for rep in range(a.repeat):
            order = labels if rep % 2 == 0 else labels[::-1]
            for mode in modes:
                for b in order:
                    run = start(p, os.path.join(root, b), os.path.join(tmp, f"r{rep}-{mode}-{b}"), backend_port,
                                a.proxy_cpu, mode)
                    try:
                        m = workloads.run(MODES[mode], run, settings)
                    finally:
                        proxies.stop(p, run)
                    if m.get("errors"):
                        raise RuntimeError(f"wrk saw errors through {b} {mode}: {m.get('wrk_output')}")
                    trials.append({"rep": rep, "mode": mode, "build": b, **m})
                    _log(f"rep {rep} {mode:4} {b:6}: {m['rps']:,.0f} req/s, {m['us_per_req']:.2f} µs CPU/req")
        table, result = summary(trials, labels)
        print(f"before = {a.before} ({commits['before'][:10]}), after = {a.after} ({commits['after'][:10]})\n")
        print(table)
        print(f"\nload average before the trials: {' '.join(loadavg)}; {a.repeat} x {a.duration:g} s per trial; "
              "medians over the repetitions")
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"settings": vars(a), "commits": commits, "loadavg": loadavg, "summary": result,
                           "trials": trials}, f, indent=1)
        return 0
    finally:
        p.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)      # configs and logs; builds under --builds stay


if __name__ == "__main__":
    sys.exit(main())
