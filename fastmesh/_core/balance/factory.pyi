"""Type stub for fastmesh._core.balance.factory."""
from collections.abc import Iterable

from fastmesh._core.balance.base import Balancer

ALGORITHMS: dict[str, type[Balancer]]
HASHING: frozenset[str]

def make_balancer(name: str, weights: list[int], seed: int | None = None, *, slow_start: float = 0.0,
                  decay: float = 10.0, default_rtt: float = 0.030, penalty: float = 1.0,
                  ids: Iterable[int] | None = None, vnodes: int = 160, max_ring: int = 1 << 20,
                  table_size: int = 65537) -> Balancer: ...
