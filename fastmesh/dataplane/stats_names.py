"""Slot names: what each slot of a stats layout counts, by name, so blocks of two layouts (before and after a
reload) add up into one.

A slot's offset depends on the whole config; its name does not: ("listener", "web", "accepted") is the same
counter in every layout that has a listener called web. Endpoint slots are named by cluster and address (plus the
occurrence of that address in the cluster, should it be listed twice). A name only one of two layouts has is
dropped when translating: that listener or cluster is gone.
"""
from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from fastmesh._core.stats import CLUSTER_FIELDS, ENDPOINT_FIELDS, HISTOGRAM_SIZE, LISTENER_FIELDS, STATUS_CLASSES

if TYPE_CHECKING:
    from fastmesh.dataplane.stats import StatsLayout

MASK = (1 << 64) - 1                    # slots are uint64: sums wrap as the C adds do (a gauge's net value)
LATEST_FIELDS = ("state", "seen")       # endpoint fields that describe now: taken from one block, never summed

Name = tuple[Any, ...]


def slot_names(layout: StatsLayout) -> dict[Name, int]:
    """Every counted slot of the layout (the header excluded) by its name."""
    names: dict[Name, int] = {}
    for ls in layout.listeners:
        for i, f in enumerate(LISTENER_FIELDS):
            names[("listener", ls.name, f)] = ls.offset + i
    for cs in layout.clusters.values():
        for f in CLUSTER_FIELDS:
            names[("cluster", cs.name, f)] = cs.field(f)
        seen: dict[str, int] = {}
        for i, address in enumerate(cs.endpoints):
            k = seen[address] = seen.get(address, -1) + 1
            for f in ENDPOINT_FIELDS:
                names[("endpoint", cs.name, address, k, f)] = cs.endpoint_field(f) + i
    for r in layout.requests:
        for i, c in enumerate(STATUS_CLASSES):
            names[("requests", r.listener, r.cluster, c)] = r.offset + i
    for d in layout.durations.values():
        for i in range(HISTOGRAM_SIZE):
            names[("duration", d.cluster, i)] = d.offset + i
    return names


class Translation:
    """Offsets of one layout's slots in another's, for the names both have: `summed` pairs add up across blocks,
    `latest` pairs (endpoint state and last-seen) are copied from the newest block only."""

    def __init__(self, src: StatsLayout, dst: StatsLayout) -> None:
        theirs = slot_names(dst)
        self.summed: list[tuple[int, int]] = []
        self.latest: list[tuple[int, int]] = []
        for name, offset in slot_names(src).items():
            there = theirs.get(name)
            if there is None:
                continue
            (self.latest if name[0] == "endpoint" and name[-1] in LATEST_FIELDS else self.summed).append(
                (offset, there))
        self.identity = src.key == dst.key

    def add(self, values: array[int], out: array[int], skip: frozenset[int] = frozenset()) -> None:
        """out += values for the summed slots (source offsets in `skip` left out), wrapping at 64 bits."""
        for s, d in self.summed:
            if s not in skip:
                out[d] = (out[d] + values[s]) & MASK

    def copy_latest(self, values: array[int], out: array[int]) -> None:
        """out's endpoint state and last-seen slots from values."""
        for s, d in self.latest:
            out[d] = values[s]
