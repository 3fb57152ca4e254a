"""The config walk's tools: the problem collector (_Check), table and array walkers, and the scalar checks.

Every check has the shape (check, key, value) -> parsed value or BAD, and reports its own problem with the key path.
Names with a leading underscore are for the modules of fastmesh.config only.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from fastmesh.config.values import ADDRESS, DURATION, parse_address, parse_duration
from fastmesh.errors import ConfigError

NAME_CHARS = 'letters, digits, "_", "-" and "."'
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


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


def _kind_keys(check: _Check, key: str, fields: Mapping[str, Any], value: Any,
               keys: Mapping[str, tuple[Any, Any]], name_others: bool = False) -> bool:
    """A table with a `kind`: every key that kind needs is there and no key it does not take (keys: kind -> (needed,
    optional)). name_others: a stray key's message names the kinds that do take it. False when anything was bad."""
    kind = fields["kind"]
    needed, optional = keys[kind]
    good = True
    for name in needed:
        if name not in fields:
            check.missing(_key(key, name), f'a value for kind = "{kind}"')
            good = False
    for name in fields:
        if name != "kind" and name not in needed and name not in optional:
            hint = ""
            if name_others:
                takes = [k for k, (need, opt) in keys.items() if name in need or name in opt]
                hint = f" (it is for {_choices(takes)})"
            check.bad(_key(key, name), f'no {name} with kind = "{kind}"{hint}', value[name])
            good = False
    return good


def _all_good(items: list[Any]) -> Any:
    return BAD if any(item is BAD for item in items) else items


def _whole(low: int, high: int | None = None) -> Parser:
    expected = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"

    def parse(check: _Check, key: str, value: Any) -> Any:
        # bool is an int subclass in Python, but `true` is never meant as a number.
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            return check.bad(key, expected, value)
        return value
    return parse


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


def _matching(regex: re.Pattern[str], expected: str) -> Parser:
    """A string the whole of which the regex matches, kept as written; anything else is reported as `expected`."""
    def parse(check: _Check, key: str, value: Any) -> Any:
        return value if isinstance(value, str) and regex.fullmatch(value) else check.bad(key, expected, value)
    return parse


_name = _matching(_NAME_RE, f"a name of {NAME_CHARS}")


def _address(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return check.bad(key, ADDRESS, value)
    try:
        return parse_address(value)
    except ValueError as exc:
        return check.bad(key, str(exc), value)


def _fraction(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    return check.bad(key, "a number above 0 and at most 1 (0.5 is 50%)", value)


def _text(what: str) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        return value if isinstance(value, str) and value else check.bad(key, what, value)
    return parse


def _addresses(check: _Check, key: str, value: Any) -> Any:
    items = _array(check, key, value, _address, 'an array of "host:port"', 'at least one "host:port"')
    return BAD if items is BAD else _all_good(items)
