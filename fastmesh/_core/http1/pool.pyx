"""Upstream HTTP/1 connections and per-cluster pools of idle keep-alive connections.

acquire() walks the request's ConnectTry through the shared connector (upstream/connector.pyx: pick,
breaker, failover, counts); for the endpoint picked it reuses the most recently idled connection (LIFO keeps
few connections warm) or opens a new one. `active` (idle included) is what the connection breaker counts.
Idle connections stay registered in the reactor: any event on one (the server closed it, or sent bytes nobody
asked for) closes it, so a dead connection is rarely handed out. The tick closes connections idle past
idle_timeout. How many are kept idle per endpoint follows use: as many as were in use at once lately (the peak of
this PEAK_WINDOW or the one before), never more than max_idle. So a burst that comes back (an HTTP/2 client's
streams, each a request here) finds its connections waiting, while a burst that does not return leaves only the
connections the idle timeout then closes.

max_connections and max_pending are the instance's (limits.pyx): a connection or a waiting request holds a slot
of the cluster's limit cell (the connector takes and gives them). A slot another worker frees wakes nobody here,
so the tick also hands free slots to this pool's waiters, and while other workers have requests waiting this
pool closes its idle connections to free their slots.

An endpoint set update (Cluster.update) grows the cluster's slots: endpoints_changed() grows the idle lists to
match and closes the idle connections of removed endpoints; a connection to a removed endpoint that finishes
its exchange later is closed, not kept. Connections to endpoints still listed stay pooled.
"""
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from fastmesh._core.buffer cimport rb_free, ob_free, ob_pending
from fastmesh._core.includes.system cimport (
    close, errno, send, EAGAIN, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP, EPOLLET, getsockopt, setsockopt,
    socklen_t, SOL_SOCKET, SO_ERROR, SO_LINGER, linger, MSG_NOSIGNAL, MSG_DONTWAIT,
)
from fastmesh._core.reactor cimport Reactor, EventTarget
from fastmesh._core.cluster cimport Cluster, OUT_REMOVED
from fastmesh._core.upstream.connector cimport (
    Connector, ConnectUser, ConnectTry, CONNECT_OPENED, CONNECT_IDLE, CONNECT_NONE,
)
from fastmesh._core.debug cimport debug_new, debug_free, DBG_UPSTREAM
from fastmesh._core.policy cimport ClusterPolicy
from fastmesh._core.limits cimport F_CONNECTIONS, F_PENDING
from fastmesh._core.stats cimport bump_field
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.proxyproto.codec cimport PP_OUT_MAX
from fastmesh._core.tls.context cimport (
    TlsClient, tls_handshake, tls_recv, tls_release, tls_drained, TF_TIMEOUT, TF_CLOSED, TLS_HANDSHAKE,
)

cdef extern from "<errno.h>" nogil:
    enum:
        EPROTO
        ECONNRESET
        ENOMEM

cdef uint32_t UPSTREAM_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef double PEAK_WINDOW = 10.0          # seconds over which the most connections in use at once is remembered


cdef class UpstreamUser(ConnectUser):
    cdef void upstream_ready(self, Upstream up) noexcept:
        pass

    cdef void upstream_failed(self, Upstream up, int err) noexcept:
        pass


