"""Downstream HTTP/1.1 connections: read a request, route it, proxy it over a pooled upstream connection.

One exchange runs at a time per client connection; pipelined requests wait in the receive buffer, so answers
leave in request order. Each exchange:
  head      parse_request() over the receive buffer (offsets, no objects), router.match() -> cluster
  upstream  HttpPool.acquire(): an idle keep-alive connection or a new connect; a failed connect is retried on
            another endpoint (the request never reached a backend), a request with no body is replayed once
            when a reused keep-alive connection dies before the first response byte
  request   the head rewritten (hop-by-hop fields dropped, Via / X-Forwarded-* / request id / route fields
            added) into `reqhead`; the body passed through as it arrives, framed by BodyFrame (Content-Length
            or the chunked decoder, which validates every chunk and finds the end)
  response  parse_response(); 1xx passed on; the head rewritten the same way; the body passed through
  end       upstream back to the pool when both sides allow keep-alive; next request or close
A 101 answer to an Upgrade turns the connection into a TcpRelay (tcp/splice.pyx) with both sockets and any
bytes already buffered. Backpressure: a body moves only while the destination takes it and reading stops
while framed bytes wait, so a connection holds at most one receive buffer per side.

Errors answer once, in one place (respond_error): parse errors get their status (400/414/431/501/505) and
the connection closes; upstream failures get 502/503/504 with a `fastmesh-error` header naming the cause.
"""
cimport cython
from libc.stdint cimport uint32_t
from libc.string cimport memcmp, memcpy
from libc.stdio cimport snprintf

cdef extern from "<sys/ioctl.h>" nogil:
    enum:
        FIONREAD
    int ioctl(int fd, unsigned long request, ...)

from fastmesh._core.buffer cimport (
    RecvBuf, OutBuf, rb_read, rb_avail, rb_release_if_empty, rb_free, ob_add, ob_reserve, ob_flush, ob_pending,
    ob_free,
)
from fastmesh._core.includes.system cimport (
    close, send, errno, EAGAIN, MSG_NOSIGNAL, MSG_DONTWAIT, EPOLLIN, EPOLLOUT, EPOLLRDHUP,
    EPOLLERR, EPOLLHUP, EPOLLET, sockaddr_storage, sockaddr_in, sockaddr_in6, AF_INET, AF_INET6, inet_ntop,
)
from fastmesh._core.reactor cimport Reactor, Acceptor, BufferPool
from fastmesh._core.stats cimport (
    StatsBlock, HEADER_SLOTS, L_FIELDS, L_ACCEPTED, L_ACTIVE, L_BYTES_IN, L_BYTES_OUT, R_FIELDS, HIST_FIELDS,
    count_status, observe_ns, bump, bump_field,
)
from libc.stdlib cimport calloc, free
from fastmesh._core.codes cimport error_status, error_reason, ERR_HEADERS_TOO_LARGE
from fastmesh._core.errors cimport (
    ErrorInfo, error_info, connect_error, PE_BAD_REQUEST, PE_HEADER_TIMEOUT, PE_NO_ROUTE, PE_OVERLOADED,
    PE_NO_ENDPOINTS, PE_RESET, PE_BAD_RESPONSE, PE_RESPONSE_TIMEOUT, PE_DEADLINE_EXCEEDED,
)
from fastmesh._core.http1.parser cimport (
    Head, Limits, HeaderField, parse_request, parse_response, limits_init, METHOD_HEAD, METHOD_GET,
    METHOD_OPTIONS, METHOD_TRACE, METHOD_PUT, METHOD_DELETE, FIELD_OTHER, FIELD_CONNECTION, FIELD_KEEP_ALIVE,
    FIELD_PROXY_CONNECTION, FIELD_TE, FIELD_TRAILER, FIELD_UPGRADE, FIELD_PROXY_AUTHENTICATE,
    FIELD_PROXY_AUTHORIZATION, FIELD_TRANSFER_ENCODING, FIELD_CONTENT_LENGTH, find_head_end,
)
from fastmesh._core.http1.framing cimport (
    request_body, response_body, keep_alive, chunked_init, chunked_feed, BODY_NONE, BODY_LENGTH, BODY_CHUNKED,
    BODY_UNTIL_CLOSE, BODY_TUNNEL, CHUNK_DONE,
)
from fastmesh._core.http1.pool cimport (
    Upstream, UpstreamUser, HttpPool, UP_CONNECTING, HASH_NONE, HASH_HEADER, HASH_SOURCE,
)
from fastmesh._core.balance.hashing cimport hash_bytes
from fastmesh._core.upstream.connector cimport try_init, try_avoid, CONNECT_FULL
from fastmesh._core.policy cimport (
    ClusterPolicy, RETRY_RESET, RETRY_TIMEOUT, RETRY_5XX,
)
from fastmesh._core.router cimport Router, Span
from fastmesh._core.debug cimport debug_new, debug_free, DBG_DOWNSTREAM
from fastmesh._core.tcp.splice cimport TcpProxy, TcpRelay


cdef uint32_t DOWNSTREAM_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef int MAX_CONN_TOKENS = 16          # Connection header tokens honoured when dropping the fields they name
cdef double CLOSE_GRACE = 5.0          # seconds a closing connection gets to take its last answer
cdef Py_ssize_t SHORT_HEAD = 4096      # partial heads up to this size are re-parsed on every read
cdef Py_ssize_t COALESCE_MAX = 16384   # body bytes copied behind a head so both leave in one send

# The one transient head: parsed, used and forgotten within one call (a worker is single-threaded).
cdef Head SCRATCH

cdef bytes VIA = b"Via: 1.1 fastmesh\r\n"
cdef bytes XFP = b"X-Forwarded-Proto: http\r\n"
cdef bytes CONN_UPGRADE = b"Connection: upgrade\r\n"
cdef bytes CONN_CLOSE = b"Connection: close\r\n"
cdef bytes CONN_KEEP = b"Connection: keep-alive\r\n"
cdef bytes HEX = b"0123456789abcdef"
cdef bytes TIMEOUT_FIELD = b"fastmesh-timeout-ms: "     # the deadline budget, in ms, sent with each try
cdef bytes RETRIED_FIELD = b"fastmesh-retried"          # on a failed answer: a fastmesh already applied its retries
cdef int TIMEOUT_DIGITS = 9                              # fixed width, so a retry can rewrite it in place


cdef int find_field(const char *buf, Head *h, const char *lower, Py_ssize_t n) noexcept:
    """Index of the first field named `lower` (case-insensitive), or -1."""
    cdef int i
    cdef HeaderField *f
    for i in range(h.num_headers):
        f = &h.headers[i]
        if f.id == FIELD_OTHER and f.name_len == n and name_is(buf + f.name_off, n, lower, n):
            return i
    return -1


cdef int find_any_field(const char *buf, Head *h, const char *lower, Py_ssize_t n, int start) noexcept:
    """Index of the first field at or after `start` named `lower` (case-insensitive, known names too), or -1."""
    cdef int i
    cdef HeaderField *f
    for i in range(start, h.num_headers):
        f = &h.headers[i]
        if f.name_len == n and name_is(buf + f.name_off, n, lower, n):
            return i
    return -1


