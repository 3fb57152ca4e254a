"""Endpoint slots of a discovered cluster: which index each endpoint keeps for its life, and the holes removal leaves.

The core indexes everything per endpoint (balancer state, connect marks, the pool's idle lists, the stats block's
per-endpoint slots), and requests in flight hold those indexes, so an endpoint set update must not move them
(_core/cluster.pyx says why). The supervisor's discovery manager owns the assignment, computed here: an endpoint
still listed keeps its slot (weight and priority as now listed), a removed one leaves a hole (None) that is never
filled, new ones are appended in the order given. When holes outnumber live endpoints (and COMPACT_AT) the
next assignment starts afresh with no holes: workers then build a new cluster for it, carrying state over by
address, as a reload does.

On the wire (the effective config the supervisor hands workers) a discovered cluster lists its live endpoints
in slot order, and `holes` (slot indexes) travel beside it: with_holes() and split_holes() put them into and take
them out of config_to_dict's JSON, as null entries of the endpoint array. A discovery update carries only the
changed clusters' sets (encode_sets / decode_sets), by columns (hosts, ports, weights, priorities: no object per
endpoint on the wire), and the holes.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from fastmesh.config.schema import Endpoint

COMPACT_AT = 64             # holes below this never trigger a compaction, whatever the live count

Slots = list[Endpoint | None]
Holes = Mapping[str, Sequence[int]]         # cluster name -> its holes (slot indexes); absent: none


def next_slots(prev: Slots | None, endpoints: Sequence[Endpoint]) -> Slots:
    """The slots for `endpoints` after `prev` (None: the first set): see the module docstring."""
    if not prev:
        return list(endpoints)
    # Discovery hands over IP literals in their canonical spelling (discovery/base.py), so (host, port) is the key.
    wanted = {(e.host, e.port): e for e in endpoints}
    listed = len(wanted)
    slots: Slots = [None if e is None else wanted.pop((e.host, e.port), None) for e in prev]
    holes = len(slots) - (listed - len(wanted))     # every slot but those whose endpoint is still listed
    if holes >= COMPACT_AT and holes > len(endpoints):
        return list(endpoints)
    slots.extend(wanted.values())           # what was not in prev, in the order given
    return slots


def live(slots: Slots) -> list[Endpoint]:
    """The endpoints of the slots, in slot order (what the config lists)."""
    return [e for e in slots if e is not None]


def holes_of(slots: Slots) -> tuple[int, ...]:
    return tuple(i for i, e in enumerate(slots) if e is None)


def slot_list(endpoints: Sequence[Endpoint], holes: Sequence[int] = ()) -> Slots:
    """Endpoint per slot: `endpoints` (live, in slot order) with None at each hole."""
    if not holes:
        return list(endpoints)
    gaps = sorted(holes)
    out: Slots = []
    k = 0
    while k < len(gaps):
        # A run of consecutive holes: gaps[j] - j is the same over it (and grows past it), so a binary search
        # finds its end. An update replacing 10,000 endpoints leaves one run: a few slices, no loop per slot.
        end = bisect.bisect_right(range(len(gaps)), gaps[k] - k, lo=k, key=lambda j: gaps[j] - j)
        taken = len(out) - k                    # endpoints placed so far
        out.extend(endpoints[taken:taken + gaps[k] - len(out)])
        out.extend([None] * (end - k))
        k = end
    out.extend(endpoints[len(out) - len(gaps):])
    return out


def with_holes(data: dict[str, Any], holes: Holes) -> dict[str, Any]:
    """config_to_dict's dict with a null entry at each hole of each cluster's endpoint array (in place)."""
    for name, gaps in holes.items():
        if gaps and name in data.get("clusters", {}):
            cluster = data["clusters"][name]
            cluster["endpoints"] = slot_list(cluster.get("endpoints", []), gaps)
    return data


def split_holes(data: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Take the null entries out of each cluster's endpoint array (in place); the holes they marked, by cluster."""
    holes: dict[str, tuple[int, ...]] = {}
    for name, cluster in (data.get("clusters") or {}).items():
        endpoints = cluster.get("endpoints") if isinstance(cluster, dict) else None
        if isinstance(endpoints, list) and None in endpoints:
            holes[name] = tuple(i for i, e in enumerate(endpoints) if e is None)
            cluster["endpoints"] = [e for e in endpoints if e is not None]
    return holes


EndpointSets = dict[str, tuple[list[Endpoint], tuple[int, ...]]]     # cluster -> (live endpoints in slot order, holes)


def _column(values: list[int]) -> int | list[int]:
    """One number when every endpoint has it (the common case: weight 1, priority 0), else the list."""
    return values[0] if values and values.count(values[0]) == len(values) else values


def encode_sets(sets: Mapping[str, tuple[Sequence[Endpoint], Sequence[int]]]) -> bytes:
    """A discovery update's payload (the supervisor's side), by columns: the IP literals in one space-separated
    string, the ports, weights and priorities as arrays (weights and priorities as one number when all equal)."""
    return json.dumps({"clusters": {name: {"hosts": " ".join([e.host for e in endpoints]),
                                           "ports": [e.port for e in endpoints],
                                           "weights": _column([e.weight for e in endpoints]),
                                           "priorities": _column([e.priority for e in endpoints]),
                                           "holes": list(holes)}
                                    for name, (endpoints, holes) in sets.items()}}, separators=(",", ":")).encode()


# What endpoints_of() fills in, and must be all an Endpoint holds (checked at import: a field added to Endpoint, or a
# __post_init__, must not be skipped silently).
_FIELDS = ("host", "port", "weight", "priority")
if tuple(f.name for f in dataclasses.fields(Endpoint)) != _FIELDS or hasattr(Endpoint, "__post_init__"):
    raise RuntimeError("slots.endpoints_of() no longer makes a whole Endpoint: update it with config.schema.Endpoint")


def endpoints_of(hosts: Sequence[str], ports: Sequence[int], weights: Iterable[int], priorities: Iterable[int]
                 ) -> list[Endpoint]:
    """Endpoint objects for checked columns, equal to Endpoint(host, port, weight, priority) each: made without the
    frozen dataclass's __init__ (four object.__setattr__ calls per endpoint), which took about half of decoding a
    10,000-endpoint update in every worker. Their attributes are set once here, before anyone sees them."""
    new = object.__new__
    out = [new(Endpoint) for _ in hosts]
    for e, host, port, weight, priority in zip(out, hosts, ports, weights, priorities):
        d = e.__dict__
        d["host"] = host
        d["port"] = port
        d["weight"] = weight
        d["priority"] = priority
    return out


def decode_sets(payload: bytes) -> EndpointSets:
    """A discovery update's payload (the worker's side): no further checks, the supervisor's sources parsed it."""
    data = json.loads(payload)
    out: EndpointSets = {}
    for name, c in data["clusters"].items():
        hosts = c["hosts"].split(" ") if c["hosts"] else []
        weights, priorities = c["weights"], c["priorities"]
        out[name] = (endpoints_of(hosts, c["ports"], repeat(weights) if isinstance(weights, int) else weights,
                                  repeat(priorities) if isinstance(priorities, int) else priorities),
                     tuple(c["holes"]))
    return out
