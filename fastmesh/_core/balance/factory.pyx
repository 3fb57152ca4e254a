"""Balancer factory: algorithm name from the config -> a new Balancer over the given endpoint weights."""
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.balance.ewma cimport EwmaBalancer
from fastmesh._core.balance.least_request cimport LeastRequestBalancer
from fastmesh._core.balance.maglev cimport MaglevBalancer
from fastmesh._core.balance.random cimport RandomBalancer
from fastmesh._core.balance.ring_hash cimport RingHashBalancer
from fastmesh._core.balance.round_robin cimport RoundRobinBalancer

# The names a cluster's `lb_policy` may use; one algorithm per module.
ALGORITHMS = {
    "round_robin": RoundRobinBalancer,
    "least_request": LeastRequestBalancer,
    "random": RandomBalancer,
    "ewma": EwmaBalancer,
    "ring_hash": RingHashBalancer,
    "maglev": MaglevBalancer,
}

# Algorithms that map a request key to an endpoint (callers should use pick_hash with a key).
HASHING = frozenset({"ring_hash", "maglev"})


def make_balancer(str name, list weights, seed=None, *, double slow_start=0.0, double decay=10.0,
                  double default_rtt=0.030, double penalty=1.0, ids=None, int vnodes=160,
                  long long max_ring=1 << 20, long long table_size=65537) -> Balancer:
    """A new balancer of algorithm `name` over endpoints 0..len(weights)-1, all up.

    `seed` (an int) makes the random draws repeatable, for tests; by default os.urandom seeds them.
    Every algorithm takes `slow_start` (seconds a recovered endpoint ramps from 10% to full weight;
    0 = off). Only the algorithm named uses the rest: ewma `decay`, `default_rtt` and `penalty`
    (seconds); ring_hash `ids`, `vnodes` (ring points per unit of weight) and `max_ring`; maglev `ids`
    and `table_size` (a prime). `ids` are stable 64-bit endpoint ids, e.g. hash_key(b"host:port").
    """
    cls = ALGORITHMS.get(name)
    if cls is None:
        raise ValueError(f"unknown balancer {name!r}; expected one of: {', '.join(sorted(ALGORITHMS))}")
    if name == "ewma":
        return cls(weights, seed, slow_start=slow_start, decay=decay, default_rtt=default_rtt, penalty=penalty)
    if name == "ring_hash":
        return cls(weights, seed, slow_start=slow_start, ids=ids, vnodes=vnodes, max_ring=max_ring)
    if name == "maglev":
        return cls(weights, seed, slow_start=slow_start, ids=ids, table_size=table_size)
    return cls(weights, seed, slow_start=slow_start)
