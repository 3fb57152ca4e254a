"""Header names and values a route, a listener or an exporter sets or removes, with the framing headers protected."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.walk import BAD, _all_good, _Check, _choices, _key, Parser, show

HEADER_NAME = "a header name (letters, digits and !#$%&'*+-.^_`|~)"
HEADER_VALUE = "a header value without control characters (CR, LF, NUL, ...) or whitespace at either end"
# Headers that decide framing or belong to one connection: a route adding or removing them would
# desynchronise the proxy and the upstream about where a message ends (request smuggling).
PROTECTED_HEADERS = ("connection", "content-length", "host", "keep-alive", "proxy-connection", "te", "trailer",
                     "transfer-encoding", "upgrade")
# RFC 9110 token: header names and methods. Methods are case-sensitive and every standard one is upper case,
# so a lower-case letter in a configured method is taken for a typo.
_TOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Header values: no control characters but HTAB (so never CR, LF or NUL), no whitespace at either end.
_HEADER_VALUE_RE = re.compile(r"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?")


def _header_name(check: _Check, key: str, value: Any, protected: bool) -> bool:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        check.bad(key, HEADER_NAME, value)
        return False
    if protected and value.lower() in PROTECTED_HEADERS:
        check.bad(key, f"a header name other than {_choices(PROTECTED_HEADERS)}", value)
        return False
    return True


def _headers(protected: bool) -> Parser:
    """A table of header name -> value. Names are unique whatever their case (a repeat is a typo)."""
    def parse(check: _Check, key: str, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return check.bad(key, 'a table of header names and values like { "x-env" = "canary" }', value)
        errors_before = len(check.errors)
        out: dict[str, str] = {}
        seen: dict[str, str] = {}
        for name, item in value.items():
            path = _key(key, name)
            if not _header_name(check, path, name, protected):
                continue
            first = seen.setdefault(name.lower(), name)
            if first != name:
                check.bad(path, f"a header name not already listed (as {show(first)})", name)
            elif not isinstance(item, str) or not _HEADER_VALUE_RE.fullmatch(item):
                check.bad(path, HEADER_VALUE, item)
            else:
                out[name] = item
        return out if len(check.errors) == errors_before else BAD
    return parse


def _header_names(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        return check.bad(key, 'an array of header names like ["x-secret"]', value)
    out: list[Any] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(value):
        path = f"{key}[{i}]"
        if not _header_name(check, path, name, protected=True):
            out.append(BAD)
            continue
        first = seen.setdefault(name.lower(), i)
        out.append(name if first == i else check.bad(path, f"a header name not already listed at {key}[{first}]",
                                                     name))
    return _all_good(out)
