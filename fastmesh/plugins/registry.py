"""Finding plugins and checking their config: a dotted name or an entry point, resolved once, at config time.

A reference is "package.module:Name" (imported from sys.path) or the name of an entry point in the
`fastmesh.plugins` group of an installed distribution. `resolve` imports it once per process and remembers it;
the config loader calls `check` for every plugin the config names (the kind's method must be there; the table is
checked against the plugin's `Config` dataclass), and the data plane calls `instantiate` for each place that names
one, at start and at every reload. Nothing here runs per request.

A plugin's module is imported again when its source file changed since it was imported (its modification time
or size; looked at whenever a config naming it is loaded, so a reload picks up edited plugin code). Only the
named module is imported again, not the modules it imports.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmesh.errors import PluginError
from fastmesh.plugins.api import PluginConfigError

if TYPE_CHECKING:
    import importlib.metadata

GROUP = "fastmesh.plugins"
# Each kind and the method that makes an object one (a filter may instead have only RESPONSE_METHOD).
KINDS = {"filter": "on_request", "discovery": "watch", "sink": "write"}
RESPONSE_METHOD = "on_response"


class Resolved(NamedTuple):
    """A plugin reference and what it names."""
    ref: str                   # as the config wrote it
    obj: Any                   # the class (or factory) the reference names
    origin: str                # where it came from: "entry point NAME of DIST VERSION" or "module FILE"


class Problem(NamedTuple):
    """One problem with a plugin's config table, for the loader to report under the table's key."""
    key: str                   # the key path inside the table ("" for the table itself)
    how: str                   # "bad", "missing" or "unknown"
    expected: str              # what would have been accepted
    got: Any = None            # the value found (bad only)


_RESOLVED: dict[str, Resolved] = {}
# Per reference: the module its object comes from, that module's source file and its (mtime_ns, size) at import.
_STAMPS: dict[str, tuple[str, str, tuple[int, int] | None]] = {}


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _source_of(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) if module is not None else None
    return path if isinstance(path, str) and path.endswith(".py") else None


def _changed(ref: str) -> str | None:
    """The module behind ref when its source file changed since it was imported, else None."""
    kept = _STAMPS.get(ref)
    if kept is None:
        return None
    module_name, path, stamp = kept
    return module_name if _stamp(path) != stamp else None


def _reimport(ref: str, module_name: str) -> None:
    """Import module_name again from its source (the bytecode cache is skipped: a rewrite within the same second
    and of the same size would pass its check) and forget every reference resolved from it."""
    module = sys.modules.get(module_name)
    path = _source_of(module_name)
    if module is not None:
        if path is not None:
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, NotImplementedError, ValueError):
                pass
        importlib.invalidate_caches()
        try:
            importlib.reload(module)
        except Exception as exc:       # the references stay stale: the next load tries again
            raise PluginError(ref, f"a module that imports cleanly (importing {module_name} again after its "
                                   f"file changed raised {type(exc).__name__}: {exc})") from None
    for other in [r for r, kept in _STAMPS.items() if kept[0] == module_name]:
        _RESOLVED.pop(other, None)
        _STAMPS.pop(other, None)


def _remember(ref: str, obj: Any) -> None:
    module_name = getattr(obj, "__module__", None) or ""
    path = _source_of(module_name)
    if path is not None:
        _STAMPS[ref] = (module_name, path, _stamp(path))


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # Imported on first use (a plugin named by entry point, `fastmesh plugins`): importlib.metadata brings email,
    # csv, zipfile and datetime with it, 1.1 MiB of objects that every process of an instance without such a
    # plugin would carry.
    import importlib.metadata
    return list(importlib.metadata.entry_points(group=GROUP))


def _origin_of_module(obj: Any) -> str:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    where = getattr(module, "__file__", None) if module is not None else None
    name = getattr(obj, "__module__", "?")
    return f"module {name} ({where})" if where else f"module {name}"


def resolve(ref: str) -> Resolved:
    """What ref names, imported once per process; PluginError saying why it cannot be found."""
    found = _RESOLVED.get(ref)
    if found is not None:
        changed = _changed(ref)
        if changed is None:
            return found
        _reimport(ref, changed)
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        if not module_name or not attr or not all(part.isidentifier() for part in
                                                  (*module_name.split("."), *attr.split("."))):
            raise PluginError(ref, '"package.module:Name" or the name of an installed plugin')
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(ref, f"an importable module (importing {module_name} failed: {exc})") from None
        except Exception as exc:
            raise PluginError(ref, f"a module that imports cleanly ({module_name} raised "
                                   f"{type(exc).__name__}: {exc})") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise PluginError(ref, f"a name defined in {module_name} (it has no {attr})")
            obj = getattr(obj, part)
        found = Resolved(ref, obj, _origin_of_module(obj))
    else:
        points = [ep for ep in _entry_points() if ep.name == ref]
        if not points:
            names = sorted({ep.name for ep in _entry_points()})
            known = f"installed: {', '.join(names)}" if names else "none is installed"
            raise PluginError(ref, f'"package.module:Name" or the name of an installed plugin ({known})')
        ep = points[0]
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(ref, f"an entry point that loads ({ep.value} raised {type(exc).__name__}: {exc})"
                              ) from None
        dist = ep.dist
        found = Resolved(ref, obj, f"entry point {ep.name} of {dist.name if dist else '?'} "
                                   f"{dist.version if dist else ''}".rstrip())
    _RESOLVED[ref] = found
    _remember(ref, found.obj)
    return found


def kinds_of(obj: Any) -> list[str]:
    """The kinds obj can serve as: the kinds whose method it has."""
    return [kind for kind, method in KINDS.items() if callable(getattr(obj, method, None))
            or (kind == "filter" and callable(getattr(obj, RESPONSE_METHOD, None)))]


def is_async(obj: Any, kind: str) -> bool:
    """Whether the kind's method of obj is a coroutine function (a filter that parks its request)."""
    return inspect.iscoroutinefunction(getattr(obj, KINDS[kind], None))


