"""Stats layout: which slot of a worker's stats block counts what, computed from the config alike in every process.

A worker's counters are uint64 slots in one flat block (fastmesh/_core/stats.pxd has the fields of each region).
The supervisor creates one block per worker slot in a memfd, passes its fd to the worker, and reads every block
to answer /metrics; both sides compute the same StatsLayout from the same config, and the layout's key in the
block header proves it. A memfd rather than a file in /dev/shm: it has no name to clean up, so nothing is left
behind even when the supervisor is killed outright.

Totals stay monotonic across worker restarts: when a worker exits, the supervisor folds its counters into a
"retired" array and zeroes the block before the next worker of that slot attaches.

Across a reload that changes the shape of the counters (a listener, cluster, endpoint or route target added or
removed), the supervisor makes a new block per worker slot in the new layout and passes it with the reload; the
worker moves the counters of what it keeps (listeners, clusters) into it. The old block is not given up at once:
what the reload retired (a replaced relay table, a rebuilt cluster's busy connections, requests counted before
the reload) goes on counting there until it is done. So the supervisor reads every block a worker has and adds
them up *by name* (dataplane/stats_names.py), in the current layout: a counter of a listener or cluster that
still exists never goes backwards, one that is gone disappears. An old block whose connection gauges have been
zero for FOLD_QUIET seconds is folded into the retired totals and unmapped. While a worker applies a reload (and
moves counters from one block to the other) the supervisor reads that worker's values as they were just before,
so no reader sees a counter twice or not at all. We chose this over one fixed layout keyed by name (stable
offsets) because a cluster's endpoint slots are arrays the core indexes by endpoint number: a changed endpoint
list needs a new region anyway. A name removed and later added back starts again from zero.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import operator
import os
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastmesh._core.stats import (
    BLOCK_MAGIC, BLOCK_VERSION, CLUSTER_FIELDS, DURATION_BOUNDS, ENDPOINT_FIELDS, ENDPOINT_STATES, GRPC_STATUSES,
    HEADER, HEADER_SIZE, HISTOGRAM_SIZE, HISTOGRAM_SUM, LISTENER_FIELDS, STATUS_CLASSES, StatsBlock, cluster_size,
)
from fastmesh._core.naming import OUTCOMES, OVERRIDE_RESULTS
from fastmesh.config.schema import Config, Endpoint
from fastmesh.dataplane.naming import services_of
from fastmesh.dataplane.slots import Holes, slot_list
from fastmesh.dataplane.stats_names import MASK, Name, Translation
from fastmesh.digests import blake2b

if TYPE_CHECKING:       # the supervisor reads stats without loading the connection code
    from fastmesh._core.cluster import Cluster
    from fastmesh._core.naming import Names
    from fastmesh._core.http1.proxy import HttpProxy
    from fastmesh._core.tcp.splice import TcpProxy

log = logging.getLogger("fastmesh.stats")

LAG_INTERVAL = 0.25         # seconds between event-loop lag probes
LAG_WINDOW = 4              # the lag gauge is the largest of this many recent probes (one second)
_GAUGE_FIELDS = {"active"}  # listener fields that go up and down (not folded into retired totals)
_HOST, _PORT = operator.attrgetter("host"), operator.attrgetter("port")
_ENDPOINT_GAUGES = {"state", "seen", "active"}
FOLD_QUIET = 30.0           # seconds an old block's connection gauges stay zero before it joins the retired totals


@dataclass(frozen=True)
class ListenerSlots:
    """A listener's L_FIELDS slots."""
    name: str
    cluster: str | None          # where a tcp listener relays to (an http listener's default cluster)
    protocol: str
    offset: int
    service: str | None = None   # the logical name a listener sends to instead of `cluster` (tcp), or by default


@dataclass(frozen=True)
class RoutedSlots:
    """A tcp listener sending to a service: its connections per cluster they were resolved to, one slot per
    cluster in config order (the naming table's cluster index, as the core counts them)."""
    listener: str
    clusters: tuple[str, ...]
    offset: int


