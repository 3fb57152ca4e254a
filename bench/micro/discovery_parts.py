"""What the per-update parts of a 10,000-endpoint discovery update cost, in CPU time or in instructions.

    python -m bench.micro.discovery_parts
prints the CPU time (time.process_time, median of 15) of the parts made per update: the counter layout
(StatsLayout, in the supervisor and in every worker), a worker's decoding of the payload (decode_sets) and the
effective config text (effective_text, which the supervisor made on every update until it only made it for a
worker being started). CPU time, not wall time: on a shared machine the latter is mostly waiting for a core.

    valgrind --tool=callgrind python -m bench.micro.discovery_parts --apply K     (K = 1, 2, 3)
applies the first K of three prepared updates with Proxy.update_endpoints after decoding each (a worker's whole
part; the payloads are made before any of them): callgrind's total for K minus the one for K - 1 is what update
K costs. Updates 1 and 3 are applied in place, update 2 compacts the slots (the cluster is built anew). Run it
with the interpreter itself (not a shell shim) and PYTHONHASHSEED=0.

    valgrind --tool=callgrind python -m bench.micro.discovery_parts --supervise K     (K = 1, 2, 3)
does the supervisor's part of the first K of three file updates the same way: the file's bytes parsed
(discovery/file.py parse_file), arranged and given slots (the source's publish and the manager's next_slots),
then the changed set encoded for the workers and the counter layout made (process/reload.py), and the counter
blocks of two worker slots moved to it as a hand-off does (WorkerStats.relayout: the old blocks looked at and a
new one made per worker; freeze and thaw around each worker's part, which adopts its new block here), each step
inside the garbage-collector pause the supervisor runs it in.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.micro.discovery_update import config, endpoints
from fastmesh._testbase.net import free_ports
from fastmesh.config.load import config_from_dict, config_to_dict, loads_config
from fastmesh.config.schema import Config
from fastmesh.dataplane.slots import Slots, decode_sets, encode_sets, holes_of, live, next_slots
from fastmesh.discovery.base import parse_endpoint

N = 10_000


def base() -> tuple[Config, Slots]:
    web, admin = free_ports(2)
    data = config_to_dict(loads_config(config(web, admin, 'endpoints = ["127.0.0.1:1"]\n')))
    data["clusters"]["big"]["endpoints"] = endpoints(N, 0)
    cfg = config_from_dict(data, source="<bench>")
    return cfg, next_slots(None, list(cfg.clusters["big"].endpoints))


def cpu_ms(work: Callable[[], Any], rounds: int = 15) -> float:
    took = []
    for _ in range(rounds):
        began = time.process_time()
        work()
        took.append(time.process_time() - began)
    return statistics.median(took) * 1000


def parts() -> None:
    from fastmesh.dataplane.stats import StatsLayout
    from fastmesh.process.reload import effective_text
    cfg, slots = base()
    slots = next_slots(slots, [parse_endpoint(e, "bench") for e in endpoints(N, 7)])
    payload = encode_sets({"big": (live(slots), holes_of(slots))})
    after = dataclasses.replace(cfg, clusters={"big": dataclasses.replace(cfg.clusters["big"], endpoints=live(slots))})
    holes = {"big": holes_of(slots)}
    layout = cpu_ms(lambda: StatsLayout(after, holes))
    decode = cpu_ms(lambda: decode_sets(payload))
    text = cpu_ms(lambda: effective_text(after, holes))
    print(f"{N} endpoints replaced, CPU per part (median of 15): StatsLayout {layout:.1f} ms, decode_sets "
          f"{decode:.1f} ms, effective_text {text:.1f} ms")


async def apply(k: int) -> None:
    from fastmesh.proxy import Proxy
    cfg, slots = base()
    payloads = []
    for r in range(3):
        slots = next_slots(slots, [parse_endpoint(e, "bench") for e in endpoints(N, (r + 1) * 7)])
        payloads.append(encode_sets({"big": (live(slots), holes_of(slots))}))
    proxy = Proxy(cfg)
    await proxy.start()
    try:
        for payload in payloads[:k]:
            # A collection of everything so far before each update, none during it: the garbage collector's
            # full passes would otherwise fall into different updates from one K to the next.
            gc.collect()
            gc.disable()
            await proxy.update_endpoints(decode_sets(payload))
            gc.enable()
    finally:
        await proxy.stop(0)


def supervise(k: int) -> None:
    import json
    from fastmesh.dataplane.stats import StatsLayout, WorkerStats
    from fastmesh.discovery.base import Source
    from fastmesh.discovery.file import parse_file
    from fastmesh.gcpause import collector_paused
    cfg, slots = base()
    files = [json.dumps(endpoints(N, (r + 1) * 7)).encode() for r in range(3)]
    kept = []
    stats = WorkerStats(StatsLayout(cfg))
    workers = {n: adopt(stats, n) for n in (0, 1)}     # two workers counting into their first blocks
    for data in files[:k]:
        gc.collect()                    # (as in apply(): no full collection left over from the update before)
        with collector_paused():        # FileSource.run: read, parse, publish (slots)
            found = Source.arrange(Source.__new__(Source), parse_file(data, "big.json"))
            slots = next_slots(slots, found)
        with collector_paused():        # Reloader.discovered: the sets filled in, encoded, the counter layout
            cluster = dataclasses.replace(cfg.clusters["big"], endpoints=live(slots))
            holes = {"big": holes_of(slots)}
            payload = encode_sets({"big": (cluster.endpoints, holes["big"])})
            layout = StatsLayout(dataclasses.replace(cfg, clusters={"big": cluster}), holes)
            stats.relayout(layout)
            for n in workers:
                stats.fd_for(n)
                stats.freeze(n)
                workers[n] = adopt(stats, n)
                stats.thaw(n)
        kept.append((found, payload, layout))
    stats.close()


def adopt(stats: Any, n: int) -> Any:
    """What worker n does with the block the supervisor hands it: map it and mark it as counted into."""
    from fastmesh._core.stats import StatsBlock
    from fastmesh.dataplane.stats import HEADER
    block = StatsBlock.map(stats.fd_for(n), stats.layout.size)
    block[HEADER["pid"]] = 1000 + n
    return block


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--apply":
        asyncio.run(apply(int(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--supervise":
        supervise(int(sys.argv[2]))
    else:
        parts()


if __name__ == "__main__":
    main()
