# The h1 -> h2 bridge: an HTTP/1 client's request carried over a leg (included by conn.pyx, one hop in two files).
#
# A request routed to a cluster whose connector is an H2Pool goes here instead of the HTTP/1 upstream half of
# conn.pyx. The Bridge is the leg's owner (upstream/leg.pxd), as an HTTP/2 stream's H2Request is:
#   head      copied (bytes and parsed Head) so the view the leg renders from outlives the scratch head; the h2
#             leg writes :authority from the Host field (or an absolute-form target), drops Host and the
#             connection-specific fields, keeps `te: trailers`, and adds the exchange's edits
#   body      de-framed from the client (Content-Length, or the chunked coding decoded: only the data goes up as
#             DATA) into `body` as the leg takes it: at most BODY_AHEAD bytes wait, and the client is read no
#             further meanwhile; a body up to REPLAY_MAX is kept whole, so a retry can send it again; a chunked
#             body's trailer fields go up as the stream's trailing HEADERS (less those HTTP/1 knows by name:
#             framing, routing and hop-by-hop fields)
#   response  the leg's head rendered as HTTP/1.1 (render_leg_response): Content-Length when the answer had one
#             (or has no body), else chunked for an HTTP/1.1 client and close-delimited for HTTP/1.0; trailers
#             as the chunked body's trailer section (dropped for the other framings); body bytes taken while the
#             client's output holds less than OUT_AHEAD, the leg pausing (its stream's window with it) until then
#   rules     retries, deadlines, budgets, breakers and reports through the same Exchange calls as every codec,
#             what a failed try or a clock means decided as for an HTTP/2 stream (upstream/leg.pxd's
#             failed_verdict, clock_verdict); our own answers are render_error's, through Downstream.respond_error
# An Expect: 100-continue is answered here at once: the h2 server's own 100 never crosses a leg.

cdef Py_ssize_t BODY_AHEAD = 65536     # request body bytes read from the client ahead of what the leg took
cdef Py_ssize_t OUT_AHEAD = 262144     # response bytes queued for the client before the leg is paused
cdef Py_ssize_t REPLAY_MAX = 65536     # a request body up to this size is kept whole, so a retry can send it again
cdef const char *CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef const char *LAST_CHUNK = b"0\r\n\r\n"

from fastmesh._core.http1.parser cimport parse_fields, head_reset, FIELD_OTHER, HEAD_MAX_FIELDS
from fastmesh._core.upstream.leg cimport failed_verdict, clock_verdict, OWNER_WAIT, OWNER_RETRY

# The request trailer fields a leg is handed (body_trailers): parsed from Bridge.trailers and used at once.
cdef Head TRAILER_HEAD
cdef Field TRAILER_KEPT[HEAD_MAX_FIELDS]


cdef bint _te_trailers(const char *base, const Head *h) noexcept:
    """The client sent `TE: trailers` (among its TE codings)."""
    cdef const Field *f
    cdef Py_ssize_t i, j
    cdef int k
    for k in range(h.num_headers):
        f = &h.headers[k]
        if f.name_len != 2 or not fold_eq(base + f.name_off, b"te", 2):
            continue
        for i in range(<Py_ssize_t>f.value_len - 7):
            j = f.value_off + i
            if fold_eq(base + j, b"trailers", 8):
                return True
    return False


cdef bint _grpc_type(const char *base, const Head *h) noexcept:
    cdef int k = find_field(base, h.headers, h.num_headers, b"content-type", 12, 0)
    return k >= 0 and h.headers[k].value_len >= 16 and fold_eq(base + h.headers[k].value_off, b"application/grpc", 16)