class ClusterSlots:
    """A cluster's region: cluster-wide slots, then one array per endpoint field.

    Made per discovery update in the supervisor and in every worker, for clusters of up to 10,000 endpoints: the
    addresses and weights (read by the admin server, never by a worker's hot path) are formatted on first use,
    not when the layout is made; the offsets need only the slot count."""

    def __init__(self, name: str, live: Sequence[Endpoint], holes: Sequence[int], balancer: str, offset: int,
                 protocol: str = "http1", tls: bool = False) -> None:
        self.name = name
        self.live = live                 # the endpoints, in slot order
        self.holes = tuple(sorted(holes))   # the slots of removed endpoints
        self.count = len(live) + len(self.holes)
        self.balancer = balancer
        self.offset = offset
        self.protocol = protocol         # what http listeners speak to its endpoints ("http1" or "h2")
        self.tls = tls                   # its connections originate TLS: its handshake counts are shown

    def __repr__(self) -> str:
        return f"ClusterSlots({self.name!r}, {self.count} slots, offset {self.offset})"

    @functools.cached_property
    def endpoints(self) -> tuple[str, ...]:
        """"host:port" as configured, per slot; "" for a hole."""
        # config.values.format_address, inlined: 10,000 of them for a large discovered cluster.
        return tuple(["" if e is None else f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}"
                      for e in self.slots])

    @functools.cached_property
    def weights(self) -> tuple[int, ...]:
        """Per slot; 0 for a hole."""
        return tuple([0 if e is None else e.weight for e in self.slots])

    @functools.cached_property
    def slots(self) -> list[Endpoint | None]:
        """Endpoint per slot, None for a hole (a removed endpoint's slot)."""
        return slot_list(self.live, self.holes)

    def shape(self) -> bytes:
        """The address of every slot, as bytes for the layout key: the live hosts joined, their ports and the holes
        packed (no string formatted, no Python loop per endpoint: made per update in every process)."""
        hosts = "\n".join(map(_HOST, self.live)).encode()
        return (hosts + b"\0" + array("l", list(map(_PORT, self.live))).tobytes() + b"\0"
                + array("l", self.holes).tobytes())

    def field(self, name: str) -> int:
        """Offset of the cluster-wide slot `name` (CLUSTER_FIELDS)."""
        return self.offset + CLUSTER_FIELDS.index(name)

    def endpoint_field(self, name: str) -> int:
        """Offset of endpoint 0's slot of field `name` (ENDPOINT_FIELDS); endpoint i's is this + i."""
        return self.offset + len(CLUSTER_FIELDS) + ENDPOINT_FIELDS.index(name) * self.count


@dataclass(frozen=True)
class RequestSlots:
    """HTTP responses by status class (STATUS_CLASSES) for one (listener, cluster) pair."""
    listener: str
    cluster: str
    offset: int


@dataclass(frozen=True)
class NamingSlots:
    """Resolutions by outcome per service a route names (OUTCOMES slots each), then the override results."""
    services: tuple[str, ...]
    offset: int

    def service(self, i: int) -> int:
        return self.offset + i * len(OUTCOMES)

    @property
    def overrides(self) -> int:
        return self.offset + len(self.services) * len(OUTCOMES)

    @property
    def size(self) -> int:
        """Nothing without a service route (overrides only apply to those)."""
        return len(self.services) * len(OUTCOMES) + len(OVERRIDE_RESULTS) if self.services else 0


@dataclass(frozen=True)
class DurationSlots:
    """The request-duration histogram of one cluster (HISTOGRAM_SIZE slots)."""
    cluster: str
    offset: int


def _listener_clusters(lst: Any, clusters: list[str]) -> list[str]:
    """Every cluster a listener can send to: its own, then its routes' (http), in order, once each; every cluster
    when a route sends to a service (the naming table may send it to any, and the table changes live)."""
    routes = getattr(lst, "routes", ())
    names = [lst.cluster] + [route.cluster for route in routes]
    if any(route.service is not None for route in routes) or getattr(lst, "service", None) is not None:
        names += clusters
    return [name for name in dict.fromkeys(names) if name is not None]


