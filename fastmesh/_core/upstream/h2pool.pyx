"""Upstream HTTP/2: shared multiplexed client connections per endpoint, and the leg that carries one try on one.

H2Pool extends the connector (upstream/connector.pyx: pick, breaker, failover, counts). has_idle() says an
endpoint has a connection with room for one more stream: open, or still connecting (a burst of requests at start
shares one connect instead of opening one each), with fewer streams than the peer's MAX_CONCURRENT_STREAMS (and
our own max_streams; before the peer's SETTINGS, max_streams alone). A full endpoint gets a new connection, which
holds one max_connections slot however many streams it carries.

An H2Leg (Interface 3, upstream/leg.pxd) attaches to a connection and opens its stream as soon as the connection
may: the request head goes through HPACK (the session's encoder) from the request view and the exchange's edits
(:authority from the client's authority, the route's path rewrite, connection-specific fields and Host dropped,
`te: trailers` kept, the deadline as fastmesh-timeout-ms and, for gRPC, grpc-timeout), then the body is pulled
from the owner as the stream's send window allows (send_data takes what flow control lets through; on_window
resumes). Response DATA goes to the owner as it arrives; what the owner does not take waits in the leg and is
not credited back to the server, so the server's window bounds the memory per stream. Trailers pass through.

GOAWAY: the connection takes no new stream; streams above its last id were never processed (the session resets
them REFUSED_STREAM), as are streams refused outright: such a stream whose body has not begun to leave is sent
again on another connection at no cost (ex.replay), else the owner hears PE_RESET with `stale` set (not the
endpoint's fault). A connection that breaks fails its open streams with PE_RESET; legs still waiting for it to
connect fail over like any connect.

Keepalive (off unless keepalive_interval is set): a connection the server has been silent on for that long gets a
PING; if neither its ACK nor any other byte comes within keepalive_timeout, the connection is dead (a server gone
without a FIN, a NAT entry dropped) and is given up as a broken one is, its streams failing as resets (the
exchange retries them where its policy and the request allow), legs still waiting for a stream going elsewhere.

gRPC: for a gRPC request, a response head without END_STREAM is held until the receive() batch it came in ends;
when the trailers arrived in the same batch (a unary failure sent as head + trailers), their grpc-status is known
before the head is passed on, so the exchange can retry it by status (exchange.pyx grpc_response). A trailers-only
answer carries it in the head itself. Answers are counted by grpc-status per cluster (stats.pxd C_GRPC).
Writes are coalesced: frames queue in the session's `out`, flushed once per event-loop pass (Reactor.again).
"""
from libc.stdint cimport uint32_t

from libc.stdio cimport snprintf

from fastmesh._core.buffer cimport (
    OutBuf, rb_read, rb_avail, rb_free, rb_release_if_empty, ob_add, ob_flush, ob_pending, ob_free,
)
from fastmesh._core.includes.system cimport (
    close, errno, EAGAIN, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP, EPOLLET, getsockopt, socklen_t,
    SOL_SOCKET, SO_ERROR,
)
from fastmesh._core.reactor cimport Reactor
from fastmesh._core.cluster cimport Cluster, OUT_REMOVED
from fastmesh._core.policy cimport ClusterPolicy
from fastmesh._core.limits cimport F_CONNECTIONS
from fastmesh._core.errors cimport (
    connect_error, PE_NONE, PE_NO_ENDPOINTS, PE_RESET, PE_HEAD_TOO_LARGE,
)
from fastmesh._core.exchange cimport Exchange, grpc_status_in, GRPC_LATER
from fastmesh._core.request cimport (
    RequestView, Field, Edit, Span, fold_eq, edit_at, EDIT_ADD, EDIT_ADD_ABSENT, EDIT_DEADLINE, EDITS_OWN,
)
from fastmesh._core.stats cimport bump_field, count_grpc
from fastmesh._core.debug cimport debug_new, debug_free, DBG_UPSTREAM
from fastmesh._core.upstream.connector cimport (
    Connector, ConnectTry, try_avoid, CONNECT_OPENED, CONNECT_IDLE, CONNECT_NONE,
)
from fastmesh._core.upstream.leg cimport (
    Leg, LegOwner, LegRequest, LEG_IDLE, LEG_CONNECTING, LEG_ACTIVE, LEG_DONE,
)
from fastmesh._core.http1.render cimport (
    _edit_lengths, _edit_drops, grpc_timeout_text, connection_tokens, in_tokens, MAX_CONN_TOKENS,
)
from fastmesh._core.http2.session cimport Session, ROLE_CLIENT, RECV_ERROR, HEAD_TOO_LARGE
from fastmesh._core.http2.streams cimport Stream, ST_CLOSED
from fastmesh._core.http2.frames cimport H2_NO_ERROR, H2_CANCEL, H2_REFUSED_STREAM
from fastmesh._core.tls.context cimport (
    TlsClient, tls_handshake, tls_release, TF_TIMEOUT, TF_CLOSED, TLS_HANDSHAKE,
)

cdef extern from "<errno.h>" nogil:
    enum:
        EPROTO
        ECONNRESET
        ENOMEM
