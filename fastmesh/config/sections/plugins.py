"""Plugin references in a config: filters and sinks, each checked against its plugin's own Config."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastmesh.config.schema import FAILURE_MODES, RUN_MODES, FilterSpec, SinkSpec
from fastmesh.config.walk import BAD, _all_good, _array, _Check, _choice, _duration, _key, Parser, _table, _text, _whole
from fastmesh.errors import ConfigError, PluginError
from fastmesh.plugins import registry

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