class StatsLayout:
    """Offsets of every counter for one config: listeners, clusters, then HTTP request counters and histograms."""

    def __init__(self, cfg: Config, holes: Holes | None = None) -> None:
        offset = HEADER_SIZE
        holes = holes or {}
        self.listeners: tuple[ListenerSlots, ...] = ()
        listeners = []
        for lst in cfg.listeners:
            listeners.append(ListenerSlots(lst.name, lst.cluster, lst.protocol, offset, lst.service))
            offset += len(LISTENER_FIELDS)
        self.listeners = tuple(listeners)
        routed = []
        for lst in cfg.listeners:
            if lst.protocol == "tcp" and lst.service is not None:
                routed.append(RoutedSlots(lst.name, tuple(cfg.clusters), offset))
                offset += len(cfg.clusters)
        self.routed: tuple[RoutedSlots, ...] = tuple(routed)
        self.clusters: dict[str, ClusterSlots] = {}
        for name, cluster in cfg.clusters.items():
            cs = ClusterSlots(name, cluster.endpoints, holes.get(name, ()), cluster.balancer, offset, cluster.protocol,
                              cluster.tls is not None)
            self.clusters[name] = cs
            offset += cluster_size(cs.count)
        requests = []
        for lst in cfg.listeners:
            if lst.protocol == "tcp":
                continue
            for name in _listener_clusters(lst, list(cfg.clusters)):
                requests.append(RequestSlots(lst.name, name, offset))
                offset += len(STATUS_CLASSES)
        self.requests: tuple[RequestSlots, ...] = tuple(requests)
        self.durations: dict[str, DurationSlots] = {}
        for req in requests:
            if req.cluster not in self.durations:
                self.durations[req.cluster] = DurationSlots(req.cluster, offset)
                offset += HISTOGRAM_SIZE
        self.naming = NamingSlots(tuple(services_of(cfg)), offset)
        offset += self.naming.size
        self.size = offset
        self.key = self._key()
        self._names: dict[Name, int] | None = None

    @functools.cached_property
    def gauges(self) -> frozenset[int]:
        """Slots whose values go up and down: a dead worker's are dropped, not added to the retired totals."""
        gauges = [ls.offset + LISTENER_FIELDS.index(f) for ls in self.listeners for f in _GAUGE_FIELDS]
        for cs in self.clusters.values():
            for f in _ENDPOINT_GAUGES:
                start = cs.endpoint_field(f)
                gauges.extend(range(start, start + cs.count))
        return frozenset(gauges)

    @functools.cached_property
    def actives(self) -> tuple[tuple[int, int], ...]:
        """Open connections that count into a block, as (first slot, count) runs: while any is non-zero, something
        may still write there. Runs, not slots: a cluster's are one run, checked in one C loop (StatsBlock.any_set)."""
        actives = [(ls.offset + LISTENER_FIELDS.index("active"), 1) for ls in self.listeners]
        actives.extend((cs.endpoint_field("active"), cs.count) for cs in self.clusters.values())
        return tuple(actives)

    def _key(self) -> int:
        """64 bits that change whenever an offset could mean something else."""
        shape = [BLOCK_VERSION, self.size,
                 [(ls.name, ls.protocol, ls.offset) for ls in self.listeners],
                 [(r.listener, r.clusters, r.offset) for r in self.routed],
                 [(cs.name, cs.count, cs.offset) for cs in self.clusters.values()],
                 [(r.listener, r.cluster, r.offset) for r in self.requests],
                 [(d.cluster, d.offset) for d in self.durations.values()],
                 (self.naming.services, self.naming.offset)]
        digest = blake2b(repr(shape).encode(), digest_size=8)
        for cs in self.clusters.values():       # addresses as columns, not repr'd: 10,000 of them per update
            digest.update(cs.shape())
            digest.update(b"\0")
        return int.from_bytes(digest.digest(), "little")

    def new_block(self, fd: int | None = None) -> StatsBlock:
        """A block with this layout's header: private heap memory, or (fd) a memfd sized for it and mapped."""
        if fd is None:
            block = StatsBlock(self.size)
        else:
            os.ftruncate(fd, self.size * 8)
            block = StatsBlock.map(fd, self.size)
        block[HEADER["magic"]] = BLOCK_MAGIC
        block[HEADER["version"]] = BLOCK_VERSION
        block[HEADER["layout"]] = self.key
        block[HEADER["size"]] = self.size
        return block

    def matches(self, block: StatsBlock) -> bool:
        return (len(block) >= HEADER_SIZE and block[HEADER["magic"]] == BLOCK_MAGIC
                and block[HEADER["version"]] == BLOCK_VERSION and block[HEADER["layout"]] == self.key
                and block[HEADER["size"]] == self.size == len(block))

    def slot_names(self) -> dict[Name, int]:
        """Every counted slot (the header excluded) by its name (dataplane/stats_names.py); made once per layout."""
        if self._names is None:
            self._names = self._slot_names()
        return self._names

    def _slot_names(self) -> dict[Name, int]:
        names: dict[Name, int] = {}
        for ls in self.listeners:
            for i, f in enumerate(LISTENER_FIELDS):
                names[("listener", ls.name, f)] = ls.offset + i
        for rs in self.routed:
            for i, cluster in enumerate(rs.clusters):
                names[("routed", rs.listener, cluster)] = rs.offset + i
        for cs in self.clusters.values():
            for f in CLUSTER_FIELDS:
                names[("cluster", cs.name, f)] = cs.field(f)
            seen: dict[str, int] = {}
            keyed = []
            for i, address in enumerate(cs.endpoints):
                address = address or f"#{i}"        # a hole keeps its slot's name: slots never move
                keyed.append((address, seen.setdefault(address, -1) + 1))
                seen[address] += 1
            for f in ENDPOINT_FIELDS:
                start = cs.endpoint_field(f)
                names.update(zip([("endpoint", cs.name, a, k, f) for a, k in keyed], range(start, start + len(keyed))))
        for r in self.requests:
            for i, c in enumerate(STATUS_CLASSES):
                names[("requests", r.listener, r.cluster, c)] = r.offset + i
        for d in self.durations.values():
            for i in range(HISTOGRAM_SIZE):
                names[("duration", d.cluster, i)] = d.offset + i
        for j, service in enumerate(self.naming.services):
            for i, outcome in enumerate(OUTCOMES):
                names[("naming", service, outcome)] = self.naming.service(j) + i
        for i, result in enumerate(OVERRIDE_RESULTS if self.naming.services else ()):
            names[("override", result)] = self.naming.overrides + i
        return names


