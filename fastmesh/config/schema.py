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
# How fastmesh talks to a cluster's endpoints: HTTP/1.1 connections from a keep-alive pool, or shared HTTP/2
# (cleartext, prior knowledge) connections that multiplex many requests.
CLUSTER_PROTOCOLS = ("http1", "h2")
# gRPC status codes by name (grpc/doc/statuscodes.md), lower case; the index is the code.
GRPC_STATUS_NAMES = ("ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
                     "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted",
                     "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated")


@dataclass
class Retries:
    """Which failed tries are sent again, and how many retries the cluster's traffic can afford."""
    attempts: int = 3                  # tries per request, the first included
    on: list[str] = field(default_factory=lambda: ["connect-failure"])   # RETRY_CLASSES or status codes
    budget_percent: float = 20.0       # retries may add this share of the last 10 s of requests...
    min_per_second: float = 10.0       # ...plus this many per second
    backoff: float = 0.025             # first retry waits up to this (full jitter), doubling per retry
    max_backoff: float = 0.25          # cap of that wait
    # gRPC answers whose grpc-status is one of these codes are retried like a listed 5xx (1..16; empty: none)
    grpc_status: list[int] = field(default_factory=list)


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


HEALTH_CHECK_TYPES = ("http", "tcp", "grpc")


@dataclass
class HealthCheck:
    """Active health checks: every worker probes each endpoint of the cluster on its own.

    An endpoint starts healthy (a restart must not empty a cluster before the first probes have run) and is
    taken out after `unhealthy` failed checks in a row, back in after `healthy` passed checks in a row.
    """
    type: str = ""                     # "http", "tcp" or "grpc"; "" = "http" when path is set, else "tcp"
    path: str | None = None            # http: the request target probed with GET
    service: str = ""                  # grpc: the service name asked of grpc.health.v1.Health/Check ("": the server)
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
RUN_MODES = ("inline", "thread")     # where a synchronous filter's on_request runs
ACCESS_LOG_FIELDS = ("time", "listener", "method", "authority", "path", "status", "bytes_in", "bytes_out",
                     "upstream", "duration_ms", "request_id", "client", "cluster", "route", "retries", "error",
                     "trace_id", "client_identity")


@dataclass
class ListenerTracing:
    """W3C trace context on an http listener (a valid traceparent is always honoured unless propagate is off)."""
    propagate: bool = True             # a valid traceparent goes upstream with fastmesh's span as its parent id
    start: bool = False                # a request without a valid traceparent starts a trace (an edge listener)
    sample_rate: float = 1.0           # start: the share of the traces started here that are sampled


@dataclass
class TraceExport:
    """Where sampled requests' spans go: an OTLP/HTTP collector, in batches from each worker, off the request path."""
    endpoint: str                      # the collector's traces URL, e.g. "http://127.0.0.1:4318/v1/traces"
    service_name: str = "fastmesh"     # the spans' service.name resource attribute
    headers: dict[str, str] = field(default_factory=dict)   # sent with every export (e.g. an API key)
    timeout: float = 10.0              # seconds one export may take
    batch: int = 512                   # spans per export at most
    interval: float = 1.0              # seconds between exports of what has gathered (a full batch goes at once)
    max_pending: int = 10000           # spans held while the collector is slow or away; more are dropped (counted)


@dataclass
class Tracing:
    """Instance-wide tracing: span export (None: spans are not recorded; trace context is still propagated)."""
    export: TraceExport | None = None


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
    run: str = "inline"                # a sync on_request: "inline" (timed, slow calls counted) or "thread"


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


TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
# The one place of the default cipher, ciphersuite and group strings (the core takes them from the config).
# Safe defaults (Mozilla's "intermediate" profile without finite-field DH): forward secrecy and AEAD ciphers only.
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
TLS_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
TLS_GROUPS = "X25519:P-256:P-384"
SNI_HELLO_TIMEOUT = 10.0               # seconds a passthrough client has to send its whole ClientHello


