"""Bind each listener's socket and attach it, with its protocol handler, to the reactor."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fastmesh._core.cluster import Cluster
from fastmesh._core.http1.proxy import HttpProxy
from fastmesh._core.http2.conn import H2Front
from fastmesh._core.http2.limits import H2Limits
from fastmesh._core.listener import Listener
from fastmesh._core.naming import Names
from fastmesh._core.proxyproto.codec import V1, V2
from fastmesh._core.ratelimit import RateBlock
from fastmesh._core.reactor import ConnectionLimit, Reactor
from fastmesh._core.tcp.splice import TcpProxy
from fastmesh._core.upstream.connector import Connector
from fastmesh.config.schema import SNI_HELLO_TIMEOUT, Http2
from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.dataplane.access_log import AccessLogWriter, build_listener_log
from fastmesh.dataplane.filters import FilterEntry, build_chains, filter_wait
from fastmesh.dataplane.routes import build_router
from fastmesh.dataplane.sockets import bind_socket
from fastmesh.dataplane.tls import build_client_tls, build_server_tls, unchanged_or
from fastmesh.errors import ConfigError

if TYPE_CHECKING:
    from fastmesh._core.tls.context import TlsClient, TlsServer


def build_tcp_acceptor(cfg: ListenerConfig, reactor: Reactor, cluster: Cluster, clusters: dict[str, Cluster],
                       cluster_cfgs: dict[str, ClusterConfig], source: str, index: int,
                       running_clients: Sequence[TlsClient] = (), names: Names | None = None,
                       service_running: Mapping[str, Sequence[TlsClient]] | None = None) -> TcpProxy:
    """Where a tcp listener's connections go: TLS terminated (cfg.tls), originated (the cluster's tls), or passed
    through by server name (cfg.sni_routes). `running_clients`: origination contexts in use (the cluster's HTTP
    pool's, the one the listener had before a reload): the first built from the same settings and files is used
    (with its sessions) instead of a new one. A listener with `service` resolves it with `names` per connection
    (`cluster` is then the first cluster the service names, or any), and originates TLS to each cluster that has a
    tls table with that cluster's own context (`service_running`: the running contexts per cluster name)."""
    if cfg.service is not None:
        return _service_acceptor(cfg, reactor, cluster, clusters, cluster_cfgs, source, index, names,
                                 service_running or {})
    key = f"listeners[{index}].tls"
    server = build_server_tls(cfg.tls, cfg.protocol, source, key) if cfg.tls is not None else None
    client = _client_tls(cluster_cfgs[cluster.name], source, running_clients)
    routes = [(name, clusters[target]) for name, target in cfg.sni_routes.items()] if cfg.sni_routes else None
    if routes is not None:
        wrapped = [n for n in (cluster.name, *cfg.sni_routes.values()) if cluster_cfgs[n].tls is not None]
        if wrapped:
            # Passthrough relays the client's own TLS: wrapping it in ours would hide it from the endpoint.
            raise ConfigError(source, f"clusters.{wrapped[0]}.tls", "no tls table",
                              reason=f"listener {cfg.name!r} passes TLS through (sni_routes) to this cluster: "
                              "its endpoints get the client's TLS, so the cluster cannot originate its own")
    return TcpProxy(reactor, cluster, cfg.name, cfg.idle_timeout, cfg.splice, tls=server, upstream_tls=client,
                    sni_routes=routes, hello_timeout=SNI_HELLO_TIMEOUT)


def _client_tls(ccfg: ClusterConfig, source: str, running: Sequence[TlsClient]) -> TlsClient | None:
    """What a tcp listener's relays to this cluster originate: None (no tls table: cleartext), else the first of
    `running` built from the same settings and files (its sessions kept, one reload and one /tls entry per
    cluster), else a new context."""
    if ccfg.tls is None:
        return None
    client = build_client_tls(ccfg.tls, source, f"clusters.{ccfg.name}.tls")
    for old in running:
        if unchanged_or(old, client) is old:
            return old
    return client


def _service_acceptor(cfg: ListenerConfig, reactor: Reactor, cluster: Cluster, clusters: dict[str, Cluster],
                      cluster_cfgs: dict[str, ClusterConfig], source: str, index: int, names: Names | None,
                      running: Mapping[str, Sequence[TlsClient]]) -> TcpProxy:
    """A tcp listener sending each connection where its service resolves to when it is accepted: cleartext to a
    cluster without tls, TLS with that cluster's context (SNI, verification, client certificate) to one with it."""
    table = names.current if names is not None else None
    if names is None or table is None or cfg.service not in table.services:
        raise ConfigError(source, f"listeners[{index}].service", "a service the naming table was compiled for",
                          reason=f"listener {cfg.name!r} names service {cfg.service!r}, which has no naming")
    server = build_server_tls(cfg.tls, cfg.protocol, source, f"listeners[{index}].tls") \
        if cfg.tls is not None else None
    # Every cluster, in config order (the naming table's cluster index): the table may name any of them, now or
    # after a live change, so each one's context is ready before the first connection.
    contexts = [_client_tls(ccfg, source, running.get(name, ())) for name, ccfg in cluster_cfgs.items()]
    return TcpProxy(reactor, cluster, cfg.name, cfg.idle_timeout, cfg.splice, tls=server, names=names,
                    service=table.services.index(cfg.service), service_clusters=[clusters[n] for n in cluster_cfgs],
                    service_tls=contexts)


def h2_limits(h2: Http2, max_header_bytes: int) -> H2Limits:
    """The session settings and abuse limits of a listener's HTTP/2 side (the decoded header list is bounded like
    an HTTP/1 head's field section)."""
    return H2Limits(max_concurrent_streams=h2.max_concurrent_streams, initial_window=h2.initial_window,
                    connection_window=h2.connection_window, max_frame_size=h2.max_frame_size,
                    header_table_size=h2.header_table_size, max_header_list_size=max_header_bytes,
                    max_continuation_frames=h2.max_continuation_frames, rapid_reset_ratio=h2.rapid_reset_ratio,
                    glitch_budget=h2.glitch_budget, stall_timeout=h2.stall_timeout,
                    max_out_bytes=h2.max_queued_bytes)


def http_tls(cfg: ListenerConfig, source: str, index: int) -> TlsServer | None:
    """An http listener's TLS (read again on every reload: changed certificate files take effect), or None."""
    if cfg.tls is None:
        return None
    return build_server_tls(cfg.tls, cfg.protocol, source, f"listeners[{index}].tls", h2=cfg.http2.enabled)


def build_http_acceptor(cfg: ListenerConfig, reactor: Reactor, pools: Sequence[Connector],
                        cluster_names: list[str], names: Names | None = None, rates: RateBlock | None = None,
                        source: str = "", index: int = 0) -> HttpProxy:
    """An http listener's request handling: its router (resolving services with `names`) over the shared
    per-cluster pools and its filter chains; HTTP/2 connections (prior knowledge, or ALPN h2 over TLS) are handed
    from it to its H2Front."""
    http = HttpProxy(reactor, cfg.name, build_router(cfg, cluster_names, names, rates), pools,
                     tls=http_tls(cfg, source, index), identity_header=cfg.identity_header,
                     header_timeout=cfg.header_timeout,
                     idle_timeout=cfg.idle_timeout, max_request_line=cfg.max_request_line,
                     max_header_bytes=cfg.max_header_bytes, max_headers=cfg.max_headers,
                     forwarded_headers=cfg.forwarded_headers, request_id_header=cfg.request_id_header,
                     trust_headers=cfg.trust_headers, access_log=build_listener_log(cfg),
                     body_timeout=cfg.body_timeout)
    if cfg.http2.enabled:
        http.h2 = H2Front(http, h2_limits(cfg.http2, cfg.max_header_bytes))
    set_tracing(http, cfg)
    set_filters(http, cfg)
    return http


def set_tracing(http: HttpProxy, cfg: ListenerConfig) -> None:
    """The listener's trace context mode: off, propagate (the default), or start traces (an edge listener)."""
    t = cfg.tracing
    http.set_tracing("start" if t.start else "propagate" if t.propagate else "off", t.sample_rate)


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


def reconfigure_http(http: HttpProxy, cfg: ListenerConfig, pools: Sequence[Connector], cluster_names: list[str],
                     names: Names | None = None, rates: RateBlock | None = None, source: str = "",
                     index: int = 0) -> None:
    """A reload of an http listener in place: new routes, naming, pools, filters and options; its open connections
    stay. The old access log's file and sinks are closed (what its sinks still held is written first)."""
    old_log = http.access_log
    assert old_log is None or isinstance(old_log, AccessLogWriter)
    http.reconfigure(build_router(cfg, cluster_names, names, rates), pools, header_timeout=cfg.header_timeout,
                     idle_timeout=cfg.idle_timeout, forwarded_headers=cfg.forwarded_headers,
                     request_id_header=cfg.request_id_header, access_log=build_listener_log(cfg),
                     trust_headers=cfg.trust_headers, body_timeout=cfg.body_timeout,
                     tls=http_tls(cfg, source, index), identity_header=cfg.identity_header)
    if old_log is not None:
        old_log.close()
    set_tracing(http, cfg)
    set_filters(http, cfg)
    h2 = http.h2
    if not isinstance(h2, H2Front):
        if cfg.http2.enabled:
            http.h2 = H2Front(http, h2_limits(cfg.http2, cfg.max_header_bytes))
    elif not cfg.http2.enabled:
        if h2.active:
            h2.drain_now()              # open HTTP/2 connections finish their streams (and stay swept till then)
        else:
            http.h2 = None
    else:
        h2.set_limits(h2_limits(cfg.http2, cfg.max_header_bytes))


def bind_listener(cfg: ListenerConfig, reactor: Reactor, acceptor: TcpProxy | HttpProxy, reuse_port: bool,
                  worker_limit: ConnectionLimit | None = None) -> tuple[Listener, tuple[str, int]]:
    """Bind cfg's address and wrap the socket in a core Listener (not yet accepting) handing fds to acceptor; its
    connections count against cfg.max_connections and worker_limit (the worker's max_connections)."""
    sock = bind_socket(cfg, reuse_port)
    bound = sock.getsockname()[:2]
    listener = Listener(reactor, sock.detach(), cfg.name, acceptor, worker_limit, cfg.max_connections)
    set_proxy_protocol(listener, cfg)
    return listener, (bound[0], bound[1])


def set_proxy_protocol(listener: Listener, cfg: ListenerConfig) -> None:
    """The PROXY header cfg requires on the listener's connections (none, either version, or one of them)."""
    accept = {None: 0, "any": V1 | V2, "v1": V1, "v2": V2}[cfg.proxy_protocol]
    listener.set_proxy_protocol(accept, cfg.proxy_protocol_timeout)


def h2_stats(http: HttpProxy) -> dict[str, int] | None:
    """An http listener's HTTP/2 side in stats(): connections open, connections and streams taken ever."""
    h2 = http.h2
    if not isinstance(h2, H2Front):
        return None
    return {"connections": h2.active, "accepted": h2.accepted, "streams": h2.streams}
