"""Config -> a plain dict in the TOML shape with every default filled in (config_from_dict reads it back)."""
from __future__ import annotations

import dataclasses
from typing import Any

from fastmesh.config.schema import (
    GRPC_STATUS_NAMES, Cluster, ClusterTls, Config, Discovery, Endpoint, Listener, ListenerTls, Naming, Route,
)
from fastmesh.config.sections.clusters import endpoint_text
from fastmesh.config.sections.discovery import _DISCOVERY_KEYS
from fastmesh.config.sections.naming import _NAMING_SOURCE_KEYS
from fastmesh.config.values import format_address, format_duration, shortest_decimal


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config with every default filled in, in the TOML shape (config_from_dict reads it back)."""
    out: dict[str, Any] = {
        "workers": cfg.workers,
        "max_connections": cfg.max_connections,
        "drain_timeout": format_duration(cfg.drain_timeout),
        "busy_poll": format_duration(cfg.busy_poll),
        "ticket_secret_rotation": format_duration(cfg.ticket_secret_rotation),
        "admin": {"listen": format_address(cfg.admin.host, cfg.admin.port)},
        "listeners": [_listener_dict(lst) for lst in cfg.listeners],
        "clusters": {name: _cluster_dict(cluster) for name, cluster in cfg.clusters.items()},
    }
    if cfg.demo is not None:
        out["demo"] = {"backends": [endpoint_text(e) for e in cfg.demo.backends]}
    if cfg.event_sinks:
        out["event_sinks"] = [_plugin_dict(s) for s in cfg.event_sinks]
    if cfg.naming.rules or cfg.naming.source is not None:
        out["naming"] = naming_dict(cfg.naming)
    if cfg.tracing.export is not None:
        ex = cfg.tracing.export
        out["tracing"] = {"export": {"endpoint": ex.endpoint, "service_name": ex.service_name,
                                     "headers": dict(ex.headers), "timeout": format_duration(ex.timeout),
                                     "batch": ex.batch, "interval": format_duration(ex.interval),
                                     "max_pending": ex.max_pending}}
    if cfg.cluster_templates:
        out["cluster_templates"] = {p: {**{k: v for k, v in _cluster_dict(t.cluster).items() if k != "endpoints"},
                                        "max_clusters": t.max_clusters,
                                        "idle_timeout": format_duration(t.idle_timeout)}
                                    for p, t in cfg.cluster_templates.items()}
    return out


def _cluster_dict(cluster: Cluster) -> dict[str, Any]:
    out: dict[str, Any] = {
        "endpoints": [_endpoint_dict(e) for e in cluster.endpoints],
        "balancer": cluster.balancer,
        "protocol": cluster.protocol,
        "connect_timeout": format_duration(cluster.connect_timeout),
        "connect_attempts": cluster.connect_attempts,
        "response_timeout": format_duration(cluster.response_timeout),
        "pool_max_idle": cluster.pool_max_idle,
        "pool_idle_timeout": format_duration(cluster.pool_idle_timeout),
        "h2_keepalive_interval": format_duration(cluster.h2_keepalive_interval),
        "h2_keepalive_timeout": format_duration(cluster.h2_keepalive_timeout),
        "timeout": format_duration(cluster.timeout),
        "per_try_timeout": format_duration(cluster.per_try_timeout),
        "retries": {"attempts": cluster.retries.attempts, "on": list(cluster.retries.on),
                    "budget_percent": cluster.retries.budget_percent,
                    "min_per_second": cluster.retries.min_per_second,
                    "backoff": format_duration(cluster.retries.backoff),
                    "max_backoff": format_duration(cluster.retries.max_backoff),
                    "grpc_status": [GRPC_STATUS_NAMES[code] for code in cluster.retries.grpc_status]},
        "limits": {"max_connections": cluster.limits.max_connections,
                   "max_pending": cluster.limits.max_pending,
                   "max_requests": cluster.limits.max_requests,
                   "max_retries": cluster.limits.max_retries},
        **({"hash_key": cluster.hash_key} if cluster.hash_key is not None else {}),
        "adaptive_concurrency": (False if cluster.adaptive_concurrency is None else
                                 dataclasses.asdict(cluster.adaptive_concurrency)),
        "slow_start": format_duration(cluster.slow_start),
        **({"discovery": _discovery_dict(cluster.discovery)} if cluster.discovery is not None else {}),
        **({"tls": _tls_dict(cluster.tls)} if cluster.tls is not None else {}),
        **({"proxy_protocol": cluster.proxy_protocol} if cluster.proxy_protocol is not None else {}),
    }
    out.update(_health_dict(cluster))
    if cluster.template is not None:
        out["template"] = cluster.template
    return out


def naming_dict(naming: Naming) -> dict[str, Any]:
    """The naming table: its rules and, when watched, its source with the defaults filled in."""
    out: dict[str, Any] = {"rules": list(naming.rules)}
    src = naming.source
    if src is not None:
        needed, optional = _NAMING_SOURCE_KEYS[src.kind]
        source: dict[str, Any] = {"kind": src.kind}
        for name in (*needed, *optional):
            value = getattr(src, name)
            if name == "endpoints":
                value = [format_address(host, port) for host, port in value]
            elif name in ("interval", "timeout"):
                value = format_duration(value)
            source[name] = value
        out["source"] = source
    return out


def _plugin_dict(spec: Any) -> dict[str, Any]:
    """A filter or sink table with every key (durations spelled as the loader reads them)."""
    out = dataclasses.asdict(spec)
    for name in ("timeout", "interval"):
        if name in out:
            out[name] = format_duration(out[name])
    return out


def _endpoint_dict(e: Endpoint) -> dict[str, Any]:
    """An endpoint table; `priority` only when set (most configs never use tiers)."""
    out: dict[str, Any] = {"address": endpoint_text(e), "weight": e.weight}
    if e.priority:
        out["priority"] = e.priority
    return out


def _discovery_dict(d: Discovery) -> dict[str, Any]:
    """A discovery table with the keys its kind takes, defaults filled in."""
    needed, optional = _DISCOVERY_KEYS[d.kind]
    out: dict[str, Any] = {"kind": d.kind}
    for name in (*needed, *optional):
        value = getattr(d, name)
        if name in ("resolvers", "endpoints"):
            value = [format_address(host, port) for host, port in value]
        elif name in ("hold", "min_ttl", "max_ttl", "timeout", "interval"):
            value = format_duration(value)
        elif name == "config":
            value = dict(value)
        out[name] = value
    return out


def _health_dict(cluster: Cluster) -> dict[str, Any]:
    """A cluster's health_check (when set) and outlier keys; `outlier = false` when it is off."""
    out: dict[str, Any] = {}
    hc = cluster.health_check
    if hc is not None:
        check: dict[str, Any] = {"type": hc.type}
        if hc.type == "http":
            check["path"] = hc.path
        elif hc.type == "grpc":
            check["service"] = hc.service
        check.update(interval=format_duration(hc.interval), timeout=format_duration(hc.timeout),
                     healthy=hc.healthy, unhealthy=hc.unhealthy)
        if hc.type == "http":
            check["expected_statuses"] = [low if low == high else f"{low}-{high}"
                                          for low, high in hc.expected_statuses]
        check["jitter"] = f"{shortest_decimal(hc.jitter)}%"
        out["health_check"] = check
    ol = cluster.outlier
    if ol is None:
        out["outlier"] = False
        return out
    out["outlier"] = {"consecutive_failures": ol.consecutive_failures,
                      "base_ejection": format_duration(ol.base_ejection),
                      "max_ejection": format_duration(ol.max_ejection),
                      "max_ejected_percent": ol.max_ejected_percent}
    if ol.success_rate is not None:
        sr = ol.success_rate
        out["outlier"]["success_rate"] = {"window": format_duration(sr.window),
                                          "minimum_requests": sr.minimum_requests, "threshold": sr.threshold}
    return out


