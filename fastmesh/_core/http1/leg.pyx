"""The HTTP/1 leg: one try of a downstream stream's request over an HttpPool connection (upstream/leg.pxd).

The steps are the HTTP/1 codec's (conn.pyx), driven from a stream instead of a client socket:
  connection  HttpPool.acquire() through the exchange's endpoint walk: an idle keep-alive connection or a new
              connect; a failed connect fails over (the pool marks the endpoint); a full connection breaker
              queues the leg (slot_free() resumes it) or refuses with PE_OVERLOADED
  request     render_view_request() (render.pyx) from the request view and the exchange's edits: Host from the
              authority, Cookie fields joined, `te` dropped, the deadline digits stamped with this try's budget;
              the body pulled from the owner as the connection takes it: as it came with a content-length, else
              chunked (the owner's trailer fields in the last chunk)
  response    parse_response() (parser.pyx); interim answers handed to the owner (leg_info); the body framed by
              body.pyx/framing.pyx and handed over as data: chunked coding decoded, trailer fields of the last
              chunk passed on less those the parser knows by name (framing and hop-by-hop ones)
  end         the connection back to the pool when both the request and the response ended cleanly
Backpressure both ways: a body byte leaves the owner only when the connection's queue is empty (at most
SEND_CHUNK bytes are copied at a time), and the leg reads the next response bytes only when the owner took the
previous ones. A bodiless idempotent request whose reused keep-alive connection was already dead is sent again
on another connection at no cost, as conn.pyx does.
"""
from fastmesh._core.buffer cimport rb_read_edge, rb_avail, ob_add, ob_send
from fastmesh._core.errors cimport (
    connect_error, PE_NONE, PE_NO_ENDPOINTS, PE_RESET, PE_BAD_RESPONSE,
)
from fastmesh._core.exchange cimport Exchange, replayable_method
from fastmesh._core.request cimport Field
from fastmesh._core.upstream.connector cimport Connector
from fastmesh._core.upstream.leg cimport (
    Leg, LegOwner, LegRequest, LEG_IDLE, LEG_CONNECTING, LEG_ACTIVE, LEG_DONE,
)
from fastmesh._core.http1.parser cimport (
    Head, Limits, limits_init, head_reset, parse_response, parse_fields, FIELD_OTHER, HEAD_MAX_FIELDS,
)
from fastmesh._core.http1.framing cimport (
    response_body, keep_alive, chunked_init, chunked_feed, chunk_size_line, BODY_CHUNKED, BODY_TUNNEL, BODY_UNTIL_CLOSE,
    CHUNK_DONE, CHUNK_LINE_MAX,
)
from fastmesh._core.http1.body cimport frame_init, frame_take
from fastmesh._core.http1.pool cimport Upstream, HttpPool, UP_CONNECTING
from fastmesh._core.http1.render cimport render_view_request

cdef Py_ssize_t SEND_CHUNK = 65536      # request body bytes copied into the connection's queue at a time

# Transient heads: parsed, reported and forgotten within one call (a worker is single-threaded).
cdef Head SCRATCH                       # a response head
cdef Head TRAILERS                      # the trailer section of a chunked response that just ended
cdef Field KEPT[HEAD_MAX_FIELDS]        # the trailer fields passed on
cdef Limits RESP_LIMITS
limits_init(&RESP_LIMITS)