@dataclass(frozen=True)
class Certificate:
    """One certificate of a TLS listener (paths are relative to the config file's folder)."""
    cert: str                          # PEM: the certificate, then its chain
    key: str                           # PEM private key
    names: tuple[str, ...] | None = None   # server names it serves ("*.x" too); None: its DNS subjectAltNames


@dataclass
class ListenerTls:
    """TLS a listener terminates: `cert`/`key` is the default certificate, `certificates` more picked by SNI."""
    cert: str
    key: str
    certificates: list[Certificate] = field(default_factory=list)
    client_ca: str | None = None       # PEM bundle: clients' certificates are verified against it
    require_client_cert: bool | None = None   # None: true when client_ca is set
    alpn: list[str] | None = None      # None: the protocol's default (http: ["http/1.1"], tcp: none)
    min_version: str = "1.2"           # TLS_VERSIONS
    ciphers: str = TLS_CIPHERS         # TLS 1.2 and older (OpenSSL cipher list)
    ciphersuites: str = TLS_CIPHERSUITES   # TLS 1.3
    groups: str = TLS_GROUPS           # key exchange groups
    session_tickets: bool = True       # stateless resumption; keys shared by every worker, rotated
    strict_sni: bool = False           # refuse a server name no certificate has (false: the default certificate)
    handshake_timeout: float = 10.0    # seconds a client has to finish its handshake
    ticket_rotation: float = 43200.0   # seconds a session-ticket key encrypts new tickets (then decrypts a period more)
    allow_identities: list[str] | None = None   # URI SANs (SPIFFE IDs, "prefix/*") a client must have; None: any

    def __post_init__(self) -> None:
        if self.require_client_cert is None:
            self.require_client_cert = self.client_ca is not None

    def all_certificates(self) -> list[Certificate]:
        """The default certificate first, then the others."""
        return [Certificate(self.cert, self.key), *self.certificates]


@dataclass
class ClusterTls:
    """TLS a cluster's connections originate (paths are relative to the config file's folder)."""
    ca: str | None = None              # PEM bundle the endpoints' certificates must chain to; None: the system's
    server_name: str | None = None     # SNI sent and name verified; None: the endpoint's IP address is verified
    cert: str | None = None            # client certificate (mTLS)
    key: str | None = None             # its key (default: in the cert file)
    alpn: list[str] = field(default_factory=list)
    min_version: str = "1.2"
    ciphers: str = TLS_CIPHERS
    ciphersuites: str = TLS_CIPHERSUITES
    groups: str = TLS_GROUPS
    verify: bool = True                # false: accept any certificate (never the default)
    session_reuse: bool = True         # resume the last session per endpoint


@dataclass
class Cluster:
    """A named set of endpoints and how to choose among them."""
    name: str
    endpoints: list[Endpoint] = field(default_factory=list)   # with discovery: the set until the first answer
    balancer: str = "round_robin"
    protocol: str = "http1"            # CLUSTER_PROTOCOLS: what an http listener speaks to the endpoints
    connect_timeout: float = 1.0       # seconds
    connect_attempts: int = 3          # endpoints tried per connection before giving up
    # HTTP only (a cluster used by tcp listeners ignores them):
    response_timeout: float = 15.0     # seconds from request sent to response head received, then 504
    # Idle keep-alive upstream connections kept per endpoint: as many as were in use at once lately, at most this.
    pool_max_idle: int = 1024          # (0: none)
    pool_idle_timeout: float = 60.0    # seconds an idle upstream connection is kept before it is closed
    h2_keepalive_interval: float = 0.0   # h2 clusters: seconds of silence on a connection before a PING (0: off)
    h2_keepalive_timeout: float = 10.0   # h2 clusters: seconds for that PING's answer, else the connection is dead
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
    tls: ClusterTls | None = None      # None: cleartext upstream connections
    proxy_protocol: str | None = None  # "v1" | "v2": the PROXY header sent first on every upstream connection
    template: str | None = None        # the [cluster_templates] pattern that made it (None: from the config file)


