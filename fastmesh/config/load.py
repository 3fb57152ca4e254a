"""TOML -> the schema dataclasses, reporting every problem with its file, key path and what was expected.

The entry points: load_config / loads_config / config_from_dict, and config_to_dict back (to_dict.py).
The walk collects all problems before raising (one ConfigErrors), so a user fixes a config in one pass.
Defaults are never written here: a key that is absent is simply not passed to the schema's constructor.
Each section's keys are checked in config/sections/, the checks across sections in config/checks.py.
The TOML reader (tomllib, which loads datetime) is imported when a text is parsed, not with this module: a worker
takes its config already checked (as the object or as JSON) and never needs it, and `fastmesh run` lets it go once
the file is read (TOML_READER).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.checks import _check_bound_addresses, _check_services, _check_ticket_rotations
from fastmesh.config.schema import Config
from fastmesh.config.sections.top import _TOP_FIELDS, _TOP_REQUIRED
from fastmesh.config.to_dict import config_to_dict
from fastmesh.config.walk import NOTHING, _Check, _table
from fastmesh.errors import ConfigError, ConfigErrors

__all__ = ["load_config", "loads_config", "config_from_dict", "config_to_dict"]

# The modules parsing TOML imports that nothing else of ours needs.
TOML_READER = ("tomllib", "tomllib._parser", "tomllib._re", "tomllib._types", "datetime", "_datetime")

_TOML_POSITION_RE = re.compile(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", re.DOTALL)


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
    import tomllib
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
    return config
