"""Rate limits: the block of token-bucket tables (fastmesh/_core/ratelimit.pyx) for a config's limited routes, made
by the supervisor and mapped by every worker, and each route's RateLimit over its table.

One table per limited route, owned by an ident made of stable names, never of places: the listener's name, the
route's name (or, for a route without one, its match: host, path, methods, headers), and its whole limit (rate,
burst, key, buckets). Moving a route, or adding routes before it, keeps its buckets; changing its limit, or the
match of a route without a name, starts them afresh. The supervisor makes a memfd holding the tables of the
config before the workers start; every worker maps it, so two workers take from one bucket. A reload whose tables
are all the same, in the same order, keeps the block (buckets and counts); any other makes a new block, copies
into it the tables whose idents it still has (carry_over), and sends it to the workers with the new config.
An embedded Proxy makes a private block the same way: its limits are its own.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from fastmesh._core.ratelimit import RateBlock, RateLimit, ident_of, interval_of
from fastmesh.config.schema import Config
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.config.schema import RateLimit as RateLimitConfig
from fastmesh.config.schema import Route as RouteConfig

log = logging.getLogger("fastmesh.ratelimit")

Table = tuple[int, int, int, int]          # (ident, entries, interval, tolerance): a RateBlock's table


def route_key(route: RouteConfig) -> str:
    """What a route is known by across reloads: its name, or else its match (the conditions a request must meet)."""
    if route.name is not None:
        return f"name\0{route.name}"
    match = {"host": route.host, "path": route.path, "path_prefix": route.path_prefix, "path_regex": route.path_regex,
             "methods": sorted(m.upper() for m in route.methods),
             "headers": sorted((k.lower(), v) for k, v in route.headers.items())}
    return "match\0" + json.dumps(match, sort_keys=True)


def table_of(listener: str, key: str, limit: RateLimitConfig) -> Table:
    """The table of the route known by `key` (route_keys) in `listener`, limited by `limit`."""
    interval = interval_of(limit.rate, limit.per)
    ident = ident_of(f"{listener}\0{key}\0{limit.rate}/{limit.per}\0{limit.burst}\0{limit.key}\0{limit.buckets}")
    return ident, limit.buckets, interval, limit.burst * interval


def route_keys(lcfg: ListenerConfig) -> list[str]:
    """route_key of each route of lcfg; a match two unnamed routes share gets its occurrence appended (the second
    such route is reached only through a filter's rerouting, but it keeps buckets of its own)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for route in lcfg.routes:
        key = route_key(route)
        seen[key] = seen.get(key, 0) + 1
        out.append(key if seen[key] == 1 else f"{key}\0#{seen[key]}")
    return out


def tables(cfg: Config) -> list[Table]:
    """Every limited route's table, in config order."""
    return [table_of(lcfg.name, key, route.rate_limit)
            for lcfg in cfg.listeners if lcfg.protocol == "http"
            for route, key in zip(lcfg.routes, route_keys(lcfg)) if route.rate_limit is not None]


def rebuilt(block: RateBlock | None, cfg: Config, seed: int | None, fd: int | None = None) -> RateBlock | None:
    """The block cfg's limits need: `block` itself when it has exactly cfg's tables, else a new one (in fd when
    given, else private) holding what block had for the routes whose limits stayed the same; None when cfg
    limits no route (and block is None)."""
    want = tables(cfg)
    if block is not None and block.idents == [t[0] for t in want]:
        return block
    if not want and block is None and fd is None:
        return None
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    new = RateBlock.create(fd, want, seed) if fd is not None else RateBlock(want, seed)
    if block is not None:
        new.carry_over(block)
    return new


def limits_for(block: RateBlock | None, lcfg: ListenerConfig) -> list[RateLimit | None] | None:
    """Per route of lcfg (and its default route, last): the RateLimit over its table, or None; None when no route
    of lcfg is limited (the codec then pays one test per request) or there is no block (explain's routers)."""
    if block is None or not any(route.rate_limit is not None for route in lcfg.routes):
        return None
    out: list[RateLimit | None] = []
    for i, (route, key) in enumerate(zip(lcfg.routes, route_keys(lcfg))):
        lim = route.rate_limit
        found = None
        if lim is not None:
            kind, _, name = lim.key.partition(":") if lim.key else ("route", "", "")
            found = block.limit(table_of(lcfg.name, key, lim)[0], kind, name, lim.text())
        if lim is not None and found is None:
            log.warning("listener %r route %d: its rate limit has no table in the block it was given: not limited",
                        lcfg.name, i)
        out.append(found)
    if lcfg.cluster is not None:
        out.append(None)                    # the listener's default cluster: a route of its own, never limited
    return out


def counts(block: RateBlock | None, cfg: Config) -> list[dict[str, Any]]:
    """Per limited route: listener, route (index) and its name (None without one), limit (as written) and passed,
    limited, evicted over every worker."""
    out: list[dict[str, Any]] = []
    for lcfg in cfg.listeners:
        for i, limit in enumerate(limits_for(block, lcfg) or () if lcfg.protocol == "http" else ()):
            if limit is not None:
                out.append({"listener": lcfg.name, "route": i, "name": lcfg.routes[i].name, "limit": limit.spec,
                            **limit.counts()})
    return out


class SharedRates:
    """The supervisor's block, in a memfd handed to each worker; a reload that changes limits makes the next."""

    def __init__(self, cfg: Config) -> None:
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.fd = -1
        self.block: RateBlock | None = None
        self._replace(cfg)

    def _replace(self, cfg: Config) -> None:
        fd = os.memfd_create("fastmesh-rates", os.MFD_CLOEXEC)
        try:
            self.block = rebuilt(None if self.fd < 0 else self.block, cfg, self.seed, fd)
        except BaseException:
            os.close(fd)
            raise
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def update(self, cfg: Config) -> int | None:
        """The memfd of cfg's block when a reload to cfg changes the tables (the new block, the running one's
        tables carried over), else None: the workers keep theirs."""
        assert self.block is not None
        if self.block.idents == [t[0] for t in tables(cfg)]:
            return None
        self._replace(cfg)
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_rates(cfg: Config, fd: int | None) -> RateBlock | None:
    """The block this process takes tokens from: the supervisor's (fd), or a private one for an embedded Proxy.
    Closes fd."""
    if fd is None:
        return rebuilt(None, cfg, None)
    try:
        return RateBlock.attach(fd)
    except (OSError, ValueError) as exc:
        log.warning("the supervisor's rate-limit block cannot be used (%s): this worker's limits are its own", exc)
        return rebuilt(None, cfg, None)
    finally:
        os.close(fd)


def received(fd: int | None, running: RateBlock | None) -> RateBlock | None:
    """The block a reload brought (fd, closed here), or None when there is none or it is the one `running` maps:
    the supervisor makes a new block only when the tables change, so the same seed and tables are the same block."""
    if fd is None:
        return None
    try:
        block = RateBlock.attach(fd)
    except (OSError, ValueError) as exc:
        log.warning("the rate-limit block sent with the reload cannot be used (%s)", exc)
        return None
    finally:
        os.close(fd)
    if running is not None and (running.seed, running.idents) == (block.seed, block.idents):
        return None
    return block