cdef class Upstream(EventTarget):

    def __cinit__(self):
        if FASTMESH_DEBUG:
            debug_new(DBG_UPSTREAM)

    def __dealloc__(self):
        free(self.proxy_hdr)
        if FASTMESH_DEBUG:
            debug_free(DBG_UPSTREAM)

    cdef void on_events(self, uint32_t events, int side) noexcept:
        cdef int err = 0
        cdef socklen_t errlen = sizeof(err)
        cdef UpstreamUser user
        if self.state == UP_CLOSED:
            return
        if self.state == UP_IDLE:
            # Nothing is expected from an idle connection: a FIN, RST or stray bytes all end it. EPOLLOUT
            # alone (a freed send buffer) is harmless, and so are TLS records that carry no data (a TLS 1.3
            # server's session tickets): OpenSSL takes them and finds nothing to read.
            if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                if (self.tls != NULL and not (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        and tls_recv(self.tls, <char *>&err, 1) < 0 and errno == EAGAIN):
                    return
                self.pool.unlink_idle(self)
                self.close()
            return
        if self.state == UP_CONNECTING:
            if self.tls != NULL:
                self.handshake()
                return
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &errlen)
                self.fail(err)
                return
            if not (events & EPOLLOUT):
                return
            # The cluster's PROXY header goes first (before a TLS ClientHello); a fresh socket's empty send buffer
            # takes it whole, so a short send is the connection failing.
            if self.proxy_len and send(self.fd, self.proxy_hdr, self.proxy_len, MSG_NOSIGNAL | MSG_DONTWAIT) \
                    != self.proxy_len:
                self.fail(errno or ECONNRESET)
                return
            if self.pool.tls is not None:
                # Connected: the cluster's TLS handshake runs next, still under the connect deadline.
                self.tls = self.pool.start_tls(self.fd, self.endpoint)
                if self.tls == NULL:
                    self.fail(ENOMEM)
                    return
                self.handshake()
                return
            self.state = UP_ACTIVE
            self.pool.cluster.connect_succeeded(self.endpoint)
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.hangup = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
        if self.tls != NULL:
            # OpenSSL may wait on the other direction than the call it blocked (tls/context.pyx).
            if events & EPOLLOUT and self.tls.read_wants_out:
                self.readable = True
            if events & EPOLLIN and self.tls.write_wants_in:
                self.writable = True
        user = self.user
        if user is not None:
            user.upstream_ready(self)

    cdef void handshake(self) noexcept:
        """Advance the TLS handshake with the endpoint. Done: the connection is open, like a finished connect. A
        failed handshake is a failed connect (the user fails over), counted and logged by the cluster's TLS."""
        cdef HttpPool pool = self.pool
        cdef TlsClient cli = pool.tls
        cdef UpstreamUser user
        cdef int r = tls_handshake(self.tls)
        if r == 0:
            return
        if r < 0:
            cli.failed(self.tls, pool.cluster.counters, pool.cluster.name, pool.cluster.labels[self.endpoint],
                       pool.reactor.now)
            self.fail(ECONNRESET if self.tls.fail == TF_CLOSED else EPROTO)
            return
        cli.finished(self.tls, pool.cluster.counters)
        self.state = UP_ACTIVE
        pool.cluster.connect_succeeded(self.endpoint)
        # Records may already sit in OpenSSL's buffer: no edge will announce them.
        self.readable = True
        self.writable = True
        user = self.user
        if user is not None:
            user.upstream_ready(self)

    cdef void fail(self, int err) noexcept:
        """The connect failed (err from SO_ERROR) or timed out (err 0): tell the user (it marks the endpoint)."""
        cdef UpstreamUser user = self.user
        if err == 0 and self.tls != NULL and self.tls.state == TLS_HANDSHAKE:
            # The connect deadline ran out during the TLS handshake: a handshake failure too.
            self.tls.fail = TF_TIMEOUT
            self.pool.tls.failed(self.tls, self.pool.cluster.counters, self.pool.cluster.name,
                                 self.pool.cluster.labels[self.endpoint], self.pool.reactor.now)
        if user is not None:
            user.upstream_failed(self, err)      # marks the endpoint through the connector, then fails over
        else:
            self.pool.cluster.connect_failed(self.endpoint, err, self.pool.reactor.now)
        self.close()

    cdef void abort(self) noexcept:
        """Close with a reset: the exchange was cut short, so the server must not wait for the rest of it (a
        FIN would queue behind unsent request bytes, and the server would never see it)."""
        cdef linger lg
        if self.fd >= 0:
            lg.l_onoff = 1
            lg.l_linger = 0
            setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
        self.close()

    cdef void close(self) noexcept:  # no-cython-lint
        cdef HttpPool pool = self.pool
        if self.state == UP_CLOSED:
            return
        self.state = UP_CLOSED
        if self.tls != NULL:
            tls_release(&self.tls)
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
            pool.connection_gone()
        rb_free(&self.rbuf, pool.reactor.buffers)
        ob_free(&self.out)
        self.user = None
        pool.reactor.bury(self)
        if pool.waiters:
            pool.wake_waiter()

    @property
    def endpoint_index(self):
        return self.endpoint


