"""Type stub for fastmesh._core.balance.ring_hash."""
from collections.abc import Iterable

from fastmesh._core.balance.base import Balancer

MAX_RING: int

class RingHashBalancer(Balancer):
    def __init__(self, weights: list[int], seed: int | None = None, *, slow_start: float = 0.0,
                 ids: Iterable[int] | None = None, vnodes: int = 160, max_ring: int = 1 << 20) -> None: ...
    @property
    def ring_size(self) -> int: ...
    def point_counts(self) -> list[int]: ...
    def endpoint_ids(self) -> list[int]: ...
