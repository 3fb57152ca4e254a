"""[[listeners.routes]]: what a request must match (host, path, methods, headers) and where it goes."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config import naming as naming_rules
from fastmesh.config.schema import Route
from fastmesh.config.sections.clusters import _cluster_ref
from fastmesh.config.sections.headers import _header_names, _headers
from fastmesh.config.sections.plugins import _filters
from fastmesh.config.sections.rate_limits import _rate_limit
from fastmesh.config.sections.tls import _identities
from fastmesh.config.values import _is_host, _is_ip_host
from fastmesh.config.walk import (
    BAD, _all_good, _array, _Check, _choices, _key, _matching, _name, Parser, _table,
)

PATH_KEYS = ("path", "path_prefix", "path_regex")
_METHOD_RE = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]+")
# A path as a request target carries it: no whitespace or controls; no "?" or "#", which end the path part.
_PATH_RE = re.compile(r"/[^\x00-\x20\x7f?#]*")


def _route_host(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("*."):
            good = _is_host(value[2:]) and not _is_ip_host(value[2:])   # "*.10.0.0.1" names nothing
        else:
            good = _is_host(value) or _is_ip_host(value)
        if good:
            return value
    return check.bad(key, 'a host name like "api.example.com" or "*.example.com" (no port)', value)


_path = _matching(_PATH_RE, 'a path starting with "/" (no spaces, control characters, "?" or "#")')


def _regex(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, "a Python regular expression", value)
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        return check.bad(key, f"a Python regular expression ({exc})", value)
    return value


_method = _matching(_METHOD_RE, 'an HTTP method in upper case, like "GET"')


def _methods(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _method, 'an array of methods like ["GET", "HEAD"]', "at least one method")
    return BAD if items is BAD else _all_good(items)


def _service(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            naming_rules.resolve([], naming_rules.service_name(value), [])
            return value
        except naming_rules.NamingError:
            pass
    return check.bad(key, 'a logical name like "users" (the name /svc/users) or a path like "/svc/users/v2"', value)


_ROUTE_FIELDS: dict[str, Parser] = {
    "name": _name,
    "service": _service,
    "host": _route_host,
    "path": _path,
    "path_prefix": _path,
    "path_regex": _regex,
    "methods": _methods,
    "headers": _headers(protected=False),
    "cluster": _cluster_ref,
    "rewrite_prefix": _path,
    "add_request_headers": _headers(protected=True),
    "remove_request_headers": _header_names,
    "add_response_headers": _headers(protected=True),
    "filters": _filters,
    "rate_limit": _rate_limit,
    "allow_identities": _identities,
}


def _route(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _ROUTE_FIELDS)
    if not isinstance(value, Mapping):
        return BAD
    errors_before = len(check.errors)
    if "cluster" in value and "service" in value:
        check.bad(_key(key, "service"), 'no service beside cluster (a route sends to one of them)', value["service"])
    elif "cluster" not in value and "service" not in value:
        check.missing(_key(key, "cluster"), "the name of a cluster, or service = a logical name")
    paths = [name for name in value if name in PATH_KEYS]
    for name in paths[1:]:
        check.bad(_key(key, name), f'only one of {_choices(PATH_KEYS)} per route ("{paths[0]}" is set)',
                  value[name])
    if "rewrite_prefix" in value and "path_prefix" not in value:
        check.bad(_key(key, "rewrite_prefix"), 'rewrite_prefix only together with "path_prefix"',
                  value["rewrite_prefix"])
    if fields is None or len(check.errors) != errors_before:
        return BAD
    return Route(**fields)


def _routes(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _route, "an array of [[listeners.routes]] tables", "at least one route")
    if items is BAD:
        return BAD
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.name if isinstance(item, Route) else None
        if name is None:
            continue
        if name in seen:
            check.bad(f"{key}[{i}].name", f"a name no other route of the listener has (routes[{seen[name]}] is "
                      f"{name!r})", name)
        seen.setdefault(name, i)
    return _all_good(items)
