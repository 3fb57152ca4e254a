"""Proxy: runs fastmesh's data plane on the caller's asyncio loop; start, drain and stop.

This is the embedding API (`async with Proxy(config): ...`) and what each worker process of `fastmesh run`
runs. One Proxy is one process's worth of listeners; `fastmesh run` starts several with reuse_port.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastmesh.config.schema import Config

log = logging.getLogger("fastmesh.proxy")


class Proxy:
    """The proxy for one validated Config.

    >>> async with Proxy.from_file("config.toml") as proxy:
    ...     print(proxy.addresses)
    """

    def __init__(self, config: Config, *, reuse_port: bool = False, stats_fd: int | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError("Proxy(config) takes a fastmesh Config; use Proxy.from_file() or Proxy.from_toml()")
        from fastmesh.config.load import config_from_dict, config_to_dict
        # A Config built from Python objects gets the same checks (and messages) as one read from a file.
        self.config = config_from_dict(config_to_dict(config), source=config.source)
        self.reuse_port = reuse_port
        self._reactor: Any = None
        self._clusters: dict[str, Any] = {}
        self._listeners: list[Any] = []
        self._tcp: dict[str, Any] = {}
        self._http: dict[str, Any] = {}
        self._pools: list[Any] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._started = False
        # Counters: the supervisor's shared block (stats_fd, a memfd `fastmesh run` passes its workers) or a
        # private one; mapped at the first start and kept, so a restarted Proxy counts on from where it stopped.
        self._stats_fd = stats_fd
        self._stats_layout: Any = None
        self._stats_block: Any = None
        self._lag: Any = None
        self._health: Any = None

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
        from fastmesh._core.reactor import Reactor
        from fastmesh.dataplane.clusters import build_cluster, build_pool
        from fastmesh.dataplane.listeners import build_http_listener, build_listener

        loop = asyncio.get_running_loop()
        reactor = Reactor()
        clusters = {name: build_cluster(c) for name, c in self.config.clusters.items()}
        listeners = []
        try:
            names = list(self.config.clusters)
            if any(lcfg.protocol == "http" for lcfg in self.config.listeners):
                # One pool per cluster, shared by every http listener; cluster index = position in `names`.
                self._pools = [build_pool(self.config.clusters[n], reactor, clusters[n]) for n in names]
            for lcfg in self.config.listeners:
                if lcfg.protocol == "http":
                    listener, http, bound = build_http_listener(lcfg, reactor, self._pools, names,
                                                                self.reuse_port)
                    self._http[lcfg.name] = http
                else:
                    assert lcfg.cluster is not None          # the loader requires it for tcp listeners
                    listener, tcp, bound = build_listener(lcfg, reactor, clusters[lcfg.cluster], self.reuse_port)
                    self._tcp[lcfg.name] = tcp
                listeners.append(listener)
                self.addresses[lcfg.name] = bound
        except BaseException:
            for listener in listeners:
                listener.close()
            self._tcp.clear()
            self._http.clear()
            self.addresses.clear()
            raise
        from fastmesh.dataplane import stats
        if self._stats_block is None:
            self._stats_layout = stats.StatsLayout(self.config)
            self._stats_block = stats.open_block(self._stats_layout, self._stats_fd)
            self._stats_fd = None
        stats.attach(self._stats_layout, self._stats_block, clusters, self._tcp)
        self._lag = stats.LagProbe(self._stats_block)
        self._lag.start(loop)
        reactor.attach(loop)
        from fastmesh.health import Health
        # Outlier settings and active checks, in place before the first connection is accepted.
        self._health = Health(self.config.clusters, clusters)
        self._health.start()
        for cluster in clusters.values():
            reactor.add_sweeper(cluster)
        for tcp in self._tcp.values():
            reactor.add_sweeper(tcp)
        for pool in self._pools:
            reactor.add_sweeper(pool)
        for http in self._http.values():
            reactor.add_sweeper(http)
        for listener in listeners:
            listener.start()
        self._reactor, self._clusters, self._listeners = reactor, clusters, listeners
        self._started = True
        for name, (host, port) in self.addresses.items():
            log.info("listener %s on %s:%d", name, host, port)

    @property
    def active_connections(self) -> int:
        """Downstream connections open now, over all listeners."""
        return (sum(tcp.active for tcp in self._tcp.values())
                + sum(http.active + http.tunnel_count for http in self._http.values()))

    def stats(self) -> dict[str, Any]:
        """Counters per listener and the state of each cluster's endpoints."""
        return {
            "listeners": {name: {"active": t.active, "accepted": t.accepted, "failed": t.failed,
                                 "bytes_in": t.bytes_in, "bytes_out": t.bytes_out}
                          for name, t in self._tcp.items()},
            "http": {name: {"active": h.active, "accepted": h.accepted, "requests": h.requests,
                            "responses": h.status_classes, "bytes_in": h.bytes_in, "bytes_out": h.bytes_out,
                            "tunnels": h.tunnel_count}
                     for name, h in self._http.items()},
            "pools": {p.cluster.name: {"opened": p.opened, "reuses": p.reuses, "open": p.active,
                                       "idle": p.idle_counts()} for p in self._pools},
            "clusters": {name: c.endpoints() for name, c in self._clusters.items()},
            "health": self._health.active.status() if self._health is not None else {},
        }

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let open connections finish for up to drain_timeout seconds, then close the rest."""
        if not self._started:
            return
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        for listener in self._listeners:
            listener.close()
        for http in self._http.values():
            http.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.active_connections:
            log.info("draining %d open connection(s) for up to %.1fs", self.active_connections, timeout)
        while self.active_connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.active_connections:
            log.info("drain timeout: closing %d connection(s)", self.active_connections)
        for tcp in self._tcp.values():
            tcp.close_all()
        for http in self._http.values():
            http.close_all()
        await self._health.stop()
        self._reactor.detach()
        self._lag.stop()
        self._listeners.clear()
        self._started = False

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
