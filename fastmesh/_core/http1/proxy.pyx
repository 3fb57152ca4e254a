"""Per http listener: the HttpProxy dataplane/ builds. It accepts client connections into Downstreams
(http1/conn.pyx), sweeps their deadlines, and is reconfigured, drained and closed from the Python layer.

Deadlines swept a few times a second: a request head must arrive within header_timeout (else 408), an idle
keep-alive connection closes after idle_timeout; for a request in flight, its deadline (504 deadline
exceeded), a pending connect (a connect timeout fails over), a wait for a connection slot (503 overloaded
after a whole try) and the try's response head (the exchange retries or answers 504). The same walk has idle
keep-alive connections give back their output buffers and their exchange.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport strlen, memcpy

from fastmesh._core.buffer cimport rb_avail
from fastmesh._core.includes.system cimport (
    sockaddr_storage, sockaddr_in, sockaddr_in6, AF_INET, AF_INET6, inet_ntop,
)
from fastmesh._core.reactor cimport Reactor, BufferPool
from fastmesh._core.stats cimport (
    StatsBlock, HEADER_SLOTS, L_FIELDS, L_ACCEPTED, L_ACTIVE, R_FIELDS, HIST_FIELDS, bump, bump_field,
)
from fastmesh._core.errors cimport PE_HEADER_TIMEOUT, PE_DEADLINE_EXCEEDED, PE_BODY_TIMEOUT
from fastmesh._core.http1.conn cimport (
    Front, Downstream, DS_HEAD, DS_IDLE, DS_EXCHANGE, DS_BRIDGED, DS_HANDSHAKE, downstream_events,
)
from fastmesh._core.tls.context cimport TlsServer, tls_alloc, tls_accept
from fastmesh._core.http1.parser cimport limits_init
from fastmesh._core.http1.pool cimport UP_CONNECTING
from fastmesh._core.router cimport Router
from fastmesh._core.tracing cimport TRACE_PROPAGATE

from fastmesh._core.exchange import TRACE_MODES, sample_max


cdef class HttpProxy(Front):
    """Built by dataplane/ per http listener; the listener hands it accepted fds."""

    def __cinit__(self, Reactor reactor, str name, Router router, list pools, *, double header_timeout=10.0,
                  double idle_timeout=60.0, int max_request_line=8192, int max_header_bytes=65536,
                  int max_headers=100, bint forwarded_headers=True, str request_id_header="x-request-id",
                  access_log=None, bint trust_headers=True, double body_timeout=60.0, TlsServer tls=None,
                  str identity_header="fastmesh-client-identity"):
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
        self.body_timeout = body_timeout
        self.tls = tls
        self.rules.trace = TRACE_PROPAGATE         # trace context is propagated unless set_tracing() says otherwise
        self.set_rules(forwarded_headers, request_id_header, trust_headers, identity_header)
        self.access_log = access_log
        self.chains = None
        self.filter_wait = 60.0
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

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept:
        cdef Downstream d = Downstream.__new__(Downstream)
        cdef char text[48]
        d.proxy = self
        d.fd = fd
        d.state = DS_HEAD
        d.deadline = self.reactor.now + self.header_timeout
        d.tmo_off = -1
        text[0] = 0
        if peer.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>peer).sin_addr, text, sizeof(text))
        elif peer.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>peer).sin6_addr, text, sizeof(text))
        d.peer_len = min(<int>strlen(text), <int>sizeof(d.peer))
        memcpy(d.peer, text, d.peer_len)
        memcpy(&d.client, peer, sizeof(sockaddr_in6))
        d.next = self.head
        if self.head is not None:
            self.head.prev = d
        self.head = d
        self.active += 1
        bump_field(&self.accepted, 1)
        self.counters[L_ACTIVE] += 1
        bump(self.counters + L_ACCEPTED, 1)
        if self.reactor.add(fd, d, 0, downstream_events()) < 0:
            d.close()
            return
        if self.tls is not None:
            # A TLS listener: requests are read once the handshake is done (handshake_timeout runs until then).
            d.tls = tls_alloc()
            if d.tls == NULL or tls_accept(d.tls, self.tls, fd) < 0:
                d.close()
                return
            d.state = DS_HANDSHAKE
            d.deadline = self.reactor.now + self.tls.handshake_timeout

    def reconfigure(self, Router router, list pools, *, double header_timeout, double idle_timeout,
                    bint forwarded_headers, str request_id_header, access_log, bint trust_headers,
                    double body_timeout, TlsServer tls=None, str identity_header="fastmesh-client-identity"):
        """A reload: requests from now on use the new routes and pools; exchanges under way finish with the ones
        they started with (each holds its router and pool). Head limits stay as the listener was bound."""
        self.router = router
        self.pools = pools
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.tls = tls                     # new handshakes use it; open connections keep the one they began with
        self.set_rules(forwarded_headers, request_id_header, trust_headers, identity_header)
        self.access_log = access_log

    def set_tracing(self, str mode, double sample_rate=1.0):
        """Trace context on this listener from the next request on: "off", "propagate" (the default) or "start"
        (requests without a valid traceparent start a trace, sampled at sample_rate)."""
        self.rules.trace = TRACE_MODES[mode]
        self.rules.sample_max = sample_max(sample_rate)
        self.set_rules(self.rules.forwarded, self.rid_name.decode("ascii"), self.rules.trust_headers,
                       self.identity_name.decode("ascii"))

    cdef bint sweep(self, double now) noexcept:
        """Header, idle, body, connect, response and closing deadlines: a walk of the open connections."""
        cdef Downstream d = self.head
        cdef Downstream nxt
        cdef bint held = False
        self.buffers.trim(now)             # at most once per trim_every, also when it is the reactor's own pool
        if self.h2 is not None:
            held = self.h2.sweep(now)
        while d is not None:
            nxt = d.next
            if d.state == DS_EXCHANGE:
                if d.ex.deadline_passed(now) and not d.resp_head_done:
                    if d.awaits_client():
                        # The request's time ran out while its client still owed body bytes: the client's doing
                        # (408, not a 504 that a fastmesh further up would count against this hop).
                        d.respond_error(PE_BODY_TIMEOUT, 0, False)
                    else:
                        d.respond_error(PE_DEADLINE_EXCEEDED, 0, d.req_done)
                    d.run()
                elif not d.req_done and d.ex.body_overdue(now, d.awaits_client(), self.idle_timeout):
                    # The client is too slow with its body: its failure, not the endpoint's (no report, no retry).
                    d.respond_error(PE_BODY_TIMEOUT, 0, False)
                    d.run()
                elif d.up is not None and d.up.state == UP_CONNECTING and now >= d.up.deadline:
                    d.up.fail(0)
                elif d.up is None and d.ex.waiting and now >= d.ex.try_deadline:
                    d.respond_error(d.ex.wait_expired(), 0, d.req_done)
                    d.run()
                elif d.up is not None and not d.resp_head_done and now >= d.ex.try_deadline:
                    d.try_timed_out()
            elif d.state == DS_BRIDGED:
                d.bridge.check(now)
            elif now >= d.deadline:
                if d.state == DS_HANDSHAKE:
                    d.handshake_expired()
                elif d.state == DS_HEAD and rb_avail(&d.rbuf) > 0:
                    d.respond_error(PE_HEADER_TIMEOUT, 0, False)
                    d.run()
                else:
                    d.close()
            elif d.state == DS_IDLE and d.ex is not None:
                d.rest()
            d = nxt
        return held or self.head is not None

    def drain(self):
        """Stop keeping connections alive: idle ones close now, busy ones after their current answer."""
        cdef Downstream d = self.head
        cdef Downstream nxt
        self.draining = True
        if self.h2 is not None:
            self.h2.drain()
        while d is not None:
            nxt = d.next
            if d.state == DS_IDLE or (d.state == DS_HEAD and rb_avail(&d.rbuf) == 0):
                d.close()
            elif d.state == DS_EXCHANGE or d.state == DS_BRIDGED:
                d.client_keep = False
            d = nxt
        self.reactor.graveyard.clear()

    def close_all(self):
        if self.h2 is not None:
            self.h2.close_all()
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
    def exchanges_held(self):
        """Connections holding an exchange: those with a request under way, and idle ones not yet swept."""
        cdef Downstream d = self.head
        cdef long n = 0
        while d is not None:
            n += d.ex is not None
            d = d.next
        return n

    @property
    def tunnel_count(self):
        return sum(p.tunnel.active for p in self.pools if p.tunnel is not None)
