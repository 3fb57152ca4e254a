"""A route's rate_limit table: rate, burst, key and bucket count."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import RateLimit
from fastmesh.config.walk import BAD, _Check, _key, _matching, Parser, _table, _whole

_RATE_RE = re.compile(r"([1-9][0-9]{0,8})/([smh])")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_KEY_RE = re.compile(r"header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|client_ip|filter")
MAX_BURST = 1_000_000


def _rate_spec(check: _Check, key: str, value: Any) -> Any:
    match = _RATE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return check.bad(key, 'a rate like "10/s", "100/m" or "1000/h" (a whole number per second, minute or hour)',
                         value)
    return int(match.group(1)), _RATE_UNITS[match.group(2)]


_rate_key = _matching(_RATE_KEY_RE, '"client_ip", "header:NAME" or "filter" (the key the route\'s filters set)')


def _buckets(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 1 << 24 and not value & (value - 1):
        return value
    return check.bad(key, "a power of two from 8 to 16777216", value)


_RATE_LIMIT_FIELDS: dict[str, Parser] = {
    "rate": _rate_spec,
    "burst": _whole(1, MAX_BURST),
    "key": _rate_key,
    "buckets": _buckets,
}


def _rate_limit(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return check.bad(key, 'a table like { rate = "10/s", burst = 10, key = "client_ip" }', value)
    fields = _table(check, key, value, _RATE_LIMIT_FIELDS, {"rate": 'a rate like "10/s"'})
    if fields is None:
        return BAD
    rate, per = fields.pop("rate")
    # The bucket's depth in the core's clock (1/16 ns) must stay below 2^62 (_core/ratelimit.pyx).
    if fields.get("burst", rate) * (int(per) * 16_000_000_000 // rate) >= 1 << 62:
        return check.bad(_key(key, "burst"), f"a burst that {value['rate']} refills within 9 years", value["burst"])
    return RateLimit(rate=rate, per=per, burst=fields.pop("burst", rate), **fields)