from fastmesh._core.http2.limits cimport H2Limits
from fastmesh._core.http2.fields cimport connection_specific_any_case

cdef uint32_t EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef const char *HTTP = b"http"
cdef OutBuf PATH                        # scratch: the :path of the head being built (one at a time: single thread)


cdef bint skip_field(const char *name, Py_ssize_t n) noexcept:
    """Request fields that do not cross into HTTP/2: Host (the :authority carries it), te (`te: trailers` is
    added back when the client sent it), and the connection-specific ones RFC 9113 section 8.2.2 forbids."""
    if n == 2:
        return fold_eq(name, b"te", 2)
    if n == 4:
        return fold_eq(name, b"host", 4)
    if n == 14:
        return fold_eq(name, b"http2-settings", 14)
    return connection_specific_any_case(name, n)


cdef class ClientSession(Session):
    """Session events of an upstream connection, each handed to the leg whose stream it is (Stream.user)."""

    cdef int on_headers(self, Stream s, bint end_stream) except -1:
        if s.user is not None:
            if s.informational:
                (<H2Leg>s.user).on_info()
            else:
                (<H2Leg>s.user).on_head(end_stream)
        return 0

    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        if s.user is not None:
            (<H2Leg>s.user).on_data(data, n, end_stream)
        elif n:
            self.consumed(s, n)           # nobody wants it (the leg went away): keep the connection window open
        return 0

    cdef int on_trailers(self, Stream s) except -1:
        if s.user is not None:
            (<H2Leg>s.user).on_trailers()
        return 0

    cdef int on_reset(self, Stream s, uint32_t code) except -1:
        if s.user is not None:
            (<H2Leg>s.user).on_reset(code)
        return 0

    cdef int on_window(self, Stream s) except -1:
        if s.user is not None:
            (<H2Leg>s.user).send_body()
        return 0

    cdef int on_stream_closed(self, Stream s) except -1:
        # The leg keeps the closed stream until it ends: body bytes it passes on later still credit the
        # connection's window (Session.consumed on a closed stream).
        s.user = None
        return 0

    cdef int on_goaway(self, uint32_t last_id, uint32_t code) except -1:
        if self.up is not None:
            self.up.goaway()
        return 0

    cdef int on_settings(self) except -1:
        if self.up is not None and self.up.nwaiting:
            self.up.settled()             # the peer's limit is known (or changed)
        return 0


