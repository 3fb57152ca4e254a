# One request's life, whatever the codec: route and cluster, tries, deadlines, retries against the budget,
# breaker slots, outlier and latency reports, hash key, header edits, timing. The codec (http1/conn.pyx today,
# an HTTP/2 stream next) feeds it events and renders its decisions; an exchange never touches a socket.

from fastmesh._core.request cimport (
    RequestView, Span, EditList, Field, METHOD_GET, METHOD_HEAD, METHOD_PUT, METHOD_DELETE, METHOD_OPTIONS,
    METHOD_TRACE,
)
from fastmesh._core.router cimport Router
from fastmesh._core.ratelimit cimport RateLimit
from fastmesh._core.policy cimport ClusterPolicy
from fastmesh._core.upstream.connector cimport Connector, ConnectUser, ConnectTry
from fastmesh._core.includes.system cimport sockaddr_in6
from libc.string cimport memcmp


cdef enum:
    GRPC_LATER = -2                    # Exchange.grpc_code: the answer's grpc-status will come in its trailers


cdef enum Verdict:
    # What the codec does after a try's outcome (Exchange.response / try_failed).
    V_PASS = 0                         # pass the upstream's answer on
    V_RETRY = 1                        # send the request again after Exchange.backoff seconds (retry_due then)
    V_ANSWER = 2                       # answer with Exchange.error (errors.pxd) instead


ctypedef struct ForwardRules:
    # Per listener, from the config: what every request forwarded from it carries.
    bint forwarded                     # add X-Forwarded-For / X-Forwarded-Proto / Via (drop the client's XFP)
    bint trust_headers                 # honour a client's fastmesh-timeout-ms (else it is dropped unread)
    Span request_id                    # request id field name (lowercase); empty when off
    bint https                         # the listener terminates TLS: X-Forwarded-Proto says https
    Span identity                      # client identity field name (lowercase), or empty: off (see list_own_edits)
    bint identity_noted                # identity is the name codecs note in RequestView.identity_field (the default)
    int trace                          # TraceMode (tracing.pxd): off, propagate (the default), or start traces too
    unsigned long long sample_max      # TRACE_START: a new trace is sampled when a 64-bit draw (never 0) is <= this
    unsigned long long version         # changes whenever the rules do (exchanges rebuild their own edits then)


