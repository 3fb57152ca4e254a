"""TOML -> the schema dataclasses, reporting every problem with its file, key path and what was expected.

The walk collects all problems before raising (one ConfigErrors), so a user fixes a config in one pass.
Defaults are never written here: a key that is absent is simply not passed to the schema's constructor.
"""
from __future__ import annotations

import dataclasses
import decimal
import importlib.util
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from fastmesh.config.schema import (
    ACCESS_LOG_FORMATS, BALANCERS, CLUSTER_PROTOCOLS, GRPC_STATUS_NAMES, PROTOCOLS, RETRY_CLASSES, AccessLog,
    AdaptiveConcurrency, Admin, Cluster, Config, Demo, Endpoint, Http2, Limits, Listener, Retries, Route,
)
from fastmesh.config.schema import HEALTH_CHECK_TYPES, HealthCheck, Outlier, SuccessRate
from fastmesh.config.schema import DISCOVERY_KINDS, ClusterTemplate, Discovery
from fastmesh.config.schema import ACCESS_LOG_FIELDS, FAILURE_MODES, RUN_MODES, FilterSpec, SinkSpec
from fastmesh.config.schema import RateLimit
from fastmesh.config.schema import BUSY_POLL_MAX
from fastmesh.config.schema import ListenerTracing, TraceExport, Tracing
from fastmesh.errors import ConfigError, ConfigErrors, PluginError
from fastmesh.plugins import registry
from fastmesh.config.schema import NAMING_SOURCE_KINDS, Naming, NamingSource
from fastmesh.config.schema import TLS_VERSIONS, Certificate, ClusterTls, ListenerTls
from fastmesh.config import naming as naming_rules

__all__ = [
    "load_config", "loads_config", "config_from_dict", "config_to_dict",
    "parse_duration", "format_duration", "parse_address", "format_address",
]

ADDRESS = '"host:port"'
DURATION = 'a duration like "250ms", "1s", "2m" or "1h"'
NAME_CHARS = 'letters, digits, "_", "-" and "."'
HEADER_NAME = "a header name (letters, digits and !#$%&'*+-.^_`|~)"
HEADER_VALUE = "a header value without control characters (CR, LF, NUL, ...) or whitespace at either end"
# Headers that decide framing or belong to one connection: a route adding or removing them would
# desynchronise the proxy and the upstream about where a message ends (request smuggling).
PROTECTED_HEADERS = ("connection", "content-length", "host", "keep-alive", "proxy-connection", "te", "trailer",
                     "transfer-encoding", "upgrade")
