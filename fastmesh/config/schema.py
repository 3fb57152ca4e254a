"""Typed configuration for every section; all defaults live here and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BALANCERS = ("round_robin", "least_request", "random", "ewma", "ring_hash", "maglev")
PROTOCOLS = ("tcp", "http")
ACCESS_LOG_FORMATS = ("plain", "json")
# Idle timeout per protocol: an HTTP keep-alive connection waits for its next request far less than an
# L4 relay may legitimately sit silent.
IDLE_TIMEOUTS = {"tcp": 3600.0, "http": 60.0}


@dataclass(frozen=True)
class Endpoint:
    """One backend address of a cluster."""
    host: str
    port: int
    weight: int = 1
    priority: int = 0          # tier: endpoints of the lowest value serve; the next tier only when none is eligible

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


RETRY_CLASSES = ("connect-failure", "reset", "timeout", "5xx")


@dataclass
class Retries:
    """Which failed tries are sent again, and how many retries the cluster's traffic can afford."""
    attempts: int = 3                  # tries per request, the first included
    on: list[str] = field(default_factory=lambda: ["connect-failure"])   # RETRY_CLASSES or status codes
    budget_percent: float = 20.0       # retries may add this share of the last 10 s of requests...
    min_per_second: float = 10.0       # ...plus this many per second
    backoff: float = 0.025             # first retry waits up to this (full jitter), doubling per retry
    max_backoff: float = 0.25          # cap of that wait


@dataclass
class AdaptiveConcurrency:
    """A gradient concurrency limiter per cluster and worker: over the limit a request gets 503 overloaded."""
    initial_limit: int = 20            # requests in flight allowed before any latency is known
    min_limit: int = 4                 # the limit never goes below this
    max_limit: int = 1000              # nor above this
    tolerance: float = 1.5             # short-term latency may reach this multiple of the long-run level
    smoothing: float = 0.2             # share of each new estimate taken into the limit


@dataclass
class Limits:
    """Circuit breakers for the whole instance (every worker counts together): over a limit a request gets 503
    `fastmesh-error: overloaded` at once."""
    max_connections: int = 1024        # upstream connections open
    max_pending: int = 1024            # requests waiting for a connection slot (0: none wait)
    max_requests: int = 1024           # requests in flight
    max_retries: int = 3               # retries in flight (0: none)


HEALTH_CHECK_TYPES = ("http", "tcp")


@dataclass
class HealthCheck:
    """Active health checks: every worker probes each endpoint of the cluster on its own.

    An endpoint starts healthy (a restart must not empty a cluster before the first probes have run) and is
    taken out after `unhealthy` failed checks in a row, back in after `healthy` passed checks in a row.
    """
    type: str = ""                     # "http" or "tcp"; "" = "http" when path is set, else "tcp" (__post_init__)
    path: str | None = None            # http: the request target probed with GET
    interval: float = 5.0              # seconds between the checks of one endpoint (before jitter)
    timeout: float = 1.0               # seconds a check may take, connect included
    healthy: int = 2                   # passed checks in a row that bring an unhealthy endpoint back
    unhealthy: int = 3                 # failed checks in a row that take an endpoint out
    # http: statuses that pass, as inclusive (low, high) ranges
    expected_statuses: list[tuple[int, int]] = field(default_factory=lambda: [(200, 399)])
    jitter: float = 10.0               # percent: each interval is stretched or shrunk by up to this, at random

    def __post_init__(self) -> None:
        if not self.type:
            self.type = "http" if self.path is not None else "tcp"


@dataclass
class SuccessRate:
    """Outlier detection by success rate: judged per endpoint at the end of each window."""
    window: float = 10.0               # seconds
    minimum_requests: int = 20         # an endpoint with fewer outcomes in the window is not judged
    threshold: float = 0.5             # a judged endpoint whose success share is below this is ejected


@dataclass
class Outlier:
    """Passive outlier ejection from request outcomes (Linkerd 1's failure accrual); on by default."""
    consecutive_failures: int = 5      # 5xx answers, resets, timeouts or failed connects in a row that eject
    base_ejection: float = 5.0         # seconds of the first ejection; each further one doubles it (+-20%)
    max_ejection: float = 300.0        # seconds no ejection exceeds
    max_ejected_percent: int = 50      # ejections never take more than this share of the endpoints out
    success_rate: SuccessRate | None = None   # None: success-rate ejection off


DISCOVERY_KINDS = ("file", "dns", "dns_srv", "etcd", "plugin")
FAILURE_MODES = ("closed", "open")
ACCESS_LOG_FIELDS = ("time", "listener", "method", "authority", "path", "status", "bytes_in", "bytes_out",
                     "upstream", "duration_ms", "request_id", "client", "cluster", "route", "retries", "error")