def _listener_dict(lst: Listener) -> dict[str, Any]:
    out: dict[str, Any] = {"name": lst.name, "listen": format_address(lst.host, lst.port), "protocol": lst.protocol}
    if lst.cluster is not None:
        out["cluster"] = lst.cluster
    if lst.service is not None:
        out["service"] = lst.service
    out.update(idle_timeout=format_duration(lst.idle_timeout), backlog=lst.backlog,
               max_connections=lst.max_connections, splice=lst.splice)
    if lst.tls is not None:
        out["tls"] = _tls_dict(lst.tls)
    if lst.proxy_protocol is not None:
        out["proxy_protocol"] = True if lst.proxy_protocol == "any" else lst.proxy_protocol
    if lst.proxy_protocol is not None or lst.proxy_protocol_timeout != Listener.proxy_protocol_timeout:
        out["proxy_protocol_timeout"] = format_duration(lst.proxy_protocol_timeout)
    if lst.protocol != "http":
        if lst.sni_routes:
            out["sni_routes"] = dict(lst.sni_routes)
        return out
    out.update(
        header_timeout=format_duration(lst.header_timeout),
        body_timeout=format_duration(lst.body_timeout),
        max_request_line=lst.max_request_line,
        max_header_bytes=lst.max_header_bytes,
        max_headers=lst.max_headers,
        forwarded_headers=lst.forwarded_headers,
        request_id_header=lst.request_id_header,
        identity_header=lst.identity_header,
        trust_headers=lst.trust_headers,
        trust_naming=lst.trust_naming,
        tracing=dataclasses.asdict(lst.tracing),
    )
    if lst.access_log is not None:
        out["access_log"] = {"format": lst.access_log.format, "path": lst.access_log.path}
        if lst.access_log.fields:
            out["access_log"]["fields"] = list(lst.access_log.fields)
    h2 = lst.http2
    out["http2"] = {"enabled": h2.enabled, "max_concurrent_streams": h2.max_concurrent_streams,
                    "initial_window": h2.initial_window, "connection_window": h2.connection_window,
                    "max_frame_size": h2.max_frame_size, "header_table_size": h2.header_table_size,
                    "max_continuation_frames": h2.max_continuation_frames,
                    "rapid_reset_ratio": h2.rapid_reset_ratio, "glitch_budget": h2.glitch_budget,
                    "stall_timeout": format_duration(h2.stall_timeout), "max_queued_bytes": h2.max_queued_bytes}
    if lst.routes:
        out["routes"] = [_route_dict(route) for route in lst.routes]
    if lst.filters:
        out["filters"] = [_plugin_dict(f) for f in lst.filters]
    if lst.log_sinks:
        out["log_sinks"] = [_plugin_dict(s) for s in lst.log_sinks]
    return out


