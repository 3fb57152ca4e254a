"""Per cluster: resolve the endpoints once and build the core Cluster with its balancer, or update one in place.

Endpoint slots (dataplane/slots.py): a discovered cluster's live endpoints come in slot order, with `holes` where
removed ones were; static clusters have no holes.
"""
from __future__ import annotations

import operator
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastmesh._core.balance.factory import HASHING, make_balancer
from fastmesh._core.balance.hashing import hash_key
from fastmesh._core.cluster import Cluster
from fastmesh._core.endpoints import literal_rows
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.limits import LimitCell
from fastmesh._core.policy import ClusterPolicy, ConcurrencyLimit
from fastmesh._core.reactor import Reactor
from fastmesh._core.upstream.h2pool import H2Pool
from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.config.schema import Endpoint
from fastmesh.config.values import ip_literal
from fastmesh.dataplane.slots import slot_list
from fastmesh.dataplane.sockets import resolver_name
from fastmesh.dataplane.tls import build_client_tls

if TYPE_CHECKING:
    from fastmesh._core.tls.context import TlsClient

Pool = HttpPool | H2Pool        # a cluster's upstream pool, by its protocol
_PRIORITY = operator.attrgetter("priority")


def _resolve(host: str, port: int) -> tuple[int, str, int]:
    """(family, ip literal, port). Hostnames are resolved at build time (discovery hands over IP literals)."""
    literal = ip_literal(host)
    if literal is not None:
        return (socket.AF_INET6 if literal[0] == 6 else socket.AF_INET, literal[1], port)
    family, _, _, _, sockaddr = socket.getaddrinfo(resolver_name(host), port, type=socket.SOCK_STREAM)[0]
    return (int(family), str(sockaddr[0]), port)


def tier_ranks(endpoints: Sequence[Endpoint | None]) -> dict[int, int]:
    """Priority value -> tier rank (0: the lowest value, the most preferred), over the endpoints listed."""
    # (Endpoints are always true, holes never: filter(None) keeps the endpoints, in C.)
    return {p: rank for rank, p in enumerate(sorted(set(map(_PRIORITY, filter(None, endpoints)))))}


def _id(e: Endpoint) -> int:
    # Stable endpoint ids: a consistent-hash balancer rebuilt without one endpoint keeps the others' keys.
    return hash_key(f"{e.host}:{e.port}".encode())


def endpoint_table(slots: Sequence[Endpoint | None], kept: int = 0, literal: bool = False, hashing: bool = True
                   ) -> list[tuple[int, str, int, int, int, int] | None]:
    """Cluster.update's table: (family, ip, port, weight, tier rank, id) per slot, None for a hole.

    The first `kept` slots are the cluster's already: the core only compares their address and takes their
    weight and tier, so their id is left 0. `literal`: every host is an IP literal in its canonical spelling
    (what discovery hands over), so nothing is resolved. Ids are computed only for a `hashing` balancer.
    Built for 10,000 endpoints an update: no per-endpoint function call beyond what is needed."""
    ranks = tier_ranks(slots)
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    if literal and not hashing:             # discovery's sets, the common balancers: one compiled loop
        return literal_rows(list(slots), ranks, v4, v6)
    if literal:
        head = literal_rows(list(slots[:kept]), ranks, v4, v6)
    else:
        head = [None if e is None else (*_resolve(e.host, e.port), e.weight, ranks[e.priority], 0)
                for e in slots[:kept]]
    tail = [None if e is None else (*_resolve(e.host, e.port), e.weight, ranks[e.priority], _id(e) if hashing else 0)
            for e in slots[kept:]]
    return head + tail


