"""The supervisor's discovery: one source per cluster that has `discovery` and one for a watched naming table, and
the endpoint sets (and the table) they found.

Sources publish into `sets`; a change wakes `changed`, which the supervisor's reloader turns into one endpoint
update for every worker (process/reload.py: only the changed clusters' endpoint sets travel, and each worker
applies them in place, Cluster.update). Each published set is given endpoint slots here (dataplane/slots.py: an
endpoint keeps its index for its life, removed ones leave holes), so every worker, including one started later,
indexes the endpoints alike. Bursts of updates (an etcd transaction, several clusters at once) coalesce into one
hand-off.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fastmesh.config.schema import Cluster, Config, Discovery, Endpoint, NamingSource
from fastmesh.dataplane.naming import services_of
from fastmesh.dataplane.slots import Slots, holes_of, live, next_slots
from fastmesh.discovery.base import Publish, Source
from fastmesh.discovery.templates import EtcdNames, Made, named_clusters

log = logging.getLogger("fastmesh.discovery")

SWEEP_INTERVAL = 1.0        # seconds between looks for made clusters idle past their template's idle_timeout


def make_source(cluster: str, cfg: Discovery, base_dir: str, publish: Publish) -> Source:
    if cfg.kind == "file":
        from fastmesh.discovery.file import FileSource
        return FileSource(cluster, cfg, base_dir, publish)
    if cfg.kind in ("dns", "dns_srv"):
        from fastmesh.discovery.dns import DnsSource
        return DnsSource(cluster, cfg, base_dir, publish)
    if cfg.kind == "etcd":
        from fastmesh.discovery.etcd import EtcdSource
        return EtcdSource(cluster, cfg, base_dir, publish)
    if cfg.kind == "plugin":
        from fastmesh.discovery.plugin import PluginSource
        return PluginSource(cluster, cfg, base_dir, publish)
    raise ValueError(f"unknown discovery kind {cfg.kind!r}")


def watches(cfg: Config) -> bool:
    """Whether cfg has anything for the supervisor to watch: a cluster's discovery, a naming table's source or
    cluster templates."""
    return cfg.naming.source is not None or bool(cfg.cluster_templates) \
        or any(c.discovery is not None for c in cfg.clusters.values())


def base_dir(cfg: Config) -> str:
    """Relative discovery paths start at the config file's folder."""
    return os.path.dirname(os.path.abspath(cfg.source)) if not cfg.source.startswith("<") else os.getcwd()