cdef class HttpPool(Connector):

    def __cinit__(self, Reactor reactor, Cluster cluster, int max_idle=1024, double idle_timeout=60.0,
                  ClusterPolicy policy=None, str hash_key=None):
        cdef int n = cluster.n
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.policy = policy if policy is not None else ClusterPolicy()
        self.set_hash_key(hash_key)
        self.idle_heads = []
        self.grow_slots(n)

    def __dealloc__(self):
        free(self.idle_count)
        free(self.peak)
        free(self.last_peak)

    cdef int grow_slots(self, int n) except -1:
        """Per-endpoint lists and counts for n endpoints (new slots zeroed)."""
        cdef int old_n = len(self.idle_heads)
        cdef int m = max(n, 1)
        cdef int *p
        if n <= old_n and self.idle_count != NULL:
            return 0
        p = <int *>realloc(self.idle_count, m * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self.idle_count = p
        p = <int *>realloc(self.peak, m * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self.peak = p
        p = <int *>realloc(self.last_peak, m * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self.last_peak = p
        memset(self.idle_count + old_n, 0, (m - old_n) * sizeof(int))
        memset(self.peak + old_n, 0, (m - old_n) * sizeof(int))
        memset(self.last_peak + old_n, 0, (m - old_n) * sizeof(int))
        if n > old_n:
            self.idle_heads.extend([None] * (n - old_n))
        return 0

    cdef bint has_idle(self, int ep) noexcept:
        cdef Upstream up = <Upstream>self.idle_heads[ep]
        if not self.want_len:
            self.found = up
            return up is not None
        # A PROXY cluster: only a connection that sent the same header (the same client connection) will do.
        while up is not None:
            if up.proxy_len == self.want_len and memcmp(up.proxy_hdr, self.want, self.want_len) == 0:
                self.found = up
                return True
            up = up.next
        self.found = None
        return False

    cdef Upstream acquire(self, UpstreamUser user, Exchange ex, int *outcome):
        """An upstream connection for user's exchange ex (its endpoint walk, ex.ct): idle and ready, or connecting
        (its events will tell). None when the connector found none: outcome[0] says why (CONNECT_FULL or
        CONNECT_NONE, ex.ct.err the last errno). A cluster with proxy_protocol gets the header for ex's client
        first on a new connection, and an idle one only if it sent the same header (the same client connection)."""
        cdef Upstream up
        cdef int fd, proxy_len = 0
        cdef char proxy_hdr[PP_OUT_MAX]
        cdef ConnectTry *t = &ex.ct
        if self.cluster.proxy_protocol:
            proxy_len = ex.proxy_header(self.cluster.proxy_protocol, proxy_hdr)
        self.want = proxy_hdr
        self.want_len = proxy_len
        outcome[0] = self.connect(t)
        self.want_len = 0
        up = self.found
        self.found = None
        if outcome[0] == CONNECT_IDLE:
            self.unlink_idle(up)
            up.state = UP_ACTIVE
            up.user = user
            up.reused = True
            bump_field(&self.reuses, 1)
            return up
        if outcome[0] != CONNECT_OPENED:
            return None
        fd = t.fd
        t.fd = -1
        up = Upstream.__new__(Upstream)
        up.pool = self
        up.user = user
        up.fd = fd
        up.endpoint = t.endpoint
        up.state = UP_CONNECTING
        up.deadline = self.reactor.now + self.cluster.connect_timeout
        if proxy_len > 0:
            up.proxy_hdr = <char *>malloc(proxy_len)
            if up.proxy_hdr != NULL:
                memcpy(up.proxy_hdr, proxy_hdr, proxy_len)
                up.proxy_len = proxy_len
        if self.reactor.add(fd, up, 0, UPSTREAM_EVENTS) < 0:
            t.err = errno
            close(fd)
            self.policy.cell.give(F_CONNECTIONS)
            up.fd = -1
            up.state = UP_CLOSED
            outcome[0] = CONNECT_NONE
            return None
        bump_field(&self.opened, 1)
        self.active += 1
        return up

    cdef void release(self, Upstream up) noexcept:
        """An exchange ended cleanly on up: keep it for the next one, or close it when as many wait idle as were
        in use at once lately (max_idle at most)."""
        cdef int ep = up.endpoint
        cdef int used = <int>self.cluster.active[ep] + 1    # in use just before this one came back (done_with)
        cdef int keep
        cdef Upstream oldest
        up.user = None
        if used > self.peak[ep]:
            self.peak[ep] = used
        keep = self.peak[ep] if self.peak[ep] > self.last_peak[ep] else self.last_peak[ep]
        if keep > self.max_idle or up.proxy_len:
            keep = self.max_idle        # a PROXY cluster's idle connections each wait for their own client
        # A TLS server may have closed right behind its response (close_notify in the same flight): OpenSSL
        # holds that close already and no edge will tell the idle connection, so it is not reused.
        if (self.retired or up.state != UP_ACTIVE or up.hangup or keep <= 0 or not tls_drained(up.tls)
                or ob_pending(&up.out) > 0 or up.rbuf.start != up.rbuf.end or self.cluster.out[ep] & OUT_REMOVED):
            up.close()
            return
        if self.idle_count[ep] >= keep:
            if not up.proxy_len:
                up.close()
                return
            # Each idle connection of a PROXY cluster serves only its own client: the longest idle makes room.
            oldest = <Upstream>self.idle_heads[ep]
            while oldest.next is not None:
                oldest = oldest.next
            self.unlink_idle(oldest)
            oldest.close()
        rb_free(&up.rbuf, self.reactor.buffers)
        ob_free(&up.out)
        up.state = UP_IDLE
        up.deadline = self.reactor.now + self.idle_timeout
        up.prev = None
        up.next = <Upstream>self.idle_heads[ep]
        if up.next is not None:
            up.next.prev = up
        self.idle_heads[ep] = up
        self.idle_count[ep] += 1
        if self.waiters:
            self.wake_waiter()

    cdef void done_with(self, Upstream up, bint reuse, bint finished) noexcept:
        """An exchange is done with up: kept for the next one (reuse), closed after an exchange that ended cleanly,
        or reset (a cut-short exchange: the server must not wait for the rest of it)."""
        self.cluster.upstream_end(up.endpoint)
        if reuse:
            self.release(up)
        elif finished:
            up.close()
        else:
            up.abort()

    cdef void unlink_idle(self, Upstream up) noexcept:
        cdef int ep = up.endpoint
        if up.prev is not None:
            up.prev.next = up.next
        else:
            self.idle_heads[ep] = up.next
        if up.next is not None:
            up.next.prev = up.prev
        up.prev = None
        up.next = None
        self.idle_count[ep] -= 1

    cdef bint sweep(self, double now) noexcept:
        cdef int ep, n
        cdef long others
        cdef Upstream up, nxt
        self.cluster.balancer.set_clock(now)      # EWMA decay and slow start run on the tick's clock
        if now >= self.window_end:
            # A new peak window: what this one saw is remembered for one more.
            self.window_end = now + PEAK_WINDOW
            for ep in range(len(self.idle_heads)):
                self.last_peak[ep] = self.peak[ep]
                self.peak[ep] = <int>self.cluster.active[ep]
        if self.policy.cell.workers > 1:
            # Slots other workers freed: the waiters here try again (each once per tick at most).
            n = len(self.waiters)
            while n > 0 and self.waiters and (self.policy.cell.total(F_CONNECTIONS) < self.policy.max_connections):
                self.wake_waiter()
                n -= 1
            # Requests wait in other workers while our idle connections hold slots: give those slots up.
            others = self.policy.cell.total(F_PENDING) - len(self.waiters)
            ep = 0
            while others > 0 and ep < len(self.idle_heads):
                up = <Upstream>self.idle_heads[ep]
                if up is None:
                    ep += 1
                    continue
                self.unlink_idle(up)
                up.close()
                others -= 1
        for ep in range(len(self.idle_heads)):
            up = <Upstream>self.idle_heads[ep]
            while up is not None:
                nxt = up.next
                if now >= up.deadline:
                    self.unlink_idle(up)
                    up.close()
                up = nxt
        return self.active > 0 or bool(self.waiters)

    def retire(self):
        """A reload replaced this pool: close its idle connections; busy ones close when their exchange ends."""
        self.retired = True
        self.close_idle()

    def endpoints_changed(self):
        """The cluster's endpoint set was updated: idle lists for its new slots; removed endpoints' idle
        connections closed (their busy ones close when their exchange ends). Returns how many were closed."""
        cdef int ep, old_n = len(self.idle_heads), closed = 0
        cdef Upstream up
        self.grow_slots(self.cluster.n)
        for ep in range(old_n):
            if self.cluster.out[ep] & OUT_REMOVED:
                while self.idle_heads[ep] is not None:
                    up = <Upstream>self.idle_heads[ep]
                    self.unlink_idle(up)
                    up.close()
                    closed += 1
        return closed

    def close_idle(self):
        """Close every idle connection (shutdown)."""
        cdef int ep
        cdef Upstream up
        for ep in range(len(self.idle_heads)):
            while self.idle_heads[ep] is not None:
                up = <Upstream>self.idle_heads[ep]
                self.unlink_idle(up)
                up.close()

    def idle_counts(self):
        cdef int ep
        return [self.idle_count[ep] for ep in range(len(self.idle_heads))]
