"""`fastmesh plugins [CONFIG]`: the plugins installed under the `fastmesh.plugins` entry points, and those a
config names, with where each came from."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from fastmesh.config.schema import Config
from fastmesh.errors import ConfigError, PluginError
from fastmesh.plugins import registry


def used_by(cfg: Config) -> list[dict[str, Any]]:
    """Every place the config names a plugin: the key path, the reference and its kind."""
    out: list[dict[str, Any]] = []
    for i, lst in enumerate(cfg.listeners):
        out += [{"key": f"listeners[{i}].filters[{j}]", "kind": "filter", "ref": f.plugin}
                for j, f in enumerate(lst.filters)]
        for r, route in enumerate(lst.routes):
            out += [{"key": f"listeners[{i}].routes[{r}].filters[{j}]", "kind": "filter", "ref": f.plugin}
                    for j, f in enumerate(route.filters)]
        out += [{"key": f"listeners[{i}].log_sinks[{j}]", "kind": "sink", "ref": s.plugin}
                for j, s in enumerate(lst.log_sinks)]
    for name, cluster in cfg.clusters.items():
        if cluster.discovery is not None and cluster.discovery.kind == "plugin":
            out.append({"key": f"clusters.{name}.discovery", "kind": "discovery", "ref": cluster.discovery.plugin})
    out += [{"key": f"event_sinks[{j}]", "kind": "sink", "ref": s.plugin} for j, s in enumerate(cfg.event_sinks)]
    for item in out:
        item["origin"] = registry.resolve(item["ref"]).origin
    return out


def main(config: str | None, as_json: bool) -> int:
    report: dict[str, Any] = {"installed": registry.installed()}
    if config is not None:
        from fastmesh.config.load import load_config
        try:
            report["config"] = used_by(load_config(config))
        except (ConfigError, PluginError) as exc:
            print(str(exc), file=sys.stderr)
            return 1
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    installed = report["installed"]
    print(f"installed (entry points in the {registry.GROUP} group): {len(installed) or 'none'}")
    if installed:
        rows = [("NAME", "KINDS", "REFERENCE", "FROM")]
        for item in installed:
            kinds = "error: " + item["error"] if "error" in item else ", ".join(item["kinds"]) or "-"
            if item.get("async"):
                kinds += " (async)"
            rows.append((item["name"], kinds, item["ref"], f'{item["distribution"]} ({item.get("file") or "?"})'))
        _table(rows)
    if config is not None:
        used = report["config"]
        print(f"\nnamed by {config}: {len(used) or 'none'}")
        if used:
            _table([("KEY", "KIND", "PLUGIN", "FROM")] + [(u["key"], u["kind"], u["ref"], u["origin"]) for u in used])
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