cdef bint cookie_value(const char *p, Py_ssize_t n, const char *name, Py_ssize_t m, const char **val,
                       Py_ssize_t *vlen) noexcept:
    """Find cookie `name` in a Cookie field value ("a=1; b=2")."""
    cdef Py_ssize_t i = 0, start, eq
    while i < n:
        while i < n and (p[i] == 32 or p[i] == 59):
            i += 1
        start = i
        eq = -1
        while i < n and p[i] != 59:
            if eq < 0 and p[i] == 61:
                eq = i
            i += 1
        if eq - start == m and eq >= 0:
            if m == 0 or memcmp(p + start, name, m) == 0:
                val[0] = p + eq + 1
                vlen[0] = i - eq - 1
                return True
    return False


cdef long long field_ms(const char *buf, HeaderField *f) noexcept:
    """A field value of 1 to 12 digits as a number, or -1."""
    cdef long long v = 0
    cdef uint32_t i
    cdef char c
    if f.value_len == 0 or f.value_len > 12:
        return -1
    for i in range(f.value_len):
        c = buf[f.value_off + i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


cdef inline bint name_is(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t m) noexcept:
    """Case-insensitive field-name comparison against a lowercase constant."""
    cdef Py_ssize_t i
    cdef char c
    if n != m:
        return False
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:
            c = c + 32
        if c != lower[i]:
            return False
    return True


cdef inline bint field_in_tokens(const char *name, Py_ssize_t n, const char **tok, Py_ssize_t *tlen,
                                 int ntok) noexcept:
    cdef int k
    cdef Py_ssize_t i
    cdef char a, b
    for k in range(ntok):
        if tlen[k] != n:
            continue
        for i in range(n):
            a = name[i]
            b = tok[k][i]
            if 65 <= a <= 90:
                a = a + 32
            if 65 <= b <= 90:
                b = b + 32
            if a != b:
                break
        else:
            return True
    return False


cdef int connection_tokens(const char *buf, Head *h, const char **tok, Py_ssize_t *tlen) noexcept:
    """The tokens of every Connection field: the names of further hop-by-hop fields to drop."""
    cdef int i, n = 0
    cdef HeaderField *f
    cdef const char *p
    cdef const char *end
    cdef const char *start
    for i in range(h.num_headers):
        f = &h.headers[i]
        if f.id != FIELD_CONNECTION:
            continue
        p = buf + f.value_off
        end = p + f.value_len
        while p < end and n < MAX_CONN_TOKENS:
            while p < end and (p[0] == 32 or p[0] == 9 or p[0] == 44):
                p += 1
            start = p
            while p < end and p[0] != 44 and p[0] != 32 and p[0] != 9:
                p += 1
            if p > start:
                tok[n] = start
                tlen[n] = p - start
                n += 1
    return n


cdef inline bint hop_by_hop(uint32_t fid, bint upgrading) noexcept:
    if fid == FIELD_OTHER:
        return False
    if fid == FIELD_UPGRADE:
        return not upgrading
    return (fid == FIELD_CONNECTION or fid == FIELD_KEEP_ALIVE or fid == FIELD_PROXY_CONNECTION
            or fid == FIELD_TE or fid == FIELD_TRAILER or fid == FIELD_PROXY_AUTHENTICATE
            or fid == FIELD_PROXY_AUTHORIZATION)


cdef inline bint replayable_method(int m) noexcept:
    return (m == METHOD_GET or m == METHOD_HEAD or m == METHOD_OPTIONS or m == METHOD_TRACE
            or m == METHOD_PUT or m == METHOD_DELETE)


cdef void frame_init(BodyFrame *f, int kind, long long length, const Limits *lim) noexcept:
    f.kind = kind
    f.length = length if length > 0 else 0
    f.remaining = f.length
    f.done = kind == BODY_NONE or (kind == BODY_LENGTH and length <= 0)
    f.dechunk = False
    f.skip = 0
    if kind == BODY_CHUNKED:
        chunked_init(&f.dec, lim, NULL)


cdef Py_ssize_t frame_take(BodyFrame *f, const char *p, Py_ssize_t n) noexcept:
    """How many of the n bytes at p belong to the body (passed on verbatim); < 0: a chunked-coding error."""
    cdef Py_ssize_t used, total = 0, off, dlen
    if f.done or n <= 0:
        return 0
    if f.kind == BODY_LENGTH:
        used = n if n < f.remaining else <Py_ssize_t>f.remaining
        f.remaining -= used
        if f.remaining == 0:
            f.done = True
        return used
    if f.kind == BODY_CHUNKED:
        while total < n:
            used = chunked_feed(&f.dec, p + total, n - total, &off, &dlen)
            if used < 0:
                return used
            if used == 0:
                break
            total += used
            if f.dec.state == CHUNK_DONE:
                f.done = True
                break
        return total
    return n   # BODY_UNTIL_CLOSE: everything until the upstream closes


cdef class HttpProxy(Acceptor):
    """Built by dataplane/ per http listener; the listener hands it accepted fds."""

    def __cinit__(self, Reactor reactor, str name, Router router, list pools, *, double header_timeout=10.0,
                  double idle_timeout=60.0, int max_request_line=8192, int max_header_bytes=65536,
                  int max_headers=100, bint forwarded_headers=True, str request_id_header="x-request-id",
                  access_log=None, bint trust_headers=True):
        cdef int size
        self.reactor = reactor
        self.name = name
        self.router = router
        self.pools = pools
        limits_init(&self.limits)
        self.limits.max_start_line = max_request_line
        self.limits.max_header_bytes = max_header_bytes
        self.limits.max_headers = max_headers
        limits_init(&self.resp_limits)
        # A receive buffer holds a whole head: start line and fields, with room to spare.
        size = max(reactor.buffers.size, max_request_line + max_header_bytes + 4096)
        self.buffers = BufferPool(256, size) if size > reactor.buffers.size else reactor.buffers
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.forwarded = forwarded_headers
        self.rid_name = request_id_header.lower().encode("ascii")
        self.access_log = access_log
        self.trust_headers = trust_headers
        self.head = None
        # Counters start in a private block; dataplane/stats.py moves them into the shared one before traffic.
        self.stats = StatsBlock(HEADER_SLOTS + L_FIELDS)
        self.counters = self.stats.region(HEADER_SLOTS, L_FIELDS)

    def __dealloc__(self):
        free(self.class_slots)
        free(self.hist_slots)

    def attach_stats(self, StatsBlock block, Py_ssize_t offset, dict requests, dict durations):
        """Count into block from now on: the listener's L_FIELDS slots at offset, and per cluster index the
        (listener, cluster) status classes (`requests`: index -> offset) and the cluster's durations."""
        cdef uint64_t *slots = block.region(offset, L_FIELDS)
        cdef int i, n = len(self.pools)
        if slots != self.counters:
            for i in range(L_FIELDS):
                slots[i] += self.counters[i]
                self.counters[i] = 0
        self.stats = block
        self.counters = slots
        free(self.class_slots)
        free(self.hist_slots)
        self.class_slots = <uint64_t **>calloc(max(n, 1), sizeof(uint64_t *))
        self.hist_slots = <uint64_t **>calloc(max(n, 1), sizeof(uint64_t *))
        if self.class_slots == NULL or self.hist_slots == NULL:
            raise MemoryError()
        self.stat_clusters = n
        for i in range(n):
            if i in requests:
                self.class_slots[i] = block.region(requests[i], R_FIELDS)
            if i in durations:
                self.hist_slots[i] = block.region(durations[i], HIST_FIELDS)

    cdef void count_answer(self, int cluster, int status, double seconds) noexcept:
        """One answered request into the shared counters (plain adds; nothing when not attached)."""
        if 0 <= cluster < self.stat_clusters:
            if self.class_slots[cluster] != NULL:
                count_status(self.class_slots[cluster], status)
            if self.hist_slots[cluster] != NULL and seconds >= 0:
                observe_ns(self.hist_slots[cluster], <uint64_t>(seconds * 1e9))

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept:
        cdef Downstream d = Downstream.__new__(Downstream)
        d.proxy = self
        d.fd = fd
        d.state = DS_HEAD
        d.deadline = self.reactor.now + self.header_timeout
        d.cluster = -1
        d.route = -1
        d.tmo_off = -1
        if peer.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>peer).sin_addr, d.peer, sizeof(d.peer))
        elif peer.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>peer).sin6_addr, d.peer, sizeof(d.peer))
        else:
            d.peer[0] = 0
        d.peer_len = len(<bytes>d.peer)
        d.next = self.head
        if self.head is not None:
            self.head.prev = d
        self.head = d
        self.active += 1
        bump_field(&self.accepted, 1)
        self.counters[L_ACTIVE] += 1
        bump(self.counters + L_ACCEPTED, 1)
        if self.reactor.add(fd, d, 0, DOWNSTREAM_EVENTS) < 0:
            d.close()

    cdef void unlink(self, Downstream d) noexcept:
        if d.prev is not None:
            d.prev.next = d.next
        else:
            self.head = d.next
        if d.next is not None:
            d.next.prev = d.prev
        d.prev = None
        d.next = None
        self.active -= 1
        self.counters[L_ACTIVE] -= 1

    cdef object tunnel_for(self, HttpPool pool):
        cdef TcpProxy t = pool.tunnel
        if t is None:
            t = TcpProxy(self.reactor, pool.cluster, self.name, 3600.0, True)
            self.reactor.add_sweeper(t)
            pool.tunnel = t
        return t

    def reconfigure(self, Router router, list pools, *, double header_timeout, double idle_timeout,
                    bint forwarded_headers, str request_id_header, access_log, bint trust_headers):
        """A reload: requests from now on use the new routes and pools; exchanges under way finish with the ones
        they started with (each holds its router and pool). Head limits stay as the listener was bound."""
        self.router = router
        self.pools = pools
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.forwarded = forwarded_headers
        self.rid_name = request_id_header.lower().encode("ascii")
        self.access_log = access_log
        self.trust_headers = trust_headers

    cdef void sweep(self, double now) noexcept:
        """Header, idle, connect, response and closing deadlines: a walk of the open connections."""
        cdef Downstream d = self.head
        cdef Downstream nxt
        while d is not None:
            nxt = d.next
            if d.state == DS_EXCHANGE:
                if d.total_deadline and now >= d.total_deadline and not d.resp_head_done:
                    d.respond_error(PE_DEADLINE_EXCEEDED, 0, d.req_done)
                    d.run()
                elif d.up is not None and d.up.state == UP_CONNECTING and now >= d.up.deadline:
                    d.up.fail(0)
                elif d.up is None and d.waiting and now >= d.deadline:
                    # Waited a whole try for a connection slot (max_connections): the cluster is saturated.
                    d.pool.policy.overloaded += 1
                    d.respond_error(PE_OVERLOADED, 0, d.req_done)
                    d.run()
                elif d.up is not None and not d.resp_head_done and now >= d.deadline:
                    try_avoid(&d.ct, d.up.endpoint)
                    d.report(d.up.endpoint, 0, True)
                    if d.may_retry(RETRY_TIMEOUT, 0):
                        d.retry()
                    elif d.total_deadline and d.deadline >= d.total_deadline - 0.001:
                        # This try had only what was left of the request's deadline.
                        d.respond_error(PE_DEADLINE_EXCEEDED, 0, d.req_done)
                        d.run()
                    else:
                        d.respond_error(PE_RESPONSE_TIMEOUT, 0, d.req_done)
                        d.run()
            elif now >= d.deadline:
                if d.state == DS_HEAD and rb_avail(&d.rbuf) > 0:
                    d.respond_error(PE_HEADER_TIMEOUT, 0, False)
                    d.run()
                else:
                    d.close()
            d = nxt

    def drain(self):
        """Stop keeping connections alive: idle ones close now, busy ones after their current answer."""
        cdef Downstream d = self.head
        cdef Downstream nxt
        self.draining = True
        while d is not None:
            nxt = d.next
            if d.state == DS_IDLE or (d.state == DS_HEAD and rb_avail(&d.rbuf) == 0):
                d.close()
            elif d.state == DS_EXCHANGE:
                d.client_keep = False
            d = nxt
        self.reactor.graveyard.clear()

    def close_all(self):
        while self.head is not None:
            self.head.close()
        for pool in self.pools:
            pool.close_idle()
            if pool.tunnel is not None:
                pool.tunnel.close_all()
        self.reactor.graveyard.clear()

    @property
    def status_classes(self):
        return {f"{i}xx": self.classes[i] for i in range(1, 6)}

    @property
    def tunnel_count(self):
        return sum(p.tunnel.active for p in self.pools if p.tunnel is not None)


