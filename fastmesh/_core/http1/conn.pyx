"""The HTTP/1 codec, downstream side: client connections, their bytes in and out, and the exchange each runs.

One request runs at a time per client connection; pipelined requests wait in the receive buffer, so answers
leave in request order. Per request:
  head      parse_request() over the receive buffer (offsets, no objects); view_init() makes the request view
  exchange  the Exchange (exchange.pyx) routes the view and decides everything that is not HTTP/1: cluster,
            deadline, retries and their budget, breakers, reports, the header edits; this file only renders
            its decisions (render.pyx) and moves bytes
  upstream  HttpPool.acquire() through the shared connector (upstream/connector.pyx): an idle keep-alive
            connection or a new connect, failing over to another endpoint; a request with no body is replayed
            once when a reused keep-alive connection dies before the first response byte
  request   the head rewritten into `reqhead` (kept for a retry); the body passed through as it arrives, framed
            by body.pyx (Content-Length or the chunked decoder, which validates every chunk and finds the end)
  response  parse_response(); 1xx passed on; the head rewritten the same way; the body passed through
  end       upstream back to the pool when both sides allow keep-alive; next request or close
A 101 answer to an Upgrade turns the connection into a TcpRelay (tcp/splice.pyx) with both sockets and any
bytes already buffered. A connection that opens with HTTP/2's preface goes, with the bytes read, to the
listener's HTTP/2 side (Front.h2: http2/conn.pyx). A request routed to a cluster spoken to over HTTP/2 is
carried by a leg instead (bridge.pxi, the h1 -> h2 bridge); the upstream half here is HTTP/1's alone. Every
answer of our own is a ProxyError (errors.pxd)
rendered in one place; what is forwarded is canonical (render.pyx lists the rules).

Whose clock runs: while the client owes request-body bytes and the upstream has taken all that came, it is
the client's (body_timeout for the whole body, idle_timeout for a silence: 408 and close) and the upstream's
response clock starts over; the upstream's runs while it holds bytes we could not hand it, and once the whole
request is sent. A client too slow with its body is never the endpoint's failure: no report, no retry.
"""
cimport cython
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

from fastmesh._core.buffer cimport (
    RecvBuf, rb_read, rb_read_edge, rb_avail, rb_release_if_empty, rb_free, ob_add, ob_flush, ob_send, ob_pending,
    ob_free, io_send,
)
from fastmesh._core.includes.system cimport (
    close, errno, EAGAIN, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP,
)
from fastmesh._core.reactor cimport Acceptor, Sweeper
from fastmesh._core.stats cimport (
    L_ACTIVE, L_BYTES_IN, L_BYTES_OUT, L_TLS_HANDSHAKES, L_TLS_RESUMED, count_status, observe_ns, bump, bump_field,
)
from fastmesh._core.tls.context cimport (
    Tls, TlsServer, tls_handshake, tls_resumed, tls_alpn, tls_peer_uri, tls_release, tls_drained, TF_TIMEOUT,
)
from fastmesh._core.codes cimport error_status, ERR_HEADERS_TOO_LARGE
from fastmesh._core.errors cimport (
    error_info, connect_error, PE_BAD_REQUEST, PE_OVERLOADED, PE_NO_ENDPOINTS, PE_RESET, PE_BAD_RESPONSE,
    PE_METHOD_NOT_ALLOWED, PE_PLUGIN, PE_NONE, PE_RATE_LIMITED,
)
from fastmesh._core.exchange cimport Exchange, replayable_method, rules_identity, V_RETRY
from fastmesh._core.http1.parser cimport (
    Head, parse_request, parse_response, find_head_end, METHOD_HEAD,
)
from fastmesh._core.http1.framing cimport (
    request_body, response_body, keep_alive, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE, BODY_TUNNEL,
    chunked_feed, chunk_size_line, CHUNK_DONE,
)
from fastmesh._core.http1.body cimport BodyFrame, frame_init, frame_take, pump_body, body_in_socket
from fastmesh._core.http1.render cimport (
    render_request, render_response, render_error, render_answer, stamp_budget, marked_retried,
    render_leg_response, render_chunk_trailers,
)
from fastmesh._core.filters cimport (
    FilterRequest, filter_request, answer_parts, run_chain, settle, respond, parked, FILTER_ANSWERED,
)
from fastmesh._core.http1.view cimport view_init, log_names, listener_address, target_authority
from fastmesh._core.http1.pool cimport Upstream, UpstreamUser, HttpPool, UP_CONNECTING
from fastmesh._core.policy cimport RETRY_RESET, RETRY_TIMEOUT
from fastmesh._core.request cimport RequestView, Span, Field, span_of, find_field, fold_eq
from fastmesh._core.upstream.leg cimport Leg, LegOwner, LEG_IDLE, LEG_ACTIVE
from fastmesh._core.upstream.h2pool cimport H2Pool, H2Leg
from fastmesh._core.upstream.connector cimport CONNECT_FULL
from fastmesh._core.debug cimport debug_new, debug_free, DBG_DOWNSTREAM
from fastmesh._core.tcp.splice cimport TcpProxy, TcpRelay


