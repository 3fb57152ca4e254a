"""Balancer factory: algorithm name from the config -> a new Balancer over the given endpoint weights."""
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.balance.least_request cimport LeastRequestBalancer
from fastmesh._core.balance.random cimport RandomBalancer
from fastmesh._core.balance.round_robin cimport RoundRobinBalancer

# The names a cluster's `lb_policy` may use; one algorithm per module.
ALGORITHMS = {
    "round_robin": RoundRobinBalancer,
    "least_request": LeastRequestBalancer,
    "random": RandomBalancer,
}


def make_balancer(str name, list weights, seed=None) -> Balancer:
    """A new balancer of algorithm `name` over endpoints 0..len(weights)-1, all up.

    `seed` (an int) makes the random draws repeatable, for tests; by default os.urandom seeds them.
    """
    cls = ALGORITHMS.get(name)
    if cls is None:
        raise ValueError(f"unknown balancer {name!r}; expected one of: {', '.join(sorted(ALGORITHMS))}")
    return cls(weights, seed)
