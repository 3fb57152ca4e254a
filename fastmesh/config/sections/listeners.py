"""[[listeners]]: the keys every listener takes, those only http or tcp ones take, and their http2 table."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import PROTOCOLS, Http2, Listener
from fastmesh.config.sections.access_log import _access_log
from fastmesh.config.sections.clusters import _cluster_ref
from fastmesh.config.sections.headers import HEADER_NAME, _TOKEN_RE
from fastmesh.config.sections.plugins import _filters, _sinks
from fastmesh.config.sections.routes import _routes, _service
from fastmesh.config.sections.tls import _listener_tls
from fastmesh.config.sections.tracing import _listener_tracing
from fastmesh.config.values import ADDRESS, _is_host
from fastmesh.config.walk import (
    BAD, _address, _all_good, _array, _Check, _choice, _choices, _duration, _flag, _fraction, _key, _matching, _name,
    Parser, show, _table, _whole,
)
from fastmesh.errors import ConfigError


def _listener_proxy_protocol(check: _Check, key: str, value: Any) -> Any:
    """true (either version), false, or "v1" / "v2" to accept only that one."""
    if value is True:
        return "any"
    if value is False:
        return None
    if value in ("v1", "v2"):
        return value
    return check.bad(key, 'true, false, "v1" or "v2"', value)


def _sni_routes(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, Mapping) or not value:
        return check.bad(key, 'a table of server name = cluster, like { "api.example.com" = "api" }', value)
    out = {}
    for name, cluster in value.items():
        item = _key(key, name)
        if not _is_host(name[2:] if name.startswith("*.") else name):
            check.bad(item, 'a server name like "api.example.com" or "*.example.com"', name)
            continue
        ref = _cluster_ref(check, item, cluster)
        if ref is not BAD:
            out[str(name)] = ref
    return out if len(out) == len(value) else BAD


_TOKEN_OR_NONE_RE = re.compile(rf"(?:{_TOKEN_RE.pattern})?")   # "" turns the header off
_request_id_header = _matching(_TOKEN_OR_NONE_RE, f'{HEADER_NAME}, or "" for none')


_HTTP2_FIELDS: dict[str, Parser] = {
    "enabled": _flag,
    "max_concurrent_streams": _whole(1, 1 << 16),
    "initial_window": _whole(1, (1 << 31) - 1),
    "connection_window": _whole(65535, (1 << 31) - 1),
    "max_frame_size": _whole(16384, (1 << 24) - 1),
    "header_table_size": _whole(0, 1 << 20),
    "max_continuation_frames": _whole(1, 1024),
    "rapid_reset_ratio": _fraction,
    "glitch_budget": _whole(1, 1 << 24),
    "stall_timeout": _duration(allow_zero=False),
    "max_queued_bytes": _whole(65536, 1 << 30),
}


def _http2(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _HTTP2_FIELDS)
    return BAD if fields is None else Http2(**fields)


# Protocols a newcomer tries that are set another way: the error says which.
_PROTOCOL_HINTS = {
    "https": "for HTTPS, protocol = \"http\" with a tls table",
    "tls": "TLS is a tls table on a tcp or http listener",
    "h2": "HTTP/2 clients are served on http listeners",
    "http2": "HTTP/2 clients are served on http listeners",
    "grpc": "gRPC is served on http listeners",
}
_PLAIN_PROTOCOL = _choice("protocols", PROTOCOLS)


def _protocol(check: _Check, key: str, value: Any) -> Any:
    hint = _PROTOCOL_HINTS.get(value.lower()) if isinstance(value, str) else None
    if hint is None:
        return _PLAIN_PROTOCOL(check, key, value)
    expected = f"one of the protocols {_choices(PROTOCOLS)}"
    check.errors.append(ConfigError(check.source, key, expected, show(value),
                                    reason=f"expected {expected}, got {show(value)} ({hint})"))
    return BAD


_COMMON_LISTENER_FIELDS: dict[str, Parser] = {
    "name": _name,
    "listen": _address,
    "cluster": _cluster_ref,
    "service": _service,
    "protocol": _protocol,
    "idle_timeout": _duration(allow_zero=False),
    "backlog": _whole(1, 65535),
    "max_connections": _whole(0, 1 << 24),
    "splice": _flag,
    "tls": _listener_tls,
    "proxy_protocol": _listener_proxy_protocol,
    "proxy_protocol_timeout": _duration(allow_zero=False),
}
_HTTP_LISTENER_FIELDS: dict[str, Parser] = {
    "header_timeout": _duration(allow_zero=False),
    "body_timeout": _duration(allow_zero=True),
    "max_request_line": _whole(64, 1 << 20),
    "max_header_bytes": _whole(64, 1 << 24),
    "max_headers": _whole(1, 100),
    "forwarded_headers": _flag,
    "request_id_header": _request_id_header,
    "identity_header": _request_id_header,
    "trust_headers": _flag,
    "trust_naming": _flag,
    "access_log": _access_log,
    "tracing": _listener_tracing,
    "http2": _http2,
    "routes": _routes,
    "filters": _filters,
    "log_sinks": _sinks,
}


def _http_only(check: _Check, key: str, value: Any) -> Any:
    check.errors.append(ConfigError(check.source, key, 'protocol = "http"',
                                    reason='only for listeners with protocol = "http" (this one is "tcp")'))
    return BAD


def _tcp_only(check: _Check, key: str, value: Any) -> Any:
    check.errors.append(ConfigError(check.source, key, 'protocol = "tcp"',
                                    reason='only for listeners with protocol = "tcp" (this one is "http")'))
    return BAD


_TCP_LISTENER_FIELDS: dict[str, Parser] = {"sni_routes": _sni_routes}
# Each protocol's table knows every key, so a key of the other protocol is named as such, not as unknown.
_LISTENER_FIELDS_BY_PROTOCOL: dict[str, dict[str, Parser]] = {
    "http": {**_COMMON_LISTENER_FIELDS, **_HTTP_LISTENER_FIELDS,
             **{name: _tcp_only for name in _TCP_LISTENER_FIELDS}},
    "tcp": {**_COMMON_LISTENER_FIELDS, **_TCP_LISTENER_FIELDS,
            **{name: _http_only for name in _HTTP_LISTENER_FIELDS}},
}
_LISTENER_REQUIRED = {"name": "a listener name", "listen": ADDRESS}


def _listeners(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _listener, "an array of [[listeners]] tables", "at least one listener")
    if items is BAD:
        return BAD
    seen: dict[str, int] = {}
    for i, listener in enumerate(items):
        if listener is BAD:
            continue
        first = seen.setdefault(listener.name, i)
        if first != i:
            items[i] = check.bad(f"{key}[{i}].name", f"a name not used by {key}[{first}]", listener.name)
    return _all_good(items)


def _listener(check: _Check, key: str, value: Any) -> Any:
    protocol = value.get("protocol", Listener.protocol) if isinstance(value, Mapping) else None
    # An unknown protocol is reported by its own key; its table is then checked as http's, the wider one.
    fields_map = _LISTENER_FIELDS_BY_PROTOCOL.get(protocol, _LISTENER_FIELDS_BY_PROTOCOL["http"]) \
        if isinstance(protocol, str) else _LISTENER_FIELDS_BY_PROTOCOL["http"]
    fields = _table(check, key, value, fields_map, _LISTENER_REQUIRED)
    if not isinstance(value, Mapping):
        return BAD
    if "cluster" not in value:
        if protocol == "tcp" and "service" not in value:
            check.missing(_key(key, "cluster"), "the name of a cluster, or service = a logical name")
            return BAD
        if protocol == "http" and "routes" not in value and "service" not in value:   # bad ones: their own key
            check.missing(_key(key, "cluster"), "the name of a cluster, a service, or [[listeners.routes]]: an "
                                                "http listener needs one of them")
            return BAD
    elif "service" in value:
        says = "where unmatched requests go" if protocol == "http" else "where connections go"
        check.bad(_key(key, "service"), f"no service beside cluster (both say {says})", value["service"])
        return BAD
    if protocol == "tcp" and "service" in value and "sni_routes" in value:
        check.bad(_key(key, "sni_routes"), "no sni_routes beside service (passthrough picks a cluster by server "
                  "name; give the listener a cluster for the other names)", value["sni_routes"])
        return BAD
    if fields is None:
        return BAD
    if fields.get("tls") is not None and fields.get("sni_routes"):
        check.bad(_key(key, "sni_routes"), "no tls table beside it (sni_routes passes TLS through undecrypted; "
                  "tls terminates it)", value["sni_routes"])
        return BAD
    host, port = fields.pop("listen")
    return Listener(host=host, port=port, **fields)