@dataclass
class ClusterTemplate:
    """Clusters made on demand (discovery/templates.py): a name the naming table reaches that no [clusters] table
    defines, or one found at the template's source, becomes a cluster with these settings and `{name}` in its
    discovery replaced by the name."""
    pattern: str                       # the names it makes, `*` matching any run of name characters ("users-*")
    cluster: Cluster                   # the settings (its name is the pattern; `{name}` left in its discovery)
    max_clusters: int = 100            # clusters made from it at once; names past it are refused (logged, counted)
    idle_timeout: float = 600.0        # seconds a made cluster nothing names and its source lists no more is kept


@dataclass
class AccessLog:
    """Where and how an http listener writes one line per request."""
    format: str = "plain"              # "plain" or "json"
    path: str = "-"                    # file appended to; "-" is stderr
    fields: list[str] = field(default_factory=list)   # ACCESS_LOG_FIELDS to write, in order (empty: the classic set)


@dataclass
class RateLimit:
    """A route's request rate: a token bucket of `burst` tokens refilled at `rate` per `per` seconds, one per key,
    shared by the workers of an instance (issue 13)."""
    rate: int                          # tokens per `per` seconds
    per: float = 1.0                   # 1 ("/s"), 60 ("/m") or 3600 ("/h")
    burst: int = 0                     # requests that may come at once; 0 in the config means the rate's count
    key: str = ""                      # "": one bucket for the route; "client_ip"; "header:NAME"; "filter"
    buckets: int = 4096                # keys tracked at once (a power of two; 16 bytes each)

    def rate_text(self) -> str:
        """The rate as the config writes it: "10/s"."""
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per]
        return f"{self.rate}/{unit}"

    def text(self) -> str:
        """The limit as explain and stats say it: "10/s burst 10 by client_ip"."""
        return f"{self.rate_text()} burst {self.burst} by {self.key or 'route'}"


@dataclass
class Route:
    """One HTTP route: conditions that all must hold, the cluster it sends to, and the edits it makes.

    Conditions left at their default match every request. Names and hosts are kept as written; the
    router folds case itself. A route sends to a cluster or to a service (a logical name the naming table maps to
    clusters, per request): exactly one of the two is set.
    """
    cluster: str | None = None
    service: str | None = None         # "users" is the name /svc/users; a name starting with "/" is taken as it is
    # A name unique in the listener: what the route's rate-limit buckets are kept by across reloads (none: its match)
    name: str | None = None
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
    rate_limit: RateLimit | None = None                        # none: not limited (costs nothing)
    # Client identities (verified certificate URI SANs) this route serves: "spiffe://td/ns/x/sa/y" exactly, or
    # "spiffe://td/ns/x/*" for a prefix. Empty: anyone. Others get 403 `fastmesh-error: forbidden`.
    allow_identities: list[str] = field(default_factory=list)


