"""The top-level table: process keys (workers, max_connections, drain, busy_poll), admin, demo, who reads what."""
from __future__ import annotations

from typing import Any

from fastmesh.config.schema import BUSY_POLL_MAX, Admin, Demo
from fastmesh.config.sections.clusters import _backend, _clusters
from fastmesh.config.sections.listeners import _listeners
from fastmesh.config.sections.naming import _naming
from fastmesh.config.sections.plugins import _sinks
from fastmesh.config.sections.templates import _cluster_templates
from fastmesh.config.sections.tracing import _tracing
from fastmesh.config.values import format_duration
from fastmesh.config.walk import BAD, _address, _all_good, _Check, _duration, Parser, _table


def _workers(check: _Check, key: str, value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    return check.bad(key, 'a whole number >= 0 or "auto"', value)


def _max_connections(check: _Check, key: str, value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 24):
        return value
    return check.bad(key, f'a whole number from 1 to {1 << 24}, or "auto" (derived from the fd limit)', value)


def _busy_poll(check: _Check, key: str, value: Any) -> Any:
    seconds = _duration(allow_zero=True)(check, key, value)
    if isinstance(seconds, float) and seconds > BUSY_POLL_MAX:
        return check.bad(key, f'a duration from "0s" to "{format_duration(BUSY_POLL_MAX)}"', value)
    return seconds


def _admin(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"listen": _address})
    if fields is None:
        return BAD
    if "listen" not in fields:
        return Admin()
    host, port = fields["listen"]
    return Admin(host=host, port=port)


def _backends(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        return check.bad(key, 'an array of "host:port"', value)
    return _all_good([_backend(check, f"{key}[{i}]", item) for i, item in enumerate(value)])


def _demo(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"backends": _backends})
    return BAD if fields is None else Demo(**fields)


_TOP_FIELDS: dict[str, Parser] = {
    "naming": _naming,
    "workers": _workers,
    "max_connections": _max_connections,
    "drain_timeout": _duration(allow_zero=True),
    "busy_poll": _busy_poll,
    "ticket_secret_rotation": _duration(allow_zero=False),
    "admin": _admin,
    "listeners": _listeners,
    "clusters": _clusters,
    "cluster_templates": _cluster_templates,
    "demo": _demo,
    "event_sinks": _sinks,
    "tracing": _tracing,
}
_TOP_REQUIRED = {"listeners": "at least one [[listeners]] table", "clusters": "at least one [clusters.NAME] table"}