def check(ref: str, kind: str, table: Any) -> tuple[Resolved, list[Problem]]:
    """Resolve ref, make sure it is a plugin of `kind`, check `table` against its Config. PluginError when ref
    names nothing usable; the problems of the table otherwise (empty when it is fine)."""
    found = resolve(ref)
    if kind not in kinds_of(found.obj):
        method = f"{KINDS[kind]}() or {RESPONSE_METHOD}()" if kind == "filter" else f"{KINDS[kind]}()"
        raise PluginError(ref, f"a {kind} plugin (a class with the method {method}; "
                               f"{found.ref} is {_kind_text(found.obj)})")
    if kind == "filter" and inspect.iscoroutinefunction(getattr(found.obj, RESPONSE_METHOD, None)):
        raise PluginError(ref, f"a plain (not async) {RESPONSE_METHOD}(): response filters run inline")
    _value, problems = parse_config(found.obj, table)
    return found, problems


def _kind_text(obj: Any) -> str:
    kinds = kinds_of(obj)
    return f"a {' and '.join(kinds)} plugin" if kinds else f"a {type(obj).__name__} with none of " \
        f"{', '.join(m + '()' for m in KINDS.values())}"


def parse_config(obj: Any, table: Any) -> tuple[Any, list[Problem]]:
    """The value the plugin is made with: its Config dataclass filled from table, or the table itself when it has
    no Config. Problems name keys inside the table."""
    if not isinstance(table, Mapping):
        return None, [Problem("", "bad", "a table", table)]
    schema: Any = getattr(obj, "Config", None)
    if schema is None or not dataclasses.is_dataclass(schema):
        return dict(table), []
    problems: list[Problem] = []
    try:
        hints = typing.get_type_hints(schema)
    except Exception:                              # annotations that do not evaluate: take the values unchecked
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name not in fields:
            problems.append(Problem(str(name), "unknown", ", ".join(f'"{n}"' for n in sorted(fields))))
            continue
        expected = _check_type(hints.get(name, Any), value)
        if expected is not None:
            problems.append(Problem(name, "bad", expected, value))
        else:
            values[name] = value
    for name, f in fields.items():
        if name not in table and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(Problem(name, "missing", _describe(hints.get(name, Any))))
    if problems:
        return None, problems
    try:
        return typing.cast(Any, schema)(**values), []
    except PluginConfigError as exc:
        return None, [Problem(exc.key, "bad", exc.expected, exc.got)]
    except (TypeError, ValueError) as exc:
        return None, [Problem("", "bad", f"a table its Config accepts ({exc})", table)]