cdef class H2Upstream(EventTarget):

    def __cinit__(self):
        if FASTMESH_DEBUG:
            debug_new(DBG_UPSTREAM)

    def __dealloc__(self):
        if FASTMESH_DEBUG:
            debug_free(DBG_UPSTREAM)

    cdef int cap(self) noexcept:
        """Streams this connection may carry at once: ours, or the peer's MAX_CONCURRENT_STREAMS when lower."""
        cdef int m = self.pool.max_streams
        if self.sess.peer_settings_seen and self.sess.peer_max_concurrent < <uint32_t>m:
            m = <int>self.sess.peer_max_concurrent
        return m

    cdef void attach(self, H2Leg leg) noexcept:
        leg.up = self
        leg.prev_on = self.last
        leg.next_on = None
        if self.last is not None:
            self.last.next_on = leg
        else:
            self.first = leg
        self.last = leg
        self.users += 1
        self.nwaiting += 1
        leg.counted = True
        self.pool.cluster.upstream_start(self.endpoint)
        if self.state != H2_CONNECTING:
            self.deadline = 0.0           # not idle (while connecting it is the connect deadline)

    cdef void detach(self, H2Leg leg) noexcept:
        if leg.prev_on is not None:
            leg.prev_on.next_on = leg.next_on
        else:
            self.first = leg.next_on
        if leg.next_on is not None:
            leg.next_on.prev_on = leg.prev_on
        else:
            self.last = leg.prev_on
        leg.prev_on = None
        leg.next_on = None
        self.users -= 1
        if not leg.opened:
            self.nwaiting -= 1
        self.pool.cluster.upstream_end(self.endpoint)
        if self.users == 0:
            # Idle: the sweep closes it after idle_timeout (at once when retired or past a GOAWAY).
            self.deadline = self.pool.reactor.now + self.pool.idle_timeout
        elif self.nwaiting:
            self.open_waiting()

    cdef void open_waiting(self) noexcept:
        """Open the streams of attached legs that wait for one, oldest first, while the peer allows more."""
        cdef H2Leg leg = self.first
        cdef H2Leg nxt
        if not self.sess.peer_settings_seen:
            return                        # its MAX_CONCURRENT_STREAMS is not known yet: settled() opens them
        while leg is not None and self.nwaiting and self.state == H2_OPEN and self.sess.can_open():
            nxt = leg.next_on
            if not leg.opened and leg.state == LEG_CONNECTING:
                self.nwaiting -= 1
                leg.opened = True
                leg.open()
                if self.state != H2_OPEN:
                    break
            leg = nxt
        self.want_flush()

    cdef void settled(self) noexcept:
        """The peer's SETTINGS came: open what its MAX_CONCURRENT_STREAMS allows; legs attached beyond it while
        the connection was being made (its limit unknown) go to another connection."""
        cdef H2Leg leg = self.last
        cdef H2Leg prv
        while leg is not None and self.users > self.cap():
            prv = leg.prev_on
            if not leg.opened and leg.state == LEG_CONNECTING:
                leg.retake()
            leg = prv
        self.open_waiting()

    cdef void release_held(self) noexcept:
        """The receive() batch ended: held gRPC heads had no trailers with them; pass them on now."""
        cdef H2Leg leg
        while self.held is not None:
            leg = self.held
            self.held = leg.next_held
            leg.next_held = None
            if leg.holding:
                leg.holding = False
                if leg.state == LEG_ACTIVE and leg.s is not None:
                    leg.report_head(False, -1)

    cdef void on_events(self, uint32_t events, int side) noexcept:
        cdef int err = 0
        cdef socklen_t errlen = sizeof(err)
        if self.state == H2_CLOSED:
            return
        if self.state == H2_CONNECTING:
            if self.tls != NULL:
                self.handshake()
                return
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &errlen)
                self.connect_failed(err)
                return
            if not (events & EPOLLOUT):
                return
            if self.pool.tls is not None:
                # Connected: the cluster's TLS handshake runs next, still under the connect deadline.
                self.tls = self.pool.start_tls(self.fd, self.endpoint)
                if self.tls == NULL:
                    self.connect_failed(ENOMEM)
                    return
                self.handshake()
                return
            self.connected()
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
        if self.tls != NULL:
            # OpenSSL may wait on the other direction than the call it blocked (tls/context.pyx).
            if events & EPOLLOUT and self.tls.read_wants_out:
                self.readable = True
            if events & EPOLLIN and self.tls.write_wants_in:
                self.writable = True
        self.run()

    cdef void connected(self) noexcept:
        """The connection is open (connected, and through its TLS handshake if any): waiting legs get streams."""
        self.state = H2_OPEN
        self.pool.cluster.connect_succeeded(self.endpoint)
        self.last_read = self.pool.reactor.now
        self.writable = True
        if self.users == 0:
            self.deadline = self.pool.reactor.now + self.pool.idle_timeout
        self.open_waiting()

    cdef void handshake(self) noexcept:
        """Advance the TLS handshake with the endpoint; a failed one is a failed connect (legs fail over)."""
        cdef H2Pool pool = self.pool
        cdef TlsClient cli = pool.tls
        cdef int r = tls_handshake(self.tls)
        if r == 0:
            return
        if r < 0:
            cli.failed(self.tls, pool.cluster.counters, pool.cluster.name, pool.cluster.labels[self.endpoint],
                       pool.reactor.now)
            self.connect_failed(ECONNRESET if self.tls.fail == TF_CLOSED else EPROTO)
            return
        cli.finished(self.tls, pool.cluster.counters)
        self.connected()
        self.readable = True                  # records may already sit in OpenSSL's buffer
        self.run()

    cdef void on_again(self) noexcept:
        self.flush_due = False
        if self.state == H2_OPEN and self.nwaiting:
            self.open_waiting()           # streams of legs attached during the last pass
        if self.state == H2_OPEN or self.state == H2_GOAWAY:
            self.run()

    cdef void run(self) noexcept:
        """Read what the server sent into the session, then send what the session queued."""
        cdef Py_ssize_t n, used
        cdef Reactor reactor = self.pool.reactor
        while self.readable and self.state != H2_CLOSED and not self.sess.paused():
            n = rb_read(&self.rbuf, self.fd, reactor.buffers, self.tls)
            if n > 0:
                self.last_read = reactor.now
                self.in_receive = True
                try:
                    used = self.sess.receive(self.rbuf.data + self.rbuf.start, rb_avail(&self.rbuf), reactor.now)
                except BaseException:
                    used = RECV_ERROR
                self.in_receive = False
                if self.state == H2_CLOSED:
                    return
                self.release_held()
                if used < 0:
                    self.flush()                  # the GOAWAY the session queued
                    self.lost()
                    return
                self.rbuf.start += used
                continue
            if n < 0 and n != -2 and errno == EAGAIN:
                self.readable = False
                break
            self.lost()                           # EOF, reset, or a frame that does not fit a buffer
            return
        rb_release_if_empty(&self.rbuf, reactor.buffers)
        if self.flush() < 0:
            return
        if self.state != H2_CONNECTING and self.sess.finished() and self.users == 0:
            self.close()

    cdef void want_flush(self) noexcept:
        if not self.flush_due and self.state != H2_CLOSED:
            self.flush_due = True
            self.pool.reactor.again(self)

    cdef int flush(self) noexcept:
        """Send the session's queued frames (one send for the batch): 0, or -1 when the connection broke."""
        cdef int r
        if self.state == H2_CONNECTING or self.state == H2_CLOSED or not self.writable:
            return 0
        if ob_pending(&self.sess.out) == 0:
            return 0
        r = ob_flush(&self.sess.out, self.fd, self.tls)
        if r < 0:
            self.lost()
            return -1
        if r == 0:
            self.writable = False
        return 0

    cdef void connect_failed(self, int err) noexcept:
        """The connect failed (err) or timed out (0): the endpoint is marked once, and each leg that waited
        for this connection fails over to another (or hears why not)."""
        cdef H2Leg leg, nxt
        cdef bint marked = False
        if err == 0 and self.tls != NULL and self.tls.state == TLS_HANDSHAKE:
            # The connect deadline ran out during the TLS handshake: a handshake failure too.
            self.tls.fail = TF_TIMEOUT
            self.pool.tls.failed(self.tls, self.pool.cluster.counters, self.pool.cluster.name,
                                 self.pool.cluster.labels[self.endpoint], self.pool.reactor.now)
        self.state = H2_CLOSED
        leg = self.first
        while leg is not None:
            nxt = leg.next_on
            if not marked:
                self.pool.connect_failed(&leg.ex.ct, self.endpoint, err)
                marked = True
            else:
                leg.ex.ct.err = err
                try_avoid(&leg.ex.ct, self.endpoint)
            leg.retake()
            leg = nxt
        if not marked:
            self.pool.cluster.connect_failed(self.endpoint, err, self.pool.reactor.now)
        self.close()

    cdef int keepalive(self, double now) noexcept:
        """The sweep's look at a connection the server has been silent on: after keepalive_interval a PING asks
        whether it is still there; when neither its ACK nor any other byte came within keepalive_timeout, the
        connection is dead (a peer gone without a FIN, a dropped NAT entry) and is given up like a broken one:
        -1 then. Any byte from the server proves it alive."""
        cdef H2Pool pool = self.pool
        if self.ping_sent:
            if self.last_read >= self.ping_sent:
                self.ping_sent = 0.0
            elif now - self.ping_sent >= pool.keepalive_timeout:
                bump_field(&pool.keepalive_failures, 1)
                self.lost()
                return -1
            return 0
        if now - self.last_read >= pool.keepalive_interval and not self.sess.ping_pending:
            try:
                self.sess.ping()
            except BaseException:
                return 0
            self.ping_sent = now
            self.want_flush()
        return 0

    cdef void lost(self) noexcept:
        """The connection broke: streams in flight fail (the server may have processed them), legs still
        waiting for a stream go to another connection."""
        cdef H2Leg leg, nxt
        if self.state == H2_CLOSED:
            return
        self.state = H2_CLOSED
        leg = self.first
        while leg is not None:
            nxt = leg.next_on
            if leg.s is None and not leg.opened:
                leg.retake()
            else:
                leg.s = None
                leg.fail(PE_RESET)
            leg = nxt
        self.close()

    cdef void goaway(self) noexcept:
        """The server's GOAWAY (its streams above the last id were refused already): no new stream here."""
        cdef H2Leg leg, nxt
        if self.state == H2_OPEN or self.state == H2_CONNECTING:
            self.state = H2_GOAWAY
        leg = self.first
        while leg is not None:
            nxt = leg.next_on
            if leg.s is None and not leg.opened:
                leg.retake()
            leg = nxt
        if self.users == 0:
            self.deadline = self.pool.reactor.now     # the sweep closes it

    cdef void close(self) noexcept:  # no-cython-lint
        cdef H2Pool pool = self.pool
        if self.fd < 0:
            return
        self.state = H2_CLOSED
        pool.unlink(self)
        if self.tls != NULL:
            tls_release(&self.tls)
        close(self.fd)
        self.fd = -1
        pool.connection_gone()
        rb_free(&self.rbuf, pool.reactor.buffers)
        self.sess.up = None
        self.sess.release()
        pool.reactor.bury(self)
        if pool.waiters:
            pool.wake_waiter()

    @property
    def endpoint_index(self):
        return self.endpoint