cdef class H1Leg(Leg):
    """Made by a stream for a cluster whose connector is an HttpPool; reused for each try and request."""

    cdef bint fits(self, Connector connector) noexcept:
        return isinstance(connector, HttpPool)

    # ---- the try ---------------------------------------------------------------------------------

    cdef int start(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept:
        self.begin_try(owner, ex, req)
        self.pool = <HttpPool>ex.connector
        self.resp_started = False
        self.up_keep = False
        self.blocked = False
        self.pending = 0
        self.skip = 0
        self.chunked = req.has_body and req.content_length < 0
        return self.take()

    cdef int take(self) noexcept:
        """A connection for the try, and the request head queued on it: PE_NONE (connecting, ready or queued for
        a slot), or the ProxyError to answer with."""
        cdef Exchange ex = self.ex
        cdef int outcome
        cdef Upstream up = self.pool.acquire(self, ex, &outcome)
        ex.connected(-1, self.pool.reactor.now)
        if up is None:
            return self.no_connection(outcome)
        self.up = up
        self.endpoint = up.endpoint
        self.pool.cluster.upstream_start(up.endpoint)
        render_view_request(&up.out, self.req.view, self.req.authority, ex.router, ex.route, &ex.request_edits,
                            self.req.content_length, self.chunked, ex.budget_ms(self.pool.reactor.now), self.req.grpc)
        if up.state == UP_CONNECTING:
            self.state = LEG_CONNECTING
        else:
            self.state = LEG_ACTIVE
            self.pool.reactor.again(self)       # a reused connection: send in this loop pass, after the events
        return PE_NONE

    cdef void request_ready(self) noexcept:
        if self.state == LEG_ACTIVE and not self.req_done:
            self.run()

    cdef void resume(self) noexcept:
        if self.state == LEG_ACTIVE and self.blocked:
            self.blocked = False
            self.run()

    cdef void cancel(self) noexcept:
        self.unwait()
        self.drop(False)
        self.state = LEG_IDLE
        self.owner = None

    cdef void tick(self, double now) noexcept:
        cdef Upstream up = self.up
        if up is not None and up.state == UP_CONNECTING and now >= up.deadline:
            up.fail(0)

    # ---- connection events -----------------------------------------------------------------------

    cdef void on_again(self) noexcept:
        self.run()

    cdef void upstream_ready(self, Upstream up) noexcept:
        if up is self.up:
            if self.state == LEG_CONNECTING and up.state != UP_CONNECTING:
                self.state = LEG_ACTIVE
            self.run()

    cdef void upstream_failed(self, Upstream up, int err) noexcept:
        """A connect failed or timed out: the request never reached a backend, so another endpoint may take it."""
        cdef int r
        if up is not self.up:
            up.pool.cluster.connect_failed(up.endpoint, err, up.pool.reactor.now)
            return
        self.pool.connect_failed(&self.ex.ct, up.endpoint, err)
        self.drop(False)
        r = self.take()
        if r != PE_NONE:
            self.fail(connect_error(err) if r == PE_NO_ENDPOINTS else r)

    # ---- moving bytes ----------------------------------------------------------------------------

    cdef void run(self) noexcept:
        if self.state != LEG_ACTIVE or self.up is None or self.up.state == UP_CONNECTING:
            return
        if self.send_request() < 0 or self.state != LEG_ACTIVE:
            return
        if not self.blocked:
            self.read_response()

    cdef int send_request(self) noexcept:
        """Queue and send the request: 0 done for now, -1 when the connection failed (reported)."""
        cdef Upstream up = self.up
        cdef LegOwner owner = self.owner
        cdef const char *p
        cdef const char *tbase
        cdef const Field *tf
        cdef char line[CHUNK_LINE_MAX]
        cdef Py_ssize_t n
        cdef int r, i, nt
        while True:
            r = ob_send(&up.out, up.fd, &up.writable, up.tls)
            if r < 0:
                self.lost()
                return -1
            if r == 0:
                return 0
            if self.req_done:
                return 0
            n = owner.body_peek(&p)
            if n > 0:
                if n > SEND_CHUNK:
                    n = SEND_CHUNK
                if self.chunked:
                    ob_add(&up.out, line, chunk_size_line(line, <unsigned long long>n))
                ob_add(&up.out, p, n)
                if self.chunked:
                    ob_add(&up.out, "\r\n", 2)
                owner.body_took(n)
                if self.state != LEG_ACTIVE or self.up is not up:
                    return -1
                continue
            if not owner.body_ended():
                return 0
            if self.chunked:
                # The last chunk, with the client's trailer fields (the session refused framing ones).
                ob_add(&up.out, "0\r\n", 3)
                nt = owner.body_trailers(&tbase, &tf)
                for i in range(nt):
                    ob_add(&up.out, tbase + tf[i].name_off, tf[i].name_len)
                    ob_add(&up.out, ": ", 2)
                    ob_add(&up.out, tbase + tf[i].value_off, tf[i].value_len)
                    ob_add(&up.out, "\r\n", 2)
                ob_add(&up.out, "\r\n", 2)
            self.req_done = True

    cdef void read_response(self) noexcept:
        cdef Upstream up = self.up
        cdef Py_ssize_t n
        cdef int r
        while self.state == LEG_ACTIVE and self.up is up:
            if self.head_done:
                r = self.pass_body()
                if r < 0 or self.blocked:
                    return
                if r > 0:
                    continue
            elif rb_avail(&up.rbuf) > 0:
                n = parse_response(up.rbuf.data + up.rbuf.start, rb_avail(&up.rbuf), &SCRATCH, &RESP_LIMITS)
                if n > 0:
                    if self.on_head(n) <= 0:
                        return
                    continue
                if n < 0:
                    self.fail(PE_BAD_RESPONSE)
                    return
            if not up.readable:
                return
            n = rb_read_edge(&up.rbuf, up.fd, self.pool.reactor.buffers, &up.readable, up.hangup, up.tls)
            if n > 0:
                self.resp_started = True
                continue
            if n == -1 and not up.readable:
                return                            # EAGAIN
            if n == -2:
                # A head that does not fit a buffer; a body never fills one (each read is passed on first).
                self.fail(PE_BAD_RESPONSE)
                return
            # EOF or reset.
            if self.head_done:
                if n == 0 and self.resp.kind == BODY_UNTIL_CLOSE:
                    # A body delimited by the close: this is its end.
                    self.resp.done = True
                    continue
                self.fail(PE_RESET)
            elif self.resp_started:
                self.fail(PE_BAD_RESPONSE)
            else:
                self.lost()
            return

    cdef int on_head(self, Py_ssize_t head_len) noexcept:
        """A response head is in SCRATCH: 1 to read its body, 0 when the leg ended or the owner dropped it."""
        cdef Head *h = &SCRATCH
        cdef Upstream up = self.up
        cdef long long length
        cdef int kind, r, status = h.status
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the owner passes it on if its client can take it.
            self.owner.leg_info(self, status, up.rbuf.data + up.rbuf.start, h.headers, h.num_headers)
            if self.up is not up or self.state != LEG_ACTIVE:
                return 0
            up.rbuf.start += head_len
            return 1
        kind = response_body(h, self.req.view.method, False, &length)
        if kind < 0 or kind == BODY_TUNNEL:
            self.fail(PE_BAD_RESPONSE)           # HTTP/2 has no upgrade to switch to
            return 0
        frame_init(&self.resp, kind, length, &RESP_LIMITS)
        if kind == BODY_CHUNKED:
            chunked_init(&self.resp.dec, &RESP_LIMITS, &TRAILERS)
        self.up_keep = keep_alive(h, kind)
        self.head_done = True
        r = self.owner.leg_head(self, status, up.rbuf.data + up.rbuf.start, h.headers, h.num_headers,
                                self.resp.done)
        if self.up is not up or self.state != LEG_ACTIVE:
            return 0
        up.rbuf.start += head_len
        if r == 0:
            return 0
        if self.resp.done:
            self.finish()
            return 0
        return 1

    cdef int pass_body(self) noexcept:
        """Hand response data to the owner: 1 progress, 0 wait (for bytes or the owner), -1 the leg ended."""
        cdef Upstream up = self.up
        cdef Py_ssize_t n, avail, off, dlen, took, q
        cdef char *p
        cdef bint last
        if self.pending > 0:
            last = self.resp.done and self.resp.kind != BODY_CHUNKED
            took = self.owner.leg_data(self, up.rbuf.data + up.rbuf.start, self.pending, last)
            if self.up is not up or self.state != LEG_ACTIVE:
                return -1
            up.rbuf.start += took
            self.pending -= took
            if self.pending > 0:
                self.blocked = True
                return 0
            if last:
                self.finish()
                return -1
            if not self.resp.done:
                up.rbuf.start += self.skip
                self.skip = 0
        if self.resp.done:
            if self.resp.kind == BODY_CHUNKED:
                self.chunked_end()
            else:
                # A close-delimited body ended with the connection: the end carries no bytes.
                self.owner.leg_data(self, NULL, 0, True)
                if self.up is up and self.state == LEG_ACTIVE:
                    self.finish()
            return -1
        avail = rb_avail(&up.rbuf)
        if avail == 0:
            return 0
        p = up.rbuf.data + up.rbuf.start
        if self.resp.kind != BODY_CHUNKED:
            self.pending = frame_take(&self.resp, p, avail)
            return 1
        n = chunked_feed(&self.resp.dec, p, avail, &off, &dlen)
        if n < 0:
            self.fail(PE_BAD_RESPONSE)
            return -1
        if n == 0:
            return 0
        q = off + dlen if dlen > 0 else 0       # where the bytes after the data span (if any) begin
        up.rbuf.start += q - dlen
        self.pending = dlen
        self.skip = n - q
        if self.resp.dec.state == CHUNK_DONE:
            # The last chunk, the trailer section and the end came in this feed (maybe after a last data span):
            # the section stays where it is until the data before it was taken (chunked_end).
            self.resp.done = True
            self.tr_off = self.resp.dec.trailers_off - q
            self.tr_len = self.resp.dec.trailers_len
        elif dlen == 0:
            up.rbuf.start += self.skip
            self.skip = 0
        return 1

    cdef void chunked_end(self) noexcept:
        """The chunked body ended: its trailer fields (less those the parser knows by name) or a bare end."""
        cdef Upstream up = self.up
        cdef char *p = up.rbuf.data + up.rbuf.start
        cdef const Field *f
        cdef int i, k = 0
        if self.tr_len > 2:
            # Parsed again here: the decoder's copy may belong to another leg by now.
            head_reset(&TRAILERS)
            if parse_fields(p, self.tr_off, self.tr_off + self.tr_len, &TRAILERS, &RESP_LIMITS) > 0:
                for i in range(TRAILERS.num_headers):
                    f = &TRAILERS.headers[i]
                    if f.id == FIELD_OTHER:      # framing, routing and hop-by-hop fields stay behind
                        KEPT[k] = f[0]
                        k += 1
        if k:
            self.owner.leg_trailers(self, p, KEPT, k)
        else:
            self.owner.leg_data(self, NULL, 0, True)
        if self.up is up and self.state == LEG_ACTIVE:
            up.rbuf.start += self.skip
            self.skip = 0
            self.finish()

    # ---- endings ---------------------------------------------------------------------------------

    cdef void lost(self) noexcept:
        """The connection failed before the response head: a stale keep-alive connection is replayed at no
        cost when the request can be (no body, idempotent), else the owner hears PE_RESET."""
        cdef Upstream up = self.up
        cdef int ep = up.endpoint
        cdef bint stale = up.reused and not self.resp_started
        cdef int r
        if stale and not self.req.has_body and replayable_method(self.req.view.method):
            self.drop(False)
            self.ex.replay(ep)
            r = self.take()
            if r != PE_NONE:
                self.fail(PE_RESET)
            return
        self.stale = stale
        self.fail(PE_RESET)

    cdef void fail(self, int err) noexcept:
        cdef LegOwner owner = self.owner
        self.drop(False)
        self.state = LEG_IDLE
        self.owner = None
        if owner is not None:
            owner.leg_failed(self, err)

    cdef void finish(self) noexcept:
        """The response ended (the owner has heard): the connection goes back when the request ended too."""
        self.state = LEG_DONE
        self.drop(self.up_keep and self.req_done and self.pending == 0)
        self.owner = None

    cdef void drop(self, bint reuse) noexcept:
        cdef Upstream up = self.up
        if up is None:
            return
        self.up = None
        self.pool.done_with(up, reuse, self.state == LEG_DONE)
