"""One request's life, whatever the codec: the rules that make fastmesh worth running, in one place.

A codec (http1/conn.pyx; an HTTP/2 stream next) owns one Exchange per request in flight (an HTTP/1 listener
keeps finished ones for the next request of any connection) and drives it with events, each a C call with no
Python object made:
  begin            a request head is complete (the clock starts)
  route_request    the codec's request view (request.pxd) is matched (router.pyx); the cluster's connector and
                   policy are chosen, the hash key read (header, cookie or client address), the deadline set
                   (the cluster's timeout, or a client's sooner fastmesh-timeout-ms when trusted), the W3C
                   trace context taken or started (tracing.pyx), and the header edits listed: forwarding fields,
                   the request id, the deadline, our traceparent, the route's edits
  admit            breakers (max_requests, the adaptive limit) and the retry budget's deposit; a spent deadline
  connected        a try got a connection (its latency is measured from here)
  body_*           whose clock runs while the request body arrives: the client's (body_timeout, idle silence:
                   408, never the endpoint's fault) or the upstream's (restart_clock: its response clock)
  response         a response head: reported to the balancer and outlier detection; a retryable 5xx (not
                   marked fastmesh-retried by a hop below) may become a retry
  try_failed       a reset or a response timeout: reported, then a retry or the error to answer
  grpc_response    (from response) a gRPC answer whose grpc-status is known before its head leaves: weighed
                   like the HTTP status it stands for, retried when the cluster lists the code (POST included:
                   the codec says whether the body can be sent again; a streaming call's cannot once a message
                   went upstream and more may follow)
  end              the request left the books: gauges down, out of the connection breaker's queue
  log_answer       the access-log record, and the span record of a sampled request (only when export is on)
A verdict is V_PASS, V_RETRY (the codec waits `backoff`, then next_try() and sends again) or V_ANSWER (the
codec renders `error`, a ProxyError: errors.pxd). Times are arguments, so tests drive an exchange with a fake
clock and no sockets (tests/core/test_exchange.py); `explain` calls the same rules through the Python
functions at the end of this file.
"""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memcmp

from fastmesh._core.errors cimport (
    error_info, PE_NONE, PE_NO_ROUTE, PE_OVERLOADED, PE_DEADLINE_EXCEEDED, PE_RESET, PE_RESPONSE_TIMEOUT,
    PE_METHOD_NOT_ALLOWED, PE_NO_ENDPOINTS, PE_RATE_LIMITED, PE_FORBIDDEN,
)
from fastmesh._core.http1.parser cimport Head
from fastmesh._core.http1.view cimport view_parse
from fastmesh._core.balance.hashing cimport hash_bytes
from fastmesh._core.policy cimport ClusterPolicy, RETRY_RESET, RETRY_TIMEOUT, RETRY_5XX, RETRY_GRPC
from fastmesh._core.limits cimport F_REQUESTS, F_RETRIES
from fastmesh._core.request cimport (
    RequestView, Span, Edit, EditList, Field, METHOD_CONNECT, find_field, field_value, span_of, edits_clear, edit_add,
    edit_at, EDIT_ADD, EDIT_REMOVE, EDIT_ADD_ABSENT, EDIT_DEADLINE,
)
from fastmesh._core.tracing cimport (
    TRACE_OFF, TRACE_PROPAGATE, TRACE_START, TRACE_NONE, TRACE_CONTINUED, TRACE_STARTED, TRACEPARENT_LEN,
    TRACE_ID_AT, SPAN_ID_AT, FLAGS_AT, traceparent_parse, tracestate_trim, trace_id_new, span_id_new, trace_random,
    spans_recorded, span_recorder,
)
from fastmesh._core.router cimport Router
from fastmesh._core.ratelimit cimport RateLimit, RK_FILTER, retry_after_seconds
from fastmesh._core.upstream.connector cimport (
    Connector, ConnectUser, try_init, try_avoid, HASH_NONE, HASH_HEADER, HASH_SOURCE,
)