@dataclass
class PluginRef:
    """A plugin named in the config: "package.module:Name" or an installed plugin's name, and its own table
    (checked by the plugin's Config when the config is loaded; fastmesh/plugins/)."""
    plugin: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilterSpec(PluginRef):
    """A request filter on an http listener or route."""
    timeout: float = 1.0               # seconds an async filter may take; then failure_mode applies
    failure_mode: str = "closed"       # "closed": a failing filter answers 500 (504 on timeout); "open": go on


@dataclass
class SinkSpec(PluginRef):
    """A sink: records go to it in batches from a timer, never from the request path."""
    batch: int = 100                   # records per write() at most
    interval: float = 1.0              # seconds between writes of what has gathered
    max_pending: int = 10000           # records held while the sink is slow; more are dropped (and counted)


@dataclass
class Discovery:
    """Where a cluster's endpoints come from when they are not listed in the config (fastmesh/discovery/).

    The supervisor resolves and watches each source once and hands the endpoint sets to every worker.
    """
    kind: str                          # DISCOVERY_KINDS
    path: str | None = None            # file: JSON or TOML endpoints file (relative to the config file's folder)
    name: str | None = None            # dns: the A/AAAA name; dns_srv: the SRV name ("_db._tcp.svc.test")
    port: int | None = None            # dns: the port every address gets
    resolvers: list[tuple[str, int]] = field(default_factory=list)   # dns, dns_srv: servers; empty: the system's
    endpoints: list[tuple[str, int]] = field(default_factory=list)   # etcd: cluster members (client URLs)
    prefix: str | None = None          # etcd: key prefix; each key under it holds one endpoint
    hold: float = 30.0                 # dns, dns_srv: NXDOMAIN or an empty answer empties the cluster after this
    min_ttl: float = 1.0               # dns, dns_srv: re-resolve no sooner than this after an answer...
    max_ttl: float = 300.0             # ...and no later than this, whatever the record's TTL
    timeout: float = 2.0               # dns: per lookup; etcd: per request (not the watch itself)
    interval: float = 1.0              # file: mtime poll period (used when inotify is not available)
    plugin: str | None = None          # plugin: the DiscoverySource plugin ("package.module:Name" or its name)
    config: dict[str, Any] = field(default_factory=dict)   # plugin: its table


@dataclass
class Cluster:
    """A named set of endpoints and how to choose among them."""
    name: str
    endpoints: list[Endpoint] = field(default_factory=list)   # with discovery: the set until the first answer
    balancer: str = "round_robin"
    connect_timeout: float = 1.0       # seconds
    connect_attempts: int = 3          # endpoints tried per connection before giving up
    # HTTP only (a cluster used by tcp listeners ignores them):
    response_timeout: float = 15.0     # seconds from request sent to response head received, then 504
    pool_max_idle: int = 64            # idle keep-alive upstream connections kept per endpoint (0: none)
    pool_idle_timeout: float = 60.0    # seconds an idle upstream connection is kept before it is closed
    timeout: float = 0.0               # seconds per request, retries included (0: none beyond the tries')
    per_try_timeout: float = 0.0       # seconds per try (0: response_timeout)
    retries: Retries = field(default_factory=Retries)
    limits: Limits = field(default_factory=Limits)
    adaptive_concurrency: AdaptiveConcurrency | None = None   # None: off (the default)
    hash_key: str | None = None        # ring_hash/maglev key: "header:NAME", "cookie:NAME" or "source_ip" (default)
    slow_start: float = 0.0            # seconds a new or recovered endpoint ramps up to its weight (0: off)
    health_check: HealthCheck | None = None   # None: no active checks
    outlier: Outlier | None = field(default_factory=Outlier)   # None: outlier ejection off
    discovery: Discovery | None = None  # None: the endpoints are the ones listed


@dataclass
class AccessLog:
    """Where and how an http listener writes one line per request."""
    format: str = "plain"              # "plain" or "json"
    path: str = "-"                    # file appended to; "-" is stderr
    fields: list[str] = field(default_factory=list)   # ACCESS_LOG_FIELDS to write, in order (empty: the classic set)


@dataclass
class Route:
    """One HTTP route: conditions that all must hold, the cluster it sends to, and the edits it makes.

    Conditions left at their default match every request. Names and hosts are kept as written; the
    router folds case itself. A route sends to a cluster or to a service (a logical name the naming table maps to
    clusters, per request): exactly one of the two is set.
    """
    cluster: str | None = None
    service: str | None = None         # "users" is the name /svc/users; a name starting with "/" is taken as it is
    host: str | None = None            # "api.example.com" or "*.example.com" (subdomains only); port ignored
    path: str | None = None            # the whole path (before "?") must equal this
    path_prefix: str | None = None     # the path must start with this
    path_regex: str | None = None      # Python re, searched in the path
    methods: list[str] = field(default_factory=list)           # empty: any method
    headers: dict[str, str] = field(default_factory=dict)      # name (any case) -> exact value
    rewrite_prefix: str | None = None  # with path_prefix: replaces the matched prefix upstream
    add_request_headers: dict[str, str] = field(default_factory=dict)
    remove_request_headers: list[str] = field(default_factory=list)
    add_response_headers: dict[str, str] = field(default_factory=dict)
    filters: list[FilterSpec] = field(default_factory=list)    # after the listener's filters, in order


