"""TOML -> the schema dataclasses, reporting every problem with its file, key path and what was expected.

The walk collects all problems before raising (one ConfigErrors), so a user fixes a config in one pass.
Defaults are never written here: a key that is absent is simply not passed to the schema's constructor.
"""
from __future__ import annotations

import decimal
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from fastmesh.config.schema import BALANCERS, PROTOCOLS, Admin, Cluster, Config, Demo, Endpoint, Listener
from fastmesh.errors import ConfigError, ConfigErrors

__all__ = [
    "load_config", "loads_config", "config_from_dict", "config_to_dict",
    "parse_duration", "format_duration", "parse_address", "format_address",
]

ADDRESS = '"host:port"'
DURATION = 'a duration like "250ms", "1s", "2m" or "1h"'
NAME_CHARS = 'letters, digits, "_", "-" and "."'
MAX_WEIGHT = 1000

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Hostname labels; "_" is allowed because container and /etc/hosts names use it and resolvers accept it.
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
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
    return loads_config(text, source)


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
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    return check.bad(key, 'a whole number >= 1 or "auto"', value)


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


_ENDPOINT_FIELDS: dict[str, Parser] = {"address": _address, "weight": _whole(1, MAX_WEIGHT)}


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


_CLUSTER_FIELDS: dict[str, Parser] = {
    "endpoints": _endpoints,
    "balancer": _choice("balancers", BALANCERS),
    "connect_timeout": _duration(allow_zero=False),
    "connect_attempts": _whole(1),
}


def _cluster(check: _Check, key: str, name: str, value: Any) -> Cluster | None:
    good_name = _NAME_RE.fullmatch(name) is not None
    if not good_name:
        check.bad(key, f"a cluster name of {NAME_CHARS}", name)
    fields = _table(check, key, value, _CLUSTER_FIELDS, {"endpoints": "at least one endpoint"})
    return Cluster(name=name, **fields) if fields is not None and good_name else None


def _clusters(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return check.bad(key, "a table of clusters like [clusters.NAME]", value)
    if not value:
        return check.bad(key, "at least one [clusters.NAME] table", value)
    clusters = {str(name): _cluster(check, _key(key, name), str(name), item) for name, item in value.items()}
    return BAD if any(c is None for c in clusters.values()) else clusters


def _listener_cluster(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, "the name of a cluster", value)
    names = check.cluster_names
    if names is not None and value not in names:
        return check.bad(key, f"one of the clusters {_choices(names)}", value)
    return value


_LISTENER_FIELDS: dict[str, Parser] = {
    "name": _name,
    "listen": _address,
    "cluster": _listener_cluster,
    "protocol": _choice("protocols", PROTOCOLS),
    "idle_timeout": _duration(allow_zero=False),
    "backlog": _whole(1, 65535),
    "splice": _flag,
}
_LISTENER_REQUIRED = {"name": "a listener name", "listen": ADDRESS, "cluster": "the name of a cluster"}


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
    fields = _table(check, key, value, _LISTENER_FIELDS, _LISTENER_REQUIRED)
    if fields is None:
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


_TOP_FIELDS: dict[str, Parser] = {
    "workers": _workers,
    "drain_timeout": _duration(allow_zero=True),
    "admin": _admin,
    "listeners": _listeners,
    "clusters": _clusters,
    "demo": _demo,
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
    _check_bound_addresses(check, config)
    return config


def _same_address(host: str, port: int) -> tuple[str, int]:
    """A comparable form: IP literals normalised ("0:0::1" is "::1"), names in lower case without a final dot."""
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
        "drain_timeout": format_duration(cfg.drain_timeout),
        "admin": {"listen": format_address(cfg.admin.host, cfg.admin.port)},
        "listeners": [{
            "name": lst.name,
            "listen": format_address(lst.host, lst.port),
            "protocol": lst.protocol,
            "cluster": lst.cluster,
            "idle_timeout": format_duration(lst.idle_timeout),
            "backlog": lst.backlog,
            "splice": lst.splice,
        } for lst in cfg.listeners],
        "clusters": {name: {
            "endpoints": [{"address": endpoint_text(e), "weight": e.weight} for e in cluster.endpoints],
            "balancer": cluster.balancer,
            "connect_timeout": format_duration(cluster.connect_timeout),
            "connect_attempts": cluster.connect_attempts,
        } for name, cluster in cfg.clusters.items()},
    }
    if cfg.demo is not None:
        out["demo"] = {"backends": [endpoint_text(e) for e in cfg.demo.backends]}
    return out