from fastmesh._core.proxyproto.codec cimport ProxyAddrs, pp_addrs, pp_encode
from fastmesh._core.includes.system cimport sockaddr_in6
from fastmesh._core.router import METHOD_IDS

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* The 8 bytes of r as 16 lowercase hex digits, byte 0 first, each byte's high digit first (what a table of
       digit pairs gives), with a few word operations instead of 16 table loads and stores. */
    #if defined(__SSE2__) && defined(__x86_64__)
    #include <emmintrin.h>
    #endif
    static inline void fm_hex16(uint64_t r, char *out) {
    #if defined(__SSE2__) && defined(__x86_64__)
        /* Both nibbles of each byte, interleaved high first, then '0' + n, plus 39 more where n > 9 (to 'a'). */
        const __m128i low4 = _mm_set1_epi8(0x0F);
        __m128i v = _mm_cvtsi64_si128((long long)r);
        __m128i n = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4));
        __m128i letters = _mm_and_si128(_mm_cmpgt_epi8(n, _mm_set1_epi8(9)), _mm_set1_epi8(39));
        _mm_storeu_si128((__m128i *)out, _mm_add_epi8(_mm_add_epi8(n, _mm_set1_epi8('0')), letters));
    #else
        int half;
        for (half = 0; half < 2; half++) {
            uint64_t y = (r >> (32 * half)) & 0xFFFFFFFFULL;
            y = (y | (y << 16)) & 0x0000FFFF0000FFFFULL;      /* bytes 0,1 | 4,5 */
            y = (y | (y << 8)) & 0x00FF00FF00FF00FFULL;       /* byte j of the half at byte 2j */
            y = ((y >> 4) & 0x000F000F000F000FULL) | ((y & 0x000F000F000F000FULL) << 8);  /* one nibble a byte */
            y += 0x3030303030303030ULL + (((y + 0x0606060606060606ULL) >> 4) & 0x0101010101010101ULL) * 0x27;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            y = __builtin_bswap64(y);
    #endif
            memcpy(out + 8 * half, &y, 8);
        }
    #endif
    }
    """
    void fm_hex16(uint64_t r, char *out) noexcept nogil

cdef bytes _HEX_PAIRS = "".join(f"{b:02x}" for b in range(256)).encode("ascii")
cdef const char *HEX_PAIRS = _HEX_PAIRS                    # "000102...ff": a byte's two hex digits at 2 * byte
cdef const char *TIMEOUT_FIELD = b"fastmesh-timeout-ms"    # the deadline budget, in ms, sent with each try
cdef const char *GRPC_TIMEOUT_FIELD = b"grpc-timeout"  # a gRPC client's deadline; renders with the budget too
cdef const char *XFP_LOWER = b"x-forwarded-proto"
cdef const char *XFF = b"X-Forwarded-For"
cdef const char *XFP = b"X-Forwarded-Proto"
cdef const char *HTTP = b"http"
cdef const char *HTTPS = b"https"
cdef const char *VIA = b"Via"
cdef const char *VIA_VALUE = b"1.1 fastmesh"
cdef const char *TRACEPARENT = b"traceparent"
cdef const char *TRACESTATE = b"tracestate"
cdef long long MAX_BUDGET_MS = 999999999                   # 9 digits: a codec may render it in fixed width
cdef unsigned long long _RULES_VERSION = 0                 # sans-IO driving: each start() brings new rules


cdef long long timeout_value(Span value) noexcept nogil:
    cdef long long v = 0
    cdef Py_ssize_t i
    cdef char c
    if value.len == 0 or value.len > 12:
        return -1
    for i in range(value.len):
        c = value.ptr[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


cdef long long grpc_timeout_value(Span value) noexcept nogil:
    # "TimeoutValue TimeoutUnit" of the gRPC over HTTP/2 spec: 1 to 8 digits, then H, M, S, m, u or n.
    cdef long long v = 0
    cdef Py_ssize_t i
    cdef char c, unit
    if value.len < 2 or value.len > 9:
        return -1
    for i in range(value.len - 1):
        c = value.ptr[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    unit = value.ptr[value.len - 1]
    if unit == b'm':
        return v
    if unit == b'S':
        return v * 1000
    if unit == b'M':
        return v * 60000
    if unit == b'H':
        return v * 3600000
    if unit == b'u':
        return (v + 999) // 1000           # a part of a millisecond is a millisecond: 0 means already spent
    if unit == b'n':
        return (v + 999999) // 1000000
    return -1


cdef double request_deadline(const RequestView *v, double timeout, bint trust, double now) noexcept nogil:
    cdef double deadline = now + timeout if timeout > 0 else 0.0
    cdef long long ms
    cdef int i
    if trust:
        # The caller's budget: fastmesh-timeout-ms from a fastmesh hop, grpc-timeout from a gRPC client; the
        # soonest of them and the cluster's timeout wins.
        i = find_field(v.base, v.fields, v.num_fields, TIMEOUT_FIELD, 19, 0)
        if i >= 0:
            ms = timeout_value(field_value(v.base, &v.fields[i]))
            if ms >= 0 and (deadline == 0.0 or now + ms / 1000.0 < deadline):
                deadline = now + ms / 1000.0
        i = find_field(v.base, v.fields, v.num_fields, GRPC_TIMEOUT_FIELD, 12, 0)
        if i >= 0:
            ms = grpc_timeout_value(field_value(v.base, &v.fields[i]))
            if ms >= 0 and (deadline == 0.0 or now + ms / 1000.0 < deadline):
                deadline = now + ms / 1000.0
    return deadline


cdef int grpc_status_value(Span value) noexcept nogil:
    cdef Py_ssize_t i
    cdef int code = 0
    if value.len == 0 or value.len > 2:
        return 2
    for i in range(value.len):
        if not 48 <= value.ptr[i] <= 57:
            return 2
        code = code * 10 + (value.ptr[i] - 48)
    return code


cdef int grpc_status_in(const char *base, const Field *fields, int n) noexcept nogil:
    cdef int i = find_field(base, fields, n, b"grpc-status", 11, 0)
    return grpc_status_value(field_value(base, &fields[i])) if i >= 0 else -1


cdef int grpc_http_status(int code) noexcept nogil:
    if code == 14:
        return 503
    if code == 2 or code == 13 or code == 15:
        return 500
    if code == 4:
        return 504
    if code == 8:
        return 429
    return 200


cdef bint _cookie(Span c, const char *name, Py_ssize_t m, Span *val) noexcept nogil:
    # Cookie `name` in a Cookie field value ("a=1; b=2").
    cdef Py_ssize_t i = 0, start, eq
    cdef const char *p = c.ptr
    while i < c.len:
        while i < c.len and (p[i] == 32 or p[i] == 59):
            i += 1
        start = i
        eq = -1
        while i < c.len and p[i] != 59:
            if eq < 0 and p[i] == 61:
                eq = i
            i += 1
        if eq >= 0 and eq - start == m and (m == 0 or fold_exact(p + start, name, m)):
            val.ptr = p + eq + 1
            val.len = i - eq - 1
            return True
    return False


cdef inline bint fold_exact(const char *a, const char *b, Py_ssize_t n) noexcept nogil:
    # Cookie names compare byte for byte.
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef bint key_span(int kind, Span name, const RequestView *v, Span peer, Span *out) noexcept nogil:
    cdef int i
    if kind == HASH_SOURCE:
        out[0] = peer
        return True
    if kind == HASH_HEADER:
        i = find_field(v.base, v.fields, v.num_fields, name.ptr, name.len, 0)
        if i < 0:
            return False
        out[0] = field_value(v.base, &v.fields[i])
        return True
    i = find_field(v.base, v.fields, v.num_fields, b"cookie", 6, 0)
    while i >= 0:
        if _cookie(field_value(v.base, &v.fields[i]), name.ptr, name.len, out):
            return True
        i = find_field(v.base, v.fields, v.num_fields, b"cookie", 6, i + 1)
    return False


cdef class Exchange:
    """Made by a codec once per connection (or stream) and reused for each request it carries."""

    def __cinit__(self):
        self.route = -1
        self.cluster = -1
        self.grpc_code = -1
        self.trace_edit = -1
        self.trace_value_off = -1
        try_init(&self.ct)
        edits_clear(&self.request_edits)
        edits_clear(&self.response_edits)

    cdef void set_peer(self, const char *peer, int n) noexcept:
        """The client's address as text (a codec sets it whenever the exchange serves another connection)."""
        n = min(n, <int>sizeof(self.peer))
        if n == self.peer_len and memcmp(self.peer, peer, n) == 0:
            return
        memcpy(self.peer, peer, n)
        self.peer_len = n
        self.edits_for = 0            # the X-Forwarded-For edit holds the old length: list the own edits again

    cdef void set_client(self, const sockaddr_in6 *client, int fd) noexcept:
        """The client's address with its port, and its socket (a codec sets them beside set_peer)."""
        memcpy(&self.client, client, sizeof(sockaddr_in6))
        self.client_fd = fd

    cdef int proxy_header(self, int version, char *out) noexcept:
        """The PROXY header of `version` for this exchange's client into out (PP_OUT_MAX bytes): its length. The
        destination is the address the client connected to: the listener's, or the one the client's own PROXY
        header named (the proxy in front of us)."""
        cdef ProxyAddrs a
        if self.client.sin6_family == 0:
            return pp_encode(version, NULL, NULL, out)
        pp_addrs(self.client_fd, &self.client, &a)
        return pp_encode(version, &a.src, &a.dst, out)

    cdef void set_identity(self, bytes identity) noexcept:
        """The client's verified identity (a codec sets it with the peer; None: none was shown)."""
        if identity is not self.identity:
            self.identity = identity
            self.edits_for = 0        # the identity edit holds the old value: list the own edits again

    cdef void begin(self, double now) noexcept:
        self.started = now
        self.route = -1
        self.cluster = -1
        self.tries = 0
        self.deadline = 0.0
        self.error = PE_NONE
        self.backoff = 0.0
        self.grpc_code = -1
        self.trace_kind = TRACE_NONE
        self.trace_value_off = -1
        self.retraced = False
        self.span = False
        try_init(&self.ct)

    cdef int route_request(self, Router router, list connectors, const RequestView *v, const ForwardRules *rules,
                           double now) noexcept:
        """Match the request; choose cluster, hash key, deadline and header edits. PE_NO_ROUTE or PE_NONE."""
        cdef EditList *req = &self.request_edits
        cdef int r, cluster
        if self.router is not router:
            self.router = router
        self.method = v.method
        if rules.trace != TRACE_OFF:
            self.trace_begin(v, rules)
        r = router.match(v)
        if r < 0:
            # A reverse proxy is no tunnel unless a route names CONNECT (router.pyx).
            return PE_METHOD_NOT_ALLOWED if v.method == METHOD_CONNECT else PE_NO_ROUTE
        self.route = r
        if router.identities and not router.identity_allowed(
                r, <const char *>self.identity if self.identity is not None else NULL,
                len(self.identity) if self.identity is not None else 0):
            return PE_FORBIDDEN
        cluster = router.target(r, connectors, v)           # the route's cluster, or its service's (naming.pyx)
        if cluster < 0:
            return PE_NO_ENDPOINTS                          # a service that names no cluster at all
        self.use_cluster(cluster, connectors, v, rules, now)
        self.tries = 1
        if rules.request_id.len:
            self.new_request_id()
        if rules.identity_noted and v.identity_field != self.strip_identity:
            # A request that brings its own identity field (or the first after one that did): list the own edits
            # with (or without) its removal. Requests without one, the usual case, pay this one test.
            self.strip_identity = v.identity_field != 0
            self.edits_for = 0
        if self.edits_for != rules.version:
            self.list_own_edits(rules)
        if self.trace_edit >= 0:
            self.trace_edits()
        router.route_edits(r, req, &self.response_edits)
        if router.limits is not None:                       # the one test a listener without rate limits pays
            limit = router.limits[r]
            if limit is not None and (<RateLimit>limit).kind != RK_FILTER:
                return self.rate_limited(<RateLimit>limit, NULL, 0, v)
        return PE_NONE

    cdef int rate_limited(self, RateLimit limit, const char *key, Py_ssize_t n, const RequestView *v) noexcept:
        """Take a token of the route's limit for the request (key: what a filter set, NULL: the limit's own key);
        PE_RATE_LIMITED, with retry_after set, when there is none."""
        cdef uint64_t wait
        if key != NULL:
            wait = limit.take(key, n)
        else:
            wait = limit.check(v, span_of(self.peer, self.peer_len))
        if wait == 0:
            return PE_NONE
        self.retry_after = retry_after_seconds(wait)
        # 1/16 ns to whole milliseconds, rounded up: a client waiting this long finds a token.
        self.retry_ms = <int>min(wait // 16000000 + (1 if wait % 16000000 else 0), <uint64_t>86400000)
        return PE_RATE_LIMITED

    cdef void use_cluster(self, int cluster, list connectors, const RequestView *v, const ForwardRules *rules,
                          double now) noexcept:
        """Send the request to cluster: its connector and policy, the hash key its balancer reads, the deadline
        its timeout gives (route_request, and a filter's route_to() before the request is admitted)."""
        cdef Connector connector = <Connector>connectors[cluster]
        cdef Span key
        self.cluster = cluster
        if self.connector is not connector:
            self.connector = connector
            self.policy = connector.policy
        self.ct.keyed = False
        if connector.hash_kind != HASH_NONE and key_span(
                connector.hash_kind, span_of(connector.hash_name, len(connector.hash_name)), v,
                span_of(self.peer, self.peer_len), &key):
            self.ct.keyed = True
            self.ct.key = hash_bytes(<const unsigned char *>key.ptr, key.len)
        self.deadline = request_deadline(v, self.policy.timeout, rules.trust_headers, now)

    cdef void list_own_edits(self, const ForwardRules *rules) noexcept:
        """The exchange's own header edits: the same for every request of a connection until the listener's rules
        change (the peer and the request id buffer are this exchange's), so they are listed once, not per request."""
        cdef EditList *req = &self.request_edits
        edits_clear(req)
        edits_clear(&self.response_edits)
        if rules.forwarded:
            edit_add(req, EDIT_REMOVE, span_of(XFP_LOWER, 17), span_of(NULL, 0))
            edit_add(req, EDIT_ADD, span_of(XFF, 15), span_of(self.peer, self.peer_len))
            edit_add(req, EDIT_ADD, span_of(XFP, 17), span_of(HTTPS, 5) if rules.https else span_of(HTTP, 4))
            edit_add(req, EDIT_ADD, span_of(VIA, 3), span_of(VIA_VALUE, 12))
            edit_add(&self.response_edits, EDIT_ADD, span_of(VIA, 3), span_of(VIA_VALUE, 12))
        if rules.request_id.len:
            edit_add(req, EDIT_ADD_ABSENT, rules.request_id, span_of(self.request_id, 32))
        if rules.identity.len:
            # Only fastmesh says who the client is: a copy the client sent is dropped, ours added when verified.
            # The codecs note the default name while parsing, so its removal is listed only for a request that
            # has one (route_request); another name is always removed.
            if self.strip_identity or not rules.identity_noted:
                edit_add(req, EDIT_REMOVE, rules.identity, span_of(NULL, 0))
            if self.identity is not None:
                edit_add(req, EDIT_ADD, rules.identity, span_of(self.identity, len(self.identity)))
        edit_add(req, EDIT_DEADLINE, span_of(TIMEOUT_FIELD, 19), span_of(NULL, 0))
        # The trace edits come last, listed per request by trace_edits(): a request without trace context pays
        # nothing for them.
        self.trace_edit = req.n if rules.trace != TRACE_OFF else -1
        self.edits_for = rules.version

    cdef void trace_begin(self, const RequestView *v, const ForwardRules *rules) noexcept:
        """The request's trace context: the caller's valid traceparent continued under a new span id of ours, or
        (TRACE_START) a new trace, sampled at the listener's rate; else none. One scan of the field names when
        there is no traceparent."""
        cdef int i = find_field(v.base, v.fields, v.num_fields, TRACEPARENT, 11, 0)
        cdef int flags = -1
        if i >= 0 and find_field(v.base, v.fields, v.num_fields, TRACEPARENT, 11, i + 1) < 0:
            flags = traceparent_parse(field_value(v.base, &v.fields[i]), self.trace)
        if flags >= 0:
            self.trace_kind = TRACE_CONTINUED
            memcpy(self.trace_parent, self.trace + SPAN_ID_AT, 16)
            if v.fields[i].value_len == TRACEPARENT_LEN:
                self.trace_value_off = v.fields[i].value_off    # ours is as long: it may take the caller's place
            self.tracestate_len = tracestate_trim(v.base, v.fields, v.num_fields, self.tracestate)
        elif rules.trace == TRACE_START:
            # No usable context (none, or an invalid one, which is replaced): a new trace, and the caller's
            # tracestate, which belonged to no valid traceparent, goes with it.
            self.trace_kind = TRACE_STARTED
            self.tracestate_len = 0
            self.trace[0] = b'0'
            self.trace[1] = b'0'
            self.trace[2] = b'-'
            trace_id_new(self.trace + TRACE_ID_AT)
            self.trace[35] = b'-'
            self.trace[52] = b'-'
            flags = 1 if trace_random() <= rules.sample_max else 0
        else:
            return
        span_id_new(self.trace + SPAN_ID_AT)            # the first try's span: the parent id sent upstream
        self.trace[FLAGS_AT] = HEX_PAIRS[2 * flags]
        self.trace[FLAGS_AT + 1] = HEX_PAIRS[2 * flags + 1]
        self.span = (flags & 1) != 0 and spans_recorded()
        if self.span:
            span_id_new(self.span_id)                   # the request's own span, parent of its tries' spans

    cdef void trace_edits(self) noexcept:
        """This request's trace edits, after the own edits list_own_edits listed once per connection: the caller's
        tracestate dropped or replaced when W3C's rules dropped members from it, then the caller's traceparent
        dropped and ours added (always the last two: trace_in_place takes them back)."""
        cdef EditList *req = &self.request_edits
        req.n = self.trace_edit
        if self.trace_kind == TRACE_NONE:
            return
        if self.tracestate_len >= 0:
            edit_add(req, EDIT_REMOVE, span_of(TRACESTATE, 10), span_of(NULL, 0))
            if self.tracestate_len > 0:
                edit_add(req, EDIT_ADD, span_of(TRACESTATE, 10), span_of(self.tracestate, self.tracestate_len))
        edit_add(req, EDIT_REMOVE, span_of(TRACEPARENT, 11), span_of(NULL, 0))
        edit_add(req, EDIT_ADD, span_of(TRACEPARENT, 11), span_of(self.trace, TRACEPARENT_LEN))

    cdef void trace_in_place(self, char *base) noexcept:
        """A codec that forwards the received field lines as they are (HTTP/1) calls it, with the view's base,
        just before rendering: when the caller's traceparent value is as long as ours (version 00, the usual case),
        ours is written over it where it stands, and the two edits that would drop it and add ours at the end are
        taken back, so the field costs no more than any other. Request filters, which ran before, saw the caller's."""
        if self.trace_value_off < 0:
            return
        memcpy(base + self.trace_value_off, self.trace, TRACEPARENT_LEN)
        self.trace_value_off = -1
        self.request_edits.n -= 2

    cdef void new_request_id(self) noexcept:
        """32 hex digits from the balancer's xorshift generator: unique enough for tracing, no syscall."""
        fm_hex16(self.connector.cluster.balancer.next_random(), self.request_id)
        fm_hex16(self.connector.cluster.balancer.next_random(), self.request_id + 16)

    cdef int admit(self, bint replayable, bint upgrade, double now) noexcept:
        """The breakers and the budget's deposit: PE_OVERLOADED, PE_DEADLINE_EXCEEDED (already spent) or PE_NONE.
        `replayable`: the codec can send the whole request again (its body is whole in a buffer)."""
        cdef ClusterPolicy policy = self.policy
        self.replayable = replayable
        self.upgrade = upgrade
        if not policy.cell.take(F_REQUESTS, policy.request_limit()):
            policy.overloaded += 1
            return PE_OVERLOADED
        policy.requests_active += 1
        self.counted = True
        policy.budget.deposit(now)
        if self.deadline and now >= self.deadline:
            # The caller's budget is spent: sending the request could only waste a backend's time.
            return PE_DEADLINE_EXCEEDED
        self.try_began = now
        self.next_try(now)
        return PE_NONE

    cdef void next_try(self, double now) noexcept:
        """A try starts: its response head must arrive by the per-try timeout, within the request's deadline."""
        cdef double t = now + self.policy.per_try_timeout
        self.try_deadline = self.deadline if self.deadline and self.deadline < t else t

    cdef long long budget_ms(self, double now) noexcept:
        """The fastmesh-timeout-ms the next hop gets: what is left of this try, less 1 ms for the transit and
        queueing no hop can measure, so the budget shrinks at every hop even when a hop takes microseconds."""
        cdef long long ms = <long long>((self.try_deadline - now) * 1000.0) - 1
        return 0 if ms < 0 else MAX_BUDGET_MS if ms > MAX_BUDGET_MS else ms

    cdef void connected(self, int ep, double now) noexcept:
        self.try_started = now

    cdef void restart_clock(self, double now) noexcept:
        """The upstream owed nothing until now (the client was sending its body): its response clock, and the
        latency it is judged by, start over."""
        self.try_started = now
        self.next_try(now)

    cdef void body_begins(self, double now, double body_timeout, bint whole) noexcept:
        """The request head arrived; its body (unless `whole` already) must arrive within body_timeout."""
        self.body_seen = now
        self.body_deadline = now + body_timeout if body_timeout > 0 and not whole else 0.0

    cdef void body_arrived(self, double now) noexcept:
        self.body_seen = now

    cdef bint body_overdue(self, double now, bint client_owes, double idle_timeout) noexcept:
        """The client's clocks while its request body arrives: True once the whole body took longer than
        body_timeout, or the client kept silent for idle_timeout while it owed the next bytes (`client_owes`: the
        upstream has taken every body byte that came). Until then the upstream owes nothing: its response clock,
        and the latency it is judged by, start over. A client too slow is never the endpoint's failure."""
        if self.body_deadline and now >= self.body_deadline:
            return True
        if not client_owes:
            self.body_seen = now      # waiting on the upstream or a connection: the client's silence does not count
            return False
        if now - self.body_seen >= idle_timeout:
            return True
        self.restart_clock(now)
        return False

    cdef void response_broke(self, int ep, double now) noexcept:
        """The upstream broke the response after its head (framing, reset): a failure for outlier detection."""
        self.connector.cluster.request_failed(ep, now)

    cdef void report(self, int ep, int status, bint failed, double now) noexcept:
        """A try's outcome, for the latency-aware balancer, the adaptive limit and failure accrual."""
        cdef ClusterPolicy policy = self.policy
        self.connector.cluster.balancer.observe(ep, now - self.try_started, status if status else 503)
        if policy.adaptive is not None and not failed:
            policy.adaptive.sample(now - self.try_started)
        if failed:
            self.connector.cluster.request_failed(ep, now)
        else:
            self.connector.cluster.request_succeeded(ep)

    cdef int response(self, int ep, int status, bint marked, double now) noexcept:
        """A final response head from ep; `marked`: it carries fastmesh-retried (a hop below already retried,
        so it is never retried again). V_PASS or V_RETRY."""
        if self.grpc_code >= 0 and status == 200:
            return self.grpc_response(ep, marked, now)
        if self.grpc_code == GRPC_LATER:
            if status == 200:
                # A gRPC answer that may still fail in its trailers: its latency counts now, its outcome then.
                self.connector.cluster.balancer.observe(ep, now - self.try_started, 200)
                if self.policy.adaptive is not None:
                    self.policy.adaptive.sample(now - self.try_started)
                return V_PASS
            self.grpc_code = -1                    # judged by its HTTP status, here and now
        self.report(ep, status, status >= 500, now)
        if status >= 500 and self.policy.retryable_status(status) and not marked:
            try_avoid(&self.ct, ep)
            if self.may_retry(RETRY_5XX, status, now):
                self.start_retry(ep, status, RETRY_5XX, now)
                return V_RETRY
        return V_PASS

    cdef int grpc_response(self, int ep, bint marked, double now) noexcept:
        """A gRPC answer from ep whose grpc-status (grpc_code) is known before its head is passed on: reported as
        the HTTP status it stands for, retried when the cluster lists the code. V_PASS or V_RETRY."""
        cdef int code = self.grpc_code
        cdef int weight = grpc_http_status(code)
        self.report(ep, weight, weight >= 500, now)
        if self.policy.retryable_grpc(code) and not marked:
            try_avoid(&self.ct, ep)
            if self.may_retry(RETRY_GRPC, 0, now):
                self.start_retry(ep, weight, RETRY_GRPC, now)
                return V_RETRY
        return V_PASS

    cdef void grpc_outcome(self, int ep, int code, double now) noexcept:
        """The grpc-status (code, -1: none) that ended an answer whose head passed on first (GRPC_LATER): the
        endpoint's outcome for outlier detection, a failing status weighing like the HTTP status it stands for."""
        if self.grpc_code != GRPC_LATER:
            return
        self.grpc_code = code
        if code >= 0 and grpc_http_status(code) >= 500:
            self.connector.cluster.request_failed(ep, now)
        else:
            self.connector.cluster.request_succeeded(ep)

    cdef int try_failed(self, int ep, int why, bint blame, double now) noexcept:
        """The try on ep failed before a response head: RETRY_RESET or RETRY_TIMEOUT. `blame`: count it against
        the endpoint. V_RETRY, or V_ANSWER with `error`."""
        try_avoid(&self.ct, ep)
        if blame:
            self.report(ep, 0, True, now)
        if self.may_retry(why, 0, now):
            self.start_retry(ep, 0, why, now)
            return V_RETRY
        if why != RETRY_TIMEOUT:
            self.error = PE_RESET
        elif self.deadline and self.try_deadline >= self.deadline - 0.001:
            self.error = PE_DEADLINE_EXCEEDED       # this try had only what was left of the request's deadline
        else:
            self.error = PE_RESPONSE_TIMEOUT
        return V_ANSWER

    cdef bint may_retry(self, int why, int status, double now) noexcept:
        """Whether the failed try may be tried again: policy, replayability, limits, deadline and budget."""
        cdef ClusterPolicy policy = self.policy
        if self.tries >= policy.attempts:
            return False
        if status:
            if not policy.retryable_status(status):
                return False
        elif not (policy.retry_on & why):
            return False
        if not self.replayable or self.upgrade:
            return False
        if why != RETRY_GRPC and not replayable_method(self.method):
            return False            # a gRPC call is retried by its status, whatever its method (always POST)
        if self.deadline and now + 0.001 >= self.deadline:
            return False
        if self.retrying:               # already holds one of the instance's max_retries slots
            return policy.budget.try_withdraw(now)
        if not policy.cell.take(F_RETRIES, policy.max_retries):
            policy.overloaded += 1
            return False
        if not policy.budget.try_withdraw(now):
            policy.cell.give(F_RETRIES)
            return False
        self.retrying = True            # the slot goes back in end()
        policy.retries_active += 1
        return True

    cdef void start_retry(self, int ep, int status, int why, double now) noexcept:
        """Count the retry and draw its backoff: exponential from backoff_base, capped, full jitter. The try that
        failed on ep (`status`: its answer, 0: none, `why` then says what) ends its span; the next try gets a span id
        of its own, child of the request's span, and carries it upstream."""
        cdef ClusterPolicy policy = self.policy
        cdef double delay
        cdef unsigned long long r
        if self.span:
            self.record_try(ep, status, b"" if status else b"response timeout" if why == RETRY_TIMEOUT else b"reset",
                            now)
        self.tries += 1
        self.ct.attempts = 0
        self.grpc_code = -1
        policy.retried += 1
        delay = policy.backoff_base * (1 << min(self.tries - 2, 16))
        if delay > policy.backoff_max:
            delay = policy.backoff_max
        r = self.connector.cluster.balancer.next_random()
        self.backoff = delay * ((r >> 11) * (1.0 / 9007199254740992.0))     # uniform in [0, delay)
        if self.trace_kind != TRACE_NONE:
            memcpy(self.prev_try, self.trace + SPAN_ID_AT, 16)
            span_id_new(self.trace + SPAN_ID_AT)
            self.retraced = True
        self.try_began = now + self.backoff

    cdef void retrace(self, char *head, Py_ssize_t n) noexcept:
        """A codec that keeps the head it rendered for the first try (HTTP/1) calls it before sending a retry: the
        traceparent in head[0:n] (found by the trace id and the previous try's span id, 49 bytes no other field
        carries) gets the new try's span id."""
        cdef Py_ssize_t i
        if not self.retraced:
            return
        self.retraced = False
        for i in range(n - 48):
            if head[i] == self.trace[TRACE_ID_AT] and memcmp(head + i, self.trace + TRACE_ID_AT, 32) == 0 \
                    and head[i + 32] == b'-' and memcmp(head + i + 33, self.prev_try, 16) == 0:
                memcpy(head + i + 33, self.trace + SPAN_ID_AT, 16)
                return

    cdef void replay(self, int ep) noexcept:
        """A reused connection to ep was already dead: send again at no cost (it never reached a server)."""
        self.ct.attempts = 0
        try_avoid(&self.ct, ep)

    cdef int wait_expired(self) noexcept:
        """Waited a whole try for a connection slot (max_connections): the cluster is saturated."""
        self.policy.overloaded += 1
        return PE_OVERLOADED

    cdef bint deadline_passed(self, double now) noexcept:
        return self.deadline != 0.0 and now >= self.deadline

    cdef bint wait(self, ConnectUser user) noexcept:
        """Queue user for a connection slot; False when the breaker's queue is full too (counted overloaded)."""
        self.waiting = self.connector.wait(user)
        return self.waiting

    cdef int retried_mark(self, int status, bint marked) noexcept:
        """The fastmesh-retried value a failed answer carries (the retries this hop made, so hops above do not
        retry it again), or -1 for none: only 5xx answers, and not when a hop below already marked it."""
        if status < 500 or marked:
            return -1
        return self.tries - 1 if self.tries else 0

    cdef void end(self, ConnectUser user) noexcept:
        """The request left the cluster's books: in-flight and retry gauges go down once."""
        cdef ClusterPolicy policy = self.policy
        if policy is None:
            return
        if self.counted:
            self.counted = False
            policy.requests_active -= 1
            policy.cell.give(F_REQUESTS)
        if self.retrying:
            self.retrying = False
            policy.retries_active -= 1
            policy.cell.give(F_RETRIES)
        if self.waiting:
            self.waiting = False
            self.connector.unwait(user)

    cdef void log_begin(self, tuple names, const RequestView *v, const ForwardRules *rules):
        """Keep what the access log names a request by: (method, authority, target) as sent, and the client's
        request id field (b"" when the listener has none, None when the client sent none: ours is logged)."""
        cdef int i
        rid = b""
        if rules.request_id.len:
            i = find_field(v.base, v.fields, v.num_fields, rules.request_id.ptr, rules.request_id.len, 0)
            rid = field_value(v.base, &v.fields[i]).ptr[:v.fields[i].value_len] if i >= 0 else None
        self.log_fields = names + (rid,)

    cdef void log_answer(self, object sink, int endpoint, int status, unsigned long long bytes_in,
                         unsigned long long bytes_out, double now, int err):
        """The request is over: one access-log record (dataplane/access_log.py's Fields tuple) when `sink` is not
        None, and its span record when it was sampled (record_span). `err`: the ProxyError the proxy answered with,
        0 for an upstream's answer. The codecs call it only when the log is on or `span` is set."""
        if self.span:
            self.span = False
            self.record_span(endpoint, status, now, err)
        if sink is None:
            return
        method, authority, path, rid = self.log_fields or (b"", b"", b"", b"")
        routed = self.cluster >= 0 and self.connector is not None
        label = self.connector.cluster.labels[endpoint] if endpoint >= 0 and self.connector is not None else "-"
        if rid is None:
            rid = self.request_id[:32] if routed else b""
        client = self.peer[:self.peer_len]
        try:
            sink((method.decode("latin-1"), authority.decode("latin-1"), path.decode("latin-1"), status, bytes_in,
                  bytes_out, label, now - self.started, rid.decode("latin-1"), client.decode("latin-1"),
                  self.connector.cluster.name if routed else "", self.route, self.tries - 1 if self.tries > 1 else 0,
                  error_info(err).cause.decode("ascii") if err else "", self.trace_id(),
                  self.identity.decode("latin-1") if self.identity is not None else ""))
        except Exception:
            pass
        self.log_fields = None

    cdef void record_span(self, int endpoint, int status, double now, int err):
        """The spans of a sampled request, as tuples for the recorder (dataplane/tracing.py's SpanFields), which
        queues them for export off the request path: its last try's (when one reached an endpoint), then its own."""
        recorder = span_recorder()
        if recorder is None:
            return
        routed = self.cluster >= 0 and self.connector is not None
        if endpoint >= 0 and routed:
            self.record_try(endpoint, status, error_info(err).cause if err else b"", now)
        try:
            recorder((self.trace[TRACE_ID_AT:TRACE_ID_AT + 32], self.span_id[:16],
                      self.trace_parent[:16] if self.trace_kind == TRACE_CONTINUED else None,
                      self.method, status, self.route, self.connector.cluster.name if routed else "",
                      self.connector.cluster.labels[endpoint] if endpoint >= 0 and routed else "",
                      self.tries - 1 if self.tries > 1 else 0, error_info(err).cause if err else b"",
                      now - self.started, 0, now))
        except Exception:
            pass

    cdef void record_try(self, int endpoint, int status, bytes cause, double now) noexcept:
        """The span of the current try (the tries-th), child of the request's span: the parent id it sent upstream
        is its span id."""
        recorder = span_recorder()
        if recorder is None or self.connector is None:
            return
        try:
            recorder((self.trace[TRACE_ID_AT:TRACE_ID_AT + 32], self.trace[SPAN_ID_AT:SPAN_ID_AT + 16],
                      self.span_id[:16], self.method, status, self.route, self.connector.cluster.name,
                      self.connector.cluster.labels[endpoint] if endpoint >= 0 else "", self.tries - 1, cause,
                      max(now - self.try_began, 0.0), self.tries, now))
        except Exception:
            pass

    def trace_id(self) -> str:
        """The request's trace id (32 hex digits), or "" when it has no trace context."""
        return self.trace[TRACE_ID_AT:TRACE_ID_AT + 32].decode("ascii") if self.trace_kind != TRACE_NONE else ""

    # ---- sans-IO driving from Python: tests/core/test_exchange.py plays the codec with a fake clock ----

    def start(self, Router router not None, list connectors not None, bytes raw_head not None, double now, *,
              str peer="127.0.0.1", bint forwarded=True, bint trust_headers=True, str request_id="x-request-id",
              bint replayable=True, str identity=None, bint https=False,
              str identity_header="fastmesh-client-identity", str trace="propagate", double sample_rate=1.0) -> int:
        """begin + route_request + admit for an HTTP/1 request head, as a codec would: the ProxyError (0: none)."""
        cdef Head h
        cdef RequestView v
        cdef ForwardRules rules
        cdef int err
        view_parse(raw_head, &h, &v)
        address = peer.encode("ascii")
        self.set_peer(address, len(address))
        rid = request_id.lower().encode("ascii")
        rules.forwarded = forwarded
        rules.trust_headers = trust_headers
        rules.request_id = span_of(rid, len(rid))
        rules.https = https
        self.keep_identity = identity_header.lower().encode("ascii")
        rules_identity(&rules, self.keep_identity, len(self.keep_identity))
        self.set_identity(identity.encode() if identity is not None else None)
        rules.trace = TRACE_MODES[trace]
        rules.sample_max = sample_max(sample_rate)
        global _RULES_VERSION
        _RULES_VERSION += 1
        rules.version = _RULES_VERSION         # new rules each call: the own edits are listed again
        self.begin(now)
        err = self.route_request(router, connectors, &v, &rules, now)
        if err == PE_NONE:
            err = self.admit(replayable, v.method == 6, now)
        self.keep_rid = rid        # the request id edit's name points into it
        return err

    def pick(self) -> int:
        """The endpoint the connector would pick for the next connect of this request (no socket opened)."""
        return self.connector.pick(&self.ct)

    def connected_at(self, int endpoint, double now) -> None:
        self.connected(endpoint, now)

    def on_response(self, int endpoint, int status, double now, bint marked=False, int grpc_status=-1) -> int:
        """A response head; grpc_status >= 0: a gRPC answer whose grpc-status came with it (trailers-only)."""
        self.grpc_code = grpc_status
        return self.response(endpoint, status, marked, now)

    def on_try_failed(self, int endpoint, str why, double now, bint blame=True) -> int:
        return self.try_failed(endpoint, RETRY_TIMEOUT if why == "timeout" else RETRY_RESET, blame, now)

    def on_retry_due(self, double now) -> None:
        self.next_try(now)

    def on_wait_expired(self) -> int:
        return self.wait_expired()

    def finish(self) -> None:
        self.end(None)

    def budget_ms_at(self, double now) -> int:
        return self.budget_ms(now)

    def retried_value(self, int status, bint marked=False) -> int:
        return self.retried_mark(status, marked)

    @property
    def hash_key(self):
        """The request's consistent-hash key (hashed), or None when it has none."""
        return self.ct.key if self.ct.keyed else None

    @property
    def tried(self) -> int:
        return self.ct.tried

    def edits(self) -> tuple:
        """(request edits, response edits), each a list of (kind, name, value) in render order."""
        return _edit_list(&self.request_edits), _edit_list(&self.response_edits)


cdef list _edit_list(const EditList *e):
    cdef const Edit *x
    kinds = {EDIT_ADD: "add", EDIT_REMOVE: "remove", EDIT_ADD_ABSENT: "add_absent", EDIT_DEADLINE: "deadline"}
    out = []
    for i in range(e.n + e.route_n):
        x = edit_at(e, i)
        out.append((kinds[x.kind], x.name.ptr[:x.name.len], x.value.ptr[:x.value.len] if x.value.len else b""))
    return out


# ---- the same rules for `fastmesh explain` (no copies in the Python layer) ----

# A listener's tracing mode by name (ForwardRules.trace).
TRACE_MODES = {"off": TRACE_OFF, "propagate": TRACE_PROPAGATE, "start": TRACE_START}


def sample_max(double rate) -> int:
    """ForwardRules.sample_max for a sampling rate in [0, 1]: draws (never 0) at or below it are sampled."""
    if rate <= 0.0:
        return 0
    if rate >= 1.0:
        return 0xFFFFFFFFFFFFFFFF
    return int(rate * 18446744073709551616.0)


TIMEOUT_HEADER = TIMEOUT_FIELD[:19].decode("ascii")    # the deadline budget field, in ms, sent with each try

# The methods whose failed try may be sent again.
REPLAYABLE_METHODS = tuple(name for name, m in METHOD_IDS.items() if replayable_method(m))


def timeout_ms(bytes value not None) -> int:
    """A client's fastmesh-timeout-ms value as the exchange honours it: milliseconds, or -1 when it is not one."""
    return timeout_value(span_of(value, len(value)))


def grpc_status_of(bytes value not None) -> int:
    """A grpc-status field value as the exchange reads it (2, UNKNOWN, when it is not a number)."""
    return grpc_status_value(span_of(value, len(value)))


def grpc_timeout_ms(bytes value not None) -> int:
    """A grpc-timeout value as the exchange honours it: milliseconds (rounded up), or -1 when it is not one."""
    return grpc_timeout_value(span_of(value, len(value)))


def cookie_in(bytes value not None, bytes name not None):
    """The value of cookie `name` in one Cookie field value, as a consistent-hash key takes it; None if absent."""
    cdef Span out
    if _cookie(span_of(value, len(value)), name, len(name), &out):
        return out.ptr[:out.len]
    return None


# Verdicts by name, for Python callers (tests).
PASS, RETRY, ANSWER = V_PASS, V_RETRY, V_ANSWER
