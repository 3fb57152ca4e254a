"""`fastmesh check`: validate a config and print it with every default filled in, as TOML (the language it was
written in, and a file `fastmesh run` accepts as it is) or, with --json, as JSON for tools.

Discovery settings are checked without touching the network (endpoint files are read when they exist, since they
are local); `--resolve` asks each discovery source (and a watched naming table's) once and prints what it found
(exit 1 if any failed). Clusters [cluster_templates] would make are listed too, with their template: the names the
naming table reaches (offline too) and, with `--resolve`, the names an etcd template's prefix lists, bounded by
max_clusters as `fastmesh run` bounds them; their sources are asked like the others'.

TLS certificate, key and CA files are loaded as `fastmesh run` loads them (a key that does not match its
certificate is an error here too), and a certificate that expires within --cert-warn-days days (14 by default),
or has expired, is a warning on stderr."""
from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LINE_WIDTH = 100       # arrays longer than this on one line are printed one item per line


def main(config_path: str, as_json: bool, resolve: bool = False, cert_warn_days: float = 14.0) -> int:
    """Entry point of `fastmesh check`; returns the exit code."""
    from fastmesh.config.load import config_to_dict, load_config
    from fastmesh.errors import ConfigError
    try:
        cfg = load_config(config_path)
        expiring = _certificates(cfg, cert_warn_days)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    data = config_to_dict(cfg)
    table = _resolve_table(cfg, only_files=not resolve)
    templates, made = _templates(cfg, table, resolve)
    found = _resolve(cfg, made) if resolve else _local_files(cfg, made)
    failed = any("error" in item for item in [*found.values(), *templates.values()]) or \
        (table is not None and "error" in table)
    if as_json:
        print(json.dumps({**data, "resolved": found, "naming_table": table, "templates": templates} if resolve
                         else data, indent=2))
    else:
        print(f"# {config_path}: valid. The effective config, with every default filled in:")
        print(to_toml(data), end="")
        for name, item in found.items():
            made_by = f" (template {item['template']})" if "template" in item else ""
            print(f"# cluster {name}{made_by}: {item['kind']} {item['target']}: " + (
                f"failed: {item['error']}" if "error" in item else
                f"{len(item['endpoints'])} endpoint(s): " + ", ".join(
                    f"{e['address']} (weight {e['weight']})" for e in item["endpoints"])))
        if table is not None:
            print(f"# naming table: {table['kind']} {table['target']}: " + (
                f"failed: {table['error']}" if "error" in table else
                f"{len(table['rules'])} rule(s): " + "; ".join(table["rules"])))
        for pattern, t in templates.items():
            print(f"# template {pattern}: " + _template_line(t))
    for warning in expiring:
        print(f"warning: {warning}", file=sys.stderr)
    if failed and not resolve:
        for name, item in found.items():
            if "error" in item:
                print(f"warning: cluster {name}: {item['error']}", file=sys.stderr)
        if table is not None and "error" in table:
            print(f"warning: naming table: {table['error']}", file=sys.stderr)
        for pattern, t in templates.items():
            if "error" in t:
                print(f"warning: template {pattern}: {t['error']}", file=sys.stderr)
        return 0
    return 1 if failed else 0


def _certificates(cfg: Any, warn_days: float) -> list[str]:
    """Load every TLS table's files as the workers will (ConfigError when OpenSSL refuses one); the certificates
    that expire within warn_days days, in words. Nothing is checked without the compiled core (it says so)."""
    import time
    from fastmesh.dataplane.tls import build_client_tls, build_server_tls, certificate_rows
    tables = [("listener", lst.name, f"listeners[{i}].tls", lst.tls, lst.protocol)
              for i, lst in enumerate(cfg.listeners) if lst.tls is not None]
    tables += [("cluster", name, f"clusters.{name}.tls", c.tls, "") for name, c in cfg.clusters.items()
               if c.tls is not None]
    if not tables:
        return []
    try:
        import fastmesh._core  # noqa: F401
    except ImportError:
        return ["TLS files not checked: the compiled core is missing"]
    now = time.time()
    out = []
    for kind, name, key, tls, protocol in tables:
        built = build_server_tls(tls, protocol, cfg.source, key) if kind == "listener" else \
            build_client_tls(tls, cfg.source, key)
        for row in certificate_rows(kind, name, list(built.certificates), now):
            days = row["expires_in"] / 86400
            if days <= warn_days:
                when = f"EXPIRED on {row['not_after_utc']} (it would be served, and clients that check dates " \
                    "refuse it)" if days <= 0 else f"expires in {days:.1f} days ({row['not_after_utc']})"
                out.append(f"{kind} {name}: certificate {row['cert']} {when}")
    return out


Templates = dict[str, dict[str, Any]]         # cluster template pattern -> what check found of it


