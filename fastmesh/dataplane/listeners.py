"""Bind each listener's socket and attach it, with its protocol handler, to the reactor."""
from __future__ import annotations

from fastmesh._core.cluster import Cluster
from fastmesh._core.http1.proxy import HttpProxy
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.listener import Listener
from fastmesh._core.naming import Names
from fastmesh._core.reactor import ConnectionLimit, Reactor
from fastmesh._core.tcp.splice import TcpProxy
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.dataplane.access_log import AccessLogWriter, build_listener_log
from fastmesh.dataplane.filters import FilterEntry, build_chains, filter_wait
from fastmesh.dataplane.routes import build_router
from fastmesh.dataplane.sockets import bind_socket


def build_tcp_acceptor(cfg: ListenerConfig, reactor: Reactor, cluster: Cluster) -> TcpProxy:
    """Where a tcp listener's connections go."""
    return TcpProxy(reactor, cluster, cfg.name, cfg.idle_timeout, cfg.splice)


def build_http_acceptor(cfg: ListenerConfig, reactor: Reactor, pools: list[HttpPool],
                        cluster_names: list[str], names: Names | None = None) -> HttpProxy:
    """An http listener's request handling: its router (resolving services with `names`) over the shared
    per-cluster pools, and its filter chains."""
    http = HttpProxy(reactor, cfg.name, build_router(cfg, cluster_names, names), pools,
                     header_timeout=cfg.header_timeout,
                     idle_timeout=cfg.idle_timeout, max_request_line=cfg.max_request_line,
                     max_header_bytes=cfg.max_header_bytes, max_headers=cfg.max_headers,
                     forwarded_headers=cfg.forwarded_headers, request_id_header=cfg.request_id_header,
                     trust_headers=cfg.trust_headers, access_log=build_listener_log(cfg),
                     body_timeout=cfg.body_timeout)
    set_filters(http, cfg)
    return http


def set_filters(http: HttpProxy, cfg: ListenerConfig) -> list[FilterEntry]:
    """Give the listener new filter chains (new plugin instances, for the routes of cfg); the old ones are closed
    once requests already in them are done (an instance holds no request after its call returns)."""
    old = filter_entries(http)
    chains, entries = build_chains(cfg)
    http.chains = chains
    http.filter_wait = filter_wait(cfg)
    for entry in old:
        entry.close()
    return entries


def filter_entries(http: HttpProxy) -> list[FilterEntry]:
    """The listener's filter instances, each once (a listener's filters are in every route's chain)."""
    seen: dict[int, FilterEntry] = {}
    for chain in http.chains or ():
        for entry in chain.entries if chain is not None else ():
            seen.setdefault(id(entry), entry)
    return list(seen.values())


def reconfigure_http(http: HttpProxy, cfg: ListenerConfig, pools: list[HttpPool], cluster_names: list[str],
                     names: Names | None = None) -> None:
    """A reload of an http listener in place: new routes, naming, pools, filters and options; its open connections
    stay. The old access log's file and sinks are closed (what its sinks still held is written first)."""
    old_log = http.access_log
    assert old_log is None or isinstance(old_log, AccessLogWriter)
    http.reconfigure(build_router(cfg, cluster_names, names), pools, header_timeout=cfg.header_timeout,
                     idle_timeout=cfg.idle_timeout, forwarded_headers=cfg.forwarded_headers,
                     request_id_header=cfg.request_id_header, access_log=build_listener_log(cfg),
                     trust_headers=cfg.trust_headers, body_timeout=cfg.body_timeout)
    if old_log is not None:
        old_log.close()
    set_filters(http, cfg)


def bind_listener(cfg: ListenerConfig, reactor: Reactor, acceptor: TcpProxy | HttpProxy, reuse_port: bool,
                  worker_limit: ConnectionLimit | None = None) -> tuple[Listener, tuple[str, int]]:
    """Bind cfg's address and wrap the socket in a core Listener (not yet accepting) handing fds to acceptor; its
    connections count against cfg.max_connections and worker_limit (the worker's max_connections)."""
    sock = bind_socket(cfg, reuse_port)
    bound = sock.getsockname()[:2]
    listener = Listener(reactor, sock.detach(), cfg.name, acceptor, worker_limit, cfg.max_connections)
    return listener, (bound[0], bound[1])