cdef class H2Pool(Connector):

    def __cinit__(self, Reactor reactor, Cluster cluster, int max_streams=100, double idle_timeout=60.0,
                  ClusterPolicy policy=None, str hash_key=None, H2Limits limits=None, double keepalive_interval=0.0,
                  double keepalive_timeout=10.0):
        self.max_streams = max(1, max_streams)
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.policy = policy if policy is not None else ClusterPolicy()
        # The endpoints are ours: the flood limits meant for untrusted clients would only cut busy connections
        # (gRPC servers answer every few frames with PINGs and small WINDOW_UPDATEs).
        self.limits = limits if limits is not None else H2Limits(glitch_budget=1 << 30, glitch_decay=1e9)
        self.set_hash_key(hash_key)
        self.heads = [None] * cluster.n

    cdef bint has_idle(self, int ep) noexcept:
        cdef H2Upstream up = <H2Upstream>self.heads[ep]
        while up is not None:
            if (up.state == H2_OPEN or up.state == H2_CONNECTING) and up.users < up.cap():
                self.chosen = up
                return True
            up = up.next
        return False

    cdef H2Upstream acquire(self, H2Leg leg, ConnectTry *t, int *outcome):
        """A connection for leg (attached to it): one with room, or a new one connecting. None when the connector
        found none: outcome[0] says why (CONNECT_FULL or CONNECT_NONE, t.err the last errno)."""
        cdef H2Upstream up
        cdef int fd
        self.chosen = None
        outcome[0] = self.connect(t)
        if outcome[0] == CONNECT_IDLE:
            up = self.chosen
            self.chosen = None
            bump_field(&self.reuses, 1)
            up.attach(leg)
            return up
        if outcome[0] != CONNECT_OPENED:
            return None
        fd = t.fd
        t.fd = -1
        up = H2Upstream.__new__(H2Upstream)
        up.pool = self
        up.fd = fd
        up.endpoint = t.endpoint
        up.state = H2_CONNECTING
        up.sess = ClientSession.__new__(ClientSession)
        up.sess.up = up
        try:
            up.sess.setup(ROLE_CLIENT, self.limits)       # the preface and our SETTINGS wait in sess.out
        except BaseException:
            up.fd = -1
        if up.fd < 0 or self.reactor.add(fd, up, 0, EVENTS) < 0:
            t.err = errno
            close(fd)
            self.policy.cell.give(F_CONNECTIONS)
            up.fd = -1
            up.state = H2_CLOSED
            up.sess.release()
            outcome[0] = CONNECT_NONE
            return None
        up.next = <H2Upstream>self.heads[up.endpoint]
        self.heads[up.endpoint] = up
        bump_field(&self.opened, 1)
        self.active += 1
        up.attach(leg)
        up.deadline = self.reactor.now + self.cluster.connect_timeout
        return up

    cdef void unlink(self, H2Upstream up) noexcept:
        cdef H2Upstream cur = <H2Upstream>self.heads[up.endpoint]
        if cur is up:
            self.heads[up.endpoint] = up.next
        else:
            while cur is not None and cur.next is not up:
                cur = cur.next
            if cur is not None:
                cur.next = up.next
        up.next = None

    cdef bint sweep(self, double now) noexcept:
        cdef int ep, n
        cdef H2Upstream up, nxt
        self.cluster.balancer.set_clock(now)      # EWMA decay and slow start run on the tick's clock
        if self.policy.cell.workers > 1:
            # Slots other workers freed: the waiters here try again (each once per tick at most).
            n = len(self.waiters)
            while n > 0 and self.waiters and (self.policy.cell.total(F_CONNECTIONS) < self.policy.max_connections):
                self.wake_waiter()
                n -= 1
        for ep in range(len(self.heads)):
            up = <H2Upstream>self.heads[ep]
            while up is not None:
                nxt = up.next
                if up.state == H2_CONNECTING:
                    if now >= up.deadline:
                        up.connect_failed(0)
                elif up.users == 0 and (self.retired or up.state == H2_GOAWAY or now >= up.deadline):
                    try:
                        up.sess.goaway(H2_NO_ERROR, False)
                    except BaseException:
                        pass
                    up.flush()
                    up.close()
                else:
                    if self.keepalive_interval > 0 and up.state != H2_CLOSED and up.keepalive(now) < 0:
                        up = nxt
                        continue
                    try:
                        if up.sess.tick(now) < 0:
                            up.lost()
                            up = nxt
                            continue
                    except BaseException:
                        up.lost()
                        up = nxt
                        continue
                    if ob_pending(&up.sess.out):
                        up.want_flush()
                up = nxt
        return self.active > 0 or bool(self.waiters)

    @property
    def tunnel(self):
        """HTTP/2 upstreams carry no upgraded (tunnelled) connections."""
        return None

    def retire(self):
        """A reload replaced this pool: connections close once their streams are done (the sweep does it)."""
        self.retired = True
        self.close_idle()

    def endpoints_changed(self):
        """The cluster's endpoint set was updated (Cluster.update): connection lists for its new slots; a removed
        endpoint's connections take no new stream, and close (with our GOAWAY, by the sweep) once their streams are
        done. Returns how many connections were told so."""
        cdef int ep, n = self.cluster.n, told = 0
        cdef H2Upstream up
        if n > len(self.heads):
            self.heads.extend([None] * (n - len(self.heads)))
        for ep in range(len(self.heads)):
            if not self.cluster.out[ep] & OUT_REMOVED:
                continue
            up = <H2Upstream>self.heads[ep]
            while up is not None:
                if up.state == H2_OPEN:           # (a connect under way carries legs picked before the update)
                    up.state = H2_GOAWAY
                    told += 1
                if up.users == 0 and up.state == H2_GOAWAY:
                    up.deadline = self.reactor.now
                up = up.next
        return told

    def close_idle(self):
        """Close every connection that carries no stream (shutdown)."""
        cdef int ep
        cdef H2Upstream up, nxt
        for ep in range(len(self.heads)):
            up = <H2Upstream>self.heads[ep]
            while up is not None:
                nxt = up.next
                if up.users == 0:
                    up.close()
                up = nxt

    def idle_counts(self):
        """Per endpoint: connections open that carry no stream now."""
        cdef int ep
        cdef H2Upstream up
        out = []
        for ep in range(len(self.heads)):
            n = 0
            up = <H2Upstream>self.heads[ep]
            while up is not None:
                n += up.users == 0
                up = up.next
            out.append(n)
        return out

    def connections(self):
        """Per endpoint: (state, streams) of each connection, for tests and the control plane."""
        cdef int ep
        cdef H2Upstream up
        names = {H2_CONNECTING: "connecting", H2_OPEN: "open", H2_GOAWAY: "goaway", H2_CLOSED: "closed"}
        out = []
        for ep in range(len(self.heads)):
            row = []
            up = <H2Upstream>self.heads[ep]
            while up is not None:
                row.append((names[up.state], up.users))
                up = up.next
            out.append(row)
        return out