# ---- the worker's side ----------------------------------------------------------------------------------------

def map_block(fd: int) -> StatsBlock:
    """Map the block of a memfd the supervisor passed (no further than the file goes: SIGBUS beyond it); closes fd."""
    try:
        slots = os.fstat(fd).st_size // 8
        return StatsBlock.map(fd, slots)
    finally:
        os.close(fd)


def _stamp(block: StatsBlock) -> StatsBlock:
    """Mark block as this process's: the supervisor reads a block with a pid as one a worker counts into."""
    block[HEADER["pid"]] = os.getpid()
    block[HEADER["started"]] = time.time_ns()
    return block


def open_block(layout: StatsLayout, fd: int | None) -> StatsBlock:
    """The block this process counts into: the supervisor's shared one (fd) when its header matches our layout,
    else a private one (embedded use, or a config file that changed since the supervisor read it). Closes fd."""
    if fd is None:
        return _stamp(layout.new_block())
    shared = map_block(fd)
    if layout.matches(shared):
        return _stamp(shared)
    log.warning("the config file changed since the supervisor read it: this worker's counters are "
                "not shared and do not appear in the admin server's metrics")
    return _stamp(layout.new_block())


def reload_block(layout: StatsLayout, old: StatsLayout, current: StatsBlock, offered: StatsBlock | None
                 ) -> StatsBlock:
    """The block a worker counts into after a reload to `layout`: `current` when `offered` (the supervisor's
    newest block for this worker slot) is that very memory or when the shape did not change and nothing fits
    better, `offered` when it has the new layout, else a new private block (the counters leave the metrics)."""
    if offered is not None:
        same = (offered[HEADER["pid"]] == current[HEADER["pid"]] == os.getpid()
                and offered[HEADER["started"]] == current[HEADER["started"]])
        if same and current.shared:
            return current
        if layout.matches(offered):
            offered[HEADER["pid"]] = os.getpid()
            offered[HEADER["started"]] = current[HEADER["started"]]    # the process's start, not the reload's
            return offered
    if layout.key == old.key:
        return current
    log.warning("the reload changed the shape of the counters and no shared block of that shape was offered: "
                "this worker counts into a private block until it restarts")
    return _stamp(layout.new_block())