@dataclass
class Listener:
    """A bound address and what it does with its traffic: relay it (tcp) or route each request (http)."""
    name: str
    host: str
    port: int
    cluster: str | None = None         # tcp: required; http: the default when no route matches (None: none)
    protocol: str = "tcp"
    # Seconds without a byte either way (tcp) or between requests on a keep-alive connection (http).
    # 0 means "the protocol's default" (IDLE_TIMEOUTS), filled in by __post_init__, so the field is
    # always a number once the object exists.
    idle_timeout: float = 0.0
    backlog: int = 1024
    max_connections: int = 0           # per worker: past this many open, new ones wait in the backlog (0: none)
    splice: bool = True                # zero-copy splice(2) relay; False uses recv/send buffers
    # HTTP only:
    header_timeout: float = 10.0       # seconds a client has to send a complete request head (slowloris)
    body_timeout: float = 60.0         # seconds a client has to send a whole request body after its head (0: no limit)
    max_request_line: int = 8192       # bytes; longer -> 414
    max_header_bytes: int = 65536      # bytes of the field section; more -> 431
    max_headers: int = 100             # field lines (1..100); more -> 431
    forwarded_headers: bool = True     # add Via, X-Forwarded-For, X-Forwarded-Proto upstream
    request_id_header: str = "x-request-id"   # kept if present, generated otherwise; "" disables
    trust_headers: bool = True         # honour a client's fastmesh-timeout-ms deadline (false: strip it)
    trust_naming: bool = False         # honour a client's fastmesh-naming override and pass it on (false: strip it)
    access_log: AccessLog | None = None       # None: no access log
    routes: list[Route] = field(default_factory=list)   # tried in order, first match wins
    filters: list[FilterSpec] = field(default_factory=list)   # run for every routed request, before the route's
    log_sinks: list[SinkSpec] = field(default_factory=list)   # access-log records to plugins, in batches

    def __post_init__(self) -> None:
        if not self.idle_timeout:
            self.idle_timeout = IDLE_TIMEOUTS.get(self.protocol, IDLE_TIMEOUTS["tcp"])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


NAMING_SOURCE_KINDS = ("file", "etcd")


@dataclass
class NamingSource:
    """Where the naming table is watched when it is not (only) in the config: a file or one etcd key. The supervisor
    watches it once and hands each good table to every worker; a table that does not parse keeps the last good one."""
    kind: str                          # NAMING_SOURCE_KINDS
    path: str | None = None            # file: the table as text (relative to the config file's folder)
    interval: float = 1.0              # file: mtime poll period besides inotify
    endpoints: list[tuple[str, int]] = field(default_factory=list)   # etcd: cluster members (client URLs)
    key: str | None = None             # etcd: the key whose value is the table as text
    timeout: float = 2.0               # etcd: per request (not the watch itself)


@dataclass
class Naming:
    """The naming table: rules mapping logical names (routes' `service`) to clusters (fastmesh/config/naming.py)."""
    rules: list[str] = field(default_factory=list)   # "PREFIX => DESTINATION", normalised; with a source: until
    # the source first answers
    source: NamingSource | None = None  # None: the rules above are the table


@dataclass
class Admin:
    """The admin server's address (served by later work; accepted now)."""
    host: str = "127.0.0.1"
    port: int = 9990


@dataclass
class Demo:
    """Demo backends that `fastmesh run` starts itself, so an example config works with nothing else running."""
    backends: list[Endpoint] = field(default_factory=list)


@dataclass
class Config:
    """The whole validated configuration."""
    listeners: list[Listener]
    clusters: dict[str, Cluster]
    workers: int | Literal["auto"] = 1
    # Per worker: downstream connections open at once over all listeners; "auto" derives it from the fd limit
    # (dataplane/fd_budget.py). Past it, new connections wait in the listeners' backlogs.
    max_connections: int | Literal["auto"] = "auto"
    drain_timeout: float = 10.0        # seconds open connections get to finish on shutdown
    admin: Admin = field(default_factory=Admin)
    demo: Demo | None = None
    naming: Naming = field(default_factory=Naming)
    event_sinks: list[SinkSpec] = field(default_factory=list)   # the supervisor's events to plugins, in batches
    source: str = "<config>"           # file name (or "<string>") the config came from, for messages

    def worker_count(self) -> int:
        import os
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
