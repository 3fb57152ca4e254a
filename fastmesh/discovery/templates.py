"""Clusters made from [cluster_templates]: which names get one, the settings each gets, and the etcd watch that
finds which names exist under a template's prefix.

A name gets a cluster when the naming table reaches `/cluster/NAME` for a service a route names, or when the
template's source lists it (etcd: a key under the part of the prefix before `{name}`, so that writing
`/services/users-v2/a` makes `users-v2`), NAME matches the template's pattern and no [clusters] table defines it.
The supervisor runs a made cluster's discovery like any other and hands the cluster to the workers with the config
(a made or removed cluster is a change of the config's shape, not only of endpoints). At most `max_clusters` per
template; a made cluster that nothing names, whose name the source no longer lists and that carries no traffic (no
response, no upstream connection opened, none open: the supervisor's counters, dataplane/stats.py) is removed once
all that has lasted `idle_timeout`: a cluster a per-request override still steers requests to stays.
"""
from __future__ import annotations

import collections
import dataclasses
import fnmatch
import logging
import re
from collections.abc import Collection
from typing import Any

from fastmesh.config.sections.templates import TEMPLATE_FIELD
from fastmesh.config import naming as lang
from fastmesh.config.naming import template_for
from fastmesh.config.schema import Cluster, ClusterTemplate, Config
from fastmesh.dataplane.naming import services_of
from fastmesh.discovery.base import Publish
from fastmesh.discovery.etcd import EtcdSource

log = logging.getLogger("fastmesh.discovery")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def make_cluster(t: ClusterTemplate, name: str) -> Cluster:
    """The cluster `t` makes for `name`: its settings, `{name}` in its discovery replaced by the name."""
    d = t.cluster.discovery
    assert d is not None
    field = TEMPLATE_FIELD[d.kind]
    filled = str(getattr(d, field)).replace("{name}", name)
    fill: dict[str, Any] = {field: filled}
    return dataclasses.replace(t.cluster, name=name, template=t.pattern, discovery=dataclasses.replace(d, **fill))


class EtcdNames(EtcdSource):
    """The names that exist under an etcd template's prefix: the keys under the part before `{name}`, each cut at
    the part after it (`/services/{name}/` lists `users-v2` for the key `/services/users-v2/a`)."""
    owner = "template"
    items = "name(s)"

    def __init__(self, t: ClusterTemplate, base_dir: str, publish: Publish) -> None:
        d = t.cluster.discovery
        assert d is not None and d.prefix is not None
        self.parent, _, self.suffix = d.prefix.partition("{name}")
        self.pattern = t.pattern
        super().__init__(t.pattern, dataclasses.replace(d, prefix=self.parent), base_dir, publish)

    def arrange(self, found: list[Any]) -> list[Any]:
        return sorted(found)

    def _value(self, key: bytes, value_b64: str) -> Any:
        rest = key[len(self.parent.encode()):].decode(errors="replace")
        if self.suffix:
            cut = rest.find(self.suffix)
            if cut <= 0:
                return None
            rest = rest[:cut]
        return rest if _NAME_RE.fullmatch(rest) and fnmatch.fnmatchcase(rest, self.pattern) else None

    def publish_keys(self) -> None:
        self.publish(sorted({str(name) for name in self.keys.values()}))

    async def resolve(self) -> list[Any]:
        """The names listed now, asked once (`fastmesh check --resolve`)."""
        return sorted({name for key, value in await self.read_once()
                       if (name := self._value(key, value)) is not None})


def named_clusters(cfg: Config, table: list[str] | None) -> list[str]:
    """The names of clusters templates make that the naming table (`table`, a watched one's last good rules; None:
    the config's) reaches from the services routes and listeners name, in the order the table prefers them."""
    if not cfg.cluster_templates:
        return []
    rules = lang.parse_table(table if table is not None else cfg.naming.rules, "table")
    clusters = [n for n, c in cfg.clusters.items() if c.template is None]
    out: list[str] = []
    for service in services_of(cfg):
        tree = lang.resolve(rules, lang.service_name(service), clusters, cfg.cluster_templates)
        out.extend(n for n in lang.wanted(tree) if n not in out)
    return out


class Made:
    """The clusters made from templates now, and why (for /clusters and /metrics)."""

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}              # name -> the cluster made for it
        self.found: dict[str, list[str]] = {}               # template pattern -> the names its source lists
        self.unwanted_since: dict[str, float] = {}          # made name -> since when nothing wants it
        self.refused: collections.Counter[str] = collections.Counter()   # pattern -> names refused (max_clusters)
        self.removed: collections.Counter[str] = collections.Counter()   # pattern -> clusters removed when idle
        self._refused_names: set[str] = set()       # names refused now (max_clusters), logged once each

    def update(self, cfg: Config, named: list[str], now: float, busy: Collection[str] = ()) -> bool:
        """Make clusters for the names `named` (reached by the table) and found, drop those idle past their
        template's idle_timeout and those whose template is gone or changed; True when the set changed. `busy`:
        made clusters that carried traffic since the last look (their idle time starts again)."""
        templates = cfg.cluster_templates
        defined = {n for n, c in cfg.clusters.items() if c.template is None}    # a [clusters] table wins
        wanted: dict[str, str] = {}                         # name -> its pattern, named ones first
        for name in [*named, *(n for p in templates for n in self.found.get(p, []))]:
            pattern = template_for(name, templates)
            if pattern is not None and name not in defined and name not in wanted:
                wanted[name] = pattern
        changed = False
        for name, made in list(self.clusters.items()):
            t = templates.get(made.template or "")
            if t is None or name in defined or make_cluster(t, name) != made:
                del self.clusters[name]
                self.unwanted_since.pop(name, None)
                changed = True
            elif name in wanted:
                self.unwanted_since.pop(name, None)
            elif name in busy:
                self.unwanted_since[name] = now     # unnamed but still carrying traffic: idle from now at the soonest
            elif now - self.unwanted_since.setdefault(name, now) >= t.idle_timeout:
                log.info("cluster %s (template %s): removed: nothing named it, its source did not list it and it "
                         "carried no traffic for %.0f s", name, t.pattern, now - self.unwanted_since.pop(name))
                del self.clusters[name]
                self.removed[t.pattern] += 1
                changed = True
        counts = collections.Counter(c.template for c in self.clusters.values())
        for name, pattern in wanted.items():
            if name in self.clusters:
                continue
            t = templates[pattern]
            if counts[pattern] >= t.max_clusters:
                if name not in self._refused_names:
                    self._refused_names.add(name)
                    self.refused[pattern] += 1
                    log.warning("cluster %s: not made: template %s has made max_clusters = %d already", name,
                                pattern, t.max_clusters)
                continue
            self._refused_names.discard(name)
            self.clusters[name] = make_cluster(t, name)
            counts[pattern] += 1
            changed = True
            log.info("cluster %s: made from template %s", name, pattern)
        return changed

    @property
    def refused_names(self) -> list[str]:
        return sorted(self._refused_names)

    def status(self, cfg: Config) -> dict[str, dict[str, Any]]:
        """Per template: its clusters, the names its source lists, the refused and removed counts."""
        return {p: {"clusters": sorted(n for n, c in self.clusters.items() if c.template == p),
                    "found": list(self.found.get(p, [])), "max_clusters": t.max_clusters,
                    "idle_timeout": t.idle_timeout, "refused": self.refused[p], "removed": self.removed[p]}
                for p, t in cfg.cluster_templates.items()}