def attach(layout: StatsLayout, block: StatsBlock, clusters: Mapping[str, Cluster], tcp: Mapping[str, TcpProxy],
           http: Mapping[str, HttpProxy] | None = None, names: Names | None = None) -> None:
    """Point the core objects' counters into block: clusters (core Cluster by name), tcp (TcpProxy by listener),
    http (HttpProxy by listener: its listener slots, and per cluster index its status classes and durations),
    names (the process's naming: resolutions per service and override results)."""
    if names is not None and layout.naming.services:
        names.attach_stats(block, layout.naming.offset, len(layout.naming.services))
    for name, cluster in clusters.items():
        cluster.attach_stats(block, layout.clusters[name].offset)
    index = {name: i for i, name in enumerate(layout.clusters)}   # an http router's cluster indexes
    durations = {index[d.cluster]: d.offset for d in layout.durations.values()}
    routed = {rs.listener: rs.offset for rs in layout.routed}
    for ls in layout.listeners:
        if ls.name in tcp:
            tcp[ls.name].attach_stats(block, ls.offset, routed.get(ls.name, -1))
        elif http and ls.name in http:
            requests = {index[r.cluster]: r.offset for r in layout.requests if r.listener == ls.name}
            http[ls.name].attach_stats(block, ls.offset, requests, durations)


