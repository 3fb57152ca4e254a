"""Debug switch for memory soaks: with FASTMESH_MEMTRACE=DIR, a worker traces its allocations and writes snapshots.

Off unless the variable is set (nothing is imported or started then). When set, the worker starts tracemalloc
before it builds its proxy and every FASTMESH_MEMTRACE_EVERY seconds (default 60) writes to DIR
`w<id>-<pid>-<k>.tracemalloc` (a tracemalloc snapshot) and `w<id>-<pid>-<k>.types` (live objects counted by
type, as the gc sees them: in a worker forked from the fork server, those made since the fork).
`python -m fastmesh.process.memtrace OLD NEW` prints what grew between two snapshots (or two type
counts): a leak grows in the same lines from snapshot to snapshot, allocator growth does not show here at all.
tracemalloc slows the worker several times over; use it to find a leak, not to measure.
"""
from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections import Counter

ENV = "FASTMESH_MEMTRACE"
EVERY_ENV = "FASTMESH_MEMTRACE_EVERY"
FRAMES = 8                      # stack depth kept per allocation: enough to see which of our lines asked


def start(worker_id: int) -> asyncio.Task[None] | None:
    """Start tracing and the snapshot task when the switch is set; None otherwise."""
    where = os.environ.get(ENV)
    if not where:
        return None
    import tracemalloc
    os.makedirs(where, exist_ok=True)
    tracemalloc.start(FRAMES)
    every = float(os.environ.get(EVERY_ENV, "60"))
    return asyncio.get_running_loop().create_task(_snapshots(where, f"w{worker_id}-{os.getpid()}", every))


async def _snapshots(where: str, stem: str, every: float) -> None:
    import tracemalloc
    k = 0
    while True:
        await asyncio.sleep(every)
        gc.collect()
        tracemalloc.take_snapshot().dump(os.path.join(where, f"{stem}-{k:04d}.tracemalloc"))
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        with open(os.path.join(where, f"{stem}-{k:04d}.types"), "w") as f:
            for name, count in types.most_common():
                f.write(f"{count} {name}\n")
        k += 1


def _read_types(path: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            count, name = line.split(" ", 1)
            counts[name.strip()] = int(count)
    return counts


def compare(old: str, new: str, top: int = 25) -> list[str]:
    """The lines (or object types) that grew most from old to new, as printable lines."""
    if old.endswith(".types"):
        before, after = _read_types(old), _read_types(new)
        grown = sorted(((after[k] - before[k], k) for k in after.keys() | before.keys()), reverse=True)
        return [f"{d:+8d} {k}" for d, k in grown[:top] if d]
    import tracemalloc
    a = tracemalloc.Snapshot.load(old)
    b = tracemalloc.Snapshot.load(new)
    total = sum(s.size for s in b.statistics("filename")) - sum(s.size for s in a.statistics("filename"))
    lines = [f"traced total: {total / 1024:+.1f} KiB"]
    lines += [str(stat) for stat in b.compare_to(a, "lineno")[:top]]      # by the line that allocated
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fastmesh.process.memtrace OLD NEW  (two .tracemalloc or two .types files)")
    print("\n".join(compare(sys.argv[1], sys.argv[2])))
