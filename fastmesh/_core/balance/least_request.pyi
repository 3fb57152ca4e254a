"""Type stub for fastmesh._core.balance.least_request."""
from fastmesh._core.balance.base import Balancer

class LeastRequestBalancer(Balancer): ...
