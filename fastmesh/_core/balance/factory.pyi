"""Type stub for fastmesh._core.balance.factory."""
from fastmesh._core.balance.base import Balancer

ALGORITHMS: dict[str, type[Balancer]]

def make_balancer(name: str, weights: list[int], seed: int | None = None) -> Balancer: ...