PATH_KEYS = ("path", "path_prefix", "path_regex")
MAX_WEIGHT = 1000
MAX_PRIORITY = 65535     # an SRV priority is 16 bits

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Hostname labels; "_" is allowed because container and /etc/hosts names use it and resolvers accept it.
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# A canonical dotted-quad IPv4 address (no leading zeros): what ipaddress accepts, matched without building an object,
# so that configs with many endpoints (10,000 from discovery) validate quickly.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# RFC 9110 token: header names and methods. Methods are case-sensitive and every standard one is upper case,
# so a lower-case letter in a configured method is taken for a typo.
_TOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_METHOD_RE = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]+")
# A path as a request target carries it: no whitespace or controls; no "?" or "#", which end the path part.
_PATH_RE = re.compile(r"/[^\x00-\x20\x7f?#]*")
# Header values: no control characters but HTAB (so never CR, LF or NUL), no whitespace at either end.
_HEADER_VALUE_RE = re.compile(r"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?")
# A health check's request target: origin-form, visible ASCII only, no fragment.
_TARGET_RE = re.compile(r"/[\x21\x22\x24-\x7e]*")
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_STATUS_RANGE_RE = re.compile(r"([1-5][0-9][0-9])-([1-5][0-9][0-9])")
_TOML_POSITION_RE = re.compile(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", re.DOTALL)


# ---- values that are useful on their own (the CLI and tests use them) ----

def parse_duration(text: str) -> float:
    """"250ms", "1.5s", "2m", "1h" -> seconds; ValueError for anything else."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(DURATION)
    number, unit = match.groups()
    seconds = float(number) * _UNIT_SECONDS[unit] if unit != "ms" else float(number) / 1000.0
    if not math.isfinite(seconds):
        raise ValueError(DURATION)
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest duration string that parses back to exactly the same float."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    candidates = [f"{int(seconds // scale)}{unit}" for unit, scale in (("h", 3600), ("m", 60), ("s", 1))
                  if (seconds / scale).is_integer()]
    if seconds < 1:
        candidates.append(f"{round(seconds * 1000)}ms")
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    # repr() is the shortest exact decimal; Decimal spells it without an exponent, which the parser refuses.
    return f"{decimal.Decimal(repr(float(seconds))):f}s"


def parse_address(text: str) -> tuple[str, int]:
    """"host:port" or "[ipv6]:port" -> (host, port); ValueError whose message says what was expected."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise ValueError(ADDRESS)
        host, port_text = text[1:close], text[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError('"[host]:port" with an IPv6 address in the brackets') from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(ADDRESS)
        if ":" in host:
            raise ValueError('"host:port" with IPv6 in brackets ("[::1]:80")')
        if not _is_host(host):
            raise ValueError('"host:port" where host is an IP address or a hostname')
    if not port_text:
        raise ValueError(ADDRESS)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError('"host:port" with a numeric port')
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise ValueError('"host:port" with a port from 1 to 65535')
    return host, port


def format_address(host: str, port: int) -> str:
    """(host, port) -> "host:port", bracketing IPv6 so the port stays unambiguous."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_host(host: str) -> bool:
    if IPV4_RE.fullmatch(host):
        return True
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return False
    # An all-digit last label is a mistyped IPv4 address ("10.0.0.256"), never a name.
    return not labels[-1].isdigit()


# ---- loading ----

def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; messages name the file as given."""
    return read_config(path)[1]


def read_config(path: str | os.PathLike[str]) -> tuple[bytes, Config]:
    """The file's bytes (what a reload sends the workers) and the config they hold; messages name the file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(source, "", "a readable file", reason=f"cannot read the file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", "UTF-8 text",
                          reason=f"invalid TOML (not UTF-8 at byte {exc.start})") from None
    return raw, loads_config(text, source)


def loads_config(text: str, source: str = "<string>") -> Config:
    """Validate TOML text; `source` names it in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, str(exc)) from None
    return config_from_dict(data, source)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate an already parsed config (same shape as the TOML); raises ConfigError listing every problem."""
    check = _Check(source)
    config = _config(check, data)
    if check.errors:
        raise check.errors[0] if len(check.errors) == 1 else ConfigErrors(check.errors)
    assert config is not None   # no errors means every part was built
    return config


def _syntax_error(source: str, message: str) -> ConfigError:
    match = _TOML_POSITION_RE.fullmatch(message)
    if match is None:
        return ConfigError(source, "", "valid TOML", reason=f"invalid TOML ({message})")
    what, line, column = match.groups()
    where = f"line {line}, column {column}" if line else "end of file"
    return ConfigError(source, "", "valid TOML", reason=f"{where}: invalid TOML ({what})")


# ---- the walk ----

class _Bad:
    """The result of a value that failed its check (its error is already recorded)."""


BAD: Any = _Bad()
Parser = Callable[["_Check", str, Any], Any]
NO_KEYS: Mapping[str, str] = {}
NOTHING: Any = object()   # shown as "nothing": the value the user gave is absent altogether


class _Check:
    """Collects the problems of one config so that all of them are reported at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[ConfigError] = []
        self.cluster_names: list[str] | None = None   # names under [clusters], for listener references

    def bad(self, key: str, expected: str, value: Any) -> Any:
        self.errors.append(ConfigError(self.source, key, expected, show(value)))
        return BAD

    def missing(self, key: str, expected: str) -> None:
        self.errors.append(ConfigError(self.source, key, expected, reason=f"missing key (expected {expected})"))

    def unknown(self, key: str, name: str, known: Mapping[str, Any]) -> None:
        import difflib          # only for a config with a mistake: not in every process of every instance
        close = difflib.get_close_matches(name, list(known), n=1)
        choices = _choices(sorted(known))
        hint = f'did you mean "{close[0]}"?' if close else f"expected one of {choices}"
        self.errors.append(ConfigError(self.source, key, f"one of the keys {choices}", reason=f"unknown key ({hint})"))


def show(value: Any) -> str:
    """A found value as the message shows it: TOML spelling for values, a description for tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "a table" if value else "an empty table"
    if value is NOTHING:
        return "nothing"
    if value is None:
        return "None"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return f"a {type(value).__name__}"


def _choices(names: Any) -> str:
    return "[" + ", ".join(json.dumps(str(n)) for n in names) + "]"


def _key(parent: str, name: Any) -> str:
    name = str(name)
    part = name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)
    return f"{parent}.{part}" if parent else part


def _table(check: _Check, key: str, value: Any, fields: Mapping[str, Parser],
           required: Mapping[str, str] = NO_KEYS) -> dict[str, Any] | None:
    """Check a table's keys: parse the known ones, report unknown and missing ones.

    Returns the parsed values, or None when anything in the table was wrong (already reported).
    """
    if not isinstance(value, Mapping):
        check.bad(key, "a table", value)
        return None
    errors_before = len(check.errors)
    out: dict[str, Any] = {}
    for name, item in value.items():
        path = _key(key, name)
        parse = fields.get(name) if isinstance(name, str) else None
        if parse is None:
            check.unknown(path, str(name), fields)
        else:
            out[name] = parse(check, path, item)
    for name, wanted in required.items():
        if name not in value:
            check.missing(_key(key, name), wanted)
    return out if len(check.errors) == errors_before else None


def _array(check: _Check, key: str, value: Any, parse_item: Parser, expected: str, at_least: str) -> Any:
    """Check an array and each item: BAD if it is not an array or is empty, else the items (BAD where wrong)."""
    if not isinstance(value, (list, tuple)):
        return check.bad(key, expected, value)
    if not value:
        return check.bad(key, at_least, value)
    return [parse_item(check, f"{key}[{i}]", item) for i, item in enumerate(value)]


def _all_good(items: list[Any]) -> Any:
    return BAD if any(item is BAD for item in items) else items


# ---- scalar checks: (check, key, value) -> parsed value or BAD ----

def _whole(low: int, high: int | None = None) -> Parser:
    expected = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"

    def parse(check: _Check, key: str, value: Any) -> Any:
        # bool is an int subclass in Python, but `true` is never meant as a number.
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            return check.bad(key, expected, value)
        return value
    return parse


def _workers(check: _Check, key: str, value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    return check.bad(key, 'a whole number >= 0 or "auto"', value)


def _max_connections(check: _Check, key: str, value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 24):
        return value
    return check.bad(key, f'a whole number from 1 to {1 << 24}, or "auto" (derived from the fd limit)', value)


def _duration(allow_zero: bool) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return check.bad(key, DURATION, value)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            return check.bad(key, str(exc), value)
        if seconds == 0 and not allow_zero:
            return check.bad(key, 'a duration above "0s"', value)
        return seconds
    return parse


def _flag(check: _Check, key: str, value: Any) -> Any:
    return value if isinstance(value, bool) else check.bad(key, "true or false", value)


def _choice(what: str, choices: tuple[str, ...]) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        return value if value in choices else check.bad(key, f"one of the {what} {_choices(choices)}", value)
    return parse


def _name(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return value
    return check.bad(key, f"a name of {NAME_CHARS}", value)


def _address(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, ADDRESS, value)
    try:
        return parse_address(value)
    except ValueError as exc:
        return check.bad(key, str(exc), value)


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


# ---- sections ----

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


# ---- health checks and outlier ejection ----

def _target(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _TARGET_RE.fullmatch(value):
        return value
    return check.bad(key, 'a path like "/healthz" (visible ASCII, no spaces or "#")', value)


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


def _fraction(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    return check.bad(key, "a number above 0 and at most 1 (0.5 is 50%)", value)


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


HASHING_BALANCERS = ("ring_hash", "maglev")
_HASH_KEY_RE = re.compile(r"(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+|source_ip")


def _hash_key(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _HASH_KEY_RE.fullmatch(value):
        return value
    return check.bad(key, '"header:NAME", "cookie:NAME" or "source_ip"', value)


def _listener_proxy_protocol(check: _Check, key: str, value: Any) -> Any:
    """true (either version), false, or "v1" / "v2" to accept only that one."""
    if value is True:
        return "any"
    if value is False:
        return None
    if value in ("v1", "v2"):
        return value
    return check.bad(key, 'true, false, "v1" or "v2"', value)


def _cluster_proxy_protocol(check: _Check, key: str, value: Any) -> Any:
    return value if value in ("v1", "v2") else check.bad(key, '"v1" or "v2"', value)


def _text(what: str) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        return value if isinstance(value, str) and value else check.bad(key, what, value)
    return parse


def _addresses(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _address, 'an array of "host:port"', 'at least one "host:port"')
    return BAD if items is BAD else _all_good(items)


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
    needed, optional = _DISCOVERY_KEYS[fields["kind"]]
    good = True
    for name in needed:
        if name not in fields:
            check.missing(_key(key, name), f'a value for kind = "{fields["kind"]}"')
            good = False
    for name in fields:
        if name != "kind" and name not in needed and name not in optional:
            takes = [k for k, (need, opt) in _DISCOVERY_KEYS.items() if name in need or name in opt]
            check.bad(_key(key, name), f'no {name} with kind = "{fields["kind"]}" (it is for {_choices(takes)})',
                      value[name])
            good = False
    if good and fields.get("min_ttl", Discovery.min_ttl) > fields.get("max_ttl", Discovery.max_ttl):
        check.bad(_key(key, "min_ttl"), f"at most max_ttl ({format_duration(fields.get('max_ttl', 300.0))})",
                  value["min_ttl"] if "min_ttl" in value else format_duration(Discovery.min_ttl))
        good = False
    if good and fields["kind"] == "plugin":
        good = _plugin_checked(check, key, "discovery", fields["plugin"], fields.get("config", {}))
    return Discovery(**fields) if good else BAD


# ---- TLS ----

_PEM_MARKS = {"cert": b"-----BEGIN CERTIFICATE-----", "key": b"PRIVATE KEY-----", "ca": b"-----BEGIN CERTIFICATE-----"}


def _pem(kind: str) -> Parser:
    """A PEM file of `kind` ("cert", "key", "ca"), relative to the config file's folder; kept as an absolute path.
    Only that it is readable PEM of the right kind is checked here; OpenSSL judges the rest when the listener or
    cluster is built (and that error names the key too)."""
    what = {"cert": "a PEM certificate file", "key": "a PEM private key file", "ca": "a PEM CA bundle file"}[kind]

    def parse(check: _Check, key: str, value: Any) -> Any:
        if not isinstance(value, str) or not value or "\x00" in value:
            return check.bad(key, what, value)
        base = os.path.dirname(check.source) if not check.source.startswith("<") else ""
        path = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 22)
        except OSError as exc:
            check.errors.append(ConfigError(check.source, key, what,
                                            reason=f"expected {what}, but {path} cannot be read: {exc.strerror}"))
            return BAD
        if _PEM_MARKS[kind] not in data:
            check.errors.append(ConfigError(check.source, key, what,
                                            reason=f"expected {what}, but {path} holds no {_PEM_MARKS[kind].decode()}"))
            return BAD
        return path
    return parse


def _alpn(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and 0 < len(v.encode()) < 256
                                                       and v.isascii() for v in value):
        return check.bad(key, 'an array of ALPN protocol names like ["h2", "http/1.1"]', value)
    return list(value)


def identity_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be an allow_identities entry, or None: a URI with an authority ("spiffe://td/..."),
    ASCII without spaces, and a "*" only as the whole last path segment ("spiffe://td/ns/x/*")."""
    scheme, sep, rest = pattern.partition("://")
    if not sep or not scheme or not rest or not pattern.isascii() or any(c.isspace() for c in pattern):
        return "a URI like spiffe://trust-domain/ns/x/sa/y"
    star = pattern.find("*")
    if star >= 0 and (star != len(pattern) - 1 or not pattern.endswith("/*") or rest.startswith("/")
                      or rest.startswith("*")):
        return 'a "*" only as the whole last path segment, as in spiffe://trust-domain/ns/x/*'
    return None


def _identities(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        return check.bad(key, 'an array of identities like ["spiffe://td/ns/web/sa/api", "spiffe://td/ns/batch/*"]',
                         value)
    for i, pattern in enumerate(value):
        why = identity_problem(pattern) if isinstance(pattern, str) else "a string"
        if why is not None:
            return check.bad(f"{key}[{i}]", why, pattern)
    return list(value)


def _server_name(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _is_host(value) and not _is_ip_host(value):
        return value
    return check.bad(key, "a DNS name", value)


def _server_names(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        return check.bad(key, 'an array of server names like ["api.example.com", "*.example.com"]', value)
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _is_host(name[2:] if name.startswith("*.") else name):
            return check.bad(f"{key}[{i}]", 'a server name like "api.example.com" or "*.example.com"', name)
        out.append(name)
    return tuple(out)


def _openssl_list(what: str) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        if isinstance(value, str) and value and value.isascii() and "\x00" not in value:
            return value
        return check.bad(key, f"an OpenSSL {what} string", value)
    return parse


_CERT_FIELDS: dict[str, Parser] = {"cert": _pem("cert"), "key": _pem("key"), "names": _server_names}


def _certificates(check: _Check, key: str, value: Any) -> Any:
    def one(check: _Check, key: str, value: Any) -> Any:
        fields = _table(check, key, value, _CERT_FIELDS, {"cert": "a PEM certificate file", "key": "a PEM key file"})
        return BAD if fields is None else Certificate(**fields)
    if value == []:
        return []
    items = _array(check, key, value, one, "an array of { cert, key, names } tables", "at least one")
    return BAD if items is BAD else _all_good(items)


_TLS_COMMON: dict[str, Parser] = {
    "alpn": _alpn,
    "min_version": _choice("TLS versions", TLS_VERSIONS),
    "ciphers": _openssl_list("cipher list"),
    "ciphersuites": _openssl_list("TLS 1.3 ciphersuites"),
    "groups": _openssl_list("groups list"),
}
_LISTENER_TLS_FIELDS: dict[str, Parser] = {
    "cert": _pem("cert"),
    "key": _pem("key"),
    "certificates": _certificates,
    "client_ca": _pem("ca"),
    "require_client_cert": _flag,
    "session_tickets": _flag,
    "strict_sni": _flag,
    "handshake_timeout": _duration(allow_zero=False),
    "ticket_rotation": _duration(allow_zero=False),
    "allow_identities": _identities,
    **_TLS_COMMON,
}
_CLUSTER_TLS_FIELDS: dict[str, Parser] = {
    "ca": _pem("ca"),
    "server_name": _server_name,
    "cert": _pem("cert"),
    "key": _pem("key"),
    "verify": _flag,
    "session_reuse": _flag,
    **_TLS_COMMON,
}


def _listener_tls(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _LISTENER_TLS_FIELDS,
                    {"cert": "a PEM certificate file", "key": "a PEM private key file"})
    if fields is None:
        return BAD
    if fields.get("require_client_cert") and "client_ca" not in fields:
        return check.bad(_key(key, "require_client_cert"), "client_ca beside it (the CAs client certificates are "
                         "checked against)", True)
    if "allow_identities" in fields and ("client_ca" not in fields or fields.get("require_client_cert") is False):
        return check.bad(_key(key, "allow_identities"), "client_ca beside it, with require_client_cert left true "
                         "(an identity is a verified client certificate's URI SAN)", value["allow_identities"])
    return ListenerTls(**fields)


def _cluster_tls(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _CLUSTER_TLS_FIELDS)
    if fields is None:
        return BAD
    if "key" in fields and "cert" not in fields:
        return check.bad(_key(key, "key"), "cert beside it (the client certificate the key belongs to)",
                         value.get("key"))
    return ClusterTls(**fields)


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


_TEMPLATE_RE = re.compile(r"[A-Za-z0-9_.*-]*\*[A-Za-z0-9_.*-]*")
TEMPLATE_FIELD = {"file": "path", "dns": "name", "dns_srv": "name", "etcd": "prefix"}   # where `{name}` goes
_TEMPLATE_FIELDS: dict[str, Parser] = {"max_clusters": _whole(1), "idle_timeout": _duration(allow_zero=False)}


def _cluster_template(check: _Check, key: str, pattern: str, value: Any) -> ClusterTemplate | None:
    """A [cluster_templates."users-*"] table: a cluster's keys (discovery required, with `{name}` where the
    made cluster's name goes) plus max_clusters and idle_timeout."""
    if not _TEMPLATE_RE.fullmatch(pattern):
        check.bad(key, f'a pattern of {NAME_CHARS} with at least one "*"', pattern)
        return None
    if not isinstance(value, Mapping):
        check.bad(key, "a table", value)
        return None
    own = _table(check, key, {k: v for k, v in value.items() if k in _TEMPLATE_FIELDS}, _TEMPLATE_FIELDS)
    rest = {k: v for k, v in value.items() if k not in _TEMPLATE_FIELDS}
    found = rest.get("discovery")
    kind = found.get("kind") if isinstance(found, Mapping) else None
    if found is None:
        check.missing(_key(key, "discovery"), 'a discovery table with "{name}" where the cluster\'s name goes')
        return None
    field = TEMPLATE_FIELD.get(kind) if isinstance(kind, str) else None
    if isinstance(kind, str) and kind in DISCOVERY_KINDS and field is None:
        check.bad(_key(_key(key, "discovery"), "kind"),
                  f"a kind a template can fill in ({_choices(list(TEMPLATE_FIELD))})", kind)
        return None
    raw = found.get(field) if field is not None and isinstance(found, Mapping) else None
    if field is not None and (not isinstance(raw, str) or "{name}" not in raw):
        check.bad(_key(_key(key, "discovery"), field), 'a value with "{name}" where the cluster\'s name goes', raw)
        return None
    if raw is not None:                 # checked with a sample name; kept with "{name}" in it
        rest = {**rest, "discovery": {**found, field: raw.replace("{name}", "x")}}
    cluster = _cluster(check, key, "template", rest)
    if cluster is None or own is None:
        return None
    assert cluster.discovery is not None and field is not None
    if field == "path" and isinstance(raw, str):
        raw = os.path.join(os.path.dirname(str(cluster.discovery.path)), os.path.basename(raw)) \
            if os.path.isabs(str(cluster.discovery.path)) and not os.path.isabs(raw) else raw
    keep: dict[str, Any] = {field: raw}
    cluster = dataclasses.replace(cluster, name=pattern, discovery=dataclasses.replace(cluster.discovery, **keep))
    return ClusterTemplate(pattern=pattern, cluster=cluster, **own)


def _cluster_templates(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return check.bad(key, 'a table of templates like [cluster_templates."users-*"]', value)
    out = {str(p): _cluster_template(check, _key(key, p), str(p), item) for p, item in value.items()}
    return BAD if any(t is None for t in out.values()) else out


def _cluster_ref(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, "the name of a cluster", value)
    names = check.cluster_names
    if names is not None and value not in names:
        return check.bad(key, f"one of the clusters {_choices(names)}", value)
    return value


# ---- http listeners: routes and their parts ----

def _route_host(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("*."):
            good = _is_host(value[2:]) and not _is_ip_host(value[2:])   # "*.10.0.0.1" names nothing
        else:
            good = _is_host(value) or _is_ip_host(value)
        if good:
            return value
    return check.bad(key, 'a host name like "api.example.com" or "*.example.com" (no port)', value)


def _is_ip_host(text: str) -> bool:
    """An IP literal as a Host header spells it: IPv4, or IPv6 in brackets."""
    try:
        if text.startswith("[") and text.endswith("]"):
            ipaddress.IPv6Address(text[1:-1])
        else:
            ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _path(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _PATH_RE.fullmatch(value):
        return value
    return check.bad(key, 'a path starting with "/" (no spaces, control characters, "?" or "#")', value)


def _regex(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, "a Python regular expression", value)
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        return check.bad(key, f"a Python regular expression ({exc})", value)
    return value


def _method(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _METHOD_RE.fullmatch(value):
        return value
    return check.bad(key, 'an HTTP method in upper case, like "GET"', value)


def _methods(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _method, 'an array of methods like ["GET", "HEAD"]', "at least one method")
    return BAD if items is BAD else _all_good(items)


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
    "filters": lambda c, k, v: _filters(c, k, v),
    "rate_limit": lambda c, k, v: _rate_limit(c, k, v),
    "allow_identities": _identities,
}


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


def _rate_key(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _RATE_KEY_RE.fullmatch(value):
        return value
    return check.bad(key, '"client_ip", "header:NAME" or "filter" (the key the route\'s filters set)', value)


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


def _request_id_header(check: _Check, key: str, value: Any) -> Any:
    if value == "" or (isinstance(value, str) and _TOKEN_RE.fullmatch(value)):
        return value
    return check.bad(key, f'{HEADER_NAME}, or "" for none', value)


def _log_path(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and value and "\x00" not in value:
        return value
    return check.bad(key, 'a file path, or "-" for stderr', value)


_ACCESS_LOG_FIELDS: dict[str, Parser] = {"format": _choice("formats", ACCESS_LOG_FORMATS), "path": _log_path,
                                         "fields": lambda c, k, v: _log_fields(c, k, v)}


def _access_log(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _ACCESS_LOG_FIELDS)
    return BAD if fields is None else AccessLog(**fields)


def _sample_rate(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return check.bad(key, "a number from 0 to 1 (0.01 samples 1% of the traces started here)", value)


def _listener_tracing(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"propagate": _flag, "start": _flag, "sample_rate": _sample_rate})
    if fields is None:
        return BAD
    if fields.get("start") and fields.get("propagate") is False:
        return check.bad(_key(key, "start"), "false when propagate = false (a trace started here would go nowhere)",
                         True)
    return ListenerTracing(**fields)


def _otlp_url(check: _Check, key: str, value: Any) -> Any:
    expected = 'an http:// or https:// URL like "http://127.0.0.1:4318/v1/traces"'
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s]*)?", value):
        return check.bad(key, expected, value)
    return value


def _trace_export(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {
        "endpoint": _otlp_url,
        "service_name": _text("a service name"),
        "headers": _headers(protected=False),
        "timeout": _duration(allow_zero=False),
        "batch": _whole(1, 1 << 16),
        "interval": _duration(allow_zero=False),
        "max_pending": _whole(1, 1 << 24),
    }, {"endpoint": 'the collector\'s traces URL, like "http://127.0.0.1:4318/v1/traces"'})
    if fields is None:
        return BAD
    if importlib.util.find_spec("opentelemetry") is None or \
            importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        check.errors.append(ConfigError(check.source, key, "the OpenTelemetry SDK and its OTLP/HTTP exporter",
                                        reason="span export needs them installed: pip install fastmesh[otel]"))
        return BAD
    return TraceExport(**fields)


def _tracing(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"export": _trace_export})
    return BAD if fields is None else Tracing(**fields)


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


# ---- plugins: filters and sinks ----

PLUGIN_REF = '"package.module:Name" or the name of an installed plugin'


def _plugin_checked(check: _Check, key: str, kind: str, ref: str, table: Any) -> bool:
    """Resolve a plugin reference (importing it once) and check its table against the plugin's Config; problems
    are reported at `key`.plugin and `key`.config.<name>."""
    try:
        _found, problems = registry.check(ref, kind, table)
    except PluginError as exc:
        check.bad(_key(key, "plugin"), exc.expected, ref)
        return False
    base = _key(key, "config")
    for p in problems:
        path = _key(base, p.key) if p.key else base
        if p.how == "unknown":
            check.errors.append(ConfigError(check.source, path, f"one of the keys [{p.expected}]",
                                            reason=f"unknown key (expected one of [{p.expected}])"))
        elif p.how == "missing":
            check.missing(path, p.expected)
        else:
            check.bad(path, p.expected, p.got)
    return not problems


def _plugin_table(kind: str, extra: Mapping[str, Parser], make: Callable[..., Any]) -> Parser:
    """A table naming a plugin (`plugin`, its `config` table, and the keys `extra` adds), or the reference alone as
    a string."""
    fields_map: dict[str, Parser] = {
        "plugin": _text(PLUGIN_REF),
        "config": lambda c, k, v: dict(v) if isinstance(v, Mapping) else c.bad(k, "a table", v),
        **extra,
    }

    def parse(check: _Check, key: str, value: Any) -> Any:
        if isinstance(value, str):
            value = {"plugin": value}
        fields = _table(check, key, value, fields_map, {"plugin": PLUGIN_REF})
        if fields is None:
            return BAD
        if not _plugin_checked(check, key, kind, fields["plugin"], fields.get("config", {})):
            return BAD
        return make(**fields)
    return parse


_filter_spec = _plugin_table("filter", {"timeout": _duration(allow_zero=False),
                                        "failure_mode": _choice("failure modes", FAILURE_MODES),
                                        "run": _choice("run modes", RUN_MODES)}, FilterSpec)
_sink_spec = _plugin_table("sink", {"batch": _whole(1, 1 << 20), "interval": _duration(allow_zero=False),
                                    "max_pending": _whole(1, 1 << 24)}, SinkSpec)


def _plugin_list(parse_item: Parser, what: str) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and not value:
            return []
        items = _array(check, key, value, parse_item, f'an array of {what} like [{{ plugin = "mypkg.mod:Name" }}]',
                       f"at least one {what[:-1]}")
        return BAD if items is BAD else _all_good(items)
    return parse


_filters: Parser = _plugin_list(_filter_spec, "filters")
_sinks: Parser = _plugin_list(_sink_spec, "sinks")


def _log_fields(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _choice("access-log fields", ACCESS_LOG_FIELDS),
                   'an array of access-log fields like ["time", "status", "request_id"]', "at least one field")
    return BAD if items is BAD else _all_good(items)


# ---- listeners ----

_COMMON_LISTENER_FIELDS: dict[str, Parser] = {
    "name": _name,
    "listen": _address,
    "cluster": _cluster_ref,
    "service": lambda c, k, v: _service(c, k, v),
    "protocol": _choice("protocols", PROTOCOLS),
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
    "filters": lambda c, k, v: _filters(c, k, v),
    "log_sinks": lambda c, k, v: _sinks(c, k, v),
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
    needed, optional = _NAMING_SOURCE_KEYS[fields["kind"]]
    good = True
    for name in needed:
        if name not in fields:
            check.missing(_key(key, name), f'a value for kind = "{fields["kind"]}"')
            good = False
    for name in fields:
        if name != "kind" and name not in needed and name not in optional:
            check.bad(_key(key, name), f'no {name} with kind = "{fields["kind"]}"', value[name])
            good = False
    return NamingSource(**fields) if good else BAD


def _naming(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"rules": _naming_rules, "source": _naming_source})
    return BAD if fields is None else Naming(**fields)


def _check_services(check: _Check, config: Config) -> None:
    """Without a watched source the table is the config's: a route's service it sends nowhere is a mistake."""
    if config.naming.source is not None:
        return
    rules = naming_rules.parse_table(config.naming.rules, "naming.rules")
    clusters = list(config.clusters)
    for i, lst in enumerate(config.listeners):
        named = [(f"listeners[{i}].routes[{j}].service", r.service) for j, r in enumerate(lst.routes)]
        for key, service in [*named, (f"listeners[{i}].service", lst.service)]:
            if service is None:
                continue
            name = naming_rules.service_name(service)
            if naming_rules.names_nothing(naming_rules.resolve(rules, name, clusters, config.cluster_templates)):
                check.bad(key, f"a name naming.rules resolve to a cluster (they send {name} to none)", service)


def _check_tcp_services(check: _Check, config: Config) -> None:
    """A tcp listener's relays originate TLS with one context, its cluster's: one sending to a service (any cluster
    the naming table may name, now or after a change) relays cleartext, so no cluster may ask for TLS."""
    wrapped = [name for name, c in config.clusters.items() if c.tls is not None]
    for i, lst in enumerate(config.listeners):
        if lst.protocol == "tcp" and lst.service is not None and wrapped:
            check.bad(f"listeners[{i}].service", f"a cluster instead (cluster {wrapped[0]} originates TLS, which "
                      "a tcp listener sending to a service does not do)", lst.service)


def _busy_poll(check: _Check, key: str, value: Any) -> Any:
    seconds = _duration(allow_zero=True)(check, key, value)
    if isinstance(seconds, float) and seconds > BUSY_POLL_MAX:
        return check.bad(key, f'a duration from "0s" to "{format_duration(BUSY_POLL_MAX)}"', value)
    return seconds


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
    "event_sinks": lambda c, k, v: _sinks(c, k, v),
    "tracing": _tracing,
}
_TOP_REQUIRED = {"listeners": "at least one [[listeners]] table", "clusters": "at least one [clusters.NAME] table"}


def _config(check: _Check, data: Any) -> Config | None:
    if isinstance(data, Mapping) and not data:
        # An empty file gets one line saying what a config needs, not one line per missing key.
        check.bad("", "[[listeners]] and [clusters.NAME] tables", NOTHING)
        return None
    # Listeners usually come before the clusters they name, so the names are collected first;
    # without a usable [clusters] table, that table's own error is enough and references are not checked.
    if isinstance(data, Mapping) and isinstance(data.get("clusters"), Mapping) and data["clusters"]:
        check.cluster_names = [str(name) for name in data["clusters"]]
    fields = _table(check, "", data, _TOP_FIELDS, _TOP_REQUIRED)
    if fields is None:
        return None
    config = Config(source=check.source, **fields)
    _check_ticket_rotations(check, config)
    _check_bound_addresses(check, config)
    _check_services(check, config)
    _check_tcp_services(check, config)
    return config


def _check_ticket_rotations(check: _Check, config: Config) -> None:
    """A ticket key is derived from the master secret of the generation its period starts in, and a worker keeps
    the last three generations: a period longer than a generation would need secrets already wiped."""
    if config.ticket_secret_rotation < 1.0:
        check.bad("ticket_secret_rotation", 'a duration of at least "1s"',
                  format_duration(config.ticket_secret_rotation))
        return
    for i, lst in enumerate(config.listeners):
        if lst.tls is not None and lst.tls.ticket_rotation > config.ticket_secret_rotation:
            check.bad(f"listeners[{i}].tls.ticket_rotation",
                      f'at most ticket_secret_rotation ("{format_duration(config.ticket_secret_rotation)}")',
                      format_duration(lst.tls.ticket_rotation))


def _same_address(host: str, port: int) -> tuple[str, int]:
    """A comparable form: IP literals normalised ("0:0::1" is "::1"), names in lower case without a final dot."""
    if IPV4_RE.fullmatch(host):
        return host, port
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower().rstrip("."), port


def _check_bound_addresses(check: _Check, config: Config) -> None:
    """Everything fastmesh binds (admin, listeners, demo backends) needs its own address.

    Only equal addresses are reported: a wildcard next to a specific address on one port can be intended,
    and whether it binds depends on the socket options the listener uses.
    """
    bound = [("admin.listen", config.admin.host, config.admin.port)]
    bound += [(f"listeners[{i}].listen", lst.host, lst.port) for i, lst in enumerate(config.listeners)]
    if config.demo is not None:
        bound += [(f"demo.backends[{i}]", e.host, e.port) for i, e in enumerate(config.demo.backends)]
    owner: dict[tuple[str, int], str] = {}
    for key, host, port in bound:
        first = owner.setdefault(_same_address(host, port), key)
        if first != key:
            check.bad(key, f"an address not used by {first}", format_address(host, port))


# ---- back to a plain dict ----

def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config with every default filled in, in the TOML shape (config_from_dict reads it back)."""
    out: dict[str, Any] = {
        "workers": cfg.workers,
        "max_connections": cfg.max_connections,
        "drain_timeout": format_duration(cfg.drain_timeout),
        "busy_poll": format_duration(cfg.busy_poll),
        "ticket_secret_rotation": format_duration(cfg.ticket_secret_rotation),
        "admin": {"listen": format_address(cfg.admin.host, cfg.admin.port)},
        "listeners": [_listener_dict(lst) for lst in cfg.listeners],
        "clusters": {name: _cluster_dict(cluster) for name, cluster in cfg.clusters.items()},
    }
    if cfg.demo is not None:
        out["demo"] = {"backends": [endpoint_text(e) for e in cfg.demo.backends]}
    if cfg.event_sinks:
        out["event_sinks"] = [_plugin_dict(s) for s in cfg.event_sinks]
    if cfg.naming.rules or cfg.naming.source is not None:
        out["naming"] = naming_dict(cfg.naming)
    if cfg.tracing.export is not None:
        ex = cfg.tracing.export
        out["tracing"] = {"export": {"endpoint": ex.endpoint, "service_name": ex.service_name,
                                     "headers": dict(ex.headers), "timeout": format_duration(ex.timeout),
                                     "batch": ex.batch, "interval": format_duration(ex.interval),
                                     "max_pending": ex.max_pending}}
    if cfg.cluster_templates:
        out["cluster_templates"] = {p: {**{k: v for k, v in _cluster_dict(t.cluster).items() if k != "endpoints"},
                                        "max_clusters": t.max_clusters,
                                        "idle_timeout": format_duration(t.idle_timeout)}
                                    for p, t in cfg.cluster_templates.items()}
    return out


def _cluster_dict(cluster: Cluster) -> dict[str, Any]:
    out: dict[str, Any] = {
        "endpoints": [_endpoint_dict(e) for e in cluster.endpoints],
        "balancer": cluster.balancer,
        "protocol": cluster.protocol,
        "connect_timeout": format_duration(cluster.connect_timeout),
        "connect_attempts": cluster.connect_attempts,
        "response_timeout": format_duration(cluster.response_timeout),
        "pool_max_idle": cluster.pool_max_idle,
        "pool_idle_timeout": format_duration(cluster.pool_idle_timeout),
        "h2_keepalive_interval": format_duration(cluster.h2_keepalive_interval),
        "h2_keepalive_timeout": format_duration(cluster.h2_keepalive_timeout),
        "timeout": format_duration(cluster.timeout),
        "per_try_timeout": format_duration(cluster.per_try_timeout),
        "retries": {"attempts": cluster.retries.attempts, "on": list(cluster.retries.on),
                    "budget_percent": cluster.retries.budget_percent,
                    "min_per_second": cluster.retries.min_per_second,
                    "backoff": format_duration(cluster.retries.backoff),
                    "max_backoff": format_duration(cluster.retries.max_backoff),
                    "grpc_status": [GRPC_STATUS_NAMES[code] for code in cluster.retries.grpc_status]},
        "limits": {"max_connections": cluster.limits.max_connections,
                   "max_pending": cluster.limits.max_pending,
                   "max_requests": cluster.limits.max_requests,
                   "max_retries": cluster.limits.max_retries},
        **({"hash_key": cluster.hash_key} if cluster.hash_key is not None else {}),
        "adaptive_concurrency": (False if cluster.adaptive_concurrency is None else
                                 dataclasses.asdict(cluster.adaptive_concurrency)),
        "slow_start": format_duration(cluster.slow_start),
        **({"discovery": _discovery_dict(cluster.discovery)} if cluster.discovery is not None else {}),
        **({"tls": _tls_dict(cluster.tls)} if cluster.tls is not None else {}),
        **({"proxy_protocol": cluster.proxy_protocol} if cluster.proxy_protocol is not None else {}),
    }
    out.update(_health_dict(cluster))
    if cluster.template is not None:
        out["template"] = cluster.template
    return out


def naming_dict(naming: Naming) -> dict[str, Any]:
    """The naming table: its rules and, when watched, its source with the defaults filled in."""
    out: dict[str, Any] = {"rules": list(naming.rules)}
    src = naming.source
    if src is not None:
        needed, optional = _NAMING_SOURCE_KEYS[src.kind]
        source: dict[str, Any] = {"kind": src.kind}
        for name in (*needed, *optional):
            value = getattr(src, name)
            if name == "endpoints":
                value = [format_address(host, port) for host, port in value]
            elif name in ("interval", "timeout"):
                value = format_duration(value)
            source[name] = value
        out["source"] = source
    return out


def _plugin_dict(spec: Any) -> dict[str, Any]:
    """A filter or sink table with every key (durations spelled as the loader reads them)."""
    out = dataclasses.asdict(spec)
    for name in ("timeout", "interval"):
        if name in out:
            out[name] = format_duration(out[name])
    return out


def _endpoint_dict(e: Endpoint) -> dict[str, Any]:
    """An endpoint table; `priority` only when set (most configs never use tiers)."""
    out: dict[str, Any] = {"address": endpoint_text(e), "weight": e.weight}
    if e.priority:
        out["priority"] = e.priority
    return out


def _discovery_dict(d: Discovery) -> dict[str, Any]:
    """A discovery table with the keys its kind takes, defaults filled in."""
    needed, optional = _DISCOVERY_KEYS[d.kind]
    out: dict[str, Any] = {"kind": d.kind}
    for name in (*needed, *optional):
        value = getattr(d, name)
        if name in ("resolvers", "endpoints"):
            value = [format_address(host, port) for host, port in value]
        elif name in ("hold", "min_ttl", "max_ttl", "timeout", "interval"):
            value = format_duration(value)
        elif name == "config":
            value = dict(value)
        out[name] = value
    return out


def _health_dict(cluster: Cluster) -> dict[str, Any]:
    """A cluster's health_check (when set) and outlier keys; `outlier = false` when it is off."""
    out: dict[str, Any] = {}
    hc = cluster.health_check
    if hc is not None:
        check: dict[str, Any] = {"type": hc.type}
        if hc.type == "http":
            check["path"] = hc.path
        elif hc.type == "grpc":
            check["service"] = hc.service
        check.update(interval=format_duration(hc.interval), timeout=format_duration(hc.timeout),
                     healthy=hc.healthy, unhealthy=hc.unhealthy)
        if hc.type == "http":
            check["expected_statuses"] = [low if low == high else f"{low}-{high}"
                                          for low, high in hc.expected_statuses]
        check["jitter"] = f"{decimal.Decimal(repr(float(hc.jitter))).normalize():f}%"
        out["health_check"] = check
    ol = cluster.outlier
    if ol is None:
        out["outlier"] = False
        return out
    out["outlier"] = {"consecutive_failures": ol.consecutive_failures,
                      "base_ejection": format_duration(ol.base_ejection),
                      "max_ejection": format_duration(ol.max_ejection),
                      "max_ejected_percent": ol.max_ejected_percent}
    if ol.success_rate is not None:
        sr = ol.success_rate
        out["outlier"]["success_rate"] = {"window": format_duration(sr.window),
                                          "minimum_requests": sr.minimum_requests, "threshold": sr.threshold}
    return out


def _listener_dict(lst: Listener) -> dict[str, Any]:
    out: dict[str, Any] = {"name": lst.name, "listen": format_address(lst.host, lst.port), "protocol": lst.protocol}
    if lst.cluster is not None:
        out["cluster"] = lst.cluster
    if lst.service is not None:
        out["service"] = lst.service
    out.update(idle_timeout=format_duration(lst.idle_timeout), backlog=lst.backlog,
               max_connections=lst.max_connections, splice=lst.splice)
    if lst.tls is not None:
        out["tls"] = _tls_dict(lst.tls)
    if lst.proxy_protocol is not None:
        out["proxy_protocol"] = True if lst.proxy_protocol == "any" else lst.proxy_protocol
    if lst.proxy_protocol is not None or lst.proxy_protocol_timeout != Listener.proxy_protocol_timeout:
        out["proxy_protocol_timeout"] = format_duration(lst.proxy_protocol_timeout)
    if lst.protocol != "http":
        if lst.sni_routes:
            out["sni_routes"] = dict(lst.sni_routes)
        return out
    out.update(
        header_timeout=format_duration(lst.header_timeout),
        body_timeout=format_duration(lst.body_timeout),
        max_request_line=lst.max_request_line,
        max_header_bytes=lst.max_header_bytes,
        max_headers=lst.max_headers,
        forwarded_headers=lst.forwarded_headers,
        request_id_header=lst.request_id_header,
        identity_header=lst.identity_header,
        trust_headers=lst.trust_headers,
        trust_naming=lst.trust_naming,
        tracing=dataclasses.asdict(lst.tracing),
    )
    if lst.access_log is not None:
        out["access_log"] = {"format": lst.access_log.format, "path": lst.access_log.path}
        if lst.access_log.fields:
            out["access_log"]["fields"] = list(lst.access_log.fields)
    h2 = lst.http2
    out["http2"] = {"enabled": h2.enabled, "max_concurrent_streams": h2.max_concurrent_streams,
                    "initial_window": h2.initial_window, "connection_window": h2.connection_window,
                    "max_frame_size": h2.max_frame_size, "header_table_size": h2.header_table_size,
                    "max_continuation_frames": h2.max_continuation_frames,
                    "rapid_reset_ratio": h2.rapid_reset_ratio, "glitch_budget": h2.glitch_budget,
                    "stall_timeout": format_duration(h2.stall_timeout), "max_queued_bytes": h2.max_queued_bytes}
    if lst.routes:
        out["routes"] = [_route_dict(route) for route in lst.routes]
    if lst.filters:
        out["filters"] = [_plugin_dict(f) for f in lst.filters]
    if lst.log_sinks:
        out["log_sinks"] = [_plugin_dict(s) for s in lst.log_sinks]
    return out


def _tls_dict(tls: ListenerTls | ClusterTls) -> dict[str, Any]:
    """A tls table with its defaults filled in (None values left out: they mean "not set")."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(tls):
        value = getattr(tls, f.name)
        if value is None:
            continue
        if f.name == "certificates":
            value = [{"cert": c.cert, "key": c.key, **({"names": list(c.names)} if c.names else {})} for c in value]
        elif f.name in ("handshake_timeout", "ticket_rotation"):
            value = format_duration(value)
        out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _route_dict(route: Route) -> dict[str, Any]:
    """A route's keys that are set: an absent condition matches everything, an absent edit does nothing."""
    out: dict[str, Any] = {}
    for name in ("name", "host", "path", "path_prefix", "path_regex", "methods", "headers", "cluster", "service",
                 "rewrite_prefix",
                 "add_request_headers", "remove_request_headers", "add_response_headers", "allow_identities"):
        value = getattr(route, name)
        if value is not None and value != [] and value != {}:
            out[name] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
    if route.filters:
        out["filters"] = [_plugin_dict(f) for f in route.filters]
    if route.rate_limit is not None:
        lim = route.rate_limit
        out["rate_limit"] = {"rate": lim.rate_text(), "burst": lim.burst, "buckets": lim.buckets,
                             **({"key": lim.key} if lim.key else {})}
    return out
