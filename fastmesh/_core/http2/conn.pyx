"""The HTTP/2 codec, downstream side: client connections that open with the HTTP/2 preface, and their streams.

An http listener's connection whose first bytes are HTTP/2's preface (prior knowledge) is handed here by the
HTTP/1 codec (http1/conn.pyx) with the bytes already read. The session (session.pyx) does the
protocol: frames, HPACK, stream states, flow control, validation and abuse limits; this file is the I/O and the
requests around it:
  connection  bytes in to Session.receive(); frames out of Session.out flushed once per event-loop pass (the
              reactor's `again`, after the events of the pass: many frames, one send); reading stops while the
              output is over its bound (the client is not reading)
  stream      one H2Request per stream, from a free list per connection: its Exchange (exchange.pyx) routes the
              view made of the decoded head (view.pyx) and decides deadlines, retries and their budget, breakers,
              reports, the header edits; a leg (upstream/leg.pxd; http1/leg.pyx for HTTP/1 clusters) carries each try
  filters     a route with request filters runs them on the stream as HTTP/1 does on a request (filters.pyx: the
              same FilterRequest, chain and outcomes) before the breakers admit it; an async filter parks only its
              stream (RQ_FILTER), and a filter's Answer goes out as given, also to a gRPC client
  body        request DATA is kept per stream and pulled by the leg as its connection takes it; the client's window
              is credited only then, so a stream holds at most its window (plus a body kept for a retry, up to
              REPLAY_MAX); response data goes out as the stream's and the connection's windows allow, the leg
              reading on only as it is taken
  answers     response heads and proxy errors rendered by render.pyx (gRPC requests get trailers-only errors);
              once a response has started, a failure is RST_STREAM with the error's code
  end         counters and the access log exactly as HTTP/1's (Front.count_request / count_answer / log_answer)
Deadlines are swept with the listener (HttpProxy.sweep): the request's deadline (504), the client's body clocks
(408), a wait for a connection slot (503), the try's response head (retry or 504), the leg's connect timeout,
the session's own clock, and the idle connection (GOAWAY, close). Draining sends the two-step graceful GOAWAY:
streams in flight finish, then the connection closes.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint32_t
from libc.string cimport memmove

from fastmesh._core.buffer cimport (
    RecvBuf, rb_read_edge, rb_avail, rb_release_if_empty, rb_free, ob_add, ob_flush, ob_send, ob_pending, ob_free,
)
from fastmesh._core.includes.system cimport (
    close, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP, EPOLLET,
)
from fastmesh._core.reactor cimport EventTarget
from fastmesh._core.stats cimport L_ACTIVE, L_BYTES_IN, L_BYTES_OUT, bump, bump_field, count_grpc
from fastmesh._core.tls.context cimport Tls, tls_release
from fastmesh._core.errors cimport (
    error_info, PE_NONE, PE_NO_ENDPOINTS, PE_PLUGIN, PE_PLUGIN_TIMEOUT,
)
from fastmesh._core.exchange cimport Exchange, V_RETRY
from fastmesh._core.request cimport RequestView, Field, METHOD_HEAD, find_field, fold_eq
from fastmesh._core.upstream.connector cimport Connector
from fastmesh._core.upstream.leg cimport (
    Leg, LegOwner, LEG_IDLE, LEG_ACTIVE, failed_verdict, clock_verdict, OWNER_WAIT, OWNER_RETRY,
)
from fastmesh._core.http1.conn cimport Front, Handoff
from fastmesh._core.http1.pool cimport HttpPool
from fastmesh._core.http1.leg cimport H1Leg
from fastmesh._core.upstream.h2pool cimport H2Pool, H2Leg
from fastmesh._core.http2.frames cimport H2_NO_ERROR
from fastmesh._core.http2.session cimport Session, ROLE_SERVER, RECV_ERROR
from fastmesh._core.http2.streams cimport Stream
from fastmesh._core.http2.limits cimport H2Limits
from fastmesh._core.http2.view cimport view_from_block
from fastmesh._core.http2.render cimport render_head, render_interim, render_error, render_answer
from fastmesh._core.filters cimport (
    FilterRequest, filter_request, answer_parts, run_chain, settle, respond, parked, FILTER_ANSWERED,
)
from fastmesh._core.debug cimport debug_new, debug_free, DBG_DOWNSTREAM

cdef uint32_t CONN_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef Py_ssize_t REPLAY_MAX = 65536     # a request body up to this size is kept whole, so a retry can send it again
cdef int FREE_MAX = 32                 # spare H2Request objects kept per connection
cdef double SESSION_TICK = 1.0         # seconds between the session's clock runs (SETTINGS ACK, GOAWAY, stalls)


cdef bint _expects_continue(const RequestView *v) noexcept:
    cdef int k = find_field(v.base, v.fields, v.num_fields, b"expect", 6, 0)
    return k >= 0 and v.fields[k].value_len == 12 and fold_eq(v.base + v.fields[k].value_off, b"100-continue", 12)


cdef Leg new_leg(Connector connector):
    """A leg for the cluster's connector: its protocol's kind."""
    if isinstance(connector, HttpPool):
        return H1Leg.__new__(H1Leg)
    if isinstance(connector, H2Pool):
        return H2Leg.__new__(H2Leg)
    return None


# ---- the listener's HTTP/2 side --------------------------------------------------------------------------------

cdef class H2Front(Handoff):
    """Built by dataplane/ for an http listener (HttpProxy.h2); takes the connections that open with the preface."""

    def __cinit__(self, Front front not None, H2Limits limits not None):
        self.front = front
        self.limits = limits

    def set_limits(self, H2Limits limits not None):
        """A reload: new connections use these; open ones get a graceful GOAWAY when the settings changed (their
        clients reconnect and learn the new ones), and finish their streams meanwhile."""
        cdef H2Conn c = self.head
        names = ("max_concurrent_streams", "initial_window", "connection_window", "max_frame_size",
                 "header_table_size", "max_header_list_size")
        changed = any(getattr(limits, k) != getattr(self.limits, k) for k in names)
        self.limits = limits
        if not changed:
            return
        while c is not None:
            c.sess.goaway(H2_NO_ERROR, True)
            c.want_flush()
            c = c.next

    cdef void adopt(self, int fd, RecvBuf *rbuf, const char *peer, int peer_len, const sockaddr_in6 *client, Tls *tls,
                    bytes identity) noexcept:
        cdef Front front = self.front
        cdef H2Conn c = H2Conn.__new__(H2Conn)
        cdef int i
        c.front = self
        c.fd = fd
        c.tls = tls
        c.identity = identity
        c.rbuf = rbuf[0]
        rbuf.data = NULL
        rbuf.start = 0
        rbuf.end = 0
        for i in range(min(peer_len, 48)):
            c.peer[i] = peer[i]
        c.peer_len = min(peer_len, 48)
        c.client = client[0]
        c.readable = True
        c.writable = True
        c.idle_since = front.reactor.now
        c.ticked = front.reactor.now
        c.next = self.head
        if self.head is not None:
            self.head.prev = c
        self.head = c
        self.active += 1
        bump_field(&self.accepted, 1)
        front.active += 1                  # the HTTP/1 connection it was counted as is gone
        front.counters[L_ACTIVE] += 1
        try:
            c.sess = ServerSession.__new__(ServerSession)
            c.sess.conn = c
            c.sess.setup(ROLE_SERVER, self.limits)
            c.sess.decoder.max_list_size = self.limits.max_header_list_size
            c.sess.tick(front.reactor.now)
        except Exception:
            c.close()
            return
        if self.draining:
            c.sess.goaway(H2_NO_ERROR, True)
        if front.reactor.modify(fd, c, 0, CONN_EVENTS) < 0:
            c.close()
            return
        c.run()

    cdef void unlink(self, H2Conn c) noexcept:
        if c.prev is not None:
            c.prev.next = c.next
        else:
            self.head = c.next
        if c.next is not None:
            c.next.prev = c.prev
        c.prev = None
        c.next = None
        self.active -= 1
        self.front.active -= 1
        self.front.counters[L_ACTIVE] -= 1

    cdef bint sweep(self, double now) noexcept:
        cdef H2Conn c = self.head
        cdef H2Conn nxt
        while c is not None:
            nxt = c.next
            c.sweep(now)
            c = nxt
        return self.head is not None

    cdef void drain(self) noexcept:
        cdef H2Conn c = self.head
        cdef H2Conn nxt
        self.draining = True
        while c is not None:
            nxt = c.next
            try:
                c.sess.goaway(H2_NO_ERROR, True)
            except Exception:
                pass
            c.want_flush()
            c = nxt

    cdef void close_all(self) noexcept:
        cdef H2Conn c
        while self.head is not None:
            c = self.head
            try:
                c.sess.goaway(H2_NO_ERROR, False)
            except Exception:
                pass
            if c.writable:
                ob_flush(&c.sess.out, c.fd, c.tls)
            c.close()

    def drain_now(self):
        """drain() from Python (tests, the listener's own drain)."""
        self.drain()

    def close_connections(self):
        self.close_all()


# ---- the session's events ------------------------------------------------------------------------------------

@cython.final
cdef class ServerSession(Session):

    cdef int on_headers(self, Stream s, bint end_stream) except -1:
        cdef H2Conn c = self.conn
        cdef H2Request r
        if c is None:
            return 0
        r = c.take_request()
        r.s = s
        s.user = r
        r.begin(s, end_stream)
        return 0

    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        cdef H2Request r = <H2Request>s.user if s.user is not None else None
        if r is None:
            self.consumed(s, n)
            return 0
        r.on_body(data, n, end_stream)
        return 0

    cdef int on_trailers(self, Stream s) except -1:
        cdef H2Request r = <H2Request>s.user if s.user is not None else None
        if r is not None:
            r.on_body(NULL, 0, True)
        return 0

    cdef int on_rejected(self, Stream s, int status) except -1:
        # The session answered a head it could not take (431): counted like any answer of ours.
        if self.conn is not None:
            self.conn.front.front.count_request(status)
        return 0

    cdef int on_window(self, Stream s) except -1:
        cdef H2Request r = <H2Request>s.user if s.user is not None else None
        if r is None:
            return 0
        if r.answer_body is not None:
            r.send_answer()
            self.conn.want_flush()
        elif r.leg is not None:
            r.leg.resume()
        return 0

    cdef int on_stream_closed(self, Stream s) except -1:
        cdef H2Request r = <H2Request>s.user if s.user is not None else None
        if r is not None:
            r.stream_closed()
        return 0


# ---- one stream's request --------------------------------------------------------------------------------------

@cython.final
cdef class H2Request(LegOwner):

    # ---- the request ----------------------------------------------------------------------------------------

    cdef void begin(self, Stream s, bint end_stream) noexcept:
        cdef H2Conn c = self.conn
        cdef Front front = c.front.front
        cdef Exchange ex = self.ex
        cdef double now = front.reactor.now
        cdef int err
        ex.begin(now)
        self.serial += 1
        self.state = RQ_ACTIVE
        self.status = 0
        self.err = 0
        self.ex_in = 0
        self.ex_out = 0
        self.body.len = 0
        self.body.off = 0
        self.body_off = 0
        self.body_end = end_stream
        self.keep_body = True
        self.resp_started = False
        self.resp_done = False
        self.prev = None
        self.next = c.busy
        if c.busy is not None:
            c.busy.prev = self
        c.busy = self
        bump_field(&c.front.streams, 1)
        view_from_block(&self.view, &self.req, &s.head, s.content_length, end_stream)
        self.head_only = self.view.method == METHOD_HEAD
        # A gRPC call's request stream may last as long as its deadline (grpc-timeout, the cluster's timeout): no
        # whole-body limit, only the silence limit between messages (idle_timeout). Other requests get body_timeout.
        ex.body_begins(now, 0.0 if self.req.grpc else front.body_timeout, end_stream)
        if front.access_log is not None:
            ex.log_begin((self.view.method_token.ptr[:self.view.method_token.len],
                          self.req.authority.ptr[:self.req.authority.len],
                          self.view.path.ptr[:self.view.path.len] + self.view.query.ptr[:self.view.query.len]),
                         &self.view, &front.rules)
        err = ex.route_request(front.router, front.pools, &self.view, &front.rules, now)
        if err:
            self.answer(err)
            return
        self.freq = None
        if front.chains is not None and front.chains[ex.route] is not None:
            self.run_filters(front.chains[ex.route])
            return
        self.forward()

    cdef void forward(self) noexcept:
        """The routed request goes upstream: the breakers admit it, the first try starts."""
        cdef Exchange ex = self.ex
        cdef int err = ex.admit(self.body_end and self.keep_body, False, self.conn.front.front.reactor.now)
        if err:
            self.answer(err)
            return
        self.send_try()

    # ---- request filters (filters.pyx): only routes that have them come here --------------------------------

    cdef void run_filters(self, object chain) noexcept:
        """Hand the request to its route's filter chain; an async one parks this stream alone (RQ_FILTER): the
        view stays valid (it points into the stream's header block), and DATA that comes meanwhile is kept, within
        the stream's window."""
        cdef Front front = self.conn.front.front
        cdef Exchange ex = self.ex
        cdef FilterRequest r = filter_request(&self.view, self.s.head.len, front.name, self.conn.peer,
                                              self.conn.peer_len, ex.route, ex.router.cluster_names, ex.cluster,
                                              ex.trace_id(), ex.identity)
        self.freq = r
        outcome = run_chain(chain, r)
        if parked(outcome):
            r.owner = self
            self.state = RQ_FILTER
            self.filter_deadline = front.reactor.now + front.filter_wait
            return
        self.filtered(outcome)

    def _filter_resumed(self, outcome):
        """The async filters of the parked stream are done (called once, by FilterRequest._resume)."""
        if self.state != RQ_FILTER or self.conn is None:
            return                             # reset or answered meanwhile
        self.state = RQ_ACTIVE
        self.conn.front.front.reactor.refresh_now()
        self.filtered(outcome)
        if self.conn is not None:
            self.conn.want_flush()

    cdef void filtered(self, object outcome) noexcept:
        """Apply the chain's outcome (filters.pyx's settle): go on (edits, a new cluster), answer, or fail."""
        cdef Front front = self.conn.front.front
        cdef int err = settle(self.freq, outcome, self.ex, front.pools, &self.view, &front.rules, front.reactor.now)
        if err == PE_NONE:
            self.forward()
        elif err == FILTER_ANSWERED:
            self.respond_answer(outcome)
        else:
            self.answer(err)

    cdef void respond_answer(self, object answer) noexcept:
        """A filter answered the request itself: its Answer goes to the client as the filter gave it (to a gRPC
        client too: a filter that speaks gRPC spells its grpc-status), counted and logged like any answer."""
        cdef H2Conn c = self.conn
        try:
            status, _, fields, body = answer_parts(answer, self.freq)
        except BaseException:
            self.answer(PE_PLUGIN)
            return
        self.resp_done = True
        self.status = status
        if self.s is not None:
            length = len(body)
            if self.head_only or not length:
                body = None
            try:
                render_answer(c.sess, self.s, status, fields, length, body is None)
            except Exception:
                body = None
            self.answer_body = body
            self.answer_off = 0
            if body is None:
                self.answered_early()
            else:
                self.send_answer()
            c.want_flush()
        self.finish()

    cdef void send_answer(self) noexcept:
        """What is left of a filter's answer body, as the stream's and the connection's windows let it through (the
        session's on_window brings the rest); the whole of it ends the stream."""
        cdef bytes body = self.answer_body
        cdef Py_ssize_t n, took
        if body is None or self.s is None:
            self.answer_body = None
            return
        n = len(body) - self.answer_off
        try:
            took = self.conn.sess.send_data(self.s, PyBytes_AS_STRING(body) + self.answer_off, n, True)
        except Exception:
            took = n
        self.answer_off += took
        if took < n:
            return
        self.answer_body = None
        self.answered_early()

    cdef void forget_filters(self) noexcept:
        """The request ended: an async chain still running finds nobody to resume."""
        if self.freq is not None:
            self.freq.owner = None

    cdef void send_try(self) noexcept:
        """Start the next try on a leg of the cluster's kind (or answer why not)."""
        cdef Exchange ex = self.ex
        cdef int err
        self.conn.front.front.reactor.refresh_now()
        if self.leg is None or not self.leg.fits(ex.connector):
            self.leg = new_leg(ex.connector)
            if self.leg is None:
                self.answer(PE_NO_ENDPOINTS)
                return
        self.body_off = 0
        err = self.leg.start(self, ex, &self.req)
        if err != PE_NONE:
            self.answer(err)

    cdef void on_body(self, const char *p, Py_ssize_t n, bint end) noexcept:
        """DATA (or trailers, n == 0 with end) from the client."""
        cdef Front front = self.conn.front.front
        if self.state != RQ_ACTIVE and self.state != RQ_BACKOFF and self.state != RQ_FILTER:
            # Answered already: the bytes go nowhere, but the client's window is given back.
            if n and self.s is not None:
                self.conn.sess.consumed(self.s, n)
            return
        if n:
            if self.keep_body and self.body.len + n > REPLAY_MAX:
                # Too big to send again: from now on the bytes a try took are dropped.
                self.keep_body = False
                if self.body_off:
                    memmove(self.body.data, self.body.data + self.body_off, self.body.len - self.body_off)
                    self.body.len -= self.body_off
                    self.body_off = 0
            ob_add(&self.body, p, n)
            self.ex_in += n
            self.ex.body_arrived(front.reactor.now)
        if end:
            self.body_end = True
            if self.keep_body:
                self.ex.replayable = True      # whole and kept: a retry may send it again
        if self.state == RQ_ACTIVE and self.leg is not None:
            self.leg.request_ready()

    # ---- the leg's view of the request (LegOwner) ------------------------------------------------------------

    cdef Py_ssize_t body_peek(self, const char **p) noexcept:
        p[0] = self.body.data + self.body_off
        return self.body.len - self.body_off

    cdef void body_took(self, Py_ssize_t n) noexcept:
        cdef Front front = self.conn.front.front
        self.body_off += n
        if self.s is not None:
            self.conn.sess.consumed(self.s, n)      # the client may send that much more
            self.conn.want_flush()
        if not self.keep_body and self.body_off == self.body.len:
            self.body.len = 0
            self.body_off = 0
        if self.body_off == self.body.len and not self.body_end:
            # The upstream took all that came: it owes nothing until more does (its clock starts over).
            self.ex.restart_clock(front.reactor.now)

    cdef bint body_ended(self) noexcept:
        return self.body_end and self.body_off == self.body.len

    cdef int body_trailers(self, const char **base, const Field **fields) noexcept:
        if self.s is None or self.s.trailers.n == 0:
            return 0
        base[0] = self.s.trailers.data
        fields[0] = self.s.trailers.fields
        return self.s.trailers.n

    # ---- the response (LegOwner) ---------------------------------------------------------------------------

    cdef void leg_info(self, Leg leg, int status, const char *base, const Field *fields, int n) noexcept:
        """An interim answer goes out as a HEADERS frame without END_STREAM; a 100 Continue only to a client that
        asked for it (`expect: 100-continue`) and still has body to send."""
        if self.s is None or self.resp_started:
            return
        if status == 100 and (self.body_end or not _expects_continue(&self.view)):
            return
        try:
            render_interim(self.conn.sess, self.s, status, base, fields, n)
        except Exception:
            pass
        self.conn.want_flush()

    cdef int leg_head(self, Leg leg, int status, const char *base, const Field *fields, int n, bint end) noexcept:
        cdef Exchange ex = self.ex
        cdef double now = self.conn.front.front.reactor.now
        cdef bint marked = status >= 500 and find_field(base, fields, n, b"fastmesh-retried", 16, 0) >= 0
        cdef int err
        if ex.response(leg.endpoint, status, marked, now) == V_RETRY:
            leg.cancel()
            self.retry_later()
            return 0
        if self.freq is not None and self.freq.responder is not None:
            # The route's response filters see the head first (filters.pyx's respond).
            err = respond(self.freq, status, base, fields, n, &ex.response_edits)
            if err != PE_NONE:
                _alive = self                  # the leg holds us; cancel() lets go: stay alive until we return
                leg.cancel()
                if err == FILTER_ANSWERED:
                    self.respond_answer(self.freq.answer)
                else:
                    self.answer(err)
                return 0
            if self.freq.resp.kept_n >= 0:
                fields = self.freq.resp.kept
                n = self.freq.resp.kept_n
        self.status = status
        self.resp_started = True
        if end:
            self.resp_done = True
        if self.s is not None:
            try:
                render_head(self.conn.sess, self.s, status, base, fields, n, &ex.response_edits,
                            ex.retried_mark(status, marked), end)
            except Exception:
                pass
            self.conn.want_flush()
        if end:
            self.finish()
        return 1

    cdef Py_ssize_t leg_data(self, Leg leg, const char *p, Py_ssize_t n, bint end) noexcept:
        cdef Py_ssize_t took
        if self.s is None:
            if end:
                self.resp_done = True
                self.finish()
            return n                           # the client is gone: the bytes go nowhere
        if end:
            self.resp_done = True              # set first: the stream may close inside send_data
        try:
            took = self.conn.sess.send_data(self.s, p, n, end)
        except Exception:
            took = n
        self.ex_out += took
        self.conn.want_flush()
        if took < n:
            self.resp_done = False
            return took
        if end:
            self.finish()
        return took

    cdef void leg_trailers(self, Leg leg, const char *base, const Field *fields, int n) noexcept:
        self.resp_done = True
        if self.s is not None:
            try:
                self.conn.sess.send_trailers(self.s, base, fields, n)
            except Exception:
                pass
            self.conn.want_flush()
        self.finish()

    cdef void leg_failed(self, Leg leg, int err) noexcept:
        if self.state != RQ_ACTIVE:
            return
        # After the head (PE_RESET) the client hears it as a reset stream.
        err = failed_verdict(self.ex, leg, err, self.conn.front.front.reactor.now)
        if err == OWNER_RETRY:
            self.retry_later()
        else:
            self.answer(err)

    # ---- retries and clocks --------------------------------------------------------------------------------

    cdef void retry_later(self) noexcept:
        """The exchange decided to send the request again: wait its backoff (the body is kept whole)."""
        self.state = RQ_BACKOFF
        self.body_off = 0
        self.conn.front.front.reactor.loop.call_later(self.ex.backoff, self._retry_now, self.serial)

    def _retry_now(self, unsigned long long serial):
        if self.state != RQ_BACKOFF or self.conn is None or serial != self.serial:
            return                             # the request ended meanwhile (this object may carry another)
        self.state = RQ_ACTIVE
        self.ex.next_try(self.conn.front.front.reactor.now)
        self.send_try()
        if self.conn is not None:
            self.conn.want_flush()

    cdef bint awaits_client(self) noexcept:
        """Whether the request body is the client's move: the try has taken every body byte that came."""
        return (not self.body_end and self.leg is not None and self.leg.state == LEG_ACTIVE
                and self.body_off == self.body.len)

    cdef void check(self, double now) noexcept:
        """The sweep: whose clock ran out (http1/proxy.pyx's rules, per stream)."""
        cdef int r
        if self.state == RQ_FILTER:
            if now >= self.filter_deadline:
                # The chain outlived every filter's timeout and its margin (filter_wait): give up on it.
                self.answer(PE_PLUGIN_TIMEOUT)
            return
        if self.state != RQ_ACTIVE or self.resp_started:
            return
        r = clock_verdict(self.ex, self.leg, self.body_end, self.awaits_client(), self.conn.front.front.idle_timeout,
                          now)
        if r == OWNER_RETRY:
            self.retry_later()
        elif r != OWNER_WAIT:
            self.answer(r)

    # ---- endings --------------------------------------------------------------------------------------------

    cdef void answer(self, int err) noexcept:
        """Answer with ProxyError err (render.pyx), or reset the stream with its code once a response started."""
        cdef H2Conn c = self.conn
        cdef int status = error_info(err).status
        if self.leg is not None and self.leg.state != LEG_IDLE:
            self.leg.cancel()
        if self.state == RQ_ENDED:
            return
        self.resp_done = True
        self.err = err
        if self.s is not None:
            try:
                if self.resp_started:
                    c.sess.reset(self.s, error_info(err).rst_code)
                else:
                    status = render_error(c.sess, self.s, err, self.ex.retry_after, self.req.grpc,
                                          self.ex.retried_mark(status, False), self.head_only, self.ex.retry_ms)
                    self.status = status
                    if self.req.grpc and self.ex.cluster >= 0:
                        count_grpc(self.ex.connector.cluster.counters, error_info(err).grpc_status)
                    self.answered_early()
            except Exception:
                pass
            c.want_flush()
        elif not self.resp_started:
            self.status = status
        self.finish()

    cdef void answered_early(self) noexcept:
        """Our whole answer went out before the request ended: the client may stop sending (RFC 9113 8.1)."""
        if self.s is not None and not self.body_end:
            try:
                self.conn.sess.reset(self.s, H2_NO_ERROR)
            except Exception:
                pass

    cdef void finish(self) noexcept:
        """The request left the books (once): breaker slots back, counters, the access log."""
        cdef H2Conn c = self.conn
        cdef Front front = c.front.front
        cdef double now = front.reactor.now
        if self.state == RQ_ENDED:
            return
        self.state = RQ_ENDED
        self.forget_filters()
        self.ex.end(self.leg)
        front.count_request(self.status)
        bump_field(&front.bytes_out, self.ex_out)
        bump(front.counters + L_BYTES_IN, self.ex_in)
        bump(front.counters + L_BYTES_OUT, self.ex_out)
        front.count_answer(self.ex.cluster, self.status, now - self.ex.started)
        if front.access_log is not None or self.ex.span:
            self.ex.log_answer(front.access_log, self.leg.endpoint if self.leg is not None else -1, self.status,
                               self.ex_in, self.ex_out, now, self.err)
        c.unbusy(self)
        if self.s is None:
            c.recycle(self)

    cdef void stream_closed(self) noexcept:
        """The session closed the stream: after our whole answer, or a reset (the client's, or a stream error)."""
        self.s = None
        if self.state == RQ_ENDED:
            self.conn.recycle(self)
            return
        if self.resp_done:
            return                             # our answer ended it; finish() follows in the same call
        # The client reset the stream (or it broke): nobody to answer. The try is abandoned, not counted.
        if self.leg is not None and self.leg.state != LEG_IDLE:
            self.leg.cancel()
        self.status = 0
        self.resp_done = True
        self.ex.log_fields = None
        self.state = RQ_ENDED
        self.forget_filters()
        self.ex.end(self.leg)
        self.conn.unbusy(self)
        self.conn.recycle(self)


# ---- the connection --------------------------------------------------------------------------------------------

@cython.final
cdef class H2Conn(EventTarget):

    def __cinit__(self):
        self.fd = -1
        if FASTMESH_DEBUG:
            debug_new(DBG_DOWNSTREAM)

    def __dealloc__(self):
        if FASTMESH_DEBUG:
            debug_free(DBG_DOWNSTREAM)

    cdef void on_events(self, uint32_t events, int side) noexcept:
        if self.closed:
            return
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.hangup = True         # no further edge comes: read on until the EOF itself
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
        if self.tls != NULL:
            # OpenSSL may wait on the other direction than the call it blocked (tls/context.pyx).
            if events & EPOLLOUT and self.tls.read_wants_out:
                self.readable = True
            if events & EPOLLIN and self.tls.write_wants_in:
                self.writable = True
        self.run()

    cdef void on_again(self) noexcept:
        """The end of a loop pass: send what the pass produced, in one go."""
        self.flush_due = False
        if self.closed:
            return
        if self.flush() >= 0 and not self.closed and (self.readable or rb_avail(&self.rbuf)) \
                and not self.sess.paused():
            self.run()

    cdef void run(self) noexcept:
        """Read what the client sent and give it to the session; its frames out leave at the end of the pass."""
        cdef Front front = self.front.front
        cdef Py_ssize_t n, avail, used
        while not self.closed:
            avail = rb_avail(&self.rbuf)
            if avail > 0 and not self.sess.paused():
                try:
                    used = self.sess.receive(self.rbuf.data + self.rbuf.start, avail, front.reactor.now)
                except Exception:
                    used = RECV_ERROR
                if self.closed:
                    return
                if used < 0:
                    # A connection error: GOAWAY is queued; send it and close.
                    self.readable = False
                    self.rbuf.start = self.rbuf.end
                    if self.writable:
                        ob_flush(&self.sess.out, self.fd, self.tls)
                    self.close()
                    return
                self.rbuf.start += used
                if used and used < avail:
                    continue
            if self.sess.paused():
                break                          # the client reads too slowly: flush before taking more
            if not self.readable:
                break
            n = rb_read_edge(&self.rbuf, self.fd, front.buffers, &self.readable, self.hangup, self.tls)
            if n > 0:
                bump_field(&front.bytes_in, <unsigned long long>n)
                continue
            if n == -1 and not self.readable:
                break                          # EAGAIN: wait for the next edge
            # The client closed (or reset): streams in flight are abandoned. (-2, a frame bigger than a buffer,
            # cannot happen under the session's max_frame_size.)
            self.close()
            return
        if not self.closed:
            rb_release_if_empty(&self.rbuf, front.buffers)
            self.want_flush()

    cdef void want_flush(self) noexcept:
        if not self.flush_due and not self.closed:
            self.flush_due = True
            self.front.front.reactor.again(self)

    cdef int flush(self) noexcept:
        """Send sess.out: 1 all sent, 0 the socket is full, -1 closed."""
        cdef int r
        if ob_pending(&self.sess.out):
            r = ob_send(&self.sess.out, self.fd, &self.writable, self.tls)
            if r < 0:
                self.close()
                return -1
            if r == 0:
                return 0
            try:
                self.sess.drained()            # streams held back by the output bound may send again
            except Exception:
                pass
            if ob_pending(&self.sess.out):
                self.want_flush()
        if self.sess.finished() and not ob_pending(&self.sess.out):
            self.close()
            return -1
        return 1

    cdef H2Request take_request(self) noexcept:
        cdef H2Request r = self.free
        if r is not None:
            self.free = r.next
            self.nfree -= 1
            r.next = None
            return r
        r = H2Request.__new__(H2Request)
        r.conn = self
        r.ex = Exchange.__new__(Exchange)
        r.ex.set_peer(self.peer, self.peer_len)
        r.ex.set_client(&self.client, self.fd)
        r.ex.set_identity(self.identity)
        return r

    cdef void unbusy(self, H2Request r) noexcept:
        """r's request left the books: off the swept list."""
        if r.prev is not None:
            r.prev.next = r.next
        else:
            self.busy = r.next
        if r.next is not None:
            r.next.prev = r.prev
        r.prev = None
        r.next = None

    cdef void recycle(self, H2Request r) noexcept:
        r.s = None
        r.state = RQ_FREE
        r.ex.log_fields = None
        r.freq = None
        r.answer_body = None
        if self.closed or self.nfree >= FREE_MAX:
            ob_free(&r.body)
            r.conn = None
            return
        if r.body.cap > REPLAY_MAX:
            ob_free(&r.body)                   # a big body's buffer is not kept
        r.body.len = 0
        r.next = self.free
        self.free = r
        self.nfree += 1

    cdef void sweep(self, double now) noexcept:
        cdef Front front = self.front.front
        cdef H2Request r = self.busy
        cdef H2Request nxt
        if self.closed:
            return
        if now - self.ticked >= SESSION_TICK:
            self.ticked = now
            try:
                if self.sess.tick(now) < 0:
                    if self.writable:
                        ob_flush(&self.sess.out, self.fd, self.tls)
                    self.close()
                    return
            except Exception:
                self.close()
                return
        while r is not None and not self.closed:
            nxt = r.next
            r.check(now)
            r = nxt
        if self.closed:
            return
        if self.sess.num_streams == 0 and self.busy is None:
            if self.idle_since == 0:
                self.idle_since = now
            elif self.free is not None:
                self.rest()
            if now - self.idle_since >= front.idle_timeout:
                # Idle too long: a GOAWAY saying no stream was lost, then the close.
                try:
                    self.sess.goaway(H2_NO_ERROR, False)
                except Exception:
                    pass
                if self.writable:
                    ob_flush(&self.sess.out, self.fd, self.tls)
                self.close()
                return
        else:
            self.idle_since = 0
        if ob_pending(&self.sess.out) or self.sess.finished():
            self.want_flush()

    cdef void rest(self) noexcept:
        """An idle connection (swept twice without a stream) gives back its spare requests and their buffers, and
        its session's empty output buffer, so it costs little more than its session's state; a busy one keeps them
        for its next streams."""
        cdef H2Request r
        if self.sess is not None and not ob_pending(&self.sess.out):
            ob_free(&self.sess.out)
        while self.free is not None:
            r = self.free
            self.free = r.next
            r.next = None
            r.conn = None
            ob_free(&r.body)
        self.nfree = 0

    cdef void close(self) noexcept:  # no-cython-lint
        cdef H2Front front = self.front
        cdef H2Request r
        if self.closed:
            return
        self.closed = True
        # Requests in flight are abandoned: their tries cancelled, their slots given back.
        while self.busy is not None:
            r = self.busy
            self.busy = r.next
            r.prev = None
            r.next = None
            if r.leg is not None and r.leg.state != LEG_IDLE:
                r.leg.cancel()
            if r.state != RQ_ENDED:
                r.state = RQ_ENDED
                r.forget_filters()
                r.ex.end(r.leg)
            r.s = None
            r.conn = None
            ob_free(&r.body)
        self.rest()
        if self.sess is not None:
            self.sess.conn = None
            self.sess.release()
        if self.tls != NULL:
            tls_release(&self.tls)
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
            if front.front.limit is not None:
                front.front.limit.release()
        rb_free(&self.rbuf, front.front.buffers)
        front.front.reactor.bury(self)
        front.unlink(self)
