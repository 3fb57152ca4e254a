"""File descriptors: raise the process's soft limit to the hard one, and derive a worker's connection limit from it.

HAProxy's model. Every proxied connection needs two fds (the client's and one upstream) and, while a TCP relay
(or an upgraded HTTP connection) moves a bulk stream, splice pipes of two fds each; pipes are capped at a quarter
of the connections, as HAProxy's maxpipes is, and a relay that finds none copies through a buffer instead. A fixed
reserve covers what the process holds besides (stdio, the event loop's fds, the epoll set, the supervisor's
control socket and stats block, log files) plus one fd per listener, per access log and per health-checked
endpoint. So by default

    max_connections = (fd limit - reserve) / 2.5        max_pipes = max_connections / 4

The limit is per worker: each worker process has its own fd table and limit. Past max_connections a listener
stops accepting and new connections wait in the kernel's backlog (_core/listener.pyx), which is what a client of
an overloaded HAProxy sees, instead of being accepted and then failing for want of an upstream fd.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from fastmesh.config.schema import Config

log = logging.getLogger("fastmesh.fd_budget")

BASE_RESERVE = 32           # fds a worker holds besides listeners, logs and probes (see the docstring)
FDS_PER_CONNECTION = 2      # the client's fd and the upstream one
PIPES_PER_CONNECTION = 0.25  # splice pipes allowed per connection (2 fds each): HAProxy's maxpipes = maxconn / 4
NR_OPEN_FALLBACK = 1 << 20  # the kernel's default fs.nr_open, when the hard limit says "unlimited"


@dataclass(frozen=True)
class FdBudget:
    """How a worker spends its fd limit."""
    fd_limit: int               # the soft RLIMIT_NOFILE the worker runs with
    reserve: int                # fds kept for everything but proxied connections
    max_connections: int        # downstream connections open at once (the config's, or derived)
    max_pipes: int              # splice pipes open at once
    derived: bool               # max_connections came from the fd limit ("auto")

    @property
    def needed(self) -> int:
        """fds the limits can take at worst."""
        return self.reserve + FDS_PER_CONNECTION * self.max_connections + 2 * self.max_pipes


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as HAProxy does at start); return (soft, hard) after.
    Best effort: where the system refuses, the soft limit stays and the derived limits follow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the fd limit from %d to %d: %s", soft, target, exc)
        return soft, hard
    return target, hard


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return NR_OPEN_FALLBACK


def current_fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else soft


def reserve_for(cfg: Config) -> int:
    """fds a worker keeps for everything but proxied connections, for this config."""
    probed = sum(len(c.endpoints) for c in cfg.clusters.values() if c.health_check is not None)
    logs = sum(1 for lst in cfg.listeners if getattr(lst, "access_log", None) is not None)
    return BASE_RESERVE + len(cfg.listeners) + logs + probed


def fd_budget(cfg: Config, fd_limit: int | None = None) -> FdBudget:
    """The worker's connection and pipe limits for `cfg` under `fd_limit` (default: this process's soft limit)."""
    limit = current_fd_limit() if fd_limit is None else fd_limit
    reserve = reserve_for(cfg)
    derived = cfg.max_connections == "auto"
    if derived:
        per_connection = FDS_PER_CONNECTION + 2 * PIPES_PER_CONNECTION
        max_connections = max(1, int((limit - reserve) / per_connection))
    else:
        max_connections = int(cfg.max_connections)
    max_pipes = max(1, int(max_connections * PIPES_PER_CONNECTION))
    return FdBudget(limit, reserve, max_connections, max_pipes, derived)


def describe(budget: FdBudget) -> str:
    """One log line's worth: the limits and where they come from."""
    how = "derived from the fd limit" if budget.derived else "as configured"
    return (f"max_connections {budget.max_connections} per worker ({how}: fd limit {budget.fd_limit}, "
            f"{FDS_PER_CONNECTION} fds per proxied connection, up to {budget.max_pipes} splice pipes, "
            f"{budget.reserve} fds reserved)")


def check(budget: FdBudget) -> str | None:
    """A warning when a configured max_connections needs more fds than the limit allows, else None."""
    if budget.needed <= budget.fd_limit:
        return None
    fits = max(1, int((budget.fd_limit - budget.reserve) / (FDS_PER_CONNECTION + 2 * PIPES_PER_CONNECTION)))
    return (f"max_connections {budget.max_connections} needs up to {budget.needed} fds but the fd limit is "
            f"{budget.fd_limit}: past about {fits} connections, accepts and upstream connects will fail for want "
            f"of fds. Raise the limit (ulimit -n, LimitNOFILE=) or lower max_connections")