cdef class Exchange:
    # Built once per connection (HTTP/1) or stream; begin() readies it for the next request.
    cdef Router router                 # the routes this request was matched with (a reload swaps the listener's)
    cdef readonly int route            # matched route index, -1 before / without a match
    cdef readonly int cluster          # the route's cluster index, -1 before a match
    cdef Connector connector           # the cluster's connector (HttpPool for HTTP/1)
    cdef ClusterPolicy policy          # the cluster's retry, timeout and breaker policy
    cdef ConnectTry ct                 # the walk over endpoints: connects this try, endpoints failed, hash key
    cdef readonly int method           # Method id (request.pxd): replay safety
    cdef bint upgrade                  # an Upgrade request: never sent twice
    cdef bint replayable               # the codec can send the whole body again
    cdef readonly int tries            # tries so far (1 = the first); retries = tries - 1
    cdef bint counted                  # holds a max_requests slot (policy.requests_active, the limit cell)
    cdef bint retrying                 # holds a max_retries slot (policy.retries_active, the limit cell)
    cdef bint waiting                  # queued in the connector's waiters for a connection slot
    cdef readonly double started       # when the request started (its head was complete)
    cdef readonly double try_started   # when the current try got its connection
    cdef readonly double deadline      # the request's deadline (timeout / fastmesh-timeout-ms); 0 = none
    cdef readonly double try_deadline  # when the current try's response head must have arrived
    cdef double body_deadline          # when the request body must have arrived (body_timeout), 0 = no limit
    cdef double body_seen              # when the client last sent body bytes (or last waited on us, not we on it)
    cdef readonly double backoff       # V_RETRY: seconds to wait before the next try
    cdef readonly int error            # V_ANSWER: the ProxyError to answer with
    cdef EditList request_edits        # header edits for the forwarded request
    cdef EditList response_edits       # header edits for the answer
    cdef unsigned long long edits_for  # ForwardRules.version the own edits were listed for (0: none yet)
    cdef char request_id[32]           # the request id this exchange adds when the request has none
    cdef char trace[55]                # the traceparent sent upstream: the trace id, our span id, the flags
    cdef char trace_parent[16]         # the caller's span id (TRACE_CONTINUED): our span's parent
    cdef unsigned char strip_identity  # the own edits remove a client's identity field (identity_noted rules only)
    cdef readonly int trace_kind       # TraceKind (tracing.pxd): TRACE_NONE, TRACE_CONTINUED or TRACE_STARTED
    cdef readonly bint span            # sampled, and spans are recorded: a span record when the request ends
    cdef char span_id[16]              # the request's own span (when `span`): the parent of each try's span
    cdef double try_began              # when the current try began (its span's start): admit, or a retry's backoff end
    cdef bint retraced                 # a retry gave the next try a new span id that a rendered head still lacks
    cdef char prev_try[16]             # the span id of the try before (retrace finds it in a rendered head)
    cdef int trace_edit                # index in request_edits.own where the trace edits start (the last), -1: none
    # Offset in the view's base of the caller's traceparent value when it is 55 bytes, which a codec that renders
    # the received field lines (HTTP/1) overwrites with ours in place (trace_in_place); -1: none
    cdef int trace_value_off
    cdef char tracestate[512]          # the caller's tracestate as W3C's rules pass it on, when members were dropped
    # bytes of tracestate sent instead of the caller's fields; -1: the fields pass as they came; 0: none is sent
    cdef int tracestate_len
    cdef char peer[48]                 # the client's address as text (X-Forwarded-For, source_ip hash key)
    cdef int peer_len
    cdef sockaddr_in6 client           # the client's address and port (a sockaddr_in for IPv4): a PROXY header names it
    cdef int client_fd                 # the client's socket (its local end is a PROXY header's destination)
    cdef bytes identity                # the client's verified identity (its certificate's URI SAN), None: none
    cdef bytes keep_identity           # sans-IO driving: the identity field name the edits point into
    cdef bytes keep_rid                # sans-IO driving: the request id name the edits point into
    cdef public object log_fields      # (method, authority, target, request id) as the client sent them, when logging
    # grpc-status of the current try's answer when known before its head is passed on (an h2 leg sets it from a
    # trailers-only head or early trailers); -1: none; GRPC_LATER: a gRPC answer whose status comes in its trailers
    # (the endpoint's outcome waits for grpc_outcome)
    cdef int grpc_code
    cdef readonly int retry_after      # PE_RATE_LIMITED: seconds until the route's bucket has a token (Retry-After)
    cdef readonly int retry_ms         # the same wait in milliseconds (gRPC's grpc-retry-pushback-ms)

    cdef void set_peer(self, const char *peer, int n) noexcept
    cdef void set_client(self, const sockaddr_in6 *client, int fd) noexcept
    cdef int proxy_header(self, int version, char *out) noexcept
    cdef void set_identity(self, bytes identity) noexcept
    cdef void begin(self, double now) noexcept
    cdef void new_request_id(self) noexcept
    cdef void trace_begin(self, const RequestView *v, const ForwardRules *rules) noexcept
    cdef void trace_edits(self) noexcept
    cdef void trace_in_place(self, char *base) noexcept
    cdef void record_span(self, int endpoint, int status, double now, int err)
    cdef void use_cluster(self, int cluster, list connectors, const RequestView *v, const ForwardRules *rules,
                          double now) noexcept
    cdef void list_own_edits(self, const ForwardRules *rules) noexcept
    cdef int route_request(self, Router router, list connectors, const RequestView *v, const ForwardRules *rules,
                           double now) noexcept
    cdef int rate_limited(self, RateLimit limit, const char *key, Py_ssize_t n, const RequestView *v) noexcept
    cdef int admit(self, bint replayable, bint upgrade, double now) noexcept
    cdef void next_try(self, double now) noexcept
    cdef long long budget_ms(self, double now) noexcept
    cdef void connected(self, int ep, double now) noexcept
    cdef void restart_clock(self, double now) noexcept
    cdef void body_begins(self, double now, double body_timeout, bint whole) noexcept
    cdef void body_arrived(self, double now) noexcept
    cdef bint body_overdue(self, double now, bint client_owes, double idle_timeout) noexcept
    cdef void response_broke(self, int ep, double now) noexcept
    cdef void report(self, int ep, int status, bint failed, double now) noexcept
    cdef int response(self, int ep, int status, bint marked, double now) noexcept
    cdef int grpc_response(self, int ep, bint marked, double now) noexcept
    cdef void grpc_outcome(self, int ep, int code, double now) noexcept
    cdef int try_failed(self, int ep, int why, bint blame, double now) noexcept
    cdef bint may_retry(self, int why, int status, double now) noexcept
    cdef void start_retry(self, int ep, int status, int why, double now) noexcept
    cdef void record_try(self, int endpoint, int status, bytes cause, double now) noexcept
    cdef void retrace(self, char *head, Py_ssize_t n) noexcept
    cdef void replay(self, int ep) noexcept
    cdef int wait_expired(self) noexcept
    cdef bint deadline_passed(self, double now) noexcept
    cdef bint wait(self, ConnectUser user) noexcept
    cdef int retried_mark(self, int status, bint marked) noexcept
    cdef void end(self, ConnectUser user) noexcept
    cdef void log_begin(self, tuple names, const RequestView *v, const ForwardRules *rules)
    cdef void log_answer(self, object sink, int endpoint, int status, unsigned long long bytes_in,
                         unsigned long long bytes_out, double now, int err)