@cython.final
cdef class Downstream(UpstreamUser):

    def __cinit__(self):
        if FASTMESH_DEBUG:
            debug_new(DBG_DOWNSTREAM)

    def __dealloc__(self):
        if FASTMESH_DEBUG:
            debug_free(DBG_DOWNSTREAM)

    # ---- events ----------------------------------------------------------------------------------

    cdef void on_events(self, uint32_t events, int side) noexcept:
        if self.state == DS_CLOSED:
            return
        if events & (EPOLLHUP | EPOLLERR):
            # Reset, or closed both ways: nothing can reach this client any more. (A half-close, EPOLLRDHUP
            # alone, is a client that still waits for its answer.)
            self.close()
            return
        if events & (EPOLLIN | EPOLLRDHUP):
            self.readable = True
            if events & EPOLLRDHUP:
                self.hangup = True
                if self.state == DS_EXCHANGE and not self.req_done and not self.body_can_finish():
                    # The client stopped sending before its request body was complete: it gave up.
                    self.close()
                    return
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
        self.run()

    cdef bint body_can_finish(self) noexcept:
        """After the client's FIN: whether the bytes it sent before it (buffered here or still queued in the
        socket) hold the rest of the request body. Chunked bodies are given the benefit of the doubt."""
        cdef int queued = 0
        if self.req_body.kind != BODY_LENGTH:
            return True
        if ioctl(self.fd, FIONREAD, &queued) < 0:
            return False
        return queued + rb_avail(&self.rbuf) >= self.req_body.remaining + self.req_ready

    cdef void upstream_ready(self, Upstream up) noexcept:
        if up is self.up:
            self.run()

    cdef void upstream_failed(self, Upstream up, int err) noexcept:
        """A connect failed or timed out: the request never reached a backend, so another endpoint may take it."""
        cdef int ep = up.endpoint
        if up is not self.up:
            up.pool.cluster.connect_failed(ep, err, up.pool.reactor.now)
            return
        self.pool.connect_failed(&self.ct, ep, err)
        self.drop_upstream(False)
        if self.take_upstream():
            self.run()
            return
        self.respond_error(connect_error(err), 0, self.req_done)
        self.run()

    # ---- the driver ------------------------------------------------------------------------------

    cdef void run(self) noexcept:
        cdef int r, rounds = 0
        while rounds < 32:
            rounds += 1
            if self.state == DS_HEAD or self.state == DS_IDLE:
                if self.read_request() <= 0:
                    return
            elif self.state == DS_EXCHANGE:
                if self.step_exchange() <= 0:
                    return
            elif self.state == DS_CLOSING or self.state == DS_UPGRADING:
                if not self.writable and ob_pending(&self.out):
                    return
                r = ob_flush(&self.out, self.fd)
                if r == 0:
                    self.writable = False
                    return
                if r > 0 and self.state == DS_UPGRADING:
                    self.upgrade()
                else:
                    self.close()
                return
            else:
                return
        # Fairness: a connection with more work (pipelined requests) continues on the next loop turn.
        self.proxy.reactor.again(self)

    cdef void on_again(self) noexcept:
        self.run()

    # ---- request head ----------------------------------------------------------------------------

    cdef int read_request(self) noexcept:
        """1 when an exchange started (or the state changed), 0 to wait for events, -1 when closed."""
        cdef Py_ssize_t n, avail, room
        cdef int r
        # Answers leave in order: the previous one must be gone before the next request starts.
        r = self.flush_out()
        if r <= 0:
            return r
        while True:
            avail = rb_avail(&self.rbuf)
            if avail > 0:
                if self.state == DS_IDLE:
                    self.state = DS_HEAD
                    self.deadline = self.proxy.reactor.now + self.proxy.header_timeout
                    self.head_scan = 0
                # A short partial head is parsed as it comes (errors show early); a long one only once its
                # blank line is there or the limits are passed, so a client trickling a big head byte by byte
                # cannot make us re-parse it from the start each time.
                if (avail > SHORT_HEAD
                        and find_head_end(self.rbuf.data + self.rbuf.start, avail, self.head_scan) < 0
                        and avail < self.proxy.limits.max_start_line + self.proxy.limits.max_header_bytes):
                    self.head_scan = avail
                    n = 0
                else:
                    n = parse_request(self.rbuf.data + self.rbuf.start, avail, &SCRATCH, &self.proxy.limits)
                if n > 0:
                    self.head_scan = 0
                    return self.begin_exchange(n)
                if n < 0:
                    self.respond_error(PE_BAD_REQUEST, <int>n, False)
                    return 1
            if not self.readable:
                rb_release_if_empty(&self.rbuf, self.proxy.buffers)
                return 0
            room = self.proxy.buffers.size - self.rbuf.end if self.rbuf.data != NULL else self.proxy.buffers.size
            n = rb_read(&self.rbuf, self.fd, self.proxy.buffers)
            if n > 0:
                bump_field(&self.proxy.bytes_in, <unsigned long long>n)
                if n < room and not self.hangup:
                    self.readable = False     # a short read emptied the socket; new bytes raise a new edge
                continue
            if n == 0:
                # The client closed: quietly between requests, and also mid-head (nobody to answer).
                self.close()
                return -1
            if n == -2:
                self.respond_error(PE_BAD_REQUEST, ERR_HEADERS_TOO_LARGE, False)
                return 1
            if errno == EAGAIN:
                self.readable = False
                rb_release_if_empty(&self.rbuf, self.proxy.buffers)
                return 0
            self.close()
            return -1

    cdef int begin_exchange(self, Py_ssize_t head_len) noexcept:
        cdef HttpProxy proxy = self.proxy
        cdef Head *h = &SCRATCH
        cdef const char *buf = self.rbuf.data + self.rbuf.start
        cdef long long length, ms
        cdef int kind, route, i
        cdef double now
        cdef ClusterPolicy policy
        self.started = proxy.reactor.now
        self.ex_in = head_len
        self.ex_out = 0
        self.status = 0
        self.req_method = h.method
        self.req_minor = h.minor_version
        self.req_upgrade = h.upgrade and h.conn_upgrade
        self.req_expect = h.expect_continue
        self.resp_started = False
        self.resp_head_done = False
        self.resp_done = False
        self.req_ready = 0
        self.resp_ready = 0
        kind = request_body(h, &length)
        if kind < 0:
            self.respond_error(PE_BAD_REQUEST, kind, False)
            return 1
        frame_init(&self.req_body, kind, length, &proxy.limits)
        self.req_done = self.req_body.done
        self.client_keep = keep_alive(h, kind) and not proxy.draining
        if proxy.access_log is not None:
            self.log_fields = self.describe(buf, h)
        self.router = proxy.router
        route = self.router.match(buf, h)
        if route < 0:
            self.rbuf.start += head_len
            self.respond_error(PE_NO_ROUTE, 0, self.req_done)
            return 1
        self.route = route
        self.cluster = self.router.cluster(route)
        self.pool = <HttpPool>proxy.pools[self.cluster]
        policy = self.pool.policy
        try_init(&self.ct)
        self.ct.keyed = self.pool.hash_kind != HASH_NONE and self.request_key(buf, h)
        now = proxy.reactor.now
        self.tries = 1
        self.retry_pending = False
        self.total_deadline = now + policy.timeout if policy.timeout > 0 else 0.0
        if proxy.trust_headers:
            i = find_field(buf, h, "fastmesh-timeout-ms", 19)
            if i >= 0:
                ms = field_ms(buf, &h.headers[i])
                if ms >= 0 and (self.total_deadline == 0.0 or now + ms / 1000.0 < self.total_deadline):
                    self.total_deadline = now + ms / 1000.0
        # A body that is already whole in the buffer can be sent again by a retry.
        self.body_mark = self.rbuf.start + head_len
        self.body_replayable = (kind == BODY_NONE or (kind == BODY_LENGTH
                                and self.rbuf.end - self.body_mark >= length))
        self.build_request_head(buf, h)
        self.rbuf.start += head_len
        self.state = DS_EXCHANGE
        if policy.requests_active >= policy.max_requests or (
                policy.adaptive is not None and policy.requests_active >= <long>policy.adaptive.limit):
            policy.overloaded += 1
            self.respond_error(PE_OVERLOADED, 0, self.req_done)
            return 1
        policy.requests_active += 1
        self.counted = True
        policy.budget.deposit(now)
        if self.total_deadline and now >= self.total_deadline:
            # The caller's budget is spent: sending the request could only waste a backend's time.
            self.respond_error(PE_DEADLINE_EXCEEDED, 0, self.req_done)
            return 1
        self.deadline = self.try_deadline()
        self.stamp_deadline()
        if not self.take_upstream() and not self.waiting:
            self.respond_error(PE_NO_ENDPOINTS, 0, self.req_done)
        return 1

    cdef bint request_key(self, const char *buf, Head *h) noexcept:
        """The consistent-hash key of the request; False when the request lacks it (then any endpoint does)."""
        cdef HttpPool pool = self.pool
        cdef const char *name = pool.hash_name
        cdef Py_ssize_t n = len(pool.hash_name)
        cdef const char *val
        cdef Py_ssize_t vlen
        cdef HeaderField *f
        cdef int i
        if pool.hash_kind == HASH_SOURCE:
            self.ct.key = hash_bytes(<const unsigned char *>self.peer, self.peer_len)
            return True
        if pool.hash_kind == HASH_HEADER:
            i = find_any_field(buf, h, name, n, 0)
            if i < 0:
                return False
            f = &h.headers[i]
            self.ct.key = hash_bytes(<const unsigned char *>buf + f.value_off, f.value_len)
            return True
        i = find_any_field(buf, h, "cookie", 6, 0)
        while i >= 0:
            f = &h.headers[i]
            if cookie_value(buf + f.value_off, f.value_len, name, n, &val, &vlen):
                self.ct.key = hash_bytes(<const unsigned char *>val, vlen)
                return True
            i = find_any_field(buf, h, "cookie", 6, i + 1)
        return False

    cdef void report(self, int ep, int status, bint failed) noexcept:
        """A try's outcome, for the latency-aware balancer and for failure accrual."""
        cdef HttpPool pool = self.pool
        cdef double now = self.proxy.reactor.now
        pool.cluster.balancer.observe(ep, now - self.try_started, status if status else 503)
        if pool.policy.adaptive is not None and not failed:
            pool.policy.adaptive.sample(now - self.try_started)
        if failed:
            pool.cluster.request_failed(ep, now)
        else:
            pool.cluster.request_succeeded(ep)

    cdef double try_deadline(self) noexcept:
        """When the current try's response head must have arrived."""
        cdef double t = self.proxy.reactor.now + self.pool.policy.per_try_timeout
        if self.total_deadline and self.total_deadline < t:
            return self.total_deadline
        return t

    cdef void stamp_deadline(self) noexcept:
        """Write the time the next hop may take (ms) into reqhead's fastmesh-timeout-ms field: what is left of this
        try's deadline now, less 1 ms for the transit and queueing no hop can measure, so the budget shrinks at
        every hop even when a hop itself takes microseconds."""
        cdef long long ms
        cdef int i
        if self.tmo_off < 0:
            return
        self.proxy.reactor.refresh_now()
        ms = <long long>((self.deadline - self.proxy.reactor.now) * 1000.0) - 1
        if ms < 0:
            ms = 0
        if ms > 999999999:
            ms = 999999999
        for i in range(TIMEOUT_DIGITS - 1, -1, -1):
            self.reqhead.data[self.tmo_off + i] = <char>(48 + ms % 10)
            ms //= 10

    cdef object describe(self, const char *buf, Head *h):
        """(method, authority, path) for the access log; built only when the log is on."""
        cdef HeaderField *f
        method = buf[h.method_off:h.method_off + h.method_len]
        target = buf[h.target_off:h.target_off + h.target_len]
        authority = b""
        if h.host_index >= 0:
            f = &h.headers[h.host_index]
            authority = buf[f.value_off:f.value_off + f.value_len]
        return (method, authority, target)

    # ---- upstream --------------------------------------------------------------------------------

    cdef bint take_upstream(self) noexcept:
        """Acquire a connection for the current request; False when none (or self.waiting: queued or answered)."""
        cdef int outcome
        cdef Upstream up = self.pool.acquire(self, &self.ct, &outcome)
        self.try_started = self.proxy.reactor.now
        if up is None:
            if outcome == CONNECT_FULL:
                # Circuit breaker: every connection slot is taken. Wait for one, or refuse at once.
                if not self.pool.wait(self):
                    self.respond_error(PE_OVERLOADED, 0, self.req_done)
                self.waiting = True     # queued, or answered: the caller must not answer again
            return False
        self.up = up
        self.reqhead_sent = 0
        self.pool.cluster.upstream_start(up.endpoint)
        return True

    cdef void slot_free(self) noexcept:
        """A connection slot opened up while this request waited for one."""
        self.waiting = False
        if self.state != DS_EXCHANGE or self.up is not None:
            return
        if not self.take_upstream() and not self.waiting:
            self.respond_error(PE_NO_ENDPOINTS, 0, self.req_done)
        self.run()

    cdef bint may_retry(self, int cls, int status) noexcept:
        """Whether the failed try may be tried again: policy, replayability, limits, deadline and budget."""
        cdef ClusterPolicy policy = self.pool.policy
        cdef double now = self.proxy.reactor.now
        if self.tries >= policy.attempts or self.resp_head_done:
            return False
        if status:
            if not policy.retryable_status(status):
                return False
        elif not (policy.retry_on & cls):
            return False
        if not self.body_replayable or not replayable_method(self.req_method) or self.req_upgrade:
            return False
        if policy.retries_active >= policy.max_retries:
            policy.overloaded += 1
            return False
        if self.total_deadline and now + 0.001 >= self.total_deadline:
            return False
        return policy.budget.try_withdraw(now)

    cdef void retry(self) noexcept:
        """Send the request again (another endpoint when there is one), after a jittered backoff."""
        cdef ClusterPolicy policy = self.pool.policy
        cdef double delay
        cdef unsigned long long r
        self.drop_upstream(False)
        self.tries += 1
        self.ct.attempts = 0
        policy.retried += 1
        if not self.retrying:
            self.retrying = True
            policy.retries_active += 1
        self.resp_started = False
        self.reqhead_sent = 0
        self.rbuf.start = self.body_mark
        frame_init(&self.req_body, self.req_body.kind, self.req_body.length, &self.proxy.limits)
        self.req_done = self.req_body.done
        self.req_ready = 0
        delay = policy.backoff_base * (1 << min(self.tries - 2, 16))
        if delay > policy.backoff_max:
            delay = policy.backoff_max
        r = self.pool.cluster.balancer.next_random()
        delay = delay * ((r >> 11) * (1.0 / 9007199254740992.0))     # full jitter: uniform in [0, delay)
        self.retry_pending = True
        self.proxy.reactor.loop.call_later(delay, self._retry_now)

    def _retry_now(self):
        self.retry_pending = False
        if self.state != DS_EXCHANGE or self.up is not None or self.resp_done:
            return
        self.deadline = self.try_deadline()
        self.stamp_deadline()
        if not self.take_upstream() and not self.waiting:
            self.respond_error(PE_NO_ENDPOINTS, 0, self.req_done)
        self.run()

    cdef void end_request(self) noexcept:
        """The request left the cluster's books: in-flight and retry gauges go down once."""
        cdef ClusterPolicy policy
        if self.pool is None:
            return
        policy = self.pool.policy
        if self.counted:
            self.counted = False
            policy.requests_active -= 1
        if self.retrying:
            self.retrying = False
            policy.retries_active -= 1
        if self.waiting:
            self.waiting = False
            self.pool.unwait(self)

    cdef void drop_upstream(self, bint reuse) noexcept:
        cdef Upstream up = self.up
        if up is None:
            return
        self.up = None
        self.pool.cluster.upstream_end(up.endpoint)
        if reuse:
            self.pool.release(up)
        elif self.resp_done:
            up.close()
        else:
            up.abort()

    # ---- the exchange ----------------------------------------------------------------------------

    cdef int step_exchange(self) noexcept:
        """Move whatever can move; 1 when the exchange ended (state changed), 0 to wait, -1 when closed."""
        cdef Upstream up = self.up
        cdef Py_ssize_t n
        cdef int r
        if up is None:
            return 0
        if up.state == UP_CONNECTING:
            return 0
        # 1. the request head
        if self.reqhead_sent < self.reqhead.len:
            if up.writable:
                n = send(up.fd, self.reqhead.data + self.reqhead_sent, self.reqhead.len - self.reqhead_sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT)
                if n > 0:
                    self.reqhead_sent += n
                    if self.reqhead_sent < self.reqhead.len:
                        up.writable = False
                elif errno == EAGAIN:
                    up.writable = False
                else:
                    return self.upstream_lost()
        # 2. the request body
        if self.reqhead_sent == self.reqhead.len and not self.req_done:
            r = self.pump_body(&self.rbuf, self.fd, &self.readable, self.hangup, up.fd, &up.writable, NULL,
                               &self.req_body, &self.req_ready, True)
            if r == 1:
                self.req_done = True
            elif r == -1:
                # The client went away mid-body: nothing to answer, and the upstream is mid-message.
                self.close()
                return -1
            elif r == -2:
                return self.upstream_lost()
            elif r == -3:
                self.respond_error(PE_BAD_REQUEST, 0, False)
                return 1
        # 3. the response head
        if not self.resp_head_done:
            r = self.read_response_head()
            if self.state != DS_EXCHANGE:
                return 1
            if ob_pending(&self.out) and self.writable:
                # An interim answer (100 Continue) must reach the client now: it may be waiting for it.
                if ob_flush(&self.out, self.fd) == 0:
                    self.writable = False
            if r <= 0:
                return r
            if not self.resp_head_done:
                return 1         # a replay or retry started on another connection: run again
            up = self.up
        # 4. the response body
        if not self.resp_done:
            r = self.pump_body(&up.rbuf, up.fd, &up.readable, up.hangup, self.fd, &self.writable, &self.out,
                               &self.resp_body, &self.resp_ready, False)
            if r == 1:
                self.resp_done = True
            elif r == -1 or r == -3:
                # The upstream broke mid-body: the client got a head already, so only a close can tell it.
                self.pool.cluster.request_failed(up.endpoint, self.proxy.reactor.now)
                self.close()
                return -1
            elif r == -2:
                self.close()
                return -1
        if self.resp_done:
            r = self.flush_out()
            if r <= 0:
                return r
            return self.finish_exchange()
        return 0

    cdef int flush_out(self) noexcept:
        """Send what `out` holds: 1 when it is empty, 0 when the socket is full (EPOLLOUT will come back), -1 when
        the client is gone (the connection is closed)."""
        cdef int r
        if not ob_pending(&self.out):
            return 1
        if not self.writable:
            return 0
        r = ob_flush(&self.out, self.fd)
        if r < 0:
            self.close()
            return -1
        if r == 0:
            self.writable = False
        return r

    cdef int upstream_lost(self) noexcept:
        """The upstream connection failed before the response head: replay or answer 502."""
        cdef Upstream up = self.up
        cdef int ep = up.endpoint
        cdef bint was_reused = up.reused
        try_avoid(&self.ct, ep)
        if not (was_reused and not self.resp_started):
            self.report(ep, 0, True)
        if (was_reused and not self.resp_started and self.req_body.kind == BODY_NONE
                and replayable_method(self.req_method)):
            # A keep-alive connection the server had already closed: the request is whole in reqhead.
            self.drop_upstream(False)
            self.reqhead_sent = 0
            self.ct.attempts = 0         # a free replay: the request never reached a live server
            if self.take_upstream() or self.waiting:
                return 1
            self.respond_error(PE_RESET, 0, self.req_done)
            return 1
        if self.may_retry(RETRY_RESET, 0):
            self.retry()
            return 0
        self.drop_upstream(False)
        self.respond_error(PE_RESET, 0, self.req_done)
        return 1

    cdef int read_response_head(self) noexcept:
        cdef Upstream up = self.up
        cdef Py_ssize_t n, room
        while True:
            if rb_avail(&up.rbuf) > 0:
                n = parse_response(up.rbuf.data + up.rbuf.start, rb_avail(&up.rbuf), &SCRATCH,
                                   &self.proxy.resp_limits)
                if n > 0:
                    if self.on_response_head(n) < 0:
                        return 1
                    if self.resp_head_done or self.state != DS_EXCHANGE:
                        return 1
                    continue
                if n < 0:
                    self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
                    return 1
            if not up.readable:
                return 0
            room = self.proxy.reactor.buffers.size - up.rbuf.end if up.rbuf.data != NULL \
                else self.proxy.reactor.buffers.size
            n = rb_read(&up.rbuf, up.fd, self.proxy.reactor.buffers)
            if n > 0:
                self.resp_started = True
                if n < room and not up.hangup:
                    up.readable = False
                continue
            if n == -2:
                self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
                return 1
            if n < 0 and errno == EAGAIN:
                up.readable = False
                return 0
            # EOF or reset before a whole head.
            if self.resp_started:
                self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
                return 1
            return self.upstream_lost()

    cdef int on_response_head(self, Py_ssize_t head_len) noexcept:
        cdef Head *h = &SCRATCH
        cdef Upstream up = self.up
        cdef const char *buf = up.rbuf.data + up.rbuf.start
        cdef long long length
        cdef int kind, status = h.status
        if 100 <= status < 200 and status != 101:
            # Interim answers: 100 only to a client that asked for it; 102/103 pass on.
            if status != 100 or self.req_expect:
                self.build_response_head(buf, h, False)
            up.rbuf.start += head_len
            return 0
        self.report(up.endpoint, status, status >= 500)
        if (status >= 500 and self.pool.policy.retryable_status(status)
                and find_field(buf, h, RETRIED_FIELD, len(RETRIED_FIELD)) < 0):
            # (An answer that says a fastmesh further down already retried is never retried again.)
            try_avoid(&self.ct, up.endpoint)
            if self.may_retry(RETRY_5XX, status):
                self.retry()
                return -1
        kind = response_body(h, self.req_method, self.req_upgrade, &length)
        if kind < 0:
            self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
            return -1
        self.status = status
        frame_init(&self.resp_body, kind, length, &self.proxy.resp_limits)
        self.up_keep = keep_alive(h, kind)
        if kind == BODY_UNTIL_CLOSE:
            self.client_keep = False
        elif kind == BODY_CHUNKED and self.req_minor == 0:
            # An HTTP/1.0 client knows no chunked coding: send the data alone and end it with the close.
            self.resp_body.dechunk = True
            self.client_keep = False
        if kind == BODY_TUNNEL:
            self.build_response_head(buf, h, True)
            up.rbuf.start += head_len
            self.resp_head_done = True
            self.state = DS_UPGRADING
            return -1
        self.build_response_head(buf, h, False)
        up.rbuf.start += head_len
        self.resp_head_done = True
        return 0

    cdef int pump_body(self, RecvBuf *src, int sfd, bint *s_readable, bint s_hangup, int dfd, bint *d_writable,
                       OutBuf *dpend, BodyFrame *f, Py_ssize_t *ready, bint request) noexcept:
        """Pass a body from src to dfd: 1 done, 0 blocked, -1 source closed/failed early, -2 destination
        failed, -3 framing error. The destination's queued head (dpend) goes first."""
        cdef Py_ssize_t n, avail, room, off, dlen
        cdef BufferPool pool = self.proxy.buffers if request else self.proxy.reactor.buffers
        cdef int r
        while True:
            if dpend != NULL and ob_pending(dpend):
                if not d_writable[0]:
                    return 0
                # A head and the body bytes that came with it leave in one send (one segment): sent apart,
                # the client waits for a second packet. Only small bodies are copied; big ones stream.
                if ready[0] == 0 and not f.dechunk and not f.done and src.data != NULL:
                    avail = src.end - src.start
                    if 0 < avail <= COALESCE_MAX:
                        n = frame_take(f, src.data + src.start, avail)
                        if n < 0:
                            return -3
                        ready[0] = n
                if 0 < ready[0] <= COALESCE_MAX and not f.dechunk:
                    ob_add(dpend, src.data + src.start, ready[0])
                    src.start += ready[0]
                    if request:
                        self.ex_in += ready[0]
                    else:
                        self.ex_out += ready[0]
                    ready[0] = 0
                r = ob_flush(dpend, dfd)
                if r < 0:
                    return -2
                if r == 0:
                    d_writable[0] = False
                    return 0
            if ready[0] > 0:
                if not d_writable[0]:
                    return 0
                n = send(dfd, src.data + src.start, ready[0], MSG_NOSIGNAL | MSG_DONTWAIT)
                if n > 0:
                    src.start += n
                    ready[0] -= n
                    if request:
                        self.ex_in += n
                    else:
                        self.ex_out += n
                    if ready[0] > 0:
                        d_writable[0] = False
                    else:
                        src.start += f.skip
                        f.skip = 0
                    continue
                if n < 0 and errno == EAGAIN:
                    d_writable[0] = False
                    return 0
                return -2
            if f.done:
                return 1
            avail = src.end - src.start if src.data != NULL else 0
            if avail > 0 and f.dechunk:
                n = chunked_feed(&f.dec, src.data + src.start, avail, &off, &dlen)
                if n < 0:
                    return -3
                if f.dec.state == CHUNK_DONE:
                    f.done = True
                if n > 0:
                    # Drop the framing around the data span; send the span alone.
                    src.start += off
                    ready[0] = dlen
                    f.skip = n - off - dlen
                    if dlen == 0:
                        src.start += f.skip
                        f.skip = 0
                    continue
            elif avail > 0:
                n = frame_take(f, src.data + src.start, avail)
                if n < 0:
                    return -3
                if n > 0:
                    ready[0] = n
                    continue
                if f.done:
                    return 1
            if not s_readable[0]:
                if not request:
                    rb_release_if_empty(src, pool)
                return 0
            room = pool.size - src.end if src.data != NULL else pool.size
            n = rb_read(src, sfd, pool)
            if n > 0:
                if request:
                    bump_field(&self.proxy.bytes_in, <unsigned long long>n)
                if n < room and not s_hangup:
                    s_readable[0] = False
                continue
            if n == 0:
                if f.kind == BODY_UNTIL_CLOSE:
                    f.done = True
                    return 1
                return -1
            if n == -2:
                return -3
            if errno == EAGAIN:
                s_readable[0] = False
                if not request:
                    rb_release_if_empty(src, pool)
                return 0
            return -1

    cdef int finish_exchange(self) noexcept:
        cdef HttpProxy proxy = self.proxy
        cdef Upstream up = self.up
        cdef int cls
        endpoint = up.endpoint if up is not None else -1
        if not self.req_done:
            # The upstream answered before the request body ended: the next request's start is unknown.
            self.client_keep = False
        self.drop_upstream(self.up_keep and self.req_done)
        self.end_request()
        bump_field(&proxy.requests, 1)
        cls = self.status // 100
        if 1 <= cls <= 5:
            bump_field(&proxy.classes[cls], 1)
        bump_field(&proxy.bytes_out, self.ex_out)
        bump(proxy.counters + L_BYTES_IN, self.ex_in)
        bump(proxy.counters + L_BYTES_OUT, self.ex_out)
        proxy.count_answer(self.cluster, self.status, proxy.reactor.now - self.started)
        if proxy.access_log is not None:
            self.log_request(endpoint)
        self.up_keep = False
        if self.client_keep:
            self.state = DS_IDLE
            self.deadline = proxy.reactor.now + proxy.idle_timeout
            rb_release_if_empty(&self.rbuf, proxy.buffers)
        else:
            self.state = DS_CLOSING
            self.deadline = proxy.reactor.now + CLOSE_GRACE
        return 1

    cdef void log_request(self, int endpoint):
        proxy = self.proxy
        method, authority, path = self.log_fields or (b"", b"", b"")
        label = self.pool.cluster.labels[endpoint] if endpoint >= 0 and self.pool is not None else "-"
        try:
            proxy.access_log((method.decode("latin-1"), authority.decode("latin-1"), path.decode("latin-1"),
                              self.status, self.ex_in, self.ex_out, label,
                              proxy.reactor.now - self.started))
        except Exception:
            pass
        self.log_fields = None

    # ---- heads -----------------------------------------------------------------------------------

    cdef void build_request_head(self, const char *buf, Head *h) noexcept:
        cdef HttpProxy proxy = self.proxy
        cdef Router router = self.router
        cdef OutBuf *o = &self.reqhead
        cdef HeaderField *f
        cdef const char *tok[16]
        cdef Py_ssize_t tlen[16]
        cdef int ntok = 0, i, route = self.route
        cdef Py_ssize_t n, cap
        cdef Span block
        cdef bint removes = router.removes_any(route)
        cdef bint has_rid = False
        cdef bint seen_cl = False
        cdef bint upgrading = self.req_upgrade
        cdef const char *rid = proxy.rid_name
        cdef Py_ssize_t rid_len = len(proxy.rid_name)
        cdef char idbuf[32]
        o.off = 0
        o.len = 0
        ob_add(o, buf + h.method_off, h.method_len)
        ob_add(o, " ", 1)
        cap = h.target_len + router.max_growth + 16
        if ob_reserve(o, cap) == 0:
            n = router.rewrite_target(route, buf, h, o.data + o.len, cap)
            if n > 0:
                o.len += n
        ob_add(o, " HTTP/1.1\r\n", 11)
        if h.num_headers and h.seen & (1 << FIELD_CONNECTION):
            ntok = connection_tokens(buf, h, tok, tlen)
        for i in range(h.num_headers):
            f = &h.headers[i]
            if hop_by_hop(f.id, upgrading):
                continue
            if f.id == FIELD_CONTENT_LENGTH:
                if seen_cl:
                    continue     # identical repeats were merged by the parser: send one
                seen_cl = True
            if f.id == FIELD_OTHER:
                if ntok and field_in_tokens(buf + f.name_off, f.name_len, tok, tlen, ntok):
                    continue
                if removes and router.removes(route, buf + f.name_off, f.name_len):
                    continue
                if proxy.forwarded and name_is(buf + f.name_off, f.name_len, "x-forwarded-proto", 17):
                    continue
                if name_is(buf + f.name_off, f.name_len, "fastmesh-timeout-ms", 19):
                    continue     # replaced by the budget left for this hop, below
                if rid_len and name_is(buf + f.name_off, f.name_len, rid, rid_len):
                    has_rid = True
            # The field line as received ("Name: value"), one copy.
            ob_add(o, buf + f.name_off, f.value_off + f.value_len - f.name_off)
            ob_add(o, "\r\n", 2)
        if upgrading:
            ob_add(o, CONN_UPGRADE, len(CONN_UPGRADE))
        if proxy.forwarded:
            ob_add(o, "X-Forwarded-For: ", 17)
            ob_add(o, self.peer, self.peer_len)
            ob_add(o, "\r\n", 2)
            ob_add(o, XFP, len(XFP))
            ob_add(o, VIA, len(VIA))
        if rid_len and not has_rid:
            self.random_id(idbuf)
            ob_add(o, rid, rid_len)
            ob_add(o, ": ", 2)
            ob_add(o, idbuf, 32)
            ob_add(o, "\r\n", 2)
        block = router.add_request_headers(route)
        if block.len > 0:
            ob_add(o, block.ptr, block.len)
        ob_add(o, TIMEOUT_FIELD, len(TIMEOUT_FIELD))
        self.tmo_off = o.len
        ob_add(o, "000000000\r\n", TIMEOUT_DIGITS + 2)
        ob_add(o, "\r\n", 2)

    cdef void random_id(self, char *out) noexcept:
        """32 hex digits from the balancer's xorshift generator: unique enough for tracing, no syscall."""
        cdef unsigned long long r
        cdef int i, j
        cdef const char *hexd = HEX
        for i in range(2):
            r = self.pool.cluster.balancer.next_random()
            for j in range(16):
                out[i * 16 + j] = hexd[(r >> (4 * j)) & 15]

    cdef void add_retried(self, OutBuf *o) noexcept:
        """Mark a failed answer: this hop applied its retry policy, so hops further up must not retry it."""
        cdef char line[40]
        cdef int n = snprintf(line, sizeof(line), "fastmesh-retried: %d\r\n", self.tries - 1 if self.tries else 0)
        ob_add(o, line, n)

    cdef void build_response_head(self, const char *buf, Head *h, bint tunnel) noexcept:
        cdef HttpProxy proxy = self.proxy
        cdef OutBuf *o = &self.out
        cdef HeaderField *f
        cdef const char *tok[16]
        cdef Py_ssize_t tlen[16]
        cdef int ntok = 0, i
        cdef Span block
        cdef char line[16]
        # "HTTP/1.1 NNN " by hand: snprintf showed up in the profile (the parser guarantees 100 <= status <= 599).
        memcpy(line, b"HTTP/1.1 ", 9)
        line[9] = <char>(48 + h.status // 100)
        line[10] = <char>(48 + (h.status // 10) % 10)
        line[11] = <char>(48 + h.status % 10)
        line[12] = 32
        ob_add(o, line, 13)
        ob_add(o, buf + h.reason_off, h.reason_len)
        ob_add(o, "\r\n", 2)
        if h.num_headers and h.seen & (1 << FIELD_CONNECTION):
            ntok = connection_tokens(buf, h, tok, tlen)
        for i in range(h.num_headers):
            f = &h.headers[i]
            if hop_by_hop(f.id, tunnel):
                continue
            if f.id == FIELD_OTHER and ntok and field_in_tokens(buf + f.name_off, f.name_len, tok, tlen, ntok):
                continue
            if f.id == FIELD_TRANSFER_ENCODING and self.resp_body.dechunk:
                continue
            ob_add(o, buf + f.name_off, f.value_off + f.value_len - f.name_off)
            ob_add(o, "\r\n", 2)
        if h.status >= 200 or h.status == 101:
            if self.route >= 0:
                block = self.router.add_response_headers(self.route)
                if block.len > 0:
                    ob_add(o, block.ptr, block.len)
            if proxy.forwarded:
                ob_add(o, VIA, len(VIA))
            if h.status >= 500 and find_field(buf, h, RETRIED_FIELD, len(RETRIED_FIELD)) < 0:
                self.add_retried(o)
            if tunnel:
                ob_add(o, CONN_UPGRADE, len(CONN_UPGRADE))
            elif not self.client_keep:
                ob_add(o, CONN_CLOSE, len(CONN_CLOSE))
            elif self.req_minor == 0:
                ob_add(o, CONN_KEEP, len(CONN_KEEP))
        ob_add(o, "\r\n", 2)

    # ---- endings ---------------------------------------------------------------------------------

    cdef void respond_error(self, int err, int code, bint keep) noexcept:
        """Answer the current request with proxy error `err` (errors.pyx's table; for PE_BAD_REQUEST the parse
        code, when there is one, picks the status); keep the connection only when allowed."""
        cdef HttpProxy proxy = self.proxy
        cdef const ErrorInfo *e = error_info(err)
        cdef int status = e.status
        cdef const char *reason = e.reason
        cdef int cls
        cdef char line[160]
        cdef char body[128]
        cdef int n, blen
        if err == PE_BAD_REQUEST and code < 0:
            status = error_status(code)
            reason = error_reason(code)
        cls = status // 100
        if self.up is not None:
            endpoint = self.up.endpoint
        else:
            endpoint = -1
        self.drop_upstream(False)
        if self.resp_head_done:
            self.close()
            return
        keep = keep and self.client_keep and self.req_done
        if err == PE_NO_ROUTE:
            blen = snprintf(body, sizeof(body), "no route for this request\n")
        elif err == PE_BAD_REQUEST:
            blen = snprintf(body, sizeof(body), "%s\n", reason)
        else:
            blen = snprintf(body, sizeof(body), "%s: %s\n", reason, e.cause)
        n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                     "fastmesh-error: %s\r\n%s", status, reason, blen, e.cause, "" if keep else "connection: close\r\n")
        ob_add(&self.out, line, n)
        if status >= 500:
            self.add_retried(&self.out)
        ob_add(&self.out, "\r\n", 2)
        self.end_request()
        if self.req_method != METHOD_HEAD or self.state != DS_EXCHANGE:
            ob_add(&self.out, body, blen)
        self.status = status
        bump_field(&proxy.requests, 1)
        if 1 <= cls <= 5:
            bump_field(&proxy.classes[cls], 1)
        if self.route >= 0 and self.state == DS_EXCHANGE:
            proxy.count_answer(self.cluster, status, proxy.reactor.now - self.started)
        if proxy.access_log is not None:
            self.log_request(endpoint)
        self.resp_head_done = False
        self.resp_done = True
        if keep:
            self.state = DS_IDLE
            self.deadline = proxy.reactor.now + proxy.idle_timeout
        else:
            self.state = DS_CLOSING
            self.deadline = proxy.reactor.now + CLOSE_GRACE
            self.client_keep = False

    cdef void upgrade(self) noexcept:
        """The 101 answer is out: hand both sockets and any buffered bytes to a TCP relay."""
        cdef HttpProxy proxy = self.proxy
        cdef Upstream up = self.up
        cdef TcpProxy tunnel = <TcpProxy>proxy.tunnel_for(self.pool)
        cdef int dfd = self.fd, ufd = up.fd
        self.up = None
        self.fd = -1
        up.fd = -1
        self.pool.active -= 1
        TcpRelay.adopt(tunnel, dfd, ufd, up.endpoint, &self.rbuf, &up.rbuf)
        up.close()
        self.close()

    cdef void close(self) noexcept:  # no-cython-lint
        cdef HttpProxy proxy = self.proxy
        if self.state == DS_CLOSED:
            return
        self.state = DS_CLOSED
        self.drop_upstream(False)
        self.end_request()
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        rb_free(&self.rbuf, proxy.buffers)
        ob_free(&self.out)
        ob_free(&self.reqhead)
        self.log_fields = None
        proxy.reactor.bury(self)
        proxy.unlink(self)
