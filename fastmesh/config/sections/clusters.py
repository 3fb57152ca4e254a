"""[clusters.NAME]: endpoints, balancer, timeouts, retries, limits, and references to a cluster by name."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import (
    BALANCERS, CLUSTER_PROTOCOLS, GRPC_STATUS_NAMES, RETRY_CLASSES, AdaptiveConcurrency, Cluster, Endpoint, Limits,
    Retries,
)
from fastmesh.config.sections.discovery import _discovery
from fastmesh.config.sections.health import _health_check, _outlier
from fastmesh.config.sections.tls import _cluster_tls
from fastmesh.config.values import ADDRESS, MAX_PRIORITY, MAX_WEIGHT, format_address, _same_address
from fastmesh.config.walk import (
    BAD, NAME_CHARS, _NAME_RE, _address, _all_good, _array, _Check, _choice, _choices, _duration, _key, _matching,
    Parser, _table, _text, _whole,
)


def _backend(check: _Check, key: str, value: Any) -> Any:
    address = _address(check, key, value)
    return BAD if address is BAD else Endpoint(*address)


_ENDPOINT_FIELDS: dict[str, Parser] = {"address": _address, "weight": _whole(1, MAX_WEIGHT),
                                       "priority": _whole(0, MAX_PRIORITY)}


def _endpoint(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str):
        return _backend(check, key, value)
    if not isinstance(value, Mapping):
        return check.bad(key, '"host:port" or { address = "host:port", weight = N }', value)
    fields = _table(check, key, value, _ENDPOINT_FIELDS, {"address": ADDRESS})
    if fields is None:
        return BAD
    host, port = fields.pop("address")
    return Endpoint(host, port, **fields)


def _endpoints(check: _Check, key: str, value: Any) -> Any:
    endpoints = _array(check, key, value, _endpoint, 'an array of endpoints like ["127.0.0.1:9001"]',
                       "at least one endpoint")
    if endpoints is BAD:
        return BAD
    seen: dict[tuple[str, int], int] = {}
    for i, endpoint in enumerate(endpoints):
        if endpoint is BAD:
            continue
        first = seen.setdefault(_same_address(endpoint.host, endpoint.port), i)
        if first != i:
            # A repeated endpoint is almost always a typo; more traffic to one endpoint is what weight is for.
            endpoints[i] = check.bad(f"{key}[{i}]", f"an endpoint not already listed at {key}[{first}]",
                                     endpoint_text(endpoint))
    return _all_good(endpoints)


def endpoint_text(endpoint: Endpoint) -> str:
    return format_address(endpoint.host, endpoint.port)


def _retry_class(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and (value in RETRY_CLASSES or (value.isdigit() and 500 <= int(value) <= 599)):
        return value
    return check.bad(key, f"one of {_choices(RETRY_CLASSES)} or a 5xx status code", value)


GRPC_STATUS = ('a gRPC status code from 1 to 16 or its name, like "unavailable" or "resource_exhausted" '
               '("ok" is never retried)')


def grpc_status_code(value: Any) -> int | None:
    """A gRPC status as the config may spell it: 14, "14", "unavailable", "UNAVAILABLE", "resource-exhausted";
    None when it is none of them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < len(GRPC_STATUS_NAMES) else None
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isdigit():
        return grpc_status_code(int(value)) if len(value) <= 2 else None
    name = value.lower().replace("-", "_")
    return GRPC_STATUS_NAMES.index(name) if name in GRPC_STATUS_NAMES else None


def _grpc_status(check: _Check, key: str, value: Any) -> Any:
    code = grpc_status_code(value)
    return code if code else check.bad(key, GRPC_STATUS, value)


def _grpc_statuses(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)) and not value:
        return []           # an empty list says it outright: no gRPC status is retried
    items = _array(check, key, value, _grpc_status, 'a list of gRPC statuses like ["unavailable"]', "")
    return BAD if items is BAD else _all_good(items)