def _templates(cfg: Any, table: dict[str, Any] | None, resolve: bool) -> tuple[Templates, dict[str, Any]]:
    """Per cluster template: the clusters it would make now (`clusters`), the names the naming table reaches
    (`named`), the names its etcd prefix lists (`listed`, with --resolve; `error` when it could not be asked) and
    those refused past max_clusters (`refused`); and the clusters made, by name (their config)."""
    import asyncio
    from fastmesh.discovery.base import SourceError
    from fastmesh.discovery.manager import base_dir
    from fastmesh.discovery.templates import EtcdNames, Made, named_clusters
    if not cfg.cluster_templates:
        return {}, {}
    made = Made()
    named = named_clusters(cfg, table.get("rules") if table is not None else None)
    out: Templates = {}
    for pattern, t in cfg.cluster_templates.items():
        mine = [n for n in named if _made_by(n, cfg) == pattern]
        out[pattern] = item = {"kind": t.cluster.discovery.kind, "named": mine}
        if resolve and t.cluster.discovery.kind == "etcd":
            source = EtcdNames(t, base_dir(cfg), lambda names: None)
            item["target"] = source.state.target
            try:
                item["listed"] = made.found[pattern] = asyncio.run(
                    asyncio.wait_for(source.resolve(), t.cluster.discovery.timeout + 2.0))
            except SourceError as exc:
                item["error"] = f"{exc.kind}: {exc}"
            except TimeoutError:
                item["error"] = "timeout: no answer"
    made.update(cfg, named, 0.0)
    for pattern, item in out.items():
        item["clusters"] = sorted(n for n, c in made.clusters.items() if c.template == pattern)
        item["refused"] = [n for n in made.refused_names if _made_by(n, cfg) == pattern]
    return out, dict(made.clusters)


def _made_by(name: str, cfg: Any) -> str | None:
    from fastmesh.config.naming import template_for
    return template_for(name, cfg.cluster_templates)


def _template_line(t: dict[str, Any]) -> str:
    words = [f"would make {', '.join(t['clusters'])}" if t["clusters"] else "would make no cluster now"]
    words.append(f"named by the table: {', '.join(t['named']) or 'none'}")
    if "error" in t:
        words.append(f"listing {t['target']} failed: {t['error']}")
    elif "listed" in t:
        words.append(f"listed under {t['target']}: {', '.join(t['listed']) or 'none'}")
    if t["refused"]:
        words.append(f"refused (max_clusters): {', '.join(t['refused'])}")
    return "; ".join(words)


def _resolve(cfg: Any, made: dict[str, Any] | None = None, only_files: bool = False) -> dict[str, dict[str, Any]]:
    """Per discovered cluster (those of the config, then those templates would make, `made`): its source's answer
    (or its error), asked once."""
    import asyncio
    from fastmesh.config.sections.clusters import endpoint_text
    from fastmesh.discovery.base import SourceError
    from fastmesh.discovery.manager import base_dir, make_source

    async def one(name: str, discovery: Any, template: str | None) -> dict[str, Any]:
        source = make_source(name, discovery, base_dir(cfg), lambda endpoints: None)
        item: dict[str, Any] = {"kind": discovery.kind, "target": source.state.target}
        if template is not None:
            item["template"] = template
        try:
            endpoints = await asyncio.wait_for(source.resolve(), discovery.timeout + 2.0)
        except SourceError as exc:
            item["error"] = f"{exc.kind}: {exc}"
        except TimeoutError:
            item["error"] = "timeout: no answer"
        else:
            item["endpoints"] = [{"address": endpoint_text(e), "weight": e.weight} for e in endpoints]
        return item

    clusters = {**{n: c for n, c in cfg.clusters.items() if c.template is None}, **(made or {})}

    async def all_of() -> dict[str, dict[str, Any]]:
        names = [n for n, c in clusters.items() if c.discovery is not None
                 and (not only_files or c.discovery.kind == "file")]
        items = await asyncio.gather(*(one(n, clusters[n].discovery, clusters[n].template) for n in names))
        return dict(zip(names, items))
    return asyncio.run(all_of())


def _resolve_table(cfg: Any, only_files: bool) -> dict[str, Any] | None:
    """The watched naming table's source asked once (only a file's without the network), None when not watched."""
    import asyncio
    from fastmesh.discovery.base import SourceError
    from fastmesh.discovery.manager import base_dir
    from fastmesh.discovery.naming import make_naming_source
    spec = cfg.naming.source
    if spec is None or (only_files and spec.kind != "file"):
        return None
    source = make_naming_source(spec, base_dir(cfg), lambda rules: None)
    item: dict[str, Any] = {"kind": spec.kind, "target": source.state.target}
    try:
        item["rules"] = asyncio.run(asyncio.wait_for(source.resolve(), spec.timeout + 2.0))
    except SourceError as exc:
        item["error"] = f"{exc.kind}: {exc}"
    except TimeoutError:
        item["error"] = "timeout: no answer"
    return item


def _local_files(cfg: Any, made: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Without --resolve only endpoint files are read (no network): a missing or broken one is a warning."""
    return _resolve(cfg, made, only_files=True)


# ---- TOML text for `check` (tomllib only reads) ----

def to_toml(data: dict[str, Any]) -> str:
    """A config dict as TOML: scalars first, then tables; top-level arrays of tables as [[name]] blocks."""
    lines: list[str] = []
    _toml_table(lines, data, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(lines: list[str], table: dict[str, Any], path: list[str]) -> None:
    blocks = []
    for key, value in table.items():
        if value is None:               # TOML has no null: an absent key means the same
            continue
        if isinstance(value, dict) or (not path and _is_table_array(value)):
            blocks.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in blocks:
        header = ".".join(_toml_key(part) for part in [*path, key])
        if isinstance(value, dict):
            # A table holding only tables needs no header of its own: theirs ([a.b]) define it.
            if not value or not all(isinstance(v, dict) for v in value.values()):
                lines += ["", f"[{header}]"]
            _toml_table(lines, value, [*path, key])
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _toml_table(lines, item, [*path, key])


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL is the one character JSON leaves raw that TOML
    # refuses there.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        items = [_toml_value(item) for item in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= _LINE_WIDTH:
            return one_line
        return "[\n" + "".join(f"  {item},\n" for item in items) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + pairs + " }" if pairs else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")