def _describe(tp: Any) -> str:
    """What a type annotation asks for, in the words config messages use."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return "any value"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is typing.Literal:
        return "one of [" + ", ".join(repr(a) if not isinstance(a, str) else f'"{a}"' for a in args) + "]"
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return f"an array of {_plural(args[0])}" if args else "an array"
    if origin in (dict, Mapping) or tp is dict:
        return f"a table of {_plural(args[1])}" if len(args) == 2 else "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return f"a {getattr(tp, '__name__', str(tp))}"


def _plural(tp: Any) -> str:
    text = _describe(tp)
    for article in ("a ", "an "):
        if text.startswith(article):
            return text[len(article):] + "s"
    return text


def _check_type(tp: Any, value: Any) -> str | None:
    """None when value fits annotation tp, else what was expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    ok: bool
    if tp is Any or tp is object:
        ok = True
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is typing.Literal:
        ok = value in args
    elif origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        ok = isinstance(value, list) and (not args or all(_check_type(args[0], v) is None for v in value))
    elif origin in (dict, Mapping) or tp is dict:
        ok = isinstance(value, Mapping) and (len(args) != 2 or all(
            isinstance(k, str) and _check_type(args[1], v) is None for k, v in value.items()))
    elif origin in (typing.Union, types.UnionType):
        ok = any(_check_type(a, value) is None for a in args if a is not type(None))
    else:
        ok = isinstance(tp, type) and isinstance(value, tp)
    return None if ok else _describe(tp)


def instantiate(ref: str, kind: str, table: Mapping[str, Any]) -> Any:
    """A new instance of the plugin ref for one place in the config (the config was checked when loaded)."""
    found = resolve(ref)
    value, problems = parse_config(found.obj, table)
    if problems:                                   # the loader reported these already; only a changed plugin gets here
        p = problems[0]
        raise PluginError(ref, f"config {p.key or 'table'}: {p.expected}")
    return found.obj(value)


def installed() -> list[dict[str, Any]]:
    """Every plugin installed under the entry-point group: name, reference, distribution, kinds (or why it does
    not load)."""
    out = []
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        dist = ep.dist
        item: dict[str, Any] = {"name": ep.name, "ref": ep.value,
                                "distribution": f"{dist.name} {dist.version}" if dist else "?"}
        try:
            obj = ep.load()
        except Exception as exc:
            item["error"] = f"{type(exc).__name__}: {exc}"
        else:
            item["kinds"] = kinds_of(obj)
            item["async"] = is_async(obj, "filter") if "filter" in item["kinds"] else False
            module = sys.modules.get(getattr(obj, "__module__", "") or "")
            item["file"] = getattr(module, "__file__", None)
            doc = inspect.getdoc(obj) or ""
            item["doc"] = doc.splitlines()[0] if doc else ""
        out.append(item)
    return out


def describe_ref(ref: str) -> dict[str, Any]:
    """One reference as `fastmesh plugins` and `explain` show it."""
    found = resolve(ref)
    return {"ref": ref, "origin": found.origin, "kinds": kinds_of(found.obj)}
