"""Type stub for fastmesh._core.balance.round_robin."""
from fastmesh._core.balance.base import Balancer

class RoundRobinBalancer(Balancer): ...