def _percent(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return check.bad(key, "a number from 0 to 100", value)


def _rate(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return check.bad(key, "a number >= 0", value)


def _retries(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {
        "attempts": _whole(1, 10),
        "on": lambda c, k, v: _array(c, k, v, _retry_class, "a list of retry conditions", "one condition"),
        "budget_percent": _percent,
        "min_per_second": _rate,
        "backoff": _duration(allow_zero=True),
        "max_backoff": _duration(allow_zero=True),
        "grpc_status": _grpc_statuses,
    })
    if fields is not None and "grpc_status" in fields:
        fields["grpc_status"] = sorted(set(fields["grpc_status"]))
    return BAD if fields is None else Retries(**fields)


def _adaptive(check: _Check, key: str, value: Any) -> Any:
    """`false` (off), `true` (the defaults) or a table of AdaptiveConcurrency's keys."""
    if value is False:
        return None
    if value is True:
        return AdaptiveConcurrency()
    fields = _table(check, key, value, {"initial_limit": _whole(1), "min_limit": _whole(1), "max_limit": _whole(1),
                                        "tolerance": _rate, "smoothing": _percent_share})
    if fields is None:
        return BAD
    cfg = AdaptiveConcurrency(**fields)
    if not cfg.min_limit <= cfg.initial_limit <= cfg.max_limit:
        return check.bad(key, "min_limit <= initial_limit <= max_limit", value)
    return cfg


def _percent_share(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    return check.bad(key, "a number above 0 and at most 1", value)


def _limits(check: _Check, key: str, value: Any) -> Any:
    # 0 is a meaning for the queue and for retries (none wait, none are retried at once), as in Envoy; a cluster
    # that may open no connection or have no request in flight would refuse everything, so those start at 1.
    fields = _table(check, key, value, {"max_connections": _whole(1), "max_pending": _whole(0),
                                        "max_requests": _whole(1), "max_retries": _whole(0)})
    return BAD if fields is None else Limits(**fields)


HASHING_BALANCERS = ("ring_hash", "maglev")
_HASH_KEY_RE = re.compile(r"(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+|source_ip")
_hash_key = _matching(_HASH_KEY_RE, '"header:NAME", "cookie:NAME" or "source_ip"')


def _cluster_proxy_protocol(check: _Check, key: str, value: Any) -> Any:
    return value if value in ("v1", "v2") else check.bad(key, '"v1" or "v2"', value)


_CLUSTER_FIELDS: dict[str, Parser] = {
    "endpoints": _endpoints,
    "discovery": _discovery,
    "balancer": _choice("balancers", BALANCERS),
    "protocol": _choice("cluster protocols", CLUSTER_PROTOCOLS),
    "connect_timeout": _duration(allow_zero=False),
    "connect_attempts": _whole(1),
    "response_timeout": _duration(allow_zero=False),
    "pool_max_idle": _whole(0),
    "pool_idle_timeout": _duration(allow_zero=False),
    "h2_keepalive_interval": _duration(allow_zero=True),
    "h2_keepalive_timeout": _duration(allow_zero=False),
    "timeout": _duration(allow_zero=True),
    "per_try_timeout": _duration(allow_zero=True),
    "retries": _retries,
    "limits": _limits,
    "hash_key": _hash_key,
    "slow_start": _duration(allow_zero=True),
    "adaptive_concurrency": _adaptive,
    "health_check": _health_check,
    "outlier": _outlier,
    "tls": _cluster_tls,
    "proxy_protocol": _cluster_proxy_protocol,
    "template": _text("the pattern of the [cluster_templates] table that made the cluster"),
}


def _cluster(check: _Check, key: str, name: str, value: Any) -> Cluster | None:
    good_name = _NAME_RE.fullmatch(name) is not None
    if not good_name:
        check.bad(key, f"a cluster name of {NAME_CHARS}", name)
    if isinstance(value, Mapping) and "discovery" in value:
        # With discovery the listed endpoints are only the set used until the first answer: none is fine.
        if value.get("endpoints") == []:
            value = {k: v for k, v in value.items() if k != "endpoints"}
        fields = _table(check, key, value, _CLUSTER_FIELDS)
    else:
        fields = _table(check, key, value, _CLUSTER_FIELDS, {"endpoints": "at least one endpoint (or discovery)"})
    if fields is not None and fields.get("hash_key") and fields.get("balancer") not in HASHING_BALANCERS:
        check.bad(_key(key, "hash_key"), f'balancer = "ring_hash" or "maglev" beside it (balancer is '
                  f'"{fields.get("balancer", "round_robin")}")', fields["hash_key"])
        return None
    if fields is not None and fields.get("proxy_protocol") and fields.get("protocol") == "h2":
        check.bad(_key(key, "proxy_protocol"), 'protocol = "http1" beside it (an HTTP/2 upstream connection carries '
                  'many clients\' streams, and one PROXY header cannot name them all)', fields["proxy_protocol"])
        return None
    return Cluster(name=name, **fields) if fields is not None and good_name else None


def _clusters(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return check.bad(key, "a table of clusters like [clusters.NAME]", value)
    if not value:
        return check.bad(key, "at least one [clusters.NAME] table", value)
    clusters = {str(name): _cluster(check, _key(key, name), str(name), item) for name, item in value.items()}
    return BAD if any(c is None for c in clusters.values()) else clusters


def _cluster_ref(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, "the name of a cluster", value)
    names = check.cluster_names
    if names is not None and value not in names:
        return check.bad(key, f"one of the clusters {_choices(names)}", value)
    return value
