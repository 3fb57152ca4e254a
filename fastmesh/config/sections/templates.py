"""[cluster_templates."users-*"]: a cluster's keys with "{name}" in its discovery, made on first use."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import DISCOVERY_KINDS, ClusterTemplate
from fastmesh.config.sections.clusters import _cluster
from fastmesh.config.walk import BAD, NAME_CHARS, _Check, _choices, _duration, _key, Parser, _table, _whole

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