cdef long long _content_length_of(const char *base, const Field *fields, int n) noexcept:
    """The value of a content-length field among fields (the session checked it against the DATA), -1 if none."""
    cdef int k = find_field(base, fields, n, b"content-length", 14, 0)
    cdef long long v = 0
    cdef uint32_t i
    cdef char c
    if k < 0 or fields[k].value_len == 0 or fields[k].value_len > 18:
        return -1
    for i in range(fields[k].value_len):
        c = base[fields[k].value_off + i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@cython.final
cdef class Bridge(LegOwner):

    def __dealloc__(self):
        ob_free(&self.head)
        ob_free(&self.body)
        ob_free(&self.trailers)

    # ---- the request ---------------------------------------------------------------------------------------

    cdef int begin(self, Py_ssize_t head_len) noexcept:
        """The routed request (SCRATCH, with its body framing in d.req_body) starts; 1: the connection's state
        changed (DS_BRIDGED, or an answer of ours)."""
        cdef Downstream d = self.d
        cdef Front proxy = d.proxy
        cdef Exchange ex = d.ex
        cdef const char *buf
        cdef Span at
        cdef Py_ssize_t a_off = -1, a_len = 0
        cdef int err, k
        self.head.off = 0
        self.head.len = 0
        ob_add(&self.head, d.rbuf.data + d.rbuf.start, head_len)
        self.h = SCRATCH
        # The authority as sent (port kept): an absolute-form target's, else Host, else (HTTP/1.0) the listener's
        # address, copied behind the head so that it lives as long as the request.
        at = target_authority(d.rbuf.data + d.rbuf.start, &self.h)
        if at.len:
            a_off = at.ptr - (d.rbuf.data + d.rbuf.start)
            a_len = at.len
        elif self.h.host_index >= 0:
            k = self.h.host_index
            a_off = self.h.headers[k].value_off
            a_len = self.h.headers[k].value_len
        else:
            at = listener_address(d.fd, &self.h)
            a_off = head_len
            a_len = at.len
            ob_add(&self.head, at.ptr, at.len)
        buf = self.head.data
        view_init(&self.view, buf, &self.h)
        self.req.view = &self.view
        self.req.authority = span_of(buf + a_off, a_len)
        self.req.scheme = span_of(b"http", 4)
        self.req.content_length = d.req_body.length if d.req_body.kind == BODY_LENGTH else -1
        self.req.has_body = not d.req_body.done
        self.req.te_trailers = _te_trailers(buf, &self.h)
        self.req.grpc = _grpc_type(buf, &self.h)
        self.serial += 1
        self.due = False
        self.body.off = 0
        self.body.len = 0
        self.body_off = 0
        self.trailers.off = 0
        self.trailers.len = 0
        self.body_end = d.req_body.done
        self.keep_body = True
        self.chunked = False
        self.no_body = False
        self.backoff = False
        d.rbuf.start += head_len
        d.state = DS_BRIDGED
        if d.req_expect and not self.body_end:
            ob_add(&d.out, CONTINUE_100, 25)     # the client may send its body now; its bytes are ours to hold
        if self.pull() < 0:
            return 1
        err = ex.admit(self.body_end, False, proxy.reactor.now)
        if err:
            d.respond_error(err, 0, d.req_done)
            return 1
        self.send_try()
        return 1

    cdef int pull(self) noexcept:
        """Take body bytes the client sent (reading it on while fewer than BODY_AHEAD wait): 0, or -1 when the
        request ended here (an answer of ours, or the client gone)."""
        cdef Downstream d = self.d
        cdef Front proxy = d.proxy
        cdef BodyFrame *f = &d.req_body
        cdef Py_ssize_t n, avail, off, dlen, room
        cdef bint more = False
        while not self.body_end and self.body.len - self.body_off < BODY_AHEAD:
            avail = rb_avail(&d.rbuf)
            if avail > 0:
                if f.kind == BODY_LENGTH:
                    n = frame_take(f, d.rbuf.data + d.rbuf.start, avail)
                    off = 0
                    dlen = n
                else:
                    n = chunked_feed(&f.dec, d.rbuf.data + d.rbuf.start, avail, &off, &dlen)
                    if n < 0:
                        self.answer(PE_BAD_REQUEST)
                        return -1
                    if f.dec.state == CHUNK_DONE:
                        f.done = True
                        if f.dec.trailers_len > 2:       # more than the blank line: kept for body_trailers
                            ob_add(&self.trailers, d.rbuf.data + d.rbuf.start + f.dec.trailers_off,
                                   f.dec.trailers_len)
                if dlen > 0:
                    self.add_body(d.rbuf.data + d.rbuf.start + off, dlen)
                    more = True
                d.rbuf.start += n
                d.ex_in += <unsigned long long>n
                if f.done:
                    self.body_end = True
                    d.req_done = True
                    if self.keep_body:
                        d.ex.replayable = True       # whole and kept: a retry may send it again
                    break
                if n > 0:
                    continue
            if not d.readable:
                break
            room = proxy.buffers.size - d.rbuf.end if d.rbuf.data != NULL else proxy.buffers.size
            n = rb_read(&d.rbuf, d.fd, proxy.buffers, d.tls)
            if n > 0:
                bump_field(&proxy.bytes_in, <unsigned long long>n)
                if n < room and not d.hangup:
                    d.readable = False
                continue
            if n == -2:
                self.answer(PE_BAD_REQUEST)
                return -1
            if n == -1 and errno == EAGAIN:
                d.readable = False
                break
            # The client went away before its body was whole: nobody to answer.
            self.stop()
            d.close()
            return -1
        if more:
            d.ex.body_arrived(proxy.reactor.now)
        return 0

    cdef void add_body(self, const char *p, Py_ssize_t n) noexcept:
        if self.keep_body and self.body.len + n > REPLAY_MAX:
            # Too big to send again: from now on the bytes a try took are dropped.
            self.keep_body = False
            if self.body_off:
                memmove(self.body.data, self.body.data + self.body_off, self.body.len - self.body_off)
                self.body.len -= self.body_off
                self.body_off = 0
        ob_add(&self.body, p, n)

    cdef void send_try(self) noexcept:
        """Start the next try on a leg of the cluster's kind (or answer why not)."""
        cdef Exchange ex = self.d.ex
        cdef int err
        self.d.proxy.reactor.refresh_now()
        if self.leg is None or not self.leg.fits(ex.connector):
            if not isinstance(ex.connector, H2Pool):
                self.answer(PE_NO_ENDPOINTS)
                return
            self.leg = H2Leg.__new__(H2Leg)
        self.body_off = 0
        err = self.leg.start(self, ex, &self.req)
        if err != PE_NONE:
            self.answer(err)

    cdef void retry_later(self) noexcept:
        """The exchange decided to send the request again: wait its backoff (the body is kept whole)."""
        self.backoff = True
        self.body_off = 0
        self.d.proxy.reactor.loop.call_later(self.d.ex.backoff, self._retry_now, self.serial)

    def _retry_now(self, unsigned long long serial):
        cdef Downstream d = self.d
        if not self.backoff or d is None or d.state != DS_BRIDGED or serial != self.serial:
            return                               # the request ended meanwhile
        self.backoff = False
        d.ex.next_try(d.proxy.reactor.now)
        self.send_try()
        self.wake()

    # ---- the leg's view of the request (LegOwner) ----------------------------------------------------------

    cdef Py_ssize_t body_peek(self, const char **p) noexcept:
        p[0] = self.body.data + self.body_off
        return self.body.len - self.body_off

    cdef void body_took(self, Py_ssize_t n) noexcept:
        self.body_off += n
        if not self.keep_body and self.body_off == self.body.len:
            self.body.len = 0
            self.body_off = 0
        if self.body_off == self.body.len and not self.body_end:
            # The upstream took all that came: it owes nothing until more does (its clock starts over); the
            # client may send more.
            self.d.ex.restart_clock(self.d.proxy.reactor.now)
            self.wake()

    cdef bint body_ended(self) noexcept:
        return self.body_end and self.body_off == self.body.len

    cdef int body_trailers(self, const char **base, const Field **fields) noexcept:
        cdef int i, k = 0
        if self.trailers.len == 0:
            return 0
        head_reset(&TRAILER_HEAD)
        if parse_fields(self.trailers.data, 0, self.trailers.len, &TRAILER_HEAD, &self.d.proxy.limits) <= 0:
            return 0                             # (the decoder parsed the same bytes already: never)
        for i in range(TRAILER_HEAD.num_headers):
            if TRAILER_HEAD.headers[i].id == FIELD_OTHER:
                TRAILER_KEPT[k] = TRAILER_HEAD.headers[i]
                k += 1
        base[0] = self.trailers.data
        fields[0] = TRAILER_KEPT
        return k

    # ---- the response (LegOwner) ---------------------------------------------------------------------------

    cdef int leg_head(self, Leg leg, int status, const char *base, const Field *fields, int n, bint end) noexcept:
        cdef Downstream d = self.d
        cdef Exchange ex = d.ex
        cdef bint marked = status >= 500 and find_field(base, fields, n, b"fastmesh-retried", 16, 0) >= 0
        cdef long long length
        cdef int err
        if ex.response(leg.endpoint, status, marked, d.proxy.reactor.now) == V_RETRY:
            leg.cancel()
            self.retry_later()
            return 0
        if d.freq is not None and d.freq.responder is not None:
            # The route's response filters see the head first (filters.pyx's respond).
            err = respond(d.freq, status, base, fields, n, &ex.response_edits)
            if err != PE_NONE:
                self.stop()
                if d.state == DS_BRIDGED:
                    d.response_replaced(err)
                self.wake()
                return 0
            if d.freq.resp.kept_n >= 0:
                fields = d.freq.resp.kept
                n = d.freq.resp.kept_n
        length = _content_length_of(base, fields, n)
        self.no_body = d.req_method == METHOD_HEAD or status == 204 or status == 304
        self.chunked = False
        if self.no_body:
            if status == 204 or (status == 304 and length < 0):
                length = -1
        elif end:
            length = 0
        elif length < 0:
            if d.req_minor >= 1:
                self.chunked = True
            else:
                d.client_keep = False            # an HTTP/1.0 client: the close ends the body
        d.status = status
        d.resp_started = True
        d.resp_mark = ob_pending(&d.out)
        render_leg_response(&d.out, status, base, fields, n, &ex.response_edits, ex.retried_mark(status, marked),
                            length, self.chunked, d.client_keep, d.req_minor)
        d.ex_out += ob_pending(&d.out) - d.resp_mark    # the head as sent, as on the HTTP/1.1 path
        d.resp_head_done = True
        if end:
            d.resp_done = True
        self.wake()
        return 1

    cdef Py_ssize_t leg_data(self, Leg leg, const char *p, Py_ssize_t n, bint end) noexcept:
        cdef Downstream d = self.d
        cdef char line[24]
        cdef Py_ssize_t k
        if d.fd < 0:
            return n                             # the client is gone: the bytes go nowhere
        if n > 0 and not self.no_body:
            if ob_pending(&d.out) >= OUT_AHEAD:
                self.wake()
                return 0                         # the leg waits for resume(); the server's window closes
            if self.chunked:
                k = chunk_size_line(line, <unsigned long long>n)
                ob_add(&d.out, line, k)
                ob_add(&d.out, p, n)
                ob_add(&d.out, "\r\n", 2)
            else:
                ob_add(&d.out, p, n)
            d.ex_out += <unsigned long long>n
        if end:
            if self.chunked:
                ob_add(&d.out, LAST_CHUNK, 5)
            d.resp_done = True
        self.wake()
        return n

    cdef void leg_trailers(self, Leg leg, const char *base, const Field *fields, int n) noexcept:
        cdef Downstream d = self.d
        if self.chunked:
            render_chunk_trailers(&d.out, base, fields, n)
        d.resp_done = True
        self.wake()

    cdef void leg_failed(self, Leg leg, int err) noexcept:
        cdef Downstream d = self.d
        if d.state != DS_BRIDGED or self.backoff:
            return
        # After the head (PE_RESET) only a close can tell the client.
        err = failed_verdict(d.ex, leg, err, d.proxy.reactor.now)
        if err == OWNER_RETRY:
            self.retry_later()
        else:
            self.answer(err)

    # ---- the connection's side -----------------------------------------------------------------------------

    cdef void wake(self) noexcept:
        """Run the connection at the end of this loop pass (never from inside a leg's call)."""
        if not self.due and self.d is not None:
            self.due = True
            self.d.proxy.reactor.again(self.d)

    cdef int step(self) noexcept:
        """Move what can move (Downstream.run in DS_BRIDGED): 1 when the request ended, 0 to wait, -1 closed."""
        cdef Downstream d = self.d
        cdef int r
        self.due = False
        if not self.body_end:
            if self.pull() < 0:
                return 1 if d.state != DS_CLOSED else -1
            if self.leg is not None and not self.backoff and self.body.len > self.body_off:
                self.leg.request_ready()
                if d.state != DS_BRIDGED:
                    return 1 if d.state != DS_CLOSED else -1
        elif self.leg is not None and not self.backoff and not self.leg.req_done:
            self.leg.request_ready()
            if d.state != DS_BRIDGED:
                return 1 if d.state != DS_CLOSED else -1
        r = ob_send(&d.out, d.fd, &d.writable, d.tls)
        if r < 0:
            self.stop()
            d.close()
            return -1
        if r == 0:
            return 0
        if d.resp_done:
            self.leg.cancel()                    # idle once ended; a stream still sending is reset (answered)
            return d.finish_exchange()
        if d.resp_head_done and self.leg is not None:
            self.leg.resume()                    # the client took what was queued: the leg may deliver more
            if ob_pending(&d.out) or d.resp_done:
                self.wake()
        return 0

    cdef bint awaits_client(self) noexcept:
        """Whether the request body is the client's move: the try has taken every body byte that came."""
        return (not self.body_end and self.leg is not None and self.leg.state == LEG_ACTIVE
                and self.body_off == self.body.len)

    cdef void check(self, double now) noexcept:
        """The sweep (http1/proxy.pyx): whose clock ran out, by the same rules as every request."""
        cdef Downstream d = self.d
        cdef int r
        if d.resp_head_done or self.backoff:
            return
        r = clock_verdict(d.ex, self.leg, self.body_end, self.awaits_client(), d.proxy.idle_timeout, now)
        if r == OWNER_RETRY:
            self.retry_later()
        elif r != OWNER_WAIT:
            self.answer(r)
        if d.state != DS_BRIDGED:
            d.run()

    cdef void answer(self, int err) noexcept:
        """Answer with ProxyError err (render_error), or close the connection once the head went out."""
        cdef Downstream d = self.d
        self.stop()
        if d.state != DS_BRIDGED:
            return
        if d.resp_head_done:
            d.close()
            return
        d.respond_error(err, 0, d.req_done and err != PE_BAD_REQUEST)
        self.wake()

    cdef void stop(self) noexcept:
        """No try goes on: the leg idle, no retry pending."""
        self.backoff = False
        self.serial += 1
        if self.leg is not None and self.leg.state != LEG_IDLE:
            self.leg.cancel()
