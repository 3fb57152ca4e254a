"""What every discovery source shares: its state for /clusters and metrics, endpoint parsing, and the update hand-off.

A source runs in the supervisor (never in a worker: one resolver or watch per instance, not one per worker) and
calls `publish` with each new endpoint set; the manager (discovery/manager.py) hands the sets to the workers. A
source that fails keeps its last good set and says why: `fail` counts the error by kind, logs it once per new
message, and shows it in /clusters.
"""
from __future__ import annotations

import collections
import logging
import operator
import re
import time
from collections.abc import Callable
from typing import Any

from fastmesh._core.endpoints import parse_endpoints as _parse_endpoints
from fastmesh.config.schema import Discovery, Endpoint
from fastmesh.config.values import IPV4_RE, MAX_PRIORITY, MAX_WEIGHT, format_address, ip_literal, parse_address

log = logging.getLogger("fastmesh.discovery")

ENDPOINT_KEYS = ("address", "weight", "priority", "zone", "metadata")   # zone and metadata: accepted, not used yet
_KEYS = frozenset(ENDPOINT_KEYS)


class SourceError(Exception):
    """A lookup or read that failed; `kind` is the metric label ("timeout", "servfail", "parse", ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SourceState:
    """What a source reports about itself: /clusters shows it, /metrics counts it."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target                    # what it watches: a path, a DNS name, an etcd prefix
        self.last_update = 0.0                  # wall time of the last endpoint set published (0: none yet)
        self.updates = 0                        # endpoint sets published
        self.endpoints = 0                      # endpoints in the last set
        self.errors: collections.Counter[str] = collections.Counter()   # failures by kind
        self.last_error = ""                    # the latest failure's message ("" once a lookup succeeds again)
        self.watch_restarts = 0                 # watches (etcd) re-established after they broke
        self.detail: dict[str, Any] = {}        # per kind: the revision (etcd), the TTL and next lookup (dns)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "last_update": self.last_update or None,
                "updates": self.updates, "endpoints": self.endpoints, "errors": dict(self.errors),
                "last_error": self.last_error or None, "watch_restarts": self.watch_restarts, **self.detail}


Publish = Callable[[list[Any]], None]     # an endpoint set (list[Endpoint]), or a naming table's rules (list[str])


class Source:
    """Base of the sources: `run` watches until cancelled; `resolve` answers once (for `fastmesh check --resolve`)."""

    kind = ""
    owner = "cluster"                           # what the source feeds, in log lines ("cluster users")
    items = "endpoint(s)"                       # what a published set holds, in log lines

    def __init__(self, cluster: str, cfg: Discovery, base_dir: str, publish: Publish) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.base_dir = base_dir                # the config file's folder: relative paths start there
        self._publish = publish
        self.state = SourceState(self.kind, self.target())

    def target(self) -> str:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def resolve(self) -> list[Endpoint]:
        raise NotImplementedError

    def arrange(self, found: list[Any]) -> list[Any]:
        """A published set in a stable order (endpoint sets are sets; a naming table keeps its order)."""
        return sorted(found, key=_ADDRESS)

    def publish(self, found: list[Any]) -> None:
        found = self.arrange(found)
        state = self.state
        state.last_update = time.time()
        state.updates += 1
        state.endpoints = len(found)
        if state.last_error:
            log.info("%s %s: %s %s answers again", self.owner, self.cluster, self.kind, state.target)
        state.last_error = ""
        self._publish(found)

    def fail(self, kind: str, message: str) -> None:
        """A failure: counted; the last good set stays. Logged when the message differs from the last one."""
        state = self.state
        state.errors[kind] += 1
        if message != state.last_error:
            log.warning("%s %s: %s %s: %s (keeping the last good set of %d %s)", self.owner,
                        self.cluster, self.kind, state.target, message, state.endpoints, self.items)
        state.last_error = message


_ADDRESS = operator.attrgetter("host", "port")
_V4_ADDRESS_RE = re.compile(rf"({IPV4_RE.pattern}):([1-9][0-9]{{0,4}})")   # "ip:port", port not above 65535 yet


def canonical_ip(host: str) -> str:
    """One spelling per address (the data path compares them); ValueError when `host` is no IP literal. An IPv4
    literal IPV4_RE matches is canonical already (no leading zeros)."""
    literal = ip_literal(host)
    if literal is None:
        raise ValueError(f"{host!r} is not an IP address")
    return literal[1]


def parse_endpoint(item: Any, where: str) -> Endpoint:
    """One endpoint of a file or an etcd value: "ip:port" or {"address": "ip:port", "weight": N, ...}.

    Addresses must be IP literals: a name would make every worker resolve it on its own (use a dns source).
    """
    if isinstance(item, str):
        item = {"address": item}
    if not isinstance(item, dict):
        raise SourceError("parse", f"{where}: expected \"ip:port\" or {{\"address\": \"ip:port\", \"weight\": N}}")
    if not item.keys() <= _KEYS:
        unknown = [k for k in item if k not in ENDPOINT_KEYS]
        raise SourceError("parse", f"{where}: unknown key {unknown[0]!r} (expected {', '.join(ENDPOINT_KEYS)})")
    address = item.get("address")
    if not isinstance(address, str):
        raise SourceError("parse", f"{where}: missing \"address\"")
    v4 = _V4_ADDRESS_RE.fullmatch(address)      # the common spelling, canonical already: one match, no ipaddress
    if v4 is not None and int(v4[2]) <= 65535:
        host, port = v4[1], int(v4[2])
    else:
        try:
            host, port = parse_address(address)
            host = canonical_ip(host)
        except ValueError:
            raise SourceError("parse", f"{where}: address {address!r} is not \"ip:port\"") from None
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise SourceError("parse", f"{where}: weight must be a whole number from 1 to {MAX_WEIGHT}, got {weight!r}")
    priority = item.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise SourceError("parse", f"{where}: priority must be a whole number from 0 to {MAX_PRIORITY}, "
                          f"got {priority!r}")
    return Endpoint(host, port, weight, priority)


def parse_endpoints(items: list[Any], name: str) -> list[Endpoint]:
    """parse_endpoint for each item of a list (errors say "name: endpoint i"), then unique(): the common spellings
    in one compiled loop (_core/endpoints.pyx: a 10,000-endpoint file an update), the others here. The first bad
    item raises, then an address listed twice."""
    found, repeated = _parse_endpoints(items, lambda item, i: parse_endpoint(item, f"{name}: endpoint {i}"),
                                       Endpoint, MAX_WEIGHT, MAX_PRIORITY)
    if repeated is not None:
        raise SourceError("parse", f"{name}: {repeated} is listed twice")
    return found


def unique(endpoints: list[Endpoint], where: str) -> list[Endpoint]:
    """The set with each address once; a repeated address is an error (more traffic is what weight is for).
    The endpoints come from parse_endpoint: their hosts are spelled canonically, so (host, port) is the key."""
    if len(set(map(_ADDRESS, endpoints))) == len(endpoints):     # (one C loop for 10,000 endpoints)
        return endpoints
    seen: set[tuple[str, int]] = set()
    for e in endpoints:
        key = (e.host, e.port)
        if key in seen:
            raise SourceError("parse", f"{where}: {format_address(e.host, e.port)} is listed twice")
        seen.add(key)
    return endpoints