def build_cluster(cfg: ClusterConfig, holes: Sequence[int] = (), literal: bool = False) -> Cluster:
    """A new core cluster for cfg's endpoints (with holes). `literal` as for endpoint_table (discovery's sets);
    endpoint ids are computed only for a hashing balancer (the others do not read them)."""
    slots = slot_list(cfg.endpoints, holes)
    ranks = tier_ranks(slots)
    if literal:
        v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
        endpoints = [None if e is None else (v6 if ":" in e.host else v4, e.host, e.port, ranks[e.priority])
                     for e in slots]
    else:
        endpoints = [None if e is None else (*_resolve(e.host, e.port), ranks[e.priority]) for e in slots]
    ids = [i if e is None else _id(e) for i, e in enumerate(slots)] if cfg.balancer in HASHING else None
    weights = [1 if e is None else e.weight for e in slots]
    balancer = make_balancer(cfg.balancer, weights, slow_start=cfg.slow_start, ids=ids)
    cluster = Cluster(cfg.name, endpoints, balancer, cfg.connect_timeout, cfg.connect_attempts)
    cluster.proxy_protocol = {"v1": 1, "v2": 2}.get(cfg.proxy_protocol or "", 0)
    return cluster


def update_cluster(cluster: Cluster, cfg: ClusterConfig, holes: Sequence[int] = (), literal: bool = False) -> bool:
    """Apply cfg's endpoints (with holes) to cluster in place; False (nothing changed) when the slots do not
    extend the cluster's (the discovery manager compacted them, or a static list changed): build a new one.
    `literal` as for endpoint_table (discovery's sets)."""
    table = endpoint_table(slot_list(cfg.endpoints, holes), cluster.slots, literal, cfg.balancer in HASHING)
    try:
        cluster.update(table)
    except ValueError:
        return False
    return True


def build_policy(cfg: ClusterConfig, cell: LimitCell | None = None) -> ClusterPolicy:
    """Retries, budget, timeouts and circuit breakers of a cluster, as the core checks them per request; `cell`
    holds the instance's counts they are checked against (dataplane/limits.py), private when None."""
    r, lim, ac = cfg.retries, cfg.limits, cfg.adaptive_concurrency
    adaptive = None if ac is None else ConcurrencyLimit(ac.initial_limit, ac.min_limit, ac.max_limit, ac.tolerance,
                                                        ac.smoothing)
    return ClusterPolicy(attempts=r.attempts, on=tuple(r.on), budget_percent=r.budget_percent / 100.0,
                         budget_min_per_second=r.min_per_second, backoff_base=r.backoff, backoff_max=r.max_backoff,
                         timeout=cfg.timeout, per_try_timeout=cfg.per_try_timeout or cfg.response_timeout,
                         max_connections=lim.max_connections, max_pending=lim.max_pending,
                         max_requests=lim.max_requests, max_retries=lim.max_retries, adaptive=adaptive,
                         cell=cell, grpc_status=tuple(r.grpc_status))


def cluster_tls(cfg: ClusterConfig, source: str) -> TlsClient | None:
    """The TLS an HTTP pool originates to the cluster's endpoints (its tls table), or None for cleartext."""
    if cfg.tls is None:
        return None
    return build_client_tls(cfg.tls, source, f"clusters.{cfg.name}.tls", cfg.protocol)


def build_pool(cfg: ClusterConfig, reactor: Reactor, cluster: Cluster, cell: LimitCell | None = None) -> Pool:
    """The connection pool over a cluster (shared by every http listener that routes to it): HTTP/1 keep-alive
    connections, or shared HTTP/2 connections for `protocol = "h2"`."""
    key = (cfg.hash_key or "source_ip") if cfg.balancer in HASHING else None
    if cfg.protocol == "h2":
        return H2Pool(reactor, cluster, idle_timeout=cfg.pool_idle_timeout, policy=build_policy(cfg, cell),
                      hash_key=key, keepalive_interval=cfg.h2_keepalive_interval,
                      keepalive_timeout=cfg.h2_keepalive_timeout)
    return HttpPool(reactor, cluster, cfg.pool_max_idle, cfg.pool_idle_timeout, build_policy(cfg, cell), key)