def _tls_dict(tls: ListenerTls | ClusterTls) -> dict[str, Any]:
    """A tls table with its defaults filled in (None values left out: they mean "not set")."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(tls):
        value = getattr(tls, f.name)
        if value is None:
            continue
        if f.name == "certificates":
            value = [{"cert": c.cert, "key": c.key, **({"names": list(c.names)} if c.names else {})} for c in value]
        elif f.name in ("handshake_timeout", "ticket_rotation"):
            value = format_duration(value)
        out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _route_dict(route: Route) -> dict[str, Any]:
    """A route's keys that are set: an absent condition matches everything, an absent edit does nothing."""
    out: dict[str, Any] = {}
    for name in ("name", "host", "path", "path_prefix", "path_regex", "methods", "headers", "cluster", "service",
                 "rewrite_prefix",
                 "add_request_headers", "remove_request_headers", "add_response_headers", "allow_identities"):
        value = getattr(route, name)
        if value is not None and value != [] and value != {}:
            out[name] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
    if route.filters:
        out["filters"] = [_plugin_dict(f) for f in route.filters]
    if route.rate_limit is not None:
        lim = route.rate_limit
        out["rate_limit"] = {"rate": lim.rate_text(), "burst": lim.burst, "buckets": lim.buckets,
                             **({"key": lim.key} if lim.key else {})}
    return out
