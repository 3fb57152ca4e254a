"""[naming]: the rules that turn a logical name into a cluster, and the watched source that may replace them."""
from __future__ import annotations

from typing import Any

from fastmesh.config import naming as naming_rules
from fastmesh.config.schema import NAMING_SOURCE_KINDS, Naming, NamingSource
from fastmesh.config.walk import (
    BAD, _addresses, _Check, _choice, _choices, _duration, _kind_keys, Parser, _table, _text,
)
from fastmesh.errors import ConfigError


def _naming_rules(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return check.bad(key, 'an array of rules like "/svc/users => /cluster/users-v2"', value)
    try:
        return [rule.text for rule in naming_rules.parse_table(value, key)]
    except naming_rules.NamingError as exc:
        message = str(exc)
        check.errors.append(ConfigError(check.source, key, "rules like \"/svc/users => /cluster/users-v2\"",
                                        reason=message[len(key) + 2:] if message.startswith(key) else message))
        return BAD


_NAMING_SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "file": (("path",), ("interval",)),
    "etcd": (("endpoints", "key"), ("timeout",)),
}
_NAMING_SOURCE_FIELDS: dict[str, Parser] = {
    "kind": _choice("naming source kinds", NAMING_SOURCE_KINDS),
    "path": _text("a file path"),
    "interval": _duration(allow_zero=False),
    "endpoints": _addresses,
    "key": _text('an etcd key like "/naming/table"'),
    "timeout": _duration(allow_zero=False),
}


def _naming_source(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _NAMING_SOURCE_FIELDS, {"kind": _choices(NAMING_SOURCE_KINDS)})
    if fields is None:
        return BAD
    good = _kind_keys(check, key, fields, value, _NAMING_SOURCE_KEYS)
    return NamingSource(**fields) if good else BAD


def _naming(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"rules": _naming_rules, "source": _naming_source})
    return BAD if fields is None else Naming(**fields)