@dataclass
class Http2:
    """HTTP/2 with prior knowledge on an http listener: the settings it announces and its abuse limits (issue 10).

    Every knob of the listener's HTTP/2 side lives here, with a default that is safe facing untrusted clients.
    """
    enabled: bool = True               # accept the HTTP/2 preface on this listener (false: HTTP/1 only)
    max_concurrent_streams: int = 100  # streams a client may have open at once; more are refused (REFUSED_STREAM)
    initial_window: int = 65535        # bytes of request body a stream may send ahead (SETTINGS_INITIAL_WINDOW_SIZE)
    connection_window: int = 1048576   # bytes of request body all streams of a connection may send ahead
    max_frame_size: int = 16384        # largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE)
    header_table_size: int = 4096      # HPACK dynamic table the client may make us keep (SETTINGS_HEADER_TABLE_SIZE)
    max_continuation_frames: int = 32  # CONTINUATION frames of one header block (CONTINUATION flood)
    rapid_reset_ratio: float = 0.5     # GOAWAY when more than this share of 100 streams were reset before an answer
    glitch_budget: int = 1000          # SETTINGS/PING/empty DATA/WINDOW_UPDATE/PRIORITY frames tolerated (refills)
    stall_timeout: float = 30.0        # seconds a stream may wait on a zero window before it is reset
    max_queued_bytes: int = 1048576    # output held for a client that does not read before reading from it stops


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
    tls: ListenerTls | None = None     # None: cleartext clients
    # tcp only: pass TLS through untouched, picking the cluster by the ClientHello's server name (the listener's
    # `cluster` takes every other name and ClientHellos without one). Keys: "name" or "*.suffix".
    sni_routes: dict[str, str] = field(default_factory=dict)
    # A PROXY protocol header required first on every connection: None (off), "any" (v1 or v2), "v1" or "v2".
    proxy_protocol: str | None = None
    proxy_protocol_timeout: float = 5.0   # seconds a connection has to send its whole PROXY header
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
    # The client certificate's verified URI SAN (a SPIFFE ID) goes upstream in this field; a copy the client sent
    # is always removed. "" turns both off.
    identity_header: str = "fastmesh-client-identity"
    # Instead of `cluster`: the logical name requests no route matches go to (http), or every connection goes to
    # (tcp: resolved per connection at accept).
    service: str | None = None
    access_log: AccessLog | None = None       # None: no access log
    tracing: ListenerTracing = field(default_factory=ListenerTracing)   # W3C trace context
    http2: Http2 = field(default_factory=Http2)   # HTTP/2 on the same port (prior knowledge)
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


BUSY_POLL = 0.0           # the default of Config.busy_poll (seconds)
BUSY_POLL_MAX = 0.01      # longer spins only burn CPU: a blocked wait's wake-up costs well under 10 ms


@dataclass
class Config:
    """The whole validated configuration."""
    listeners: list[Listener]
    clusters: dict[str, Cluster]
    # Worker processes; 0 runs the data plane in the supervisor itself (one process, no crash isolation).
    workers: int | Literal["auto"] = 1
    # Per worker: downstream connections open at once over all listeners; "auto" derives it from the fd limit
    # (dataplane/fd_budget.py). Past it, new connections wait in the listeners' backlogs.
    max_connections: int | Literal["auto"] = "auto"
    drain_timeout: float = 10.0        # seconds open connections get to finish on shutdown
    # Seconds a worker keeps polling (epoll_wait, zero timeout) after its last event before it blocks, so traffic
    # that comes that often never waits for an idle core to wake up (see Reactor.busy_poll). 0: block at once.
    busy_poll: float = BUSY_POLL
    # Seconds per generation of the instance's session-ticket master secret (it ratchets forward; no listener's
    # ticket_rotation may be longer). Read at start: a reload does not change it.
    ticket_secret_rotation: float = 86400.0
    admin: Admin = field(default_factory=Admin)
    demo: Demo | None = None
    naming: Naming = field(default_factory=Naming)
    cluster_templates: dict[str, ClusterTemplate] = field(default_factory=dict)   # pattern -> template
    event_sinks: list[SinkSpec] = field(default_factory=list)   # the supervisor's events to plugins, in batches
    tracing: Tracing = field(default_factory=Tracing)           # span export
    source: str = "<config>"           # file name (or "<string>") the config came from, for messages

    def uses_tls(self) -> bool:
        """A listener, cluster or cluster template has a tls table (and so OpenSSL is needed)."""
        return (any(ls.tls is not None for ls in self.listeners)
                or any(c.tls is not None for c in self.clusters.values())
                or any(t.cluster.tls is not None for t in self.cluster_templates.values()))

    def worker_count(self) -> int:
        import os
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
