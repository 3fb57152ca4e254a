"""A listener's access_log table: format, path and fields."""
from __future__ import annotations

from typing import Any

from fastmesh.config.schema import ACCESS_LOG_FIELDS, ACCESS_LOG_FORMATS, AccessLog
from fastmesh.config.walk import BAD, _all_good, _array, _Check, _choice, Parser, _table


def _log_path(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and value and "\x00" not in value:
        return value
    return check.bad(key, 'a file path, or "-" for stderr', value)


def _log_fields(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _choice("access-log fields", ACCESS_LOG_FIELDS),
                   'an array of access-log fields like ["time", "status", "request_id"]', "at least one field")
    return BAD if items is BAD else _all_good(items)


_ACCESS_LOG_FIELDS: dict[str, Parser] = {"format": _choice("formats", ACCESS_LOG_FORMATS), "path": _log_path,
                                         "fields": _log_fields}


def _access_log(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _ACCESS_LOG_FIELDS)
    return BAD if fields is None else AccessLog(**fields)
