"""Proxy: runs fastmesh's data plane on the caller's asyncio loop; start, drain and stop.

This is the embedding API (`async with Proxy(config): ...`) and what each worker process of `fastmesh run`
runs. One Proxy is one process's worth of listeners; `fastmesh run` starts several with reuse_port.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastmesh.config.schema import Config, Endpoint
from fastmesh.config.schema import Listener as ListenerConfig

if TYPE_CHECKING:       # the core is imported when the proxy starts: a Proxy is made (and checked) without it
    from fastmesh._core.cluster import Cluster
    from fastmesh._core.http1.proxy import HttpProxy
    from fastmesh.dataplane.clusters import Pool
    from fastmesh._core.limits import LimitBlock
    from fastmesh._core.ratelimit import RateBlock
    from fastmesh._core.listener import Listener
    from fastmesh._core.naming import Names
    from fastmesh._core.reactor import ConnectionLimit, Reactor
    from fastmesh._core.stats import StatsBlock
    from fastmesh._core.tcp.splice import TcpProxy
    from fastmesh._core.tls.context import TlsClient
    from fastmesh.dataplane.fd_budget import FdBudget
    from fastmesh.dataplane.stats import LagProbe, StatsLayout
    from fastmesh.dataplane.tls import TlsWatch
    from fastmesh.dataplane.tracing import SpanExport
    from fastmesh.health import Health

    Acceptor = TcpProxy | HttpProxy

log = logging.getLogger("fastmesh.proxy")


class Proxy:
    """The proxy for one validated Config.

    >>> async with Proxy.from_file("config.toml") as proxy:
    ...     print(proxy.addresses)
    """

    def __init__(self, config: Config, *, reuse_port: bool = False, stats_fd: int | None = None,
                 limits_fd: int | None = None, worker: int = 0, holes: Mapping[str, Sequence[int]] | None = None,
                 rates_fd: int | None = None, span_exporter: Any = None) -> None:
        if not isinstance(config, Config):
            raise TypeError("Proxy(config) takes a fastmesh Config; use Proxy.from_file() or Proxy.from_toml()")
        from fastmesh.config.load import config_from_dict, config_to_dict
        # A Config built from Python objects gets the same checks (and messages) as one read from a file.
        self.config = config_from_dict(config_to_dict(config), source=config.source)
        self.reuse_port = reuse_port
        # Endpoint slot holes of discovered clusters (dataplane/slots.py), as the supervisor assigned them.
        self._holes: dict[str, tuple[int, ...]] = {name: tuple(h) for name, h in (holes or {}).items() if h}
        self._reactor: Reactor | None = None
        self._clusters: dict[str, Cluster] = {}
        self._listeners: list[Listener] = []
        self._tcp: dict[str, TcpProxy] = {}
        self._http: dict[str, HttpProxy] = {}
        self._pools: list[Pool] = []
        self._names: Names | None = None           # the naming the http listeners' routers resolve services with
        self.addresses: dict[str, tuple[str, int]] = {}
        self._started = False
        # Counters: the supervisor's shared block (stats_fd, a memfd `fastmesh run` passes its workers) or a
        # private one; mapped at the first start and kept, so a restarted Proxy counts on from where it stopped.
        self._stats_fd = stats_fd
        self._stats_layout: StatsLayout | None = None
        self._stats_block: StatsBlock | None = None
        self._lag: LagProbe | None = None
        # Limit counters: the supervisor's block shared by every worker (limits_fd, our region `worker`), or a
        # private one, so an embedded Proxy's limits are its own. Mapped at the first start and kept.
        self._limits_fd = limits_fd
        self._worker = worker
        self._limits: LimitBlock | None = None
        # Rate-limit buckets: the supervisor's block (rates_fd) every worker maps, or a private one. Mapped at the
        # first start; a reload that changes the limits brings a new one (dataplane/ratelimits.py).
        self._rates_fd = rates_fd
        self._rates: RateBlock | None = None
        self._rates_opened = False
        self._health: Health | None = None
        self._retired: list[Acceptor] = []        # acceptors a reload replaced, until their connections end
        self._conn_limit: ConnectionLimit | None = None   # the worker's max_connections
        self.fd_budget: FdBudget | None = None            # how the worker spends its fds (dataplane/fd_budget.py)
        self._tls_watch: TlsWatch | None = None           # reloads certificate files when they change
        # Span export (dataplane/tracing.py): an OpenTelemetry SDK SpanExporter an embedder gives (used instead of
        # the [tracing] export endpoint), and the running export. One process records spans for one Proxy.
        self._span_exporter = span_exporter
        self._spans: SpanExport | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> "Proxy":
        from fastmesh.config.load import load_config
        return cls(load_config(path), **kwargs)

    @classmethod
    def from_toml(cls, text: str, **kwargs: Any) -> "Proxy":
        from fastmesh.config.load import loads_config
        return cls(loads_config(text, source="<string>"), **kwargs)

    async def start(self) -> None:
        """Bind every listener and start accepting on the running loop. Raises OSError if a bind fails."""
        if self._started:
            raise RuntimeError("Proxy already started")
        from fastmesh._core.reactor import ConnectionLimit, Reactor
        from fastmesh.dataplane import fd_budget
        from fastmesh.dataplane.clusters import build_cluster

        loop = asyncio.get_running_loop()
        # A worker's loop waits in a reactor of its own (process/loop.py): use it unless another Proxy does.
        reactor = getattr(loop, "reactor", None)
        if not isinstance(reactor, Reactor) or reactor.attached:
            reactor = Reactor()
        self._start_spans()
        if self._limits is None:
            from fastmesh.dataplane.limits import open_limits
            self._limits = open_limits(self.config, self._limits_fd, self._worker)
            self._limits_fd = None
        if not self._rates_opened:
            from fastmesh.dataplane.ratelimits import open_rates
            self._rates = open_rates(self.config, self._rates_fd)
            self._rates_fd, self._rates_opened = None, True
        budget = fd_budget.fd_budget(self.config)
        self._conn_limit = ConnectionLimit(reactor, budget.max_connections)
        from fastmesh.dataplane.naming import build_names
        clusters = {name: build_cluster(c, self._holes.get(name, ())) for name, c in self.config.clusters.items()}
        pools = self._pools_for(self.config, reactor, clusters, {})
        self._names = build_names(self.config)
        listeners = []
        try:
            for lcfg in self.config.listeners:
                listeners.append(self._open_listener(lcfg, reactor, clusters, pools))
        except BaseException:
            for listener in listeners:
                listener.close()
            self._tcp.clear()
            self._http.clear()
            self.addresses.clear()
            raise
        self._pools = pools
        from fastmesh.dataplane import stats
        if self._stats_layout is None or self._stats_block is None:
            self._stats_layout = stats.StatsLayout(self.config, self._holes)
            self._stats_block = stats.open_block(self._stats_layout, self._stats_fd)
            self._stats_fd = None
        stats.attach(self._stats_layout, self._stats_block, clusters, self._tcp, self._http, self._names)
        self._set_budget(budget, reactor)
        self._lag = stats.LagProbe(self._stats_block)
        self._lag.start(loop)
        reactor.busy_poll = self.config.busy_poll
        reactor.attach(loop)
        from fastmesh.health import Health
        # Outlier settings and active checks, in place before the first connection is accepted.
        self._health = Health(self.config.clusters, clusters)
        self._health.start()
        for sweeper in [*clusters.values(), *self._tcp.values(), *pools, *self._http.values()]:
            reactor.add_sweeper(sweeper)
        from fastmesh.dataplane.tls import TlsWatch, own_ticket_secret
        own_ticket_secret(self.config.ticket_secret_rotation)
        self._tls_watch = TlsWatch()
        self._tls_watch.track(self._tls_contexts())
        self._tls_watch.start()
        for listener in listeners:
            listener.start()
        self._reactor, self._clusters, self._listeners = reactor, clusters, listeners
        self._started = True
        for name, (host, port) in self.addresses.items():
            log.info("listener %s on %s:%d", name, host, port)

    def _start_spans(self) -> None:
        """Trace ids of this process's own (a forked worker must not repeat its parent's); span export when
        configured."""
        from fastmesh._core import tracing
        from fastmesh.dataplane.tracing import build_span_export
        tracing.seed()
        self._spans = build_span_export(self.config.tracing.export, self._span_exporter)
        if self._spans is not None:
            self._spans.install()

    async def _stop_spans(self) -> None:
        spans, self._spans = self._spans, None
        if spans is not None:
            await spans.aclose()

    def _pools_for(self, config: Config, reactor: Reactor, clusters: dict[str, Cluster], keep: dict[str, Pool]
                   ) -> list[Pool]:
        """One HTTP pool per cluster, in config order (a router's cluster index is a position in this list); `keep`
        holds pools to carry over by cluster name. Empty when no listener speaks http. A new pool's limits count
        in its cluster's cell, the same cell a pool it replaces counted in."""
        from fastmesh.dataplane.clusters import build_pool, cluster_tls
        from fastmesh.dataplane.limits import cell_for
        if not any(lcfg.protocol == "http" for lcfg in config.listeners):
            return []
        assert self._limits is not None          # mapped by start() before the first pool
        pools = [keep.get(n) or build_pool(config.clusters[n], reactor, clusters[n], cell_for(self._limits, n))
                 for n in config.clusters]
        from fastmesh.dataplane.tls import unchanged_or
        before = {pool.cluster.name: pool.tls for pool in self._pools}
        for name, pool in zip(config.clusters, pools):
            # Read again on every reload (changed certificate files take effect; open connections keep theirs);
            # unchanged, the running context stays, and with it the sessions kept for resumption.
            pool.tls = unchanged_or(before.get(name), cluster_tls(config.clusters[name], config.source))
        return pools

    def _acceptor(self, lcfg: ListenerConfig, reactor: Reactor, clusters: dict[str, Cluster], pools: list[Pool]
                  ) -> Acceptor:
        from fastmesh.dataplane.listeners import build_http_acceptor, build_tcp_acceptor
        index = next(i for i, lc in enumerate(self.config.listeners) if lc.name == lcfg.name)
        if lcfg.protocol == "http":
            return build_http_acceptor(lcfg, reactor, pools, list(self.config.clusters), self._names, self._rates,
                                       self.config.source, index)
        # Origination contexts to keep when equal to a new one, per cluster: the cluster's HTTP pool's (one
        # context, one set of sessions and one reload per cluster), then the one this listener had before a reload,
        # then another tcp listener's (already built, or running) to the same cluster.
        candidates: dict[str, list[TlsClient]] = {}
        for pool in pools:
            if pool.tls is not None:
                candidates.setdefault(pool.cluster.name, []).append(pool.tls)
        running = self._tcp.get(lcfg.name)
        others = [tcp for name, tcp in self._tcp.items() if name != lcfg.name]
        for tcp in [running, *others] if running is not None else others:
            for cluster_name, ctx in tcp.upstream_contexts:
                candidates.setdefault(cluster_name, []).append(ctx)
        if lcfg.service is not None:
            # The loader made sure the service names a cluster; its first stands for it where one is shown.
            assert self._names is not None and self._names.current is not None
            table = self._names.current
            first = table.first_cluster(table.services.index(lcfg.service))
            names = list(self.config.clusters)
            return build_tcp_acceptor(lcfg, reactor, clusters[names[max(first, 0)]], clusters, self.config.clusters,
                                      self.config.source, index, (), self._names, candidates)
        assert lcfg.cluster is not None          # the loader requires it (or service) for tcp listeners
        return build_tcp_acceptor(lcfg, reactor, clusters[lcfg.cluster], clusters, self.config.clusters,
                                  self.config.source, index, candidates.get(lcfg.cluster, ()))

    def _open_listener(self, lcfg: ListenerConfig, reactor: Reactor, clusters: dict[str, Cluster],
                       pools: list[Pool]) -> Listener:
        """Bind one listener (not yet accepting) with a new acceptor, and record both."""
        from fastmesh.dataplane.listeners import bind_listener
        acceptor = self._acceptor(lcfg, reactor, clusters, pools)
        listener, bound = bind_listener(lcfg, reactor, acceptor, self.reuse_port, self._conn_limit)
        self._record(lcfg.name, acceptor)
        self.addresses[lcfg.name] = bound
        return listener

    def _record(self, name: str, acceptor: Acceptor) -> None:
        """acceptor serves listener `name` from now on (in place of the one it had)."""
        from fastmesh._core.http1.proxy import HttpProxy
        self._tcp.pop(name, None)
        self._http.pop(name, None)
        if isinstance(acceptor, HttpProxy):
            self._http[name] = acceptor
        else:
            self._tcp[name] = acceptor

    async def reload(self, config: Config, *, stats_block: StatsBlock | None = None,
                     holes: Mapping[str, Sequence[int]] | None = None, rates_fd: int | None = None
                     ) -> dict[str, list[str]]:
        """Swap in `config` without dropping an open connection or a request under way.

        Unchanged clusters keep their core objects (health, ejections, latency estimates, idle connections);
        so do clusters whose endpoint list alone changed and still extends their endpoint slots (a discovered
        cluster: `holes` are its slot holes, dataplane/slots.py), updated in place (Cluster.update). Other
        changed ones are rebuilt, taking over by address what the old one knew of each endpoint (marks,
        health, ejections, latency), and their old pools retired (busy connections finish, none is kept idle).
        A listener whose address is unchanged keeps its socket: http listeners take the new routes in place,
        so keep-alive connections see them from their next request; tcp listeners send new connections to a
        new relay table while open relays finish on the old one. Listeners that are new or moved are bound
        first (a bind error aborts the reload before anything changed); removed ones stop accepting and drain.
        `stats_block` is the counter block `fastmesh run`'s supervisor made for the new config's shape (see
        dataplane/stats.py); without it a reload that changes that shape counts into a new private block.
        `rates_fd` is the supervisor's rate-limit block for the new config's limits (dataplane/ratelimits.py; the
        fd is ours to close); without it, limits that changed get a new private block (unchanged ones keep their
        buckets).
        Returns the names of what changed, for the log.
        """
        from fastmesh.dataplane.ratelimits import received
        rates_block = received(rates_fd, self._rates)
        if not isinstance(config, Config):
            raise TypeError("reload() takes a fastmesh Config")
        from fastmesh.config.load import config_from_dict, config_to_dict
        config = config_from_dict(config_to_dict(config), source=config.source)
        if not self._started:
            self.config = config
            self._holes = {name: tuple(h) for name, h in (holes or {}).items() if h}
            return {}
        return await self._swap(config, stats_block, holes, rates_block)

    async def _swap(self, config: Config, stats_block: StatsBlock | None, holes: Mapping[str, Sequence[int]] | None,
                    rates_block: RateBlock | None = None, rebuild: Collection[str] = ()) -> dict[str, list[str]]:
        """reload() once `config` is checked. `rebuild`: discovered clusters known not to update in place (their
        sets compacted), built anew from their IP literals without trying."""
        from fastmesh.dataplane.fd_budget import fd_budget
        from fastmesh.dataplane.listeners import reconfigure_http, set_proxy_protocol
        old, reactor, health = self.config, self._reactor, self._health
        assert reactor is not None and health is not None        # started
        new_holes = {name: tuple(h) for name, h in (holes or {}).items() if h}
        clusters, updated = self._clusters_for(config, new_holes, rebuild)
        rebuilt = [name for name in config.clusters if clusters[name] is not self._clusters.get(name)]
        kept_pools: dict[str, Pool] = {}
        for pool in self._pools:
            name = pool.cluster.name
            if name in clusters and clusters[name] is pool.cluster:
                kept_pools[name] = pool
        pools = self._pools_for(config, reactor, clusters, kept_pools)
        by_name = {listener.name: listener for listener in self._listeners}
        old_listeners = {lcfg.name: lcfg for lcfg in old.listeners}
        moved = {lcfg.name for lcfg in config.listeners if lcfg.name in old_listeners
                 and (old_listeners[lcfg.name].host, old_listeners[lcfg.name].port, old_listeners[lcfg.name].backlog)
                 != (lcfg.host, lcfg.port, lcfg.backlog)}
        to_bind = [lcfg for lcfg in config.listeners if lcfg.name not in old_listeners or lcfg.name in moved]
        gone = [name for name in old_listeners if name not in {lcfg.name for lcfg in config.listeners}]
        # 1. Everything that can fail, first: bind the new sockets.
        from fastmesh.dataplane.naming import build_names
        old_names, self._names = self._names, build_names(config)
        self.config = config
        old_tcp, old_http, old_addresses = dict(self._tcp), dict(self._http), dict(self.addresses)
        from fastmesh.dataplane import ratelimits
        old_rates = self._rates
        self._rates = rates_block or ratelimits.rebuilt(old_rates, config,
                                                        old_rates.seed if old_rates is not None else None)
        opened = []
        try:
            for lcfg in to_bind:
                self._tcp.pop(lcfg.name, None)
                self._http.pop(lcfg.name, None)
                opened.append(self._open_listener(lcfg, reactor, clusters, pools))
        except BaseException:
            for listener in opened:
                listener.close()
            self.config, self._tcp, self._http, self.addresses = old, old_tcp, old_http, old_addresses
            self._names, self._rates = old_names, old_rates
            raise
        reactor.busy_poll = config.busy_poll
        # 2. Listeners that stay where they are: new routes and clusters.
        for lcfg in config.listeners:
            if lcfg.name in moved or lcfg.name not in old_listeners:
                continue
            before = old_listeners[lcfg.name]
            http = old_http.get(lcfg.name)
            same_limits = (before.max_request_line, before.max_header_bytes, before.max_headers) == \
                (lcfg.max_request_line, lcfg.max_header_bytes, lcfg.max_headers)
            if lcfg.protocol == "http" and http is not None and same_limits:
                reconfigure_http(http, lcfg, pools, list(config.clusters), self._names, self._rates, config.source,
                                 config.listeners.index(lcfg))
                continue
            acceptor = self._acceptor(lcfg, reactor, clusters, pools)
            self._record(lcfg.name, acceptor)
            by_name[lcfg.name].set_protocol(acceptor)
            reactor.add_sweeper(acceptor)
            self._retire(old_tcp.get(lcfg.name) or http)
        # Connection limits: the worker's (a changed max_connections, or a changed reserve) and each listener's.
        budget = fd_budget(config)
        for lcfg in config.listeners:
            if lcfg.name in by_name and lcfg.name not in moved:
                by_name[lcfg.name].limit.set_limit(lcfg.max_connections)
                set_proxy_protocol(by_name[lcfg.name], lcfg)
        # 3. Listeners removed or moved: stop accepting, let their connections finish.
        for name in [*gone, *moved]:
            by_name.pop(name).close()
            self._retire(old_tcp.get(name) or old_http.get(name))
            if name in gone:
                self._tcp.pop(name, None)
                self._http.pop(name, None)
                self.addresses.pop(name, None)
        for pool in self._pools:
            if pool not in pools:
                pool.retire()
            elif pool.cluster.name in updated:
                pool.endpoints_changed()
        # 4. Sweepers, health, stats and the listeners' list.
        for name in rebuilt:
            reactor.add_sweeper(clusters[name])
            if name in self._clusters:
                reactor.remove_sweeper(self._clusters[name])
        for pool in pools:
            if pool not in self._pools:
                reactor.add_sweeper(pool)
        for name in [lcfg.name for lcfg in to_bind]:
            reactor.add_sweeper(self._http.get(name) or self._tcp[name])
        await health.stop()
        if config.tracing != old.tracing:
            await self._stop_spans()
            self._start_spans()
        from fastmesh.health import Health
        self._health = Health(config.clusters, clusters)
        self._health.start()
        self._holes = new_holes
        self._reattach_stats(clusters, stats_block)
        self._set_budget(budget, reactor)
        self._clusters, self._pools = clusters, pools
        self._listeners = [listener for listener in self._listeners if listener.name in by_name] + opened
        for listener in opened:
            listener.start()
        if self._tls_watch is not None:
            self._tls_watch.track(self._tls_contexts())
        changes = {"clusters": rebuilt, "clusters_updated": updated, "listeners_added": [lcfg.name for lcfg in to_bind],
                   "listeners_removed": gone}
        log.info("config reloaded: clusters rebuilt %s, updated in place %s, listeners bound %s, removed %s",
                 rebuilt or "none", updated or "none", changes["listeners_added"] or "none", gone or "none")
        return changes

    def _clusters_for(self, config: Config, holes: Mapping[str, tuple[int, ...]], rebuild: Collection[str] = ()
                      ) -> tuple[dict[str, Cluster], list[str]]:
        """The core clusters for `config`: the running ones where unchanged or updated in place (a changed endpoint
        list that extends their slots), new ones (state taken over by address) for the rest; and the names of
        those updated in place."""
        from fastmesh.dataplane.clusters import build_cluster, update_cluster
        old = self.config
        clusters: dict[str, Cluster] = {}
        updated = []
        for name, c in config.clusters.items():
            current, before, gaps = self._clusters.get(name), old.clusters.get(name), holes.get(name, ())
            if name in rebuild:
                clusters[name] = build_cluster(c, gaps, literal=True)
                if current is not None:
                    clusters[name].adopt(current)
            elif current is not None and before == c and gaps == self._holes.get(name, ()):
                clusters[name] = current
            elif (current is not None and before is not None and dataclasses.replace(before, endpoints=c.endpoints) == c
                  and update_cluster(current, c, gaps)):
                clusters[name] = current
                updated.append(name)
            else:
                clusters[name] = build_cluster(c, gaps)
                if current is not None:
                    clusters[name].adopt(current)
        return clusters, updated

    async def update_endpoints(self, sets: Mapping[str, tuple[list[Endpoint], Sequence[int]]], *,
                               stats_block: StatsBlock | None = None) -> dict[str, list[str]]:
        """A discovery update: each named cluster's endpoints become `sets[name]` (live endpoints in slot order, and
        the slot holes), applied in place: endpoints still listed keep their state and idle connections, added
        ones enter slow start, removed ones are picked no more while their requests finish (their idle
        connections closed). Nothing else changes and nothing is validated again (the supervisor's discovery
        parsed the sets). A set that does not extend its cluster's slots (the supervisor compacted them) is
        applied as reload() would (a new cluster taking over each endpoint's state by address, the old pool
        retired), without checking the config again. `stats_block` as for reload(). Returns what changed, as
        reload() does."""
        from fastmesh.dataplane.clusters import update_cluster
        if not self._started:
            raise RuntimeError("update_endpoints() needs a started Proxy")
        configs = dict(self.config.clusters)
        holes = dict(self._holes)
        for name, (endpoints, gaps) in sets.items():
            if name not in configs:
                raise ValueError(f"no cluster {name!r}")
            configs[name] = dataclasses.replace(configs[name], endpoints=list(endpoints))
            holes.pop(name, None)
            if gaps:
                holes[name] = tuple(gaps)
        config = dataclasses.replace(self.config, clusters=configs)
        # Only the endpoints changed: nothing to check. The sets that do not extend their cluster's slots
        # (compacted) build new clusters; the others are applied in place here or by the swap.
        compacted = [name for name in sets
                     if not update_cluster(self._clusters[name], configs[name], holes.get(name, ()), literal=True)]
        if compacted:
            return await self._swap(config, stats_block, holes, rebuild=compacted)
        assert self._health is not None
        by_cluster = {pool.cluster.name: pool for pool in self._pools}
        for name in sets:
            if name in by_cluster:
                by_cluster[name].endpoints_changed()
            self._health.update_cluster(name, configs[name], self._clusters[name])
        self.config, self._holes = config, holes
        self._reattach_stats(self._clusters, stats_block)
        return {"clusters": [], "clusters_updated": list(sets), "listeners_added": [], "listeners_removed": []}

    def _set_budget(self, budget: FdBudget, reactor: Reactor) -> None:
        """Apply a worker's fd budget (dataplane/fd_budget.py): its connection and pipe limits; log them once."""
        from fastmesh.dataplane import fd_budget
        from fastmesh.dataplane.stats import HEADER
        assert self._conn_limit is not None and self._stats_block is not None
        if budget != self.fd_budget:
            log.info("%s", fd_budget.describe(budget))
            problem = fd_budget.check(budget)
            if problem:
                log.warning("%s", problem)
        self.fd_budget = budget
        self._conn_limit.set_limit(budget.max_connections)
        reactor.pipes.limit = budget.max_pipes
        self._stats_block[HEADER["max_connections"]] = budget.max_connections

    def _retire(self, acceptor: Acceptor | None) -> None:
        """An acceptor a reload replaced: it gets no new connections; its open ones finish and still count."""
        if acceptor is None:
            return
        if hasattr(acceptor, "drain") and acceptor not in self._http.values():
            acceptor.drain()
        self._prune_retired()
        self._retired.append(acceptor)

    def _prune_retired(self) -> None:
        """Forget the retired acceptors whose last connection has ended, and stop sweeping them: every reload
        retires every tcp acceptor, so without this a reload a minute piles them up (and their sweeps) for good."""
        keep = []
        for acceptor in self._retired:
            if acceptor.active:
                keep.append(acceptor)
            elif self._reactor is not None:
                self._reactor.remove_sweeper(acceptor)
        self._retired = keep

    def _reattach_stats(self, clusters: dict[str, Cluster], offered: StatsBlock | None = None) -> None:
        """Point the current core objects at the stats block for the new config: the same one while the shape is
        unchanged, else `offered` (the supervisor's block of the new shape) or a private one. What they counted
        moves along; what the reload retired goes on counting into the old block."""
        from fastmesh.dataplane import stats
        layout = stats.StatsLayout(self.config, self._holes)
        assert self._stats_layout is not None and self._stats_block is not None and self._lag is not None
        block = stats.reload_block(layout, self._stats_layout, self._stats_block, offered)
        self._stats_layout, self._stats_block = layout, block
        self._lag.block = block
        stats.attach(layout, block, clusters, self._tcp, self._http, self._names)

    def endpoint_details(self, clusters: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per named cluster, each endpoint as this process sees it: eligibility, ejection, slow start, latency."""
        from fastmesh.dataplane.explain import endpoint_details
        return {name: endpoint_details(self._clusters[name]) for name in clusters if name in self._clusters}

    @property
    def active_connections(self) -> int:
        """Downstream connections open now, over all listeners."""
        return (sum(tcp.active for tcp in self._tcp.values())
                + sum(http.active + http.tunnel_count for http in self._http.values())
                + sum(a.active for a in self._retired)
                + sum(listener.gate.waiting for listener in self._listeners if listener.gate is not None))

    def stats(self) -> dict[str, Any]:
        """Counters per listener and the state of each cluster's endpoints."""
        from fastmesh.dataplane.listeners import h2_stats
        return {
            "listeners": {name: {"active": t.active, "accepted": t.accepted, "failed": t.failed,
                                 "bytes_in": t.bytes_in, "bytes_out": t.bytes_out, **self._service_rows().get(name, {})}
                          for name, t in self._tcp.items()},
            "http": {name: {"active": h.active, "accepted": h.accepted, "requests": h.requests,
                            "responses": h.status_classes, "bytes_in": h.bytes_in, "bytes_out": h.bytes_out,
                            "tunnels": h.tunnel_count, "exchanges": h.exchanges_held,
                            "http2": h2_stats(h)}
                     for name, h in self._http.items()},
            "pools": {p.cluster.name: {"opened": p.opened, "reuses": p.reuses, "open": p.active,
                                       "idle": p.idle_counts(), "requests_active": p.policy.requests_active,
                                       "retried": p.policy.retried, "overloaded": p.policy.overloaded,
                                       "budget_exhausted": p.policy.budget.exhausted}
                      for p in self._pools},
            "clusters": {name: c.endpoints() for name, c in self._clusters.items()},
            "health": self._health.active.status() if self._health is not None else {},
            "connections": self._connection_limits(),
            "tls": self._tls_stats(),
            "filters": self._filter_stats(),
            "rate_limits": self._rate_stats(),
            "proxy_protocol": {listener.name: {"passed": listener.gate.passed, "waiting": listener.gate.waiting,
                                               "refused": listener.gate.refused}
                               for listener in self._listeners if listener.gate is not None},
            "tracing": self._spans.stats() if self._spans is not None else {},
        }

    def _service_rows(self) -> dict[str, dict[str, Any]]:
        """Per tcp listener sending to a service: the service, and its connections per cluster it resolved to."""
        if self._stats_block is None or self._stats_layout is None or not self._stats_layout.routed:
            return {}
        from fastmesh.dataplane.stats import Snapshot
        rows = Snapshot.of_block(self._stats_layout, self._stats_block).listeners()
        return {rs.listener: {"service": rows[rs.listener]["service"], "clusters": rows[rs.listener]["clusters"]}
                for rs in self._stats_layout.routed}

    def _rate_stats(self) -> list[dict[str, Any]]:
        """Per limited route: its limit and the requests it let through, refused and the keys it had to forget,
        over every worker of the instance (the buckets are shared)."""
        from fastmesh.dataplane.ratelimits import counts
        return counts(self._rates, self.config)

    def _tls_contexts(self) -> list[tuple[str, str, Any]]:
        """Every TLS context in use, as (kind, name, context), each once: listeners terminating TLS and clusters
        originating it (a tcp listener's per cluster it sends to, the cluster's own or, from a service listener,
        each cluster's the naming table may resolve to; and the HTTP pools')."""
        out: list[tuple[str, str, Any]] = []
        acceptors: list[tuple[str, Any]] = [*self._tcp.items(), *self._http.items()]   # http: once it has TLS
        for name, acceptor in acceptors:
            if getattr(acceptor, "tls", None) is not None:
                out.append(("listener", name, acceptor.tls))
        # HTTP pools originate TLS too (a mesh's mTLS client certificate): watched, reloaded and reported alike
        # (once: a tcp listener to the same cluster shares the pool's context when their settings agree).
        seen: set[int] = set()
        for cluster_name, client in self._originating():
            if id(client) not in seen:
                seen.add(id(client))
                out.append(("cluster", cluster_name, client))
        return out

    def _originating(self) -> list[tuple[str, TlsClient]]:
        """(cluster name, TlsClient) for each origination context of the tcp listeners and HTTP pools (a context
        two of them share appears once per user)."""
        out = [pair for tcp in self._tcp.values() for pair in tcp.upstream_contexts]
        return out + [(pool.cluster.name, pool.tls) for pool in self._pools if pool.tls is not None]

    def tls_status(self) -> list[dict[str, Any]]:
        """Each TLS context's certificates (expiry included) and how reloading its files went (dataplane/tls.py)."""
        return self._tls_watch.status() if self._tls_watch is not None else []

    def _tls_stats(self) -> dict[str, Any]:
        """Per TLS listener: handshakes finished and resumed, refusals by reason; per cluster originating TLS:
        its handshakes; and every loaded certificate with its expiry (Unix time)."""
        if self._stats_block is None or self._stats_layout is None:
            return {}
        from fastmesh._core.stats import TLS_FAIL_REASONS
        from fastmesh.dataplane.stats import Snapshot
        counted = Snapshot.of_block(self._stats_layout, self._stats_block).listeners()
        listeners: dict[str, Any] = {}
        clusters: dict[str, Any] = {}
        terminating = [(name, tcp.tls, bool(tcp.sni_routes_count)) for name, tcp in self._tcp.items()]
        terminating += [(name, http.tls, False) for name, http in self._http.items()]
        for name, server, passthrough in terminating:
            row = counted.get(name, {})
            if server is not None or passthrough:
                listeners[name] = {
                    "handshakes": row.get("tls_handshakes", 0), "resumed": row.get("tls_resumed", 0),
                    "failed": {r: row[f"tls_failed_{r}"] for r in TLS_FAIL_REASONS if row.get(f"tls_failed_{r}")},
                    "certificates": list(server.certificates) if server is not None else []}
        counted_ids: set[int] = set()
        for cluster, client in self._originating():
            if id(client) in counted_ids:
                continue                        # shared by a tcp listener and the HTTP pool: its counts once
            counted_ids.add(id(client))
            seen = clusters.setdefault(cluster, {"handshakes": 0, "resumed": 0, "failed": 0,
                                                 "certificates": list(client.certificates)})
            seen["handshakes"] += client.handshakes
            seen["resumed"] += client.resumed
            seen["failed"] += client.failures
        return {"listeners": listeners, "clusters": clusters, "contexts": self.tls_status()}

    def plugin_counters(self) -> dict[str, Any]:
        """What this process counts in Python and /metrics sums over the workers (asked over the control link):
        each filter's stats per http listener, span export, and each access-log sink's records."""
        sinks = [s.stats() | {"sink": s.where} for h in self._http.values()
                 for s in getattr(h.access_log, "sinks", None) or ()]
        return {"filters": self._filter_stats(), "tracing": self._spans.stats() if self._spans is not None else {},
                "sinks": sinks}

    def _filter_stats(self) -> dict[str, list[dict[str, Any]]]:
        """Per http listener: each filter plugin's calls, answers, errors and timeouts (this process's)."""
        from fastmesh.dataplane.listeners import filter_entries
        return {name: [e.stats() for e in filter_entries(h)] for name, h in self._http.items() if h.chains}

    def _connection_limits(self) -> dict[str, Any]:
        """The worker's connection limit and each listener's: the limit (0: none), the connections holding a slot
        now (an upgraded HTTP connection keeps its slot as a tunnel), and the listener's counts of connections
        that waited at a limit and of accepts paused for want of fds."""
        budget = self.fd_budget
        if self._conn_limit is None or self._stats_block is None or self._stats_layout is None or budget is None:
            return {}
        from fastmesh.dataplane.stats import Snapshot
        counted = Snapshot.of_block(self._stats_layout, self._stats_block).listeners()
        return {"max_connections": self._conn_limit.limit, "open": self._conn_limit.active,
                "fd_limit": budget.fd_limit, "max_pipes": budget.max_pipes,
                "pipes_open": self._reactor.pipes.open if self._reactor is not None else 0,
                "listeners": {listener.name: {"max_connections": listener.limit.limit, "open": listener.limit.active,
                                              "limited": counted.get(listener.name, {}).get("limited", 0),
                                              "paused": counted.get(listener.name, {}).get("paused", 0)}
                              for listener in self._listeners}}

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let open connections finish for up to drain_timeout seconds, then close the rest."""
        if not self._started:
            return
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        for listener in self._listeners:
            listener.close()
        for acceptor in [*self._http.values(), *self._retired]:
            if hasattr(acceptor, "drain"):
                acceptor.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.active_connections:
            log.info("draining %d open connection(s) for up to %.1fs", self.active_connections, timeout)
        while self.active_connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.active_connections:
            log.info("drain timeout: closing %d connection(s)", self.active_connections)
        from fastmesh._core.http1.proxy import HttpProxy as CoreHttpProxy
        from fastmesh.dataplane.listeners import filter_entries
        for acceptor in [*self._tcp.values(), *self._http.values(), *self._retired]:
            acceptor.close_all()
            # An http listener's access log file (dataplane/access_log.py); the core's field is readable from
            # Python once _core/http1/conn.pxd declares it readonly. Until then the writer closes its file
            # itself when the acceptor is dropped.
            writer = getattr(acceptor, "access_log", None)
            if writer is not None:
                writer.close()
            if isinstance(acceptor, CoreHttpProxy):
                for entry in filter_entries(acceptor):   # the filter plugins' close()
                    entry.close()
        self._retired.clear()
        assert self._health is not None and self._reactor is not None and self._lag is not None   # started
        await self._stop_spans()
        await self._health.stop()
        if self._tls_watch is not None:
            await self._tls_watch.stop()
        self._reactor.detach()
        self._lag.stop()
        self._listeners.clear()
        self._started = False

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
