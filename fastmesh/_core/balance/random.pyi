"""Type stub for fastmesh._core.balance.random."""
from fastmesh._core.balance.base import Balancer

class RandomBalancer(Balancer): ...
