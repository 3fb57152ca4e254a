"""Per cluster: resolve the endpoints once and build the core Cluster with its balancer."""
from __future__ import annotations

import ipaddress
import socket

from fastmesh._core.balance.factory import HASHING, make_balancer
from fastmesh._core.balance.hashing import hash_key
from fastmesh._core.cluster import Cluster
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.limits import LimitCell
from fastmesh._core.policy import ClusterPolicy, ConcurrencyLimit
from fastmesh._core.reactor import Reactor
from fastmesh._core.upstream.h2pool import H2Pool
from fastmesh.config.load import IPV4_RE
from fastmesh.config.schema import Cluster as ClusterConfig

Pool = HttpPool | H2Pool        # a cluster's upstream pool, by its protocol


def _resolve(host: str, port: int) -> tuple[int, str, int]:
    """(family, ip literal, port). Hostnames are resolved at build time (discovery hands over IP literals)."""
    if IPV4_RE.fullmatch(host):
        return (socket.AF_INET, host, port)
    try:
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip), port)
    except ValueError:
        pass
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return (int(family), str(sockaddr[0]), port)


def build_cluster(cfg: ClusterConfig) -> Cluster:
    endpoints = [_resolve(e.host, e.port) for e in cfg.endpoints]
    # Stable endpoint ids: a consistent-hash balancer rebuilt without one endpoint keeps the others' keys.
    ids = [hash_key(f"{e.host}:{e.port}".encode()) for e in cfg.endpoints]
    balancer = make_balancer(cfg.balancer, [e.weight for e in cfg.endpoints], slow_start=cfg.slow_start, ids=ids)
    return Cluster(cfg.name, endpoints, balancer, cfg.connect_timeout, cfg.connect_attempts)


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


def build_pool(cfg: ClusterConfig, reactor: Reactor, cluster: Cluster, cell: LimitCell | None = None) -> Pool:
    """The connection pool over a cluster (shared by every http listener that routes to it): HTTP/1 keep-alive
    connections, or shared HTTP/2 connections for `protocol = "h2"`."""
    key = (cfg.hash_key or "source_ip") if cfg.balancer in HASHING else None
    if cfg.protocol == "h2":
        return H2Pool(reactor, cluster, idle_timeout=cfg.pool_idle_timeout, policy=build_policy(cfg, cell),
                      hash_key=key)
    return HttpPool(reactor, cluster, cfg.pool_max_idle, cfg.pool_idle_timeout, build_policy(cfg, cell), key)