cdef double CLOSE_GRACE = 5.0          # seconds a closing connection gets to take its last answer
cdef Py_ssize_t SHORT_HEAD = 4096      # partial heads up to this size are re-parsed on every read
cdef Py_ssize_t MAX_SPARE_EXCHANGES = 256    # exchanges a listener keeps between requests

# The transient head and its view: parsed, used and forgotten within one call (a worker is single-threaded).
cdef Head SCRATCH
cdef RequestView VIEW
cdef unsigned long long RULES_VERSION[1]    # the last ForwardRules.version given out (each set_rules takes a new one)


cdef const char *H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"     # RFC 9113 section 3.4


include "bridge.pxi"


cdef class Handoff(Sweeper):
    """The base of a second protocol on http listeners (http2/conn.pyx's H2Front); this one takes nothing."""

    cdef void adopt(self, int fd, RecvBuf *rbuf, const char *peer, int peer_len, const sockaddr_in6 *client, Tls *tls,
                    bytes identity) noexcept:
        tls_release(&tls)
        close(fd)

    cdef void drain(self) noexcept:
        pass

    cdef void close_all(self) noexcept:
        pass


cdef class Front(Acceptor):
    """An http listener's side of its downstream connections; HttpProxy (http1/proxy.pyx) builds and drives it."""

    cdef void count_request(self, int status) noexcept:
        """One answered request in this listener's own counts (proxy.stats())."""
        cdef int cls = status // 100
        bump_field(&self.requests, 1)
        if 1 <= cls <= 5:
            bump_field(&self.classes[cls], 1)

    cdef void count_answer(self, int cluster, int status, double seconds) noexcept:
        """One answered request into the shared counters (plain adds; nothing when not attached)."""
        if 0 <= cluster < self.stat_clusters:
            if self.class_slots[cluster] != NULL:
                count_status(self.class_slots[cluster], status)
            if self.hist_slots[cluster] != NULL and seconds >= 0:
                observe_ns(self.hist_slots[cluster], <uint64_t>(seconds * 1e9))

    cdef Exchange take_exchange(self):
        """An exchange for a request that starts: a spare one when there is one."""
        if self.spare_exchanges:
            return <Exchange>self.spare_exchanges.pop()
        return Exchange.__new__(Exchange)

    cdef void give_exchange(self, Exchange ex) noexcept:
        """Keep a finished request's exchange for the next one; enough spares for a burst of busy connections."""
        ex.log_fields = None
        if self.spare_exchanges is None:
            self.spare_exchanges = []
        if len(self.spare_exchanges) < MAX_SPARE_EXCHANGES:
            self.spare_exchanges.append(ex)

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

    cdef void set_rules(self, bint forwarded, str request_id_header, bint trust_headers, str identity_header) except *:
        self.rid_name = request_id_header.lower().encode("ascii")
        self.identity_name = identity_header.lower().encode("ascii")
        self.rules.forwarded = forwarded
        self.rules.trust_headers = trust_headers
        self.rules.request_id = span_of(self.rid_name, len(self.rid_name))
        rules_identity(&self.rules, self.identity_name, len(self.identity_name))
        self.rules.https = self.tls is not None
        RULES_VERSION[0] += 1
        self.rules.version = RULES_VERSION[0]      # exchanges list their own edits again for these rules

    cdef object tunnel_for(self, HttpPool pool):
        cdef TcpProxy t = pool.tunnel
        if t is None:
            t = TcpProxy(self.reactor, pool.cluster, self.name, 3600.0, True)
            self.reactor.add_sweeper(t)
            pool.tunnel = t
        return t


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
                if self.state == DS_EXCHANGE and not self.req_done and not body_in_socket(
                        self.fd, self.tls, &self.rbuf, &self.req_body, self.req_ready):
                    # The client stopped sending before its request body was complete: it gave up.
                    self.close()
                    return
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
        if self.tls != NULL:
            # OpenSSL may wait on the other direction than the call it blocked (tls/context.pyx).
            if events & EPOLLOUT and self.tls.read_wants_out:
                self.readable = True
            if events & EPOLLIN and self.tls.write_wants_in:
                self.writable = True
        self.run()

    cdef void upstream_ready(self, Upstream up) noexcept:
        if up is self.up:
            self.run()

    cdef void upstream_failed(self, Upstream up, int err) noexcept:
        """A connect failed or timed out: the request never reached a backend, so another endpoint may take it."""
        cdef int ep = up.endpoint
        if up is not self.up:
            up.pool.cluster.connect_failed(ep, err, up.pool.reactor.now)
            return
        self.pool.connect_failed(&self.ex.ct, ep, err)
        self.drop_upstream(False)
        if self.take_upstream() < 0:
            self.respond_error(connect_error(err), 0, self.req_done)
        self.run()

    cdef void slot_free(self) noexcept:
        """A connection slot opened up while this request waited for one."""
        self.ex.waiting = False
        if self.state != DS_EXCHANGE or self.up is not None:
            return
        if self.take_upstream() < 0:
            self.respond_error(PE_NO_ENDPOINTS, 0, self.req_done)
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
            elif self.state == DS_BRIDGED:
                if self.bridge.step() <= 0:
                    return
            elif self.state == DS_CLOSING or self.state == DS_UPGRADING:
                if not self.writable and ob_pending(&self.out):
                    return
                r = ob_flush(&self.out, self.fd, self.tls)
                if r == 0:
                    self.writable = False
                    return
                if r > 0 and self.state == DS_UPGRADING:
                    self.upgrade()
                else:
                    self.close()
                return
            elif self.state == DS_HANDSHAKE:
                if self.handshake() <= 0:
                    return
            else:
                return
        # Fairness: a connection with more work (pipelined requests) continues on the next loop turn.
        self.proxy.reactor.again(self)

    cdef void on_again(self) noexcept:
        self.run()

    cdef int handshake(self) noexcept:
        """A TLS listener's connection: advance the handshake. Once done, the client's verified identity is kept and
        ALPN's choice decides the codec (h2: the listener's HTTP/2 side takes the connection). 1 when the
        connection reads requests now, 0 to wait, -1 when it closed or changed hands."""
        cdef Front proxy = self.proxy
        cdef TlsServer srv = <TlsServer>self.tls.owner   # a reload may have given the listener another since
        cdef const unsigned char *proto
        cdef char uri[512]
        cdef Py_ssize_t n
        cdef int r = tls_handshake(self.tls)
        if r == 0:
            return 0
        if r < 0:
            srv.failed(self.tls, proxy.counters, proxy.name, self.fd, proxy.reactor.now)
            self.close()
            return -1
        bump(proxy.counters + L_TLS_HANDSHAKES, 1)
        if tls_resumed(self.tls):
            bump(proxy.counters + L_TLS_RESUMED, 1)
        if srv.verify_clients:
            n = tls_peer_uri(self.tls, uri, sizeof(uri))
            if n > 0:
                self.identity = uri[:n]
        # Application data may already sit decrypted in OpenSSL's buffer: no edge will announce it.
        self.readable = True
        self.writable = True
        if proxy.h2 is not None and tls_alpn(self.tls, &proto) == 2 and proto[0] == 104 and proto[1] == 50:
            self.to_h2()                           # "h2"
            return -1
        self.state = DS_HEAD
        self.deadline = proxy.reactor.now + proxy.header_timeout
        return 1

    cdef void handshake_expired(self) noexcept:
        """The sweep found handshake_timeout passed: count it as a refused handshake and close."""
        self.tls.fail = TF_TIMEOUT
        (<TlsServer>self.tls.owner).failed(self.tls, self.proxy.counters, self.proxy.name, self.fd,
                                           self.proxy.reactor.now)
        self.close()

    # ---- request head ----------------------------------------------------------------------------

    cdef int read_request(self) noexcept:
        """1 when an exchange started (or the state changed), 0 to wait for events, -1 when closed."""
        cdef Py_ssize_t n, avail, room
        cdef int r
        cdef bint preface
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
                preface = False
                if self.proxy.h2 is not None and self.ex_in == 0 and self.rbuf.data[self.rbuf.start] == 80:
                    # "P" first on a connection that carried no request yet (ex_in counts from the first head on):
                    # it may be HTTP/2's preface (prior knowledge).
                    n = 24 if avail >= 24 else avail
                    if memcmp(self.rbuf.data + self.rbuf.start, H2_PREFACE, n) == 0:
                        if n == 24:
                            self.to_h2()
                            return -1
                        preface = True  # a part of it so far: read on before judging
                # A short partial head is parsed as it comes (errors show early); a long one only once its
                # blank line is there or the limits are passed, so a client trickling a big head byte by byte
                # cannot make us re-parse it from the start each time.
                if preface:
                    n = 0
                elif (avail > SHORT_HEAD
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
            n = rb_read(&self.rbuf, self.fd, self.proxy.buffers, self.tls)
            if n > 0:
                bump_field(&self.proxy.bytes_in, <unsigned long long>n)
                if n < room and not self.hangup and tls_drained(self.tls):
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

    cdef void hold_exchange(self) noexcept:
        """The connection's request starts (or is answered by us): it gets an exchange, told who the client is."""
        if self.ex is None:
            self.ex = self.proxy.take_exchange()
            self.ex.set_peer(self.peer, self.peer_len)
            self.ex.set_client(&self.client, self.fd)
            self.ex.set_identity(self.identity)

    cdef void rest(self) noexcept:
        """An idle keep-alive connection (the sweep calls this) gives back its output buffers and its exchange, so
        it costs its Downstream alone. Not at the end of every request: a busy connection keeps them (each
        give-and-take would cost a quarter more instructions per request: bench/callgrind_requests.py)."""
        if self.state != DS_IDLE or ob_pending(&self.out):
            return
        ob_free(&self.out)
        ob_free(&self.reqhead)
        if self.ex is not None:
            self.proxy.give_exchange(self.ex)
            self.ex = None
        if self.bridge is not None:
            self.bridge.d = None           # its head copy, body buffer and leg go too (idle: no try under way)
            self.bridge = None

    cdef int begin_exchange(self, Py_ssize_t head_len) noexcept:
        """A request head is parsed (SCRATCH): its view goes to the exchange, its forwarded head is rendered."""
        cdef Front proxy = self.proxy
        cdef Exchange ex
        cdef Head *h = &SCRATCH
        cdef const char *buf = self.rbuf.data + self.rbuf.start
        cdef long long length
        cdef int kind, err
        cdef double now = proxy.reactor.now
        self.hold_exchange()
        ex = self.ex
        ex.begin(now)
        self.ex_in = head_len
        self.ex_out = 0
        self.status = 0
        self.req_method = h.method
        self.req_minor = h.minor_version
        self.req_upgrade = h.upgrade and h.conn_upgrade and not h.upgrade_h2c
        self.req_expect = h.expect_continue
        self.resp_started = False
        self.resp_head_done = False
        self.resp_done = False
        self.retry_pending = False
        self.req_ready = 0
        self.resp_ready = 0
        kind = request_body(h, &length)
        if kind < 0:
            self.respond_error(PE_BAD_REQUEST, kind, False)
            return 1
        frame_init(&self.req_body, kind, length, &proxy.limits)
        self.req_done = self.req_body.done
        ex.body_begins(now, proxy.body_timeout, self.req_done)
        self.client_keep = keep_alive(h, kind) and not proxy.draining
        view_init(&VIEW, buf, h)
        if proxy.access_log is not None:
            ex.log_begin(log_names(buf, h), &VIEW, &proxy.rules)
        err = ex.route_request(proxy.router, proxy.pools, &VIEW, &proxy.rules, now)
        if err:
            self.rbuf.start += head_len
            # After a refused CONNECT the client's bytes are not HTTP: the connection closes.
            self.respond_error(err, 0, self.req_done and err != PE_METHOD_NOT_ALLOWED)
            return 1
        if self.freq is not None:
            self.freq = None
        if proxy.chains is not None and proxy.chains[ex.route] is not None:
            return self.run_filters(proxy.chains[ex.route], head_len)
        return self.forward_request(head_len)

    cdef int forward_request(self, Py_ssize_t head_len) noexcept:
        """The routed request (SCRATCH and VIEW) goes upstream: its head is rendered, the breakers admit it, the
        first try starts."""
        cdef int err
        cdef int kind = self.req_body.kind
        cdef long long length = self.req_body.length
        if not isinstance(self.ex.connector, HttpPool):
            return self.forward_bridged(head_len)    # a cluster spoken to over HTTP/2 (upstream/h2pool.pyx)
        self.pool = <HttpPool>self.ex.connector
        self.ex.trace_in_place(self.rbuf.data + self.rbuf.start)     # our traceparent where the caller's stood
        self.tmo_off = render_request(&self.reqhead, self.rbuf.data + self.rbuf.start, &SCRATCH, &VIEW, self.ex.router,
                                      self.ex.route, &self.ex.request_edits, self.req_upgrade,
                                      listener_address(self.fd, &SCRATCH))
        # A body that is already whole in the buffer can be sent again by a retry.
        self.body_mark = self.rbuf.start + head_len
        self.rbuf.start += head_len
        self.state = DS_EXCHANGE
        err = self.ex.admit(kind == BODY_NONE or (kind == BODY_LENGTH and self.rbuf.end - self.body_mark >= length),
                            self.req_upgrade, self.proxy.reactor.now)
        if err:
            self.respond_error(err, 0, self.req_done)
            return 1
        self.send_next_try()
        return 1

    cdef int forward_bridged(self, Py_ssize_t head_len) noexcept:
        """The routed request goes to a cluster whose tries are legs (bridge.pxi): its Bridge carries it."""
        if self.bridge is None:
            self.bridge = Bridge.__new__(Bridge)
            self.bridge.d = self
        return self.bridge.begin(head_len)

    # ---- request filters (filters.pyx): only routes that have them come here ----------------------

    cdef int run_filters(self, object chain, Py_ssize_t head_len) noexcept:
        """Hand the request to its route's filter chain; an async one parks the connection in DS_FILTER."""
        cdef Exchange ex = self.ex
        cdef FilterRequest r = filter_request(&VIEW, head_len, self.proxy.name, self.peer, self.peer_len, ex.route,
                                              ex.router.cluster_names, ex.cluster, ex.trace_id(),
                                              ex.identity)
        self.freq = r
        outcome = run_chain(chain, r)
        if parked(outcome):
            r.owner = self
            self.filter_head = head_len
            self.state = DS_FILTER
            self.deadline = self.proxy.reactor.now + self.proxy.filter_wait
            return 0
        return self.filtered(outcome, head_len)

    def _filter_resumed(self, outcome):
        """The async filters of the parked request are done: parse its head again (the scratch view served other
        connections meanwhile) and go on."""
        cdef Py_ssize_t n
        if self.state != DS_FILTER:
            return                            # closed meanwhile
        n = parse_request(self.rbuf.data + self.rbuf.start, self.filter_head, &SCRATCH, &self.proxy.limits)
        if n != self.filter_head:
            self.rbuf.start += self.filter_head
            self.respond_error(PE_PLUGIN, 0, False)
        else:
            view_init(&VIEW, self.rbuf.data + self.rbuf.start, &SCRATCH)
            self.proxy.reactor.refresh_now()
            self.filtered(outcome, n)
        self.run()

    cdef int filtered(self, object outcome, Py_ssize_t head_len) noexcept:
        """Apply the chain's outcome (filters.pyx's settle): go on (edits, a new cluster), answer, or fail."""
        cdef int err = settle(self.freq, outcome, self.ex, self.proxy.pools, &VIEW, &self.proxy.rules,
                              self.proxy.reactor.now)
        if err == PE_NONE:
            return self.forward_request(head_len)
        if err == FILTER_ANSWERED:
            self.respond_answer(outcome, head_len)
        else:
            self.rbuf.start += head_len
            self.respond_error(err, 0, self.req_done)
        return 1

    cdef void respond_answer(self, object answer, Py_ssize_t head_len) noexcept:
        """A filter answered the request itself: its Answer goes to the client, counted and logged like any."""
        cdef Front proxy = self.proxy
        cdef bint keep
        cdef Py_ssize_t queued
        self.rbuf.start += head_len
        try:
            status, reason, fields, body = answer_parts(answer, self.freq)
        except BaseException:
            self.respond_error(PE_PLUGIN, 0, self.req_done)
            return
        keep = self.client_keep and self.req_done
        queued = ob_pending(&self.out)
        render_answer(&self.out, status, reason, fields, body, keep,
                      self.req_method == METHOD_HEAD)
        self.ex_out += ob_pending(&self.out) - queued         # the whole answer, head and body, as sent
        self.end_request()
        self.status = status
        proxy.count_request(status)
        proxy.count_answer(self.ex.cluster, status, proxy.reactor.now - self.ex.started)
        if proxy.access_log is not None or self.ex.span:
            self.ex.log_answer(proxy.access_log, -1, status, self.ex_in, self.ex_out, proxy.reactor.now, 0)
        self.resp_head_done = False
        self.resp_done = True
        if keep:
            self.state = DS_IDLE
            self.deadline = proxy.reactor.now + proxy.idle_timeout
        else:
            self.state = DS_CLOSING
            self.deadline = proxy.reactor.now + CLOSE_GRACE
            self.client_keep = False

    cdef void response_replaced(self, int err) noexcept:
        """A response filter answered instead of the upstream (FILTER_ANSWERED) or failed (a ProxyError): the
        upstream's connection closes (its body is not read) and the client gets the filter's answer or the error."""
        if err == FILTER_ANSWERED:
            self.drop_upstream(False)
            self.respond_answer(self.freq.answer, 0)
        else:
            self.respond_error(err, 0, self.req_done)

    cdef void send_next_try(self) noexcept:
        """Stamp the try's time budget into the forwarded head, then connect (or answer why not)."""
        self.proxy.reactor.refresh_now()
        stamp_budget(&self.reqhead, self.tmo_off, self.ex.budget_ms(self.proxy.reactor.now))
        if self.take_upstream() < 0:
            self.respond_error(PE_NO_ENDPOINTS, 0, self.req_done)

    # ---- upstream --------------------------------------------------------------------------------

    cdef int take_upstream(self) noexcept:
        """Acquire a connection for the current request: 1 got one, 0 queued for a slot (or refused and
        answered), -1 no endpoint could be tried (the caller answers)."""
        cdef int outcome
        cdef Upstream up = self.pool.acquire(self, self.ex, &outcome)
        self.ex.connected(-1, self.proxy.reactor.now)
        if up is None:
            if outcome != CONNECT_FULL:
                return -1
            # Circuit breaker: every connection slot is taken. Wait for one, or refuse at once.
            if not self.ex.wait(self):
                self.respond_error(PE_OVERLOADED, 0, self.req_done)
            return 0
        self.up = up
        self.reqhead_sent = 0
        self.pool.cluster.upstream_start(up.endpoint)
        return 1

    cdef void try_timed_out(self) noexcept:
        """No response head within the try's time: retry, or answer 504."""
        if self.ex.try_failed(self.up.endpoint, RETRY_TIMEOUT, True, self.proxy.reactor.now) == V_RETRY:
            self.retry()
        else:
            self.respond_error(self.ex.error, 0, self.req_done)
            self.run()

    cdef bint awaits_client(self) noexcept:
        """Whether the request body is the client's move: the upstream has taken every body byte that came."""
        return (not self.req_done and self.up is not None and self.up.state != UP_CONNECTING
                and self.reqhead_sent == self.reqhead.len and self.req_ready == 0)

    cdef void retry(self) noexcept:
        """The exchange decided to send the request again: rewind the body, wait its backoff."""
        self.drop_upstream(False)
        self.ex.retrace(self.reqhead.data, self.reqhead.len)    # the next try's span id in the kept head
        self.resp_started = False
        self.reqhead_sent = 0
        self.rbuf.start = self.body_mark
        frame_init(&self.req_body, self.req_body.kind, self.req_body.length, &self.proxy.limits)
        self.req_done = self.req_body.done
        self.req_ready = 0
        self.retry_pending = True
        self.proxy.reactor.loop.call_later(self.ex.backoff, self._retry_now)

    def _retry_now(self):
        self.retry_pending = False
        if self.state != DS_EXCHANGE or self.up is not None or self.resp_done:
            return
        self.ex.next_try(self.proxy.reactor.now)
        self.send_next_try()
        self.run()

    cdef void end_request(self) noexcept:
        """The request left the cluster's books (once)."""
        if self.ex is not None:
            self.ex.end(self)

    cdef void drop_upstream(self, bint reuse) noexcept:
        cdef Upstream up = self.up
        if up is None:
            return
        self.up = None
        self.pool.done_with(up, reuse, self.resp_done)

    # ---- the exchange ----------------------------------------------------------------------------

    cdef int step_exchange(self) noexcept:
        """Move whatever can move; 1 when the exchange ended (state changed), 0 to wait, -1 when closed."""
        cdef Upstream up = self.up
        cdef Py_ssize_t n
        cdef unsigned long long sent, taken
        cdef int r
        if up is None:
            return 0
        if up.state == UP_CONNECTING:
            return 0
        # 1. the request head
        if self.reqhead_sent < self.reqhead.len:
            if up.writable:
                n = io_send(up.fd, up.tls, self.reqhead.data + self.reqhead_sent, self.reqhead.len - self.reqhead_sent)
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
            sent = self.ex_in
            taken = sent + <unsigned long long>self.req_ready
            r = pump_body(&self.rbuf, self.fd, self.tls, &self.readable, self.hangup, up.fd, up.tls, &up.writable, NULL,
                          &self.req_body, &self.req_ready, self.proxy.buffers, True, &self.ex_in,
                          &self.proxy.bytes_in, NULL)
            if self.ex_in + <unsigned long long>self.req_ready != taken:
                self.ex.body_arrived(self.proxy.reactor.now)      # the client sent more of its body
            if r == 0 and (self.req_ready == 0 or self.ex_in != sent):
                # The upstream took all it was given, or at least more of it: its response clock starts over.
                self.ex.restart_clock(self.proxy.reactor.now)
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
            if ob_pending(&self.out) and self.writable and not self.resp_head_done:
                # An interim answer (100 Continue) must reach the client now: it may be waiting for it. A final
                # head waits for pump_body(), which frames the body bytes already here before it leaves.
                if ob_flush(&self.out, self.fd, self.tls) == 0:
                    self.writable = False
            if r <= 0:
                return r
            if not self.resp_head_done:
                return 1         # a replay or retry started on another connection: run again
            up = self.up
        # 4. the response body
        if not self.resp_done:
            r = pump_body(&up.rbuf, up.fd, up.tls, &up.readable, up.hangup, self.fd, self.tls, &self.writable,
                          &self.out, &self.resp_body, &self.resp_ready, self.proxy.reactor.buffers, False, &self.ex_out,
                          NULL, &self.resp_fresh)
            if r == 1:
                self.resp_done = True
            elif r == -4:
                # The body's framing broke before any byte of the head left: the head is withdrawn and the
                # client gets a clean 502 instead.
                self.ex.response_broke(up.endpoint, self.proxy.reactor.now)
                self.ex_out -= ob_pending(&self.out) - self.resp_mark     # what is withdrawn was never sent
                self.out.len = self.out.off + self.resp_mark
                self.resp_head_done = False
                self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
                return 1
            elif r == -1 or r == -3:
                # The upstream broke mid-body: the client got a head already, so only a close can tell it.
                self.ex.response_broke(up.endpoint, self.proxy.reactor.now)
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
        cdef int r = ob_send(&self.out, self.fd, &self.writable, self.tls)
        if r < 0:
            self.close()
        return r

    cdef int upstream_lost(self) noexcept:
        """The upstream connection failed before the response head: replay, retry or answer 502."""
        cdef Upstream up = self.up
        cdef int ep = up.endpoint
        cdef bint stale = up.reused and not self.resp_started
        cdef int r
        if stale and self.req_body.kind == BODY_NONE and replayable_method(self.req_method):
            # A keep-alive connection the server had already closed: the request is whole in reqhead.
            self.drop_upstream(False)
            self.reqhead_sent = 0
            self.ex.replay(ep)
            r = self.take_upstream()
            if r < 0:
                self.respond_error(PE_RESET, 0, self.req_done)
            return 1
        if self.ex.try_failed(ep, RETRY_RESET, not stale, self.proxy.reactor.now) == V_RETRY:
            self.retry()
            return 0
        self.drop_upstream(False)
        self.respond_error(self.ex.error, 0, self.req_done)
        return 1

    cdef int read_response_head(self) noexcept:
        cdef Upstream up = self.up
        cdef Py_ssize_t n
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
            n = rb_read_edge(&up.rbuf, up.fd, self.proxy.reactor.buffers, &up.readable, up.hangup, up.tls)
            if n > 0:
                self.resp_started = True
                continue
            if n == -2:
                self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
                return 1
            if n == -1 and not up.readable:
                return 0                           # EAGAIN
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
        cdef int kind, err, status = h.status
        cdef bint marked
        cdef Py_ssize_t queued
        if 100 <= status < 200 and status != 101:
            # Interim answers: 100 only to a client that asked for it; 102/103 pass on.
            if status != 100 or self.req_expect:
                queued = ob_pending(&self.out)
                render_response(&self.out, buf, h, &self.ex.response_edits, -1, False, False, self.client_keep,
                                self.req_minor)
                self.ex_out += ob_pending(&self.out) - queued
            up.rbuf.start += head_len
            return 0
        marked = status >= 500 and marked_retried(buf, h)
        if self.ex.response(up.endpoint, status, marked, self.proxy.reactor.now) == V_RETRY:
            self.retry()
            return -1
        kind = response_body(h, self.req_method, self.req_upgrade, &length)
        if kind < 0:
            self.respond_error(PE_BAD_RESPONSE, 0, self.req_done)
            return -1
        if self.freq is not None and self.freq.responder is not None and kind != BODY_TUNNEL:
            # The route's response filters see the head first (filters.pyx's respond).
            err = respond(self.freq, status, buf, h.headers, h.num_headers, &self.ex.response_edits)
            if err != PE_NONE:
                self.response_replaced(err)
                return -1
            if self.freq.resp.kept_n >= 0:
                memcpy(h.headers, self.freq.resp.kept, self.freq.resp.kept_n * sizeof(Field))
                h.num_headers = self.freq.resp.kept_n
        self.status = status
        frame_init(&self.resp_body, kind, length, &self.proxy.resp_limits)
        self.up_keep = keep_alive(h, kind)
        if kind == BODY_UNTIL_CLOSE:
            self.client_keep = False
        elif kind == BODY_CHUNKED and self.req_minor == 0:
            # An HTTP/1.0 client knows no chunked coding: send the data alone and end it with the close.
            self.resp_body.dechunk = True
            self.client_keep = False
        self.resp_mark = ob_pending(&self.out)
        self.resp_fresh = True
        render_response(&self.out, buf, h, &self.ex.response_edits, self.ex.retried_mark(status, marked),
                        kind == BODY_TUNNEL, self.resp_body.dechunk, self.client_keep, self.req_minor)
        self.ex_out += ob_pending(&self.out) - self.resp_mark     # the head as sent (ex_in counts the request's)
        up.rbuf.start += head_len
        self.resp_head_done = True
        if kind == BODY_TUNNEL:
            self.state = DS_UPGRADING
            return -1
        return 0

    cdef int finish_exchange(self) noexcept:
        cdef Front proxy = self.proxy
        cdef Upstream up = self.up
        cdef int endpoint
        if up is not None:
            endpoint = up.endpoint
        elif self.state == DS_BRIDGED and self.bridge.leg is not None:
            endpoint = self.bridge.leg.endpoint
        else:
            endpoint = -1
        if not self.req_done:
            # The upstream answered before the request body ended: the next request's start is unknown.
            self.client_keep = False
        self.drop_upstream(self.up_keep and self.req_done)
        self.end_request()
        proxy.count_request(self.status)
        bump_field(&proxy.bytes_out, self.ex_out)
        bump(proxy.counters + L_BYTES_IN, self.ex_in)
        bump(proxy.counters + L_BYTES_OUT, self.ex_out)
        proxy.count_answer(self.ex.cluster, self.status, proxy.reactor.now - self.ex.started)
        if proxy.access_log is not None or self.ex.span:
            self.ex.log_answer(proxy.access_log, endpoint, self.status, self.ex_in, self.ex_out, proxy.reactor.now, 0)
        self.up_keep = False
        if self.client_keep:
            self.state = DS_IDLE
            self.deadline = proxy.reactor.now + proxy.idle_timeout
            rb_release_if_empty(&self.rbuf, proxy.buffers)
        else:
            self.state = DS_CLOSING
            self.deadline = proxy.reactor.now + CLOSE_GRACE
        return 1

    # ---- endings ---------------------------------------------------------------------------------

    cdef void respond_error(self, int err, int code, bint keep) noexcept:
        """Answer the current request with proxy error `err` (render.pyx writes it); keep the connection only
        when allowed."""
        cdef Front proxy = self.proxy
        cdef int status
        cdef bint routed
        cdef Py_ssize_t queued
        self.hold_exchange()              # a bad head has none yet: its answer is logged like any other
        routed = (self.state == DS_EXCHANGE or self.state == DS_BRIDGED) and self.ex.route >= 0
        cdef int endpoint = self.up.endpoint if self.up is not None else -1
        if self.state == DS_BRIDGED and self.bridge.leg is not None:
            endpoint = self.bridge.leg.endpoint
        self.drop_upstream(False)
        if self.resp_head_done:
            self.close()
            return
        keep = keep and self.client_keep and self.req_done
        if err == PE_RATE_LIMITED:
            code = self.ex.retry_after        # render.pyx's Retry-After
        status = error_info(err).status if not (err == PE_BAD_REQUEST and code < 0) else error_status(code)
        queued = ob_pending(&self.out)
        status = render_error(&self.out, err, code, keep, self.ex.retried_mark(status, False),
                              self.req_method == METHOD_HEAD
                              and (self.state == DS_EXCHANGE or self.state == DS_BRIDGED))
        self.ex_out += ob_pending(&self.out) - queued
        self.end_request()
        self.status = status
        proxy.count_request(status)
        if routed:
            proxy.count_answer(self.ex.cluster, status, proxy.reactor.now - self.ex.started)
        if proxy.access_log is not None or self.ex.span:
            self.ex.log_answer(proxy.access_log, endpoint, self.status, self.ex_in, self.ex_out, proxy.reactor.now,
                               err)
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
        cdef Front proxy = self.proxy
        cdef Upstream up = self.up
        cdef TcpProxy tunnel = <TcpProxy>proxy.tunnel_for(self.pool)
        cdef int dfd = self.fd, ufd = up.fd
        self.up = None
        self.fd = -1
        up.fd = -1
        self.pool.connection_gone()        # the tunnel's connection is the relay's now, not the pool's
        TcpRelay.adopt(tunnel, dfd, ufd, up.endpoint, &self.rbuf, &up.rbuf, self.tls, up.tls, proxy.limit)
        up.close()
        self.close()

    cdef void to_h2(self) noexcept:
        """The connection opened with HTTP/2's preface: the listener's HTTP/2 side takes the socket, its slot and
        the bytes read so far."""
        cdef int fd = self.fd
        cdef Tls *tls = self.tls
        self.fd = -1
        self.tls = NULL
        self.proxy.h2.adopt(fd, &self.rbuf, self.peer, self.peer_len, &self.client, tls, self.identity)
        self.close()

    cdef void close(self) noexcept:  # no-cython-lint
        cdef Front proxy = self.proxy
        if self.state == DS_CLOSED:
            return
        self.state = DS_CLOSED
        if self.freq is not None:
            self.freq.owner = None         # an async chain still running finds nobody to resume
            self.freq = None
        if self.bridge is not None:
            self.bridge.stop()             # its try ends; no retry timer finds this connection
            self.bridge.d = None
            self.bridge = None
        self.drop_upstream(False)
        self.end_request()
        if self.tls != NULL:
            tls_release(&self.tls)
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
            if proxy.limit is not None:    # an upgraded connection's slot went to its relay with the fd
                proxy.limit.release()
        rb_free(&self.rbuf, proxy.buffers)
        ob_free(&self.out)
        ob_free(&self.reqhead)
        if self.ex is not None:
            proxy.give_exchange(self.ex)
            self.ex = None
        proxy.reactor.bury(self)
        proxy.unlink(self)
