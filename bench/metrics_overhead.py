"""What counting costs: fastmesh built with stats on and with FASTMESH_STATS=0, run alternately under the same load.

The product asks for requests/s with metrics on within 3% of a build with them compiled out. Both builds are made
here from one snapshot of the checkout (its working tree, so uncommitted edits are in both), each in its own
temporary directory; the http L7 listener and the tcp relay (keep-alive HTTP through it) are then loaded with wrk,
the proxy pinned to one core and wrk plus the nginx backend to the other, as bench/macro does. The builds alternate
within each repetition (and swap which goes first), so drift on a shared machine falls on both.

    python -m bench.metrics_overhead                  # 5 repetitions x 2 modes x 2 builds x 5 s, ~3 minutes + builds
    python -m bench.metrics_overhead --repeat 3 --duration 3 --builds DIR   # reuse builds kept in DIR
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

if __package__ in (None, ""):          # `python bench/metrics_overhead.py` as well as `python -m bench...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.macro import backends, fastmesh_conf, procs, proxies, workloads   # noqa: E402

REPO_ROOT = fastmesh_conf.REPO_ROOT
BUILDS = ("on", "off")                              # FASTMESH_STATS=1 and =0
MODES = {"http": "http-l7", "tcp": "http-keepalive"}   # listener protocol -> the bench/macro workload that loads it


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sources() -> list[str]:
    """The checkout's files as they are now (tracked and new, not ignored), without tests and benchmarks."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out
            if f and not f.startswith(("tests/", "bench/")) and os.path.isfile(os.path.join(REPO_ROOT, f))]


def build(dest: str, stats: bool) -> None:
    """Copy the checkout to dest and build it in place with FASTMESH_STATS=1 or 0; check what it says it is."""
    if not os.path.exists(os.path.join(dest, "setup.py")):
        for f in _sources():
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(os.path.join(REPO_ROOT, f), os.path.join(dest, f))
    env = dict(os.environ, FASTMESH_STATS="1" if stats else "0")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dest, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"build in {dest} failed:\n{out.stderr[-3000:]}")
    said = subprocess.run([sys.executable, "-c", "import fastmesh._core.build_info as b; print(b.STATS)"],
                          cwd=os.path.dirname(dest), env=dict(os.environ, PYTHONPATH=dest), capture_output=True,
                          text=True).stdout.strip()
    if said != str(stats):
        raise RuntimeError(f"the build in {dest} says STATS={said!r}, wanted {stats}")
    _log(f"built stats {'on' if stats else 'off'} in {dest} ({time.monotonic() - started:.0f} s)")


def start(p: procs.Procs, root: str, tmp: str, backend_port: int, cpu: int, mode: str) -> proxies.Running:
    """fastmesh from the build at root, one worker, pinned to cpu; like proxies.start but not from this checkout."""
    os.makedirs(tmp, exist_ok=True)
    port = procs.free_port()
    conf = os.path.join(tmp, "fastmesh.toml")
    with open(conf, "w") as f:
        f.write(fastmesh_conf.config(port, backend_port, procs.free_port(), mode))
    env = dict(os.environ, PYTHONPATH=root)
    # cwd is tmp, so `-m fastmesh` finds the build on PYTHONPATH and never this checkout
    proc = p.start(os.path.basename(tmp), fastmesh_conf.argv(conf), cpu, cwd=tmp, env=env)
    try:
        procs.wait_listening(port, proc)
        return proxies.Running("fastmesh", mode, port, proc, proxies._wait_workers(proc), proc.pid)
    except BaseException:
        _log(p.log_tail(os.path.basename(tmp)))
        p.stop(proc)
        raise


def summary(trials: list[dict]) -> tuple[str, dict]:
    """Markdown table: per mode, median req/s and µs CPU per request of each build, and on/off ratios."""
    lines = ["| mode | req/s on | req/s off | on/off req/s | µs/req on | µs/req off | on/off µs/req |"
             " per-repetition on/off req/s |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    result: dict = {}
    for mode in MODES:
        got = {b: [t for t in trials if t["mode"] == mode and t["build"] == b] for b in BUILDS}
        if not all(got.values()):
            continue
        rps = {b: statistics.median(t["rps"] for t in got[b]) for b in BUILDS}
        us = {b: statistics.median(t["us_per_req"] for t in got[b]) for b in BUILDS}
        reps = sorted({t["rep"] for t in got["on"]} & {t["rep"] for t in got["off"]})
        per_rep = [next(t["rps"] for t in got["on"] if t["rep"] == r) / next(t["rps"] for t in got["off"]
                                                                             if t["rep"] == r) for r in reps]
        result[mode] = {"rps": rps, "us_per_req": us, "rps_ratio": rps["on"] / rps["off"],
                        "us_ratio": us["on"] / us["off"], "rps_ratio_per_rep": per_rep,
                        "rps_ratio_median_of_reps": statistics.median(per_rep)}
        lines.append(f"| {mode} | {rps['on']:,.0f} | {rps['off']:,.0f} | {rps['on'] / rps['off']:.3f} "
                     f"| {us['on']:.2f} | {us['off']:.2f} | {us['on'] / us['off']:.3f} "
                     f"| {', '.join(f'{r:.3f}' for r in per_rep)} |")
    return "\n".join(lines), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (each runs every mode with both builds)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of wrk load per trial")
    ap.add_argument("--modes", default="http,tcp", help="listener protocols to load: http, tcp or both")
    ap.add_argument("--builds", help="keep the two builds in DIR/on and DIR/off and reuse them when present")
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

    tmp = tempfile.mkdtemp(prefix="fastmesh-metrics-")
    root = a.builds or os.path.join(tmp, "builds")
    p = procs.Procs(tmp)
    trials: list[dict] = []
    try:
        for b in BUILDS:
            built = os.path.join(root, b)
            if a.builds and os.path.exists(os.path.join(built, "build", "compile_time_env")):
                _log(f"reusing the build in {built}")
            else:
                build(built, stats=(b == "on"))
        os.sched_setaffinity(0, {a.load_cpu})      # the harness stays off the proxy's core
        nofile = procs.raise_nofile()
        backend_port = backends.http(p, a.load_cpu, tmp, nofile)
        settings = workloads.Settings(duration=a.duration, load_cpu=a.load_cpu, conns=0)
        uptime = open("/proc/loadavg").read().split()[:3]
        for rep in range(a.repeat):
            order = BUILDS if rep % 2 == 0 else BUILDS[::-1]
            for mode in modes:
                for b in order:
                    run = start(p, os.path.join(root, b), os.path.join(tmp, f"r{rep}-{mode}-{b}"), backend_port,
                                a.proxy_cpu, mode)
                    try:
                        m = workloads.run(MODES[mode], run, settings)
                    finally:
                        proxies.stop(p, run)
                    if m.get("errors"):
                        raise RuntimeError(f"wrk saw errors through stats-{b} {mode}: {m.get('wrk_output')}")
                    trials.append({"rep": rep, "mode": mode, "build": b, **m})
                    _log(f"rep {rep} {mode:4} stats {b:3}: {m['rps']:,.0f} req/s, {m['us_per_req']:.2f} µs CPU/req")
        table, result = summary(trials)
        print(table)
        print(f"\nload average before the trials: {' '.join(uptime)}; {a.repeat} x {a.duration:g} s per trial; "
              "medians over the repetitions")
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"settings": vars(a), "loadavg": uptime, "summary": result, "trials": trials}, f, indent=1)
        return 0
    finally:
        p.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)      # configs and logs; builds under --builds stay


if __name__ == "__main__":
    sys.exit(main())