class DiscoveryManager:
    """Runs the sources of a config; `fill` gives the config with the endpoints found so far."""

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}            # cluster name -> its source
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.specs: dict[str, Discovery] = {}           # cluster name -> the settings its source runs with
        self.sets: dict[str, list[Endpoint]] = {}       # cluster name -> the last endpoint set published
        self.slots: dict[str, Slots] = {}               # cluster name -> that set in its slots (None: a hole)
        # cluster name -> (its live endpoints in slot order, its holes): what fill() and holes() hand on, made once
        # per published set, not per hand-off (two walks over 20,000 slots after an update replacing 10,000)
        self.placed: dict[str, tuple[list[Endpoint], tuple[int, ...]]] = {}
        self.changed = asyncio.Event()                  # a set changed since the last hand-off
        self.dirty: set[str] = set()                    # the clusters whose set changed since the last hand-off
        self.naming: Source | None = None               # the naming table's source, when it is watched
        self.naming_spec: NamingSource | None = None
        self.naming_task: asyncio.Task[None] | None = None
        self.table: list[str] | None = None             # the last good table it published (its rules)
        self.cfg: Config | None = None                  # the config the table must serve (its routes' services)
        self.made = Made()                              # clusters made from [cluster_templates]
        self.name_sources: dict[str, Source] = {}       # template pattern -> the source listing its names
        self.name_specs: dict[str, Discovery] = {}
        self.name_tasks: dict[str, asyncio.Task[None]] = {}
        self.sweeper: asyncio.Task[None] | None = None  # removes idle made clusters
        # The supervisor's counters: (work done, connections open) of a cluster (dataplane/stats.py Snapshot.traffic),
        # so that a made cluster still carrying traffic is not taken for idle. None: no traffic is known (embedded).
        self.traffic: Callable[[list[str]], dict[str, tuple[int, int]]] | None = None
        self._traffic_seen: dict[str, int] = {}         # made cluster -> its work done at the last look

    @property
    def active(self) -> bool:
        return bool(self.sources) or self.naming is not None or bool(self.name_sources) or bool(self.made.clusters)

    def configure(self, cfg: Config) -> None:
        """Start sources for new or changed discovery settings, stop the ones no longer configured."""
        self.cfg = cfg
        folder = base_dir(cfg)
        if cfg.naming.source != self.naming_spec:
            if self.naming_task is not None:
                self.naming_task.cancel()
            self.naming = self.naming_task = None
            self.naming_spec, self.table = cfg.naming.source, None
            if cfg.naming.source is not None:
                from fastmesh.discovery.naming import make_naming_source
                self.naming = make_naming_source(cfg.naming.source, folder, self._table_publisher)
                self.naming_task = asyncio.get_running_loop().create_task(self._run(self.naming))
        self.made.update(cfg, self._named(), time.monotonic(), self._busy())
        self._sync_sources()
        self._sync_templates()

    def _busy(self) -> set[str]:
        """The made clusters that carried traffic since the last look: work done grew, or connections are open."""
        if self.traffic is None or not self.made.clusters:
            self._traffic_seen = {}
            return set()
        now = self.traffic(list(self.made.clusters))
        busy = {name for name, (done, active) in now.items()
                if active > 0 or done != self._traffic_seen.get(name, 0)}
        self._traffic_seen = {name: done for name, (done, _) in now.items()}
        return busy

    def _named(self) -> list[str]:
        """The names of clusters templates make that the table reaches from the services routes name."""
        return [] if self.cfg is None else named_clusters(self.cfg, self.table)

    def _remake(self) -> None:
        """The table or a template's names changed, or time passed: make and remove clusters; a change goes to the
        workers with the whole config (reload.py sees the clusters differ)."""
        if self.cfg is not None and self.made.update(self.cfg, self._named(), time.monotonic(), self._busy()):
            self._sync_sources()
            self.changed.set()

    def _sync_templates(self) -> None:
        """One name source per etcd template; the idle sweep while any template exists."""
        assert self.cfg is not None
        templates = self.cfg.cluster_templates
        for pattern in list(self.name_sources):
            t = templates.get(pattern)
            if t is None or t.cluster.discovery != self.name_specs[pattern]:
                self.name_tasks.pop(pattern).cancel()
                del self.name_sources[pattern], self.name_specs[pattern]
                self.made.found.pop(pattern, None)
        for pattern, t in templates.items():
            if pattern not in self.name_sources and t.cluster.discovery is not None \
                    and t.cluster.discovery.kind == "etcd":
                source = EtcdNames(t, base_dir(self.cfg), self._names_publisher(pattern))
                self.name_sources[pattern], self.name_specs[pattern] = source, t.cluster.discovery
                self.name_tasks[pattern] = asyncio.get_running_loop().create_task(self._run(source))
        if templates and self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().create_task(self._sweep())
        elif not templates and self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None

    def _names_publisher(self, pattern: str) -> Publish:
        def publish(names: list[str]) -> None:
            if self.made.found.get(pattern) != names:
                self.made.found[pattern] = list(names)
                self._remake()
        return publish

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.made.unwanted_since:
                self._remake()

    def _sync_sources(self) -> None:
        assert self.cfg is not None
        folder = base_dir(self.cfg)
        wanted = {name: c.discovery for name, c in self.cfg.clusters.items()
                  if c.discovery is not None and c.template is None}
        wanted.update((name, c.discovery) for name, c in self.made.clusters.items()
                      if name not in wanted and c.discovery is not None)
        for name in list(self.sources):
            if wanted.get(name) != self.specs.get(name):
                self.tasks.pop(name).cancel()
                del self.sources[name], self.specs[name]
                self.sets.pop(name, None)
                self.slots.pop(name, None)
                self.placed.pop(name, None)
        for name, spec in wanted.items():
            if name not in self.sources:
                source = make_source(name, spec, folder, self._publisher(name))
                self.sources[name], self.specs[name] = source, spec
                self.tasks[name] = asyncio.get_running_loop().create_task(self._run(source))

    def _table_publisher(self, rules: list[str]) -> None:
        unresolved = self._unresolved(rules)
        if unresolved:
            assert self.naming is not None
            self.naming.fail("unresolved", f"{self.naming.state.target}: expected a table that sends every service "
                                           f"a route names to a cluster; it sends {', '.join(unresolved)} to none")
            return
        if self.table != rules:
            log.info("naming table: %d rule(s) from %s", len(rules), self.naming.kind if self.naming else "?")
            self.table = list(rules)
            self.changed.set()
            self._remake()

    def _publisher(self, name: str) -> Publish:
        def publish(endpoints: list[Endpoint]) -> None:
            if self.sets.get(name) != endpoints:
                log.info("cluster %s: %d endpoint(s) from %s", name, len(endpoints), self.sources[name].kind)
                self.sets[name] = endpoints
                slots = self.slots[name] = next_slots(self.slots.get(name), endpoints)
                self.placed[name] = (live(slots), holes_of(slots) if None in slots else ())
                self.dirty.add(name)
                self.changed.set()
        return publish

    async def _run(self, source: Source) -> None:
        try:
            await source.run()
        except asyncio.CancelledError:
            raise
        except Exception:                               # a bug: say so; the last good set stays
            log.exception("cluster %s: %s discovery stopped", source.cluster, source.kind)

    async def first_answers(self, timeout: float) -> None:
        """Wait until every source has answered once (or failed once), for at most timeout seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            every = [*self.sources.values(), *([self.naming] if self.naming is not None else [])]
            if all(s.state.updates or s.state.errors for s in every):
                return
            await asyncio.sleep(0.02)

    def _unresolved(self, rules: list[str]) -> list[str]:
        """The names of the running config's service routes `rules` would send to no cluster at all (an empty or
        half-written table, a typo): such a table is refused like one that does not parse."""
        if self.cfg is None:
            return []
        from fastmesh.config import naming as lang
        parsed = lang.parse_table(rules, "table")
        clusters = [n for n, c in self.cfg.clusters.items() if c.template is None]
        templates = self.cfg.cluster_templates
        services = {lang.service_name(s) for s in services_of(self.cfg)}
        return sorted(name for name in services
                      if lang.names_nothing(lang.resolve(parsed, name, clusters, templates)))

    def fill(self, cfg: Config) -> Config:
        """cfg with each discovered cluster's endpoints set to what its source found (as listed until then)."""
        clusters: dict[str, Cluster] = {}
        made = {name: c for name, c in self.made.clusters.items() if name not in cfg.clusters or
                cfg.clusters[name].template is not None}
        every = {**{n: c for n, c in cfg.clusters.items() if c.template is None}, **made}
        for name, cluster in every.items():
            found = self.placed.get(name) if cluster.discovery is not None else None
            clusters[name] = cluster if found is None else dataclasses.replace(cluster, endpoints=found[0])
        naming = cfg.naming
        if naming.source is not None and self.table is not None:
            naming = dataclasses.replace(naming, rules=list(self.table))
        return dataclasses.replace(cfg, clusters=clusters, naming=naming)

    def holes(self, cfg: Config) -> dict[str, tuple[int, ...]]:
        """Per discovered cluster of cfg with holes in its slots: their indexes (what fill() left out)."""
        out = {}
        for name, cluster in cfg.clusters.items():
            placed = self.placed.get(name) if cluster.discovery is not None else None
            if placed is not None and placed[1]:
                out[name] = placed[1]
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        """Per discovered cluster: its source's state (for /clusters and /metrics)."""
        return {name: source.state.as_dict() for name, source in self.sources.items()}

    def template_status(self) -> dict[str, dict[str, Any]]:
        """Per cluster template: what it made, the names its source lists (etcd), refused and removed counts."""
        if self.cfg is None:
            return {}
        out = self.made.status(self.cfg)
        for pattern, source in self.name_sources.items():
            out[pattern]["source"] = source.state.as_dict()
        return out

    def naming_status(self) -> dict[str, Any] | None:
        """The watched naming table's source state (for /naming and /metrics), None when it is not watched."""
        if self.naming is None:
            return None
        return {**self.naming.state.as_dict(), "rules": len(self.table) if self.table is not None else None}

    async def close(self) -> None:
        tasks = [*self.tasks.values(), *self.name_tasks.values(),
                 *(t for t in (self.naming_task, self.sweeper) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.sources.clear()
        self.name_tasks.clear()
        self.name_sources.clear()
        self.sweeper = None
        self.naming = self.naming_task = None
