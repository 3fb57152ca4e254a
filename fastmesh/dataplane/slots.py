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
changed clusters' sets (encode_sets / decode_sets), by columns: the hosts in one string, ports, weights and
priorities as arrays of 16-bit numbers (or one number for all), the holes as runs: no object per endpoint on the
wire, and a few C calls per column to make or read it.
"""
from __future__ import annotations

import binascii          # base64 itself is binascii plus 50 KiB of other encodings
import bisect
import dataclasses
import json
import operator
from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from fastmesh._core.endpoints import make_endpoints
from fastmesh.config.schema import Endpoint

_ADDRESS = operator.attrgetter("host", "port")     # an endpoint's key: (host, port), made in C
PAYLOAD_FORMAT = 2          # encode_sets' layout: a worker refuses another (supervisor and workers are one build)
COMPACT_AT = 64             # holes below this never trigger a compaction, whatever the live count

Slots = list[Endpoint | None]
Holes = Mapping[str, Sequence[int]]         # cluster name -> its holes (slot indexes); absent: none


def next_slots(prev: Slots | None, endpoints: Sequence[Endpoint]) -> Slots:
    """The slots for `endpoints` after `prev` (None: the first set): see the module docstring."""
    if not prev:
        return list(endpoints)
    # Discovery hands over IP literals in their canonical spelling (discovery/base.py), so (host, port) is the key.
    wanted = dict(zip(map(_ADDRESS, endpoints), endpoints))
    listed = len(wanted)
    pop = wanted.pop
    slots: Slots = [None if e is None else pop(_ADDRESS(e), None) for e in prev]
    holes = len(slots) - (listed - len(wanted))     # every slot but those whose endpoint is still listed
    if holes >= COMPACT_AT and holes > len(endpoints):
        return list(endpoints)
    slots.extend(wanted.values())           # what was not in prev, in the order given
    return slots


def live(slots: Slots) -> list[Endpoint]:
    """The endpoints of the slots, in slot order (what the config lists)."""
    return [e for e in slots if e is not None]


def holes_of(slots: Slots) -> tuple[int, ...]:
    return tuple([i for i, e in enumerate(slots) if e is None])


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


_HOST, _PORT = operator.attrgetter("host"), operator.attrgetter("port")
_WEIGHT, _PRIORITY = operator.attrgetter("weight"), operator.attrgetter("priority")
_U16 = "H"                  # ports, weights (1 to 1000) and priorities (0 to 65535) as 16-bit numbers on the wire


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _numbers(values: list[int]) -> int | str:
    """A column of 16-bit numbers: one number when every endpoint has it (the common case: weight 1, priority 0),
    else the array's bytes (native order: supervisor and workers run on one machine) in base64."""
    if values and values.count(values[0]) == len(values):
        return values[0]
    return _b64(array(_U16, values).tobytes())


def _unnumbers(column: int | str, count: int) -> list[int]:
    if isinstance(column, int):
        return [column] * count
    values = array(_U16)
    values.frombytes(binascii.a2b_base64(column))
    return values.tolist()


def hole_runs(holes: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted slot indexes as (first, length) runs of consecutive ones: an update replacing 10,000 endpoints
    leaves one run (found by binary search, as slot_list does: no loop per hole)."""
    gaps = sorted(holes)
    runs = []
    k = 0
    while k < len(gaps):
        end = bisect.bisect_right(range(len(gaps)), gaps[k] - k, lo=k, key=lambda j: gaps[j] - j)
        runs.append((gaps[k], end - k))
        k = end
    return runs


def encode_sets(sets: Mapping[str, tuple[Sequence[Endpoint], Sequence[int]]]) -> bytes:
    """A discovery update's payload (the supervisor's side), by columns, no object per endpoint: the IP literals
    in one space-separated string, the ports as an array of 16-bit numbers (base64), weights and priorities
    likewise or one number when all are equal, the holes as (first, length) runs. JSON around them."""
    out = {}
    for name, (endpoints, holes) in sets.items():
        # (Arrays made from lists: from an iterator, an array grows one item at a time.)
        out[name] = {"count": len(endpoints), "hosts": " ".join(map(_HOST, endpoints)),
                     "ports": _b64(array(_U16, list(map(_PORT, endpoints))).tobytes()),
                     "weights": _numbers(list(map(_WEIGHT, endpoints))),
                     "priorities": _numbers(list(map(_PRIORITY, endpoints))),
                     "holes": hole_runs(holes)}
    return json.dumps({"format": PAYLOAD_FORMAT, "clusters": out}, separators=(",", ":")).encode()


# What endpoints_of() fills in, and must be all an Endpoint holds (checked at import: a field added to Endpoint, or a
# __post_init__, must not be skipped silently).
_FIELDS = ("host", "port", "weight", "priority")
if tuple(f.name for f in dataclasses.fields(Endpoint)) != _FIELDS or hasattr(Endpoint, "__post_init__"):
    raise RuntimeError("slots.endpoints_of() no longer makes a whole Endpoint: update it with config.schema.Endpoint")


def endpoints_of(hosts: Sequence[str], ports: Sequence[int], weights: Iterable[int], priorities: Iterable[int]
                 ) -> list[Endpoint]:
    """Endpoint objects for checked columns, equal to Endpoint(host, port, weight, priority) each: made in one
    compiled loop without the frozen dataclass's __init__ (four object.__setattr__ calls per endpoint), which
    took about half of decoding a 10,000-endpoint update in every worker. Their attributes are set once, before
    anyone sees them."""
    return make_endpoints(list(hosts), list(ports), list(weights), list(priorities), Endpoint)


def decode_sets(payload: bytes) -> EndpointSets:
    """A discovery update's payload (the worker's side). The supervisor's sources checked every endpoint; what is
    checked here is that the payload is one this code reads and its columns agree (ValueError otherwise)."""
    data = json.loads(payload)
    if data.get("format") != PAYLOAD_FORMAT:
        raise ValueError(f"endpoint payload format {data.get('format')!r}, expected {PAYLOAD_FORMAT}")
    out: EndpointSets = {}
    for name, c in data["clusters"].items():
        count = c["count"]
        hosts = c["hosts"].split(" ") if count else []
        ports = _unnumbers(c["ports"], count) if count else []
        weights, priorities = _unnumbers(c["weights"], count), _unnumbers(c["priorities"], count)
        if not len(hosts) == len(ports) == len(weights) == len(priorities) == count:
            raise ValueError(f"endpoint payload: cluster {name!r}: columns of {len(hosts)}, {len(ports)}, "
                             f"{len(weights)} and {len(priorities)} entries for {count} endpoints")
        holes = tuple(chain.from_iterable(range(first, first + length) for first, length in c["holes"]))
        out[name] = (endpoints_of(hosts, ports, weights, priorities), holes)
    return out
