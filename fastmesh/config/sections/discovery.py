"""A cluster's discovery table: where its endpoint set comes from (file, DNS A/AAAA or SRV, etcd, a plugin)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import DISCOVERY_KINDS, Discovery
from fastmesh.config.sections.plugins import _plugin_checked
from fastmesh.config.values import format_duration
from fastmesh.config.walk import (
    BAD, _addresses, _Check, _choice, _choices, _duration, _key, _kind_keys, Parser, _table, _text, _whole,
)

_DNS_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")

# Per kind: the keys it needs, and the keys it takes besides "kind" and those.
_DISCOVERY_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "file": (("path",), ("interval",)),
    "dns": (("name", "port"), ("resolvers", "hold", "min_ttl", "max_ttl", "timeout")),
    "dns_srv": (("name",), ("resolvers", "hold", "min_ttl", "max_ttl", "timeout")),
    "etcd": (("endpoints", "prefix"), ("timeout",)),
    "plugin": (("plugin",), ("config",)),
}


def _dns_name(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and len(value) <= 253 and _DNS_NAME_RE.fullmatch(value):
        return value
    return check.bad(key, 'a DNS name like "web.svc.test"', value)


_DISCOVERY_FIELDS: dict[str, Parser] = {
    "kind": _choice("discovery kinds", DISCOVERY_KINDS),
    "path": _text("a file path"),
    "name": _dns_name,
    "port": _whole(1, 65535),
    "resolvers": _addresses,
    "endpoints": _addresses,
    "prefix": _text('a key prefix like "/services/api/"'),
    "hold": _duration(allow_zero=True),
    "min_ttl": _duration(allow_zero=False),
    "max_ttl": _duration(allow_zero=False),
    "timeout": _duration(allow_zero=False),
    "interval": _duration(allow_zero=False),
    "plugin": _text('"package.module:Name" or the name of an installed plugin'),
    "config": lambda c, k, v: dict(v) if isinstance(v, Mapping) else c.bad(k, "a table", v),
}


def _discovery(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _DISCOVERY_FIELDS, {"kind": _choices(DISCOVERY_KINDS)})
    if fields is None:
        return BAD
    good = _kind_keys(check, key, fields, value, _DISCOVERY_KEYS, name_others=True)
    if good and fields.get("min_ttl", Discovery.min_ttl) > fields.get("max_ttl", Discovery.max_ttl):
        check.bad(_key(key, "min_ttl"), f"at most max_ttl ({format_duration(fields.get('max_ttl', 300.0))})",
                  value["min_ttl"] if "min_ttl" in value else format_duration(Discovery.min_ttl))
        good = False
    if good and fields["kind"] == "plugin":
        good = _plugin_checked(check, key, "discovery", fields["plugin"], fields.get("config", {}))
    return Discovery(**fields) if good else BAD
