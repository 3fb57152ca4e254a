"""A cluster's health_check and outlier tables: active probes and failure-accrual ejection."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import HEALTH_CHECK_TYPES, HealthCheck, Outlier, SuccessRate
from fastmesh.config.values import format_duration
from fastmesh.config.walk import (
    BAD, _all_good, _array, _Check, _choice, _duration, _fraction, _key, _matching, Parser, _table, _whole,
)
from fastmesh.errors import ConfigError

# A health check's request target: origin-form, visible ASCII only, no fragment.
_TARGET_RE = re.compile(r"/[\x21\x22\x24-\x7e]*")
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_STATUS_RANGE_RE = re.compile(r"([1-5][0-9][0-9])-([1-5][0-9][0-9])")


_target = _matching(_TARGET_RE, 'a path like "/healthz" (visible ASCII, no spaces or "#")')


def _status_range(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return (value, value)
    match = _STATUS_RANGE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None and int(match[1]) <= int(match[2]):
        return (int(match[1]), int(match[2]))
    return check.bad(key, 'a status code from 100 to 599 or a range like "200-299"', value)


def _status_ranges(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _status_range, 'an array of statuses like [200, "300-399"]',
                   "at least one status")
    return BAD if items is BAD else _all_good(items)


def _jitter(check: _Check, key: str, value: Any) -> Any:
    match = _PERCENT_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None and float(match[1]) <= 50:
        return float(match[1])
    return check.bad(key, 'a percentage from "0%" to "50%"', value)


def _grpc_service(check: _Check, key: str, value: Any) -> Any:
    # A fully-qualified gRPC service name ("grpc.health.v1.Health", "" for the whole server): visible ASCII.
    if isinstance(value, str) and len(value) <= 200 and all(33 <= ord(c) <= 126 for c in value):
        return value
    return check.bad(key, 'a gRPC service name like "helloworld.Greeter" ("" asks about the whole server)', value)


_HEALTH_CHECK_FIELDS: dict[str, Parser] = {
    "type": _choice("check types", HEALTH_CHECK_TYPES),
    "path": _target,
    "interval": _duration(allow_zero=False),
    "timeout": _duration(allow_zero=False),
    "healthy": _whole(1, 100),
    "unhealthy": _whole(1, 100),
    "expected_statuses": _status_ranges,
    "service": _grpc_service,
    "jitter": _jitter,
}
# Keys only one check type takes.
_HEALTH_CHECK_ONLY = {"path": "http", "expected_statuses": "http", "service": "grpc"}


def _health_check(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _HEALTH_CHECK_FIELDS)
    if fields is None:
        return BAD
    errors_before = len(check.errors)
    kind = fields.get("type", "http" if "path" in fields else "tcp")
    if kind == "http" and "path" not in fields:
        check.missing(_key(key, "path"), 'a path like "/healthz" (type = "http" sends GET to it)')
    for name, only in _HEALTH_CHECK_ONLY.items():
        if name in fields and kind != only:
            check.errors.append(ConfigError(check.source, _key(key, name), f'type = "{only}"',
                                            reason=f'only for checks with type = "{only}" (this one is "{kind}")'))
    interval = fields.get("interval", HealthCheck.interval)
    if fields.get("timeout", HealthCheck.timeout) > interval:
        check.bad(_key(key, "timeout"), f'a duration not above interval ("{format_duration(interval)}")',
                  value.get("timeout", format_duration(HealthCheck.timeout)))
    return HealthCheck(**fields) if len(check.errors) == errors_before else BAD


def _success_rate(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {
        "window": _duration(allow_zero=False),
        "minimum_requests": _whole(1),
        "threshold": _fraction,
    })
    return BAD if fields is None else SuccessRate(**fields)


_OUTLIER_FIELDS: dict[str, Parser] = {
    "consecutive_failures": _whole(1, 1000),
    "base_ejection": _duration(allow_zero=False),
    "max_ejection": _duration(allow_zero=False),
    "max_ejected_percent": _whole(0, 100),
    "success_rate": _success_rate,
}


def _outlier(check: _Check, key: str, value: Any) -> Any:
    if value is False:
        return None
    if value is True:
        return Outlier()
    if not isinstance(value, Mapping):
        return check.bad(key, "false, true or a table like { consecutive_failures = 5 }", value)
    fields = _table(check, key, value, _OUTLIER_FIELDS)
    if fields is None:
        return BAD
    base = fields.get("base_ejection", Outlier.base_ejection)
    if fields.get("max_ejection", Outlier.max_ejection) < base:
        return check.bad(_key(key, "max_ejection"), f'a duration not below base_ejection ("{format_duration(base)}")',
                         value.get("max_ejection", format_duration(Outlier.max_ejection)))
    return Outlier(**fields)