# A client's fastmesh-timeout-ms value as milliseconds: 1 to 12 digits, else -1.
cdef long long timeout_value(Span value) noexcept nogil
# A gRPC client's grpc-timeout value ("100m", "5S", at most 8 digits and a unit of H M S m u n) as milliseconds
# (parts of a millisecond rounded up), else -1.
cdef long long grpc_timeout_value(Span value) noexcept nogil
# The request's deadline at `now`: the cluster's timeout (0: none), or the client's fastmesh-timeout-ms or
# grpc-timeout when trusted and sooner; 0 when none.
cdef double request_deadline(const RequestView *v, double timeout, bint trust, double now) noexcept nogil
# The bytes the request's consistent-hash key is made of (connector.pxd's HashKind; name: header or cookie name,
# peer: the client's address); False when the request lacks them.
cdef bint key_span(int kind, Span name, const RequestView *v, Span peer, Span *out) noexcept nogil
# A grpc-status value as a code: 0..99 (1 or 2 digits; codes past 16 are the server's own), 2 (UNKNOWN) when it is
# not a number, as a gRPC client takes it.
cdef int grpc_status_value(Span value) noexcept nogil
# The grpc-status field among n fields (names lowercase, as HTTP/2 carries them) as grpc_status_value() reads it;
# -1 when there is none.
cdef int grpc_status_in(const char *base, const Field *fields, int n) noexcept nogil
# The HTTP status a gRPC status weighs like, for balancers and outlier detection: UNAVAILABLE 503; UNKNOWN,
# INTERNAL, DATA_LOSS 500; DEADLINE_EXCEEDED 504; RESOURCE_EXHAUSTED 429; any other code 200.
cdef int grpc_http_status(int code) noexcept nogil
# Methods a retry may send again: the idempotent ones of RFC 9110 section 9.2.2.
cdef inline bint replayable_method(int m) noexcept nogil:
    return (m == METHOD_GET or m == METHOD_HEAD or m == METHOD_PUT or m == METHOD_DELETE or m == METHOD_OPTIONS
            or m == METHOD_TRACE)


cdef inline void rules_identity(ForwardRules *rules, const char *name, Py_ssize_t n) noexcept nogil:
    # The identity field name (lowercase; n == 0: off), and whether it is the one codecs note while parsing.
    rules.identity.ptr = name
    rules.identity.len = n
    rules.identity_noted = n == 24 and memcmp(name, b"fastmesh-client-identity", 24) == 0