class LagProbe:
    """Event-loop lag: how late a periodic timer fires. Everything the loop runs (the reactor's batches included)
    delays it, so this is the wait a new connection's events can see."""

    def __init__(self, block: StatsBlock) -> None:
        self.block = block
        self.recent: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due = loop.time() + LAG_INTERVAL
        self.handle = loop.call_at(self.due, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        self.recent.append(max(0.0, now - self.due))
        self.block[HEADER["lag"]] = int(max(self.recent) * 1e9)
        self.due = now + LAG_INTERVAL
        self.handle = self.loop.call_at(self.due, self._fire)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


# ---- the supervisor's side ------------------------------------------------------------------------------------

@dataclass
class _Generation:
    """One block of a worker slot, in the layout of the config it was made for."""
    layout: StatsLayout
    block: StatsBlock
    fd: int | None                      # its memfd while it is the slot's newest (handed to the slot's workers)
    quiet_since: float | None = None    # monotonic time its connection gauges were first seen all zero


class WorkerStats:
    """Per worker slot its blocks (one per counter shape it has counted in, newest last) and, in the current
    layout, the totals of the workers and blocks that are gone."""

    def __init__(self, layout: StatsLayout) -> None:
        self.layout = layout
        self.slots: dict[int, list[_Generation]] = {}
        self.retired = array("Q", bytes(8 * layout.size))
        # slot -> (i, copies of its blocks from the i-th on) while it reloads: the blocks it moves counters between
        self.frozen: dict[int, tuple[int, list[tuple[StatsLayout, array[int]]]]] = {}
        self.restarts = 0                                   # workers restarted after an unexpected exit
        self.reloads = {"ok": 0, "failed": 0}               # config reloads by result
        self._translations: dict[tuple[int, int], Translation] = {}

    @property
    def blocks(self) -> dict[int, StatsBlock]:
        """The newest block of each worker slot."""
        return {n: gens[-1].block for n, gens in self.slots.items() if gens}

    def fd_for(self, n: int) -> int:
        """The memfd of worker slot n's newest block (made on first use), for the worker to inherit or adopt."""
        gens = self.slots.get(n)
        if not gens or gens[-1].layout.key != self.layout.key:
            self._new_generation(n)
        fd = self.slots[n][-1].fd
        assert fd is not None
        return fd

    def _new_generation(self, n: int) -> None:
        fd = os.memfd_create(f"fastmesh-stats-w{n}", os.MFD_CLOEXEC)
        try:
            block = self.layout.new_block(fd)
        except BaseException:
            os.close(fd)
            raise
        gens = self.slots.setdefault(n, [])
        if gens and gens[-1].fd is not None:
            os.close(gens[-1].fd)           # no worker will be handed the older block again
            gens[-1].fd = None
        gens.append(_Generation(self.layout, block, fd))

    def _translation(self, src: StatsLayout, dst: StatsLayout) -> Translation:
        key = (src.key, dst.key)
        if key not in self._translations:
            self._translations[key] = Translation(src.slot_names(), dst.slot_names(), src.key == dst.key)
        return self._translations[key]

    def relayout(self, layout: StatsLayout) -> bool:
        """The config changed shape: report in `layout` from now on and give every slot a new block in it (the
        old ones stay until what counts into them is done). False when the shape is the same."""
        if layout.key == self.layout.key:
            self.layout = layout        # same offsets; what only describes (balancer, protocol) may have changed
            return False
        # Fold the blocks that went quiet here too, not only when the admin server reads: with no one scraping,
        # every discovery update would add a block per worker that nothing ever unmapped (and freeze() copies).
        self._prune()
        retired = array("Q", bytes(8 * layout.size))
        if any(self.retired):       # (a name-by-name translation of 10,000 endpoints is not free: only when needed)
            self._translation(self.layout, layout).add(self.retired, retired)
        self.retired, self.layout = retired, layout
        for n in list(self.slots):
            self._new_generation(n)
        return True

    def freeze(self, n: int) -> None:
        """Worker n is about to move counters between its blocks: read its values as of now until thaw(n). It
        moves them from the block it counts into (the newest one a worker attached to) to the newer ones; the older
        blocks only go on counting what a reload retired, so they are read as they are, not copied: with one block
        per discovery update kept for FOLD_QUIET, copying them all took more CPU than the rest of an update."""
        gens = self.slots.get(n, [])
        first = max((i for i, g in enumerate(gens) if g.block[HEADER["pid"]]), default=0)
        self.frozen[n] = (first, [(g.layout, g.block.snapshot()) for g in gens[first:]])

    def thaw(self, n: int) -> None:
        self.frozen.pop(n, None)

    def retire(self, n: int) -> None:
        """Worker slot n's process has exited: keep its counters in the totals and give the next one a zeroed block."""
        gens = self.slots.get(n)
        if not gens:
            return
        self.frozen.pop(n, None)
        for g in gens:
            self._fold(g)
        for g in gens[:-1]:
            self._drop(g)
        del gens[:-1]
        block = gens[0].block
        block.clear()
        block[HEADER["pid"]] = 0
        block[HEADER["started"]] = 0
        block[HEADER["lag"]] = 0
        block[HEADER["max_connections"]] = 0

    def _fold(self, g: _Generation) -> None:
        """Add a block's counters (not its gauges: their connections are gone) to the retired totals."""
        self._translation(g.layout, self.layout).add(g.block.snapshot(), self.retired, g.layout.gauges)

    @staticmethod
    def _drop(g: _Generation) -> None:
        if g.fd is not None:
            os.close(g.fd)
            g.fd = None

    def _prune(self) -> None:
        """Fold and unmap old blocks nothing counts into any more (see the module docstring)."""
        now = time.monotonic()
        for n, gens in self.slots.items():
            if n in self.frozen or len(gens) < 2:
                continue
            pids = [g.block[HEADER["pid"]] for g in gens]
            attached = max((i for i, pid in enumerate(pids) if pid), default=-1)
            keep = []
            for i, g in enumerate(gens[:-1]):
                if not pids[i]:
                    self._drop(g)               # never adopted by a worker: nothing was counted there
                    continue
                if i < attached:
                    if any(g.block.any_set(first, count) for first, count in g.layout.actives):
                        g.quiet_since = None
                    elif g.quiet_since is None:
                        g.quiet_since = now
                    elif now - g.quiet_since >= FOLD_QUIET:
                        self._fold(g)
                        self._drop(g)
                        continue
                keep.append(g)
            gens[:-1] = keep

    def collect(self) -> Snapshot:
        """Every live worker's counters and their sum with the retired totals, as of now."""
        self._prune()
        totals = array("Q", self.retired)
        workers = {}
        size = self.layout.size
        for n, gens in sorted(self.slots.items()):
            if n not in self.frozen and len(gens) == 1 and gens[0].layout.key == self.layout.key:
                block = gens[0].block
                if block[HEADER["pid"]] == 0:
                    continue                # no worker attached (not started yet, or exited)
                workers[n] = block.snapshot()
                block.add_to(totals)
                continue
            first, frozen = self.frozen.get(n, (len(gens), []))
            parts = [(g.layout, g.block.snapshot()) for g in gens[:first]] + frozen
            attached = [(layout, v) for layout, v in parts if v[HEADER["pid"]]]
            if not attached:
                continue
            values = array("Q", bytes(8 * size))
            for layout, v in parts:
                self._translation(layout, self.layout).add(v, values)
            layout, newest = attached[-1]
            values[:HEADER_SIZE] = newest[:HEADER_SIZE]
            self._translation(layout, self.layout).copy_latest(newest, values)
            for i in range(HEADER_SIZE, size):
                totals[i] = (totals[i] + values[i]) & MASK
            workers[n] = values
        return Snapshot(self.layout, totals, workers, self.restarts, dict(self.reloads))

    def close(self) -> None:
        for gens in self.slots.values():
            for g in gens:
                self._drop(g)
        self.slots.clear()
        self.frozen.clear()


# ---- reading ---------------------------------------------------------------------------------------------------

def _signed(value: int) -> int:
    """A gauge slot as a signed number (a decrement racing a read must not show as 2**64 - 1)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class Snapshot:
    """Counters as of one moment: totals (retired + live workers) and each live worker's own slots."""
    layout: StatsLayout
    totals: array[int]
    workers: dict[int, array[int]]              # worker slot -> its block's values
    restarts: int = 0
    reloads: dict[str, int] = field(default_factory=dict)
    taken: float = field(default_factory=time.time)

    @classmethod
    def of_block(cls, layout: StatsLayout, block: StatsBlock) -> Snapshot:
        """One process's block (an embedded Proxy): that block is the whole picture."""
        values = block.snapshot()
        return cls(layout, values, {0: values})

    def listeners(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for ls in self.layout.listeners:
            row: dict[str, Any] = {"protocol": ls.protocol, "cluster": ls.cluster}
            if ls.service is not None:
                row["service"] = ls.service
            for i, name in enumerate(LISTENER_FIELDS):
                value = self.totals[ls.offset + i]
                row[name] = _signed(value) if name in _GAUGE_FIELDS else value
            out[ls.name] = row
        for rs in self.layout.routed:
            # Connections per cluster the service resolved to (those refused at accept count in `failed` only).
            out[rs.listener]["clusters"] = {c: self.totals[rs.offset + i] for i, c in enumerate(rs.clusters)}
        return out

    def clusters(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cs in self.layout.clusters.values():
            endpoints = [self._endpoint(cs, i) for i in range(len(cs.endpoints)) if cs.endpoints[i]]
            out[cs.name] = {
                "balancer": cs.balancer,
                "protocol": cs.protocol,
                "retries": self.totals[cs.field("retries")],
                "failed": self.totals[cs.field("failed")],
                "ejections": self.totals[cs.field("ejections")],
                "checks_ok": self.totals[cs.field("checks_ok")],
                "checks_failed": self.totals[cs.field("checks_failed")],
                "upstream_active": sum(e["active"] for e in endpoints),
                "upstream_connections": sum(e["connections"] for e in endpoints),
                "connect_failures": sum(e["connect_failures"] for e in endpoints),
                "endpoints_up": sum(e["state"] == "up" for e in endpoints),
                "endpoints": endpoints,
            }
            if cs.protocol == "h2":
                # gRPC answers by grpc-status (only h2 clusters carry gRPC).
                out[cs.name]["grpc"] = {name: self.totals[cs.field(f"grpc_{name.lower()}")] for name in GRPC_STATUSES}
            if cs.tls:
                # Handshakes with the endpoints, summed over the workers (tls/context.pyx TlsClient counts them).
                out[cs.name]["tls"] = {"handshakes": self.totals[cs.field("tls_handshakes")],
                                       "resumed": self.totals[cs.field("tls_resumed")],
                                       "failed": self.totals[cs.field("tls_failed")]}
        return out

    def _endpoint(self, cs: ClusterSlots, i: int) -> dict[str, Any]:
        state_at, seen_at = cs.endpoint_field("state") + i, cs.endpoint_field("seen") + i
        # Each worker marks endpoints from its own connects: the one that saw the endpoint last knows best.
        # With no stamp anywhere the endpoint is up or standby (its tier not serving) alike in every worker.
        per_worker = {}
        latest, state = 0, ""
        for n, values in self.workers.items():
            here = _state_name(values[state_at])
            per_worker[str(n)] = here
            if values[seen_at] > latest or not state:
                latest, state = values[seen_at], here
        state = state or "up"
        return {
            "address": cs.endpoints[i],
            "weight": cs.weights[i],
            "state": state,
            "healthy": state in ("up", "standby"),
            "active": _signed(self.totals[cs.endpoint_field("active") + i]),
            "connections": self.totals[cs.endpoint_field("opened") + i],
            "connect_failures": self.totals[cs.endpoint_field("failures") + i],
            "workers": per_worker,
        }

    def traffic(self, cluster: str) -> tuple[int, int]:
        """(work done, connections open now) of one cluster, summed over its endpoints and listeners: responses of
        every status class, upstream connections opened, and those open (what tells a made cluster that still
        carries requests from an idle one, discovery/templates.py). (0, 0) for a cluster the layout lacks."""
        cs = self.layout.clusters.get(cluster)
        if cs is None:
            return 0, 0
        totals = self.totals
        done = 0
        for r in self.layout.requests:
            if r.cluster == cluster:
                done += sum(totals[r.offset:r.offset + len(STATUS_CLASSES)])
        opened = cs.endpoint_field("opened")
        done += sum(totals[opened:opened + cs.count])
        active = cs.endpoint_field("active")
        return done & MASK, sum(_signed(v) for v in totals[active:active + cs.count])

    def requests(self) -> Iterable[tuple[str, str, str, int]]:
        """(listener, cluster, status class, responses) for every HTTP pair and class."""
        for req in self.layout.requests:
            for i, cls in enumerate(STATUS_CLASSES):
                yield req.listener, req.cluster, cls, self.totals[req.offset + i]

    def durations(self) -> dict[str, tuple[list[tuple[float, int]], float, int]]:
        """cluster -> (cumulative buckets as (upper bound, count) ending with +Inf, sum in seconds, count)."""
        out = {}
        for d in self.layout.durations.values():
            buckets, running = [], 0
            for i, bound in enumerate([*DURATION_BOUNDS, float("inf")]):
                running += self.totals[d.offset + i]
                buckets.append((bound, running))
            out[d.cluster] = (buckets, self.totals[d.offset + HISTOGRAM_SUM] / 1e9, running)
        return out

    def naming(self) -> dict[str, Any]:
        """Resolutions per service by outcome (OUTCOMES) and fastmesh-naming overrides by result."""
        n = self.layout.naming
        return {"resolutions": {s: {o: self.totals[n.service(j) + i] for i, o in enumerate(OUTCOMES)}
                                for j, s in enumerate(n.services)},
                "overrides": {r: self.totals[n.overrides + i] for i, r in enumerate(OVERRIDE_RESULTS)}
                if n.services else {}}

    def worker_info(self) -> dict[int, dict[str, float]]:
        """Per live worker: pid, start time (Unix seconds), event-loop lag (seconds), connection limit and
        connections accepted."""
        accepted = LISTENER_FIELDS.index("accepted")
        return {n: {"pid": values[HEADER["pid"]], "started": values[HEADER["started"]] / 1e9,
                    "lag": values[HEADER["lag"]] / 1e9, "max_connections": values[HEADER["max_connections"]],
                    "connections": sum(values[ls.offset + accepted] for ls in self.layout.listeners)}
                for n, values in self.workers.items()}


def _state_name(value: int) -> str:
    return ENDPOINT_STATES[value] if value < len(ENDPOINT_STATES) else "unknown"
