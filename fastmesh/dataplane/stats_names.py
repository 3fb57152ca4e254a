"""Slot names: what each slot of a stats layout counts, by name (StatsLayout.slot_names() in dataplane/stats.py),
so blocks of two layouts (before and after a reload) add up into one.

A slot's offset depends on the whole config; its name does not: ("listener", "web", "accepted") is the same
counter in every layout that has a listener called web. Endpoint slots are named by cluster and address (plus the
occurrence of that address in the cluster, should it be listed twice). A name only one of two layouts has is
dropped when translating: that listener or cluster is gone.
"""
from __future__ import annotations

from array import array
from typing import Any

MASK = (1 << 64) - 1                    # slots are uint64: sums wrap as the C adds do (a gauge's net value)
LATEST_FIELDS = ("state", "seen")       # endpoint fields that describe now: taken from one block, never summed

Name = tuple[Any, ...]


class Translation:
    """Offsets of one layout's slots in another's, for the names both have: `summed` pairs add up across blocks,
    `latest` pairs (endpoint state and last-seen) are copied from the newest block only."""

    def __init__(self, src: dict[Name, int], dst: dict[Name, int], identity: bool) -> None:
        """src and dst: the slot names of two layouts (StatsLayout.slot_names()); identity: they are one layout."""
        self.summed: list[tuple[int, int]] = []
        self.latest: list[tuple[int, int]] = []
        for name, offset in src.items():
            there = dst.get(name)
            if there is None:
                continue
            (self.latest if name[0] == "endpoint" and name[-1] in LATEST_FIELDS else self.summed).append(
                (offset, there))
        self.identity = identity

    def add(self, values: array[int], out: array[int], skip: frozenset[int] = frozenset()) -> None:
        """out += values for the summed slots (source offsets in `skip` left out), wrapping at 64 bits."""
        for s, d in self.summed:
            if s not in skip:
                out[d] = (out[d] + values[s]) & MASK

    def copy_latest(self, values: array[int], out: array[int]) -> None:
        """out's endpoint state and last-seen slots from values."""
        for s, d in self.latest:
            out[d] = values[s]