cdef class H2Leg(Leg):
    """Made by a stream for a cluster whose connector is an H2Pool; reused for each try and request."""

    def __dealloc__(self):
        ob_free(&self.pend)

    cdef bint fits(self, Connector connector) noexcept:
        return isinstance(connector, H2Pool)

    # ---- the try ---------------------------------------------------------------------------------

    cdef int start(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept:
        self.begin_try(owner, ex, req)
        self.pool = <H2Pool>ex.connector
        self.blocked = False
        self.body_sent = False
        self.holding = False
        self.pend_end = False
        self.pend_trailers = False
        self.pend.off = 0
        self.pend.len = 0
        return self.take()

    cdef int take(self) noexcept:
        """A connection for the try (its stream opens as soon as the connection may): PE_NONE (under way, or
        queued for a connection slot), or the ProxyError to answer with."""
        cdef Exchange ex = self.ex
        cdef int outcome
        cdef H2Upstream up
        self.opened = False
        self.req_done = False            # a stream never opened, or refused before any body byte left
        up = self.pool.acquire(self, &ex.ct, &outcome)
        ex.connected(-1, self.pool.reactor.now)
        if up is None:
            return self.no_connection(outcome)
        self.endpoint = up.endpoint
        self.state = LEG_CONNECTING
        if up.state == H2_OPEN:
            up.want_flush()              # the stream opens later in this loop pass (never inside start())
        return PE_NONE

    cdef void retake(self) noexcept:
        """The connection this leg waited on failed or went away before its stream opened: another one (the
        request never left), or the owner hears why not."""
        cdef int r, err = self.ex.ct.err
        self.drop()
        r = self.take()
        if r != PE_NONE:
            self.fail(connect_error(err) if r == PE_NO_ENDPOINTS and err else r)

    cdef void open(self) noexcept:
        """Open the stream (the connection is open and has room): the head, then as much body as may go."""
        cdef H2Upstream up = self.up
        cdef Stream s = up.sess.open_stream()
        cdef int r
        if s is None:
            self.retake()
            return
        s.user = self
        self.s = s
        self.state = LEG_ACTIVE
        bump_field(&self.pool.streams, 1)
        try:
            r = self.send_head()
        except BaseException:
            self.fail(PE_RESET)
            return
        if r == HEAD_TOO_LARGE:
            self.fail(PE_HEAD_TOO_LARGE)         # any endpoint of the cluster would refuse it the same way
            return
        if self.state == LEG_ACTIVE and self.s is s and not self.req_done:
            self.send_body()

    cdef int send_head(self) except -1:
        """The request head on the new stream: 0, or HEAD_TOO_LARGE when the server's header list limit is
        less (nothing was sent)."""
        cdef H2Upstream up = self.up
        cdef ClientSession sess = up.sess
        cdef Exchange ex = self.ex
        cdef const LegRequest *req = &self.req
        cdef const RequestView *v = req.view
        cdef const char *base = v.base
        cdef const Field *f
        cdef const Edit *x
        cdef Span head, tail
        cdef unsigned int present = 0
        cdef unsigned long long lengths = _edit_lengths(&ex.request_edits)
        cdef char digits[24]
        cdef const char *tok[MAX_CONN_TOKENS]
        cdef Py_ssize_t tlen[MAX_CONN_TOKENS]
        cdef long long budget = ex.budget_ms(self.pool.reactor.now)
        cdef int i, k, n
        # An HTTP/1 client's Connection field names further fields meant for its hop alone (RFC 9110 7.6.1): they
        # stay behind with it. (An HTTP/2 client's request has no Connection field: the session refused it.)
        cdef int ntok = connection_tokens(base, v.fields, v.num_fields, tok, tlen)
        sess.headers_begin()
        sess.headers_field(b":method", 7, v.method_token.ptr, v.method_token.len, False)
        if v.has_path:
            sess.headers_field(b":scheme", 7, req.scheme.ptr if req.scheme.len else HTTP,
                               req.scheme.len if req.scheme.len else 4, False)
        sess.headers_field(b":authority", 10, req.authority.ptr, req.authority.len, False)
        if v.has_path:
            ex.router.rewrite_path(ex.route, v, &head, &tail)
            PATH.off = 0
            PATH.len = 0
            ob_add(&PATH, head.ptr, head.len)
            ob_add(&PATH, tail.ptr, tail.len)
            ob_add(&PATH, v.query.ptr, v.query.len)
            sess.headers_field(b":path", 5, PATH.data, PATH.len, False)
        for i in range(v.num_fields):
            f = &v.fields[i]
            if skip_field(base + f.name_off, f.name_len):
                continue
            if ntok and in_tokens(base + f.name_off, f.name_len, tok, tlen, ntok):
                continue
            if _edit_drops(&ex.request_edits, lengths, base + f.name_off, f.name_len, &present):
                continue
            sess.headers_field(base + f.name_off, f.name_len, base + f.value_off, f.value_len, False)
        if req.te_trailers:
            sess.headers_field(b"te", 2, b"trailers", 8, False)
        for k in range(ex.request_edits.n + ex.request_edits.route_n):
            x = edit_at(&ex.request_edits, k)
            if x.kind == EDIT_ADD or (x.kind == EDIT_ADD_ABSENT and not (k < EDITS_OWN and (present >> k) & 1)):
                sess.headers_field(x.name.ptr, x.name.len, x.value.ptr, x.value.len, False)
            elif x.kind == EDIT_DEADLINE:
                n = snprintf(digits, sizeof(digits), "%lld", budget)
                sess.headers_field(x.name.ptr, x.name.len, digits, n, False)
                if req.grpc:
                    n = grpc_timeout_text(digits, budget)
                    sess.headers_field(b"grpc-timeout", 12, digits, n, False)
        if not req.has_body:
            self.req_done = True
        if sess.headers_end(self.s, not req.has_body) == HEAD_TOO_LARGE:
            return HEAD_TOO_LARGE
        up.want_flush()
        return 0

    cdef void send_body(self) noexcept:
        """Pull request body bytes from the owner into the stream while flow control lets them through."""
        cdef LegOwner owner = self.owner
        cdef Stream s = self.s
        cdef H2Upstream up = self.up
        cdef const char *p
        cdef const char *tbase
        cdef const Field *tf
        cdef Py_ssize_t n, sent
        cdef bint ended
        cdef int nt
        if s is None or self.req_done or self.state != LEG_ACTIVE:
            return
        try:
            while True:
                n = owner.body_peek(&p)
                ended = owner.body_ended()
                nt = owner.body_trailers(&tbase, &tf) if ended else 0
                if n > 0:
                    sent = up.sess.send_data(s, p, n, ended and nt == 0)
                    if sent > 0:
                        self.body_sent = True
                        owner.body_took(sent)
                        owner.leg_progress(self)
                        if self.state != LEG_ACTIVE or self.s is not s:
                            return
                    if sent < n:
                        break                    # on_window() goes on
                    if ended and nt == 0:
                        self.req_done = True
                        break
                    continue
                if not ended:
                    break                        # request_ready() goes on
                if nt:
                    up.sess.send_trailers(s, tbase, tf, nt)
                else:
                    up.sess.send_data(s, NULL, 0, True)
                self.req_done = True
                break
        except BaseException:
            self.fail(PE_RESET)
            return
        up.want_flush()

    cdef void request_ready(self) noexcept:
        self.send_body()

    # ---- the response ----------------------------------------------------------------------------

    cdef void on_info(self) noexcept:
        """An interim (1xx) head: the owner passes it on if its client can take it."""
        cdef Stream s = self.s
        if self.state == LEG_ACTIVE and s is not None:
            self.owner.leg_info(self, s.status, s.head.data, s.head.fields + s.first_field, s.head.n - s.first_field)

    cdef void on_head(self, bint end) noexcept:
        cdef H2Upstream up = self.up
        if self.state != LEG_ACTIVE:
            return
        if self.req.grpc and not end and up.in_receive:
            # Its trailers may be in the same batch: then the grpc-status is known before the head leaves.
            self.holding = True
            self.next_held = up.held
            up.held = self
            return
        self.report_head(end, -1)

    cdef int report_head(self, bint end, int code) noexcept:
        """Pass the response head on (the owner feeds the exchange); 0 when the owner dropped the leg. `code`:
        the grpc-status of trailers that came with the head (-1: none); a trailers-only head has its own."""
        cdef Stream s = self.s
        cdef Exchange ex = self.ex
        cdef int r
        cdef int first = s.first_field
        if not self.req.grpc:
            code = -1
        elif end:
            code = grpc_status_in(s.head.data, s.head.fields + first, s.head.n - first)
            count_grpc(self.pool.cluster.counters, code)
        elif code < 0:
            code = GRPC_LATER                    # its status comes in the trailers (trailers())
        ex.grpc_code = code
        self.head_done = True
        r = self.owner.leg_head(self, s.status, s.head.data, s.head.fields + first, s.head.n - first, end)
        if self.state != LEG_ACTIVE:
            return 0
        if end:
            self.finish()
            return 0
        return r

    cdef void on_data(self, const char *p, Py_ssize_t n, bint end) noexcept:
        if self.state != LEG_ACTIVE:
            return
        if self.holding:
            self.holding = False
            if self.report_head(False, -1) == 0:
                return
        if self.blocked or ob_pending(&self.pend):
            ob_add(&self.pend, p, n)
            self.pend_end = end
            return
        self.deliver(p, n, end)

    cdef void deliver(self, const char *p, Py_ssize_t n, bint end) noexcept:
        """Offer response bytes to the owner; what it does not take waits in `pend` (not credited to the server
        until it is taken)."""
        cdef Stream s = self.s
        cdef Py_ssize_t took = self.owner.leg_data(self, p, n, end)
        if self.state != LEG_ACTIVE:
            return
        if took > 0 and s is not None:
            try:
                self.up.sess.consumed(s, took)
            except BaseException:
                pass
            self.up.want_flush()
        if took < n:
            if p != self.pend.data + self.pend.off:
                ob_add(&self.pend, p + took, n - took)
            else:
                self.pend.off += took
            self.pend_end = end
            self.blocked = True
            return
        if p == self.pend.data + self.pend.off:
            self.pend.off = 0
            self.pend.len = 0
        if end:
            self.finish()

    cdef void resume(self) noexcept:
        if self.state != LEG_ACTIVE or not self.blocked:
            return
        self.blocked = False
        if ob_pending(&self.pend):
            self.deliver(self.pend.data + self.pend.off, ob_pending(&self.pend),
                         self.pend_end and not self.pend_trailers)
            if self.state != LEG_ACTIVE or self.blocked:
                return
        if self.pend_trailers:
            self.trailers()
        elif self.pend_end:
            self.owner.leg_data(self, NULL, 0, True)
            if self.state == LEG_ACTIVE:
                self.finish()

    cdef void on_trailers(self) noexcept:
        cdef Stream s = self.s
        if self.state != LEG_ACTIVE:
            return
        if self.holding:
            # Head and trailers in one batch, no message between: the status decides before the head leaves.
            self.holding = False
            if self.report_head(False, grpc_status_in(s.trailers.data, s.trailers.fields, s.trailers.n)) == 0:
                return
        if self.blocked or ob_pending(&self.pend):
            self.pend_trailers = True
            self.pend_end = True
            return
        self.trailers()

    cdef void trailers(self) noexcept:
        cdef Stream s = self.s
        cdef int code
        if s is None:
            self.fail(PE_RESET)
            return
        if self.req.grpc:
            code = grpc_status_in(s.trailers.data, s.trailers.fields, s.trailers.n)
            count_grpc(self.pool.cluster.counters, code)
            self.ex.grpc_outcome(self.endpoint, code, self.pool.reactor.now)
        self.owner.leg_trailers(self, s.trailers.data, s.trailers.fields, s.trailers.n)
        if self.state == LEG_ACTIVE:
            self.finish()

    cdef void on_reset(self, uint32_t code) noexcept:
        """The stream failed: the server's RST_STREAM, a stream error, its GOAWAY (REFUSED_STREAM above the last
        id) or a connection error."""
        cdef Exchange ex = self.ex
        cdef int ep = self.endpoint
        cdef Stream s = self.s
        cdef int r
        self.s = None                    # the session closes it
        if s is not None and ob_pending(&self.pend):
            self.up.sess.consumed(s, ob_pending(&self.pend))    # never passed on: the connection's window back
        if self.state != LEG_ACTIVE:
            return
        if code == H2_REFUSED_STREAM:
            bump_field(&self.pool.refused, 1)
            if not self.head_done and not self.body_sent:
                # Never processed, nothing of the body left the owner: send it again elsewhere, at no cost.
                self.drop()
                ex.replay(ep)
                r = self.take()
                if r != PE_NONE:
                    self.fail(r)
                return
            self.stale = not self.head_done
        self.fail(PE_RESET)

    # ---- endings ---------------------------------------------------------------------------------

    cdef void cancel(self) noexcept:
        self.unwait()
        self.state = LEG_IDLE
        self.drop()
        self.owner = None

    cdef void tick(self, double now) noexcept:
        pass                             # connects time out in the pool's sweep (one clock per connection)

    cdef void fail(self, int err) noexcept:
        cdef LegOwner owner = self.owner
        self.state = LEG_IDLE
        self.drop()
        self.owner = None
        if owner is not None:
            owner.leg_failed(self, err)

    cdef void finish(self) noexcept:
        """The response ended (the owner has heard): a request still going up is cut short (the server has
        answered), and the stream's slot is given back."""
        self.state = LEG_DONE
        self.drop()
        self.owner = None

    cdef void drop(self) noexcept:
        """Leave the connection: reset the stream if it is still open, give its slot back."""
        cdef H2Upstream up = self.up
        cdef Stream s = self.s
        cdef H2Leg cur
        if up is None:
            return
        if self.holding:
            self.holding = False
            if up.held is self:
                up.held = self.next_held
            else:
                cur = up.held
                while cur is not None and cur.next_held is not self:
                    cur = cur.next_held
                if cur is not None:
                    cur.next_held = self.next_held
            self.next_held = None
        if s is not None:
            self.s = None
            s.user = None
            if up.state != H2_CLOSED:
                try:
                    if ob_pending(&self.pend):
                        up.sess.consumed(s, ob_pending(&self.pend))
                    if s.state != ST_CLOSED:
                        up.sess.reset(s, H2_NO_ERROR if self.state == LEG_DONE else H2_CANCEL)
                except BaseException:
                    pass
                up.want_flush()
        self.up = None
        if self.counted:
            self.counted = False
            up.detach(self)
        self.pend.off = 0
        self.pend.len = 0
