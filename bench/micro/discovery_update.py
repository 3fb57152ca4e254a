"""How long one discovery update of N endpoints takes to apply, and whether balancer picks notice.

Numbers on this machine with N = 10,000 (weight 1, round_robin, http listener), every update replacing all N:
  - worker: what a worker does per update: decode the supervisor's "endpoints" payload (dataplane/slots.py) and
    Proxy.update_endpoints() (Cluster.update in place: N removed, N appended; pool, health, stats), median of
    the rounds applied in place; and separately the rounds where the supervisor's slots compacted (holes
    outnumbered live endpoints), which rebuild the cluster through Proxy.reload();
  - instance: `fastmesh run` with 2 workers and a file source: from the file's rename to the supervisor's
    "discovery update applied by 2 worker(s)" log line (inotify, parse, slots, payload to both workers, both
    apply), the hand-off alone as that line reports it, and within it the slower worker's own part (decode and
    apply, as the worker times it: the rest is the supervisor's payload and counters layout, and waiting for a core);
  - cpu: the CPU time (user + system, from /proc) the supervisor and each worker spent over the instance's updates,
    per update: what an update costs each process whatever else the machine runs (wall times on a shared machine
    are mostly waiting for a core);
  - picks: ns per round-robin pick (bench_picks, C loop) on the cluster built from the config's endpoints and
    on the same cluster after the updates (N live endpoints among the tombstones: picks walk only the up ones).
Run: python -m bench.micro.discovery_update [N [ROUNDS PAUSE]]
(ROUNDS updates in the instance, PAUSE seconds apart: 30 and 0.2 show what a busy source costs while the counter
blocks of earlier updates are still kept; the default is 6 back to back.)

Measured with N = 10,000 on a 2-core machine shared with other work (load 0.5 to 3.5: the CPU per update is the
number to compare, the wall times are mostly waiting for a core), six runs: supervisor a median of 29 ms of CPU per
update (27 to 43), each worker 17 to 25 ms; from the rename to both answers a median of 94 ms (64 ms at load 0.9).
The commit before, alternated with it (five runs): supervisor 47 ms (40 to 53), workers 20 to 28 ms, 119 ms.
README.md's discovery section ("Measured") has the instruction counts and what each part costs.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun
from fastmesh.config.load import config_from_dict, config_to_dict, loads_config
from fastmesh.dataplane.slots import decode_sets, encode_sets, holes_of, live, next_slots
from fastmesh.discovery.base import parse_endpoint
from fastmesh.proxy import Proxy

ROUNDS = 6
PICKS = 2_000_000


def endpoints(n: int, base: int) -> list[dict[str, object]]:
    """n distinct loopback endpoints, port 10000 + base (nothing listens there: the picks never connect)."""
    return [{"address": f"127.{i // 62500 + 1}.{(i // 250) % 250}.{i % 250 + 1}:{10000 + base}"} for i in range(n)]


def config(web: int, admin: int, extra: str) -> str:
    return (f'workers = 2\ndrain_timeout = "1s"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{web}"\nprotocol = "http"\ncluster = "big"\n'
            f'[clusters.big]\n{extra}')


def pick_ns(proxy: Proxy) -> float:
    balancer = proxy._clusters["big"].balancer
    began = time.perf_counter()
    balancer.bench_picks(PICKS)
    return (time.perf_counter() - began) / PICKS * 1e9


async def in_worker(n: int) -> None:
    web, admin = free_ports(2)
    data = config_to_dict(loads_config(config(web, admin, 'endpoints = ["127.0.0.1:1"]\n')))
    data["clusters"]["big"]["endpoints"] = endpoints(n, 0)
    cfg = config_from_dict(data, source="<bench>")
    proxy = Proxy(cfg)
    await proxy.start()
    slots = next_slots(None, list(cfg.clusters["big"].endpoints))
    try:
        before = statistics.median(pick_ns(proxy) for _ in range(3))
        in_place, compacted = [], []
        for r in range(ROUNDS):
            found = [parse_endpoint(e, "bench") for e in endpoints(n, (r + 1) * 7)]
            grown = len(slots) + n
            slots = next_slots(slots, found)                                # the supervisor's assignment
            payload = encode_sets({"big": (live(slots), holes_of(slots))})
            began = time.perf_counter()
            await proxy.update_endpoints(decode_sets(payload))             # what the worker's handler does
            took = time.perf_counter() - began
            (in_place if len(slots) == grown else compacted).append(took)
            assert proxy._clusters["big"].live_count == n
        after = statistics.median(pick_ns(proxy) for _ in range(3))
    finally:
        await proxy.stop(0)
    print(f"worker: {n} endpoints replaced in place in {statistics.median(in_place) * 1000:.1f} ms (median of "
          f"{len(in_place)}; min {min(in_place) * 1000:.1f}, max {max(in_place) * 1000:.1f})")
    if compacted:
        print(f"worker: compacted slots (cluster rebuilt): {statistics.median(compacted) * 1000:.1f} ms (median of "
              f"{len(compacted)})")
    print(f"picks: {before:.1f} ns/pick before the updates, {after:.1f} ns/pick after ({n} endpoints, "
          f"{proxy._clusters['big'].slots} slots)")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def instance(n: int, rounds: int = ROUNDS, pause: float = 0.0) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "big.json").write_text(json.dumps(endpoints(n, 0)))
        web, admin = free_ports(2)
        run = AsyncRun(tmp, config(web, admin, 'discovery = { kind = "file", path = "big.json" }\n'), 60.0)
        await run.start(r"ready: 2 worker\(s\) serving")
        try:
            assert run.proc is not None
            pids = {"supervisor": run.proc.pid}
            pids.update((f"w{w}", int(pid)) for w, pid in re.findall(r"w(\d+) started \(pid (\d+)\)", run.log()))
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            took = []
            for r in range(rounds):
                await asyncio.sleep(pause)
                (tmp / "big.new").write_text(json.dumps(endpoints(n, (r + 1) * 7)))
                began = time.monotonic()
                (tmp / "big.new").rename(tmp / "big.json")
                found = await run.wait_log(r"discovery update applied by 2 worker\(s\) in ([0-9.]+) ms \(the "
                                           r"slowest worker's own part ([0-9.]+) ms\)", r + 1)
                took.append((time.monotonic() - began, float(found[r][1]), float(found[r][2])))
            cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / rounds for name, pid in pids.items()}
        finally:
            await run.stop()
    seen = [t for t, _, _ in took]
    handed = [ms for _, ms, _ in took]
    own = [ms for _, _, ms in took]
    print(f"instance: {n} endpoints replaced, from the file's rename to both workers applied: median "
          f"{statistics.median(seen) * 1000:.0f} ms (the hand-off to both workers: median "
          f"{statistics.median(handed):.0f} ms, of which the slower worker's own decode and apply: median "
          f"{statistics.median(own):.0f} ms) over {rounds} updates{f', {pause:g} s apart' if pause else ''}")
    print("cpu per update (file parse, slots, hand-off and apply): " +
          ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in cpu.items()))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds, pause = (int(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (ROUNDS, 0.0)
    import uvloop
    uvloop.run(in_worker(n))
    uvloop.run(instance(n, rounds, pause))


if __name__ == "__main__":
    main()
