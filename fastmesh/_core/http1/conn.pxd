# Downstream HTTP/1 connections (client side) and the per-listener HttpProxy that owns them: the HTTP/1 codec.

from libc.stdint cimport uint32_t, uint64_t
from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.includes.system cimport sockaddr_storage, sockaddr_in6, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLET
from fastmesh._core.reactor cimport Reactor, Acceptor, BufferPool, Sweeper
from fastmesh._core.http1.parser cimport Head, Limits
from fastmesh._core.http1.body cimport BodyFrame
from fastmesh._core.http1.pool cimport Upstream, UpstreamUser, HttpPool
from fastmesh._core.exchange cimport Exchange, ForwardRules
from fastmesh._core.router cimport Router
from fastmesh._core.filters cimport FilterRequest
from fastmesh._core.request cimport RequestView
from fastmesh._core.upstream.leg cimport Leg, LegOwner, LegRequest
from fastmesh._core.tls.context cimport Tls, TlsServer


cdef enum DownstreamState:
    DS_HEAD = 1                # reading a request head (header_timeout runs)
    DS_IDLE = 2                # keep-alive between requests (idle_timeout runs)
    DS_EXCHANGE = 3            # a request is being proxied
    DS_CLOSING = 4             # flushing a last answer, then close
    DS_UPGRADING = 5           # flushing a 101 answer, then the connection becomes a TCP relay
    DS_CLOSED = 6
    DS_FILTER = 7              # an async filter plugin holds the request (filters.pyx); the head stays in rbuf
    DS_BRIDGED = 8             # a request is being proxied over a leg (an HTTP/2 cluster): Downstream.bridge runs it
    DS_HANDSHAKE = 9           # a TLS listener's connection before its handshake is done (handshake_timeout runs)


# Events a downstream connection is registered for, once, edge-triggered.
cdef inline uint32_t downstream_events() noexcept:
    return EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET


cdef class Handoff(Sweeper):
    # Another protocol an http listener's connections may turn out to speak: HTTP/2 with prior knowledge, seen from
    # its connection preface (http2/conn.pyx). Swept, drained and closed with the listener.
    # Take over client socket fd with the bytes already read (rbuf's buffer changes hands), the peer's address (and
    # with its port, client), and the connection's TLS (NULL: cleartext; the pointer changes hands too) with the
    # client's verified identity.
    cdef void adopt(self, int fd, RecvBuf *rbuf, const char *peer, int peer_len, const sockaddr_in6 *client, Tls *tls,
                    bytes identity) noexcept
    cdef void drain(self) noexcept             # no new streams: graceful GOAWAY, connections close once idle
    cdef void close_all(self) noexcept         # close every connection now


cdef class Downstream


cdef class Bridge(LegOwner):
    # The h1 -> h2 bridge (bridge.pxi): an HTTP/1 request carried by a leg (upstream/leg.pxd) to a cluster whose
    # connector is not an HttpPool. Owned by its Downstream, made at its first such request and reused.
    cdef Downstream d                      # the client connection (None once it closed)
    cdef Leg leg                           # the upstream try (reused while its kind fits the cluster)
    cdef OutBuf head                       # the request head's bytes, copied: the view points here for every try
    cdef Head h                            # the parsed head over `head`
    cdef RequestView view                  # the request as the leg renders it
    cdef LegRequest req                    # what the leg renders (points into head and view)
    cdef OutBuf body                       # request body bytes de-framed from the client and not yet dropped
    cdef Py_ssize_t body_off               # bytes of body the current try took
    cdef OutBuf trailers                   # the chunked body's trailer section as sent (field lines, blank line)
    cdef bint body_end                     # the client's body ended: no byte follows those in `body`
    cdef bint keep_body                    # the whole body stays in `body` (small enough to send again)
    cdef bint chunked                      # the answer goes to the client chunked
    cdef bint no_body                      # the answer has no body for the client (HEAD, 204, 304)
    cdef bint backoff                      # waiting a retry's backoff
    cdef bint due                          # the connection's run is scheduled for the end of this loop pass
    cdef unsigned long long serial         # counts the requests carried (a retry timer names its own)

    cdef int begin(self, Py_ssize_t head_len) noexcept
    cdef int pull(self) noexcept
    cdef void add_body(self, const char *p, Py_ssize_t n) noexcept
    cdef void send_try(self) noexcept
    cdef void retry_later(self) noexcept
    cdef int step(self) noexcept
    cdef void wake(self) noexcept
    cdef bint awaits_client(self) noexcept
    cdef void check(self, double now) noexcept
    cdef void answer(self, int err) noexcept
    cdef void stop(self) noexcept


cdef class Front(Acceptor):
    # An http listener's side of its downstream connections: router, upstream pools, options, the open
    # connections and counters. HttpProxy (http1/proxy.pyx) builds it and drives it from Python.
    cdef Reactor reactor                   # epoll set
    cdef readonly str name                 # listener name
    cdef Router router                     # request -> route -> cluster index
    cdef list pools                        # HttpPool per cluster index of the router
    cdef Limits limits                     # request head limits (414/431)
    cdef Limits resp_limits                # response head limits
    cdef readonly BufferPool buffers       # receive buffers for downstream connections
    cdef readonly double header_timeout    # a request head must arrive within this
    cdef readonly double idle_timeout      # keep-alive idle between requests; also the longest silence within a body
    cdef readonly double body_timeout      # a request body must have arrived within this after its head (0: no limit)
    cdef ForwardRules rules                # forwarding fields, request id, trust in fastmesh-timeout-ms
    cdef bytes rid_name                    # request id header name (lowercase), b"" when disabled (rules points in)
    cdef bytes identity_name               # client identity header name (lowercase), b"" when disabled (likewise)
    cdef readonly object access_log        # callable(fields tuple) per request, or None (off: costs nothing)
    cdef bint draining                     # shutting down: finish exchanges, keep no connection alive
    cdef Downstream head                   # open downstream connections (intrusive list)
    cdef readonly long active              # open downstream connections
    cdef readonly unsigned long long accepted       # downstream connections accepted, ever
    cdef readonly unsigned long long requests       # requests answered, ever
    cdef unsigned long long classes[6]     # answers by status class: [0] unused, [1] 1xx ... [5] 5xx
    cdef readonly unsigned long long bytes_in       # request bytes received (heads and bodies)
    cdef readonly unsigned long long bytes_out      # response bytes sent
    cdef uint64_t **class_slots            # per cluster index: its R_FIELDS slots for this listener, or NULL
    cdef uint64_t **hist_slots             # per cluster index: its request-duration histogram, or NULL
    cdef int stat_clusters                 # entries in class_slots / hist_slots
    cdef list spare_exchanges              # Exchanges between requests, for any connection's next one (idle: none held)
    cdef public Handoff h2                 # HTTP/2 (prior knowledge) on this listener, None: HTTP/1 only
    cdef public list chains                # per route index of `router`: its filter chain or None; None: no filters
    cdef public double filter_wait         # seconds a connection may wait on its async filters before it is closed
    cdef public TlsServer tls              # terminate TLS (certificates, ALPN, client verification); None: cleartext

    cdef void unlink(self, Downstream d) noexcept
    cdef void set_rules(self, bint forwarded, str request_id_header, bint trust_headers, str identity_header) except *
    cdef object tunnel_for(self, HttpPool pool)
    cdef void count_request(self, int status) noexcept
    cdef void count_answer(self, int cluster, int status, double seconds) noexcept
    cdef Exchange take_exchange(self)
    cdef void give_exchange(self, Exchange ex) noexcept


cdef class Downstream(UpstreamUser):
    # One client connection: HTTP/1 bytes in and out around the exchange (exchange.pyx) of its current request.
    cdef Front proxy                       # the listener's HttpProxy
    cdef Downstream prev                   # list neighbours
    cdef Downstream next
    cdef int fd                            # client socket, -1 once closed or handed to a tunnel
    cdef int state                         # DownstreamState
    cdef bint readable                     # edge-triggered readiness of fd
    cdef bint writable
    cdef bint hangup                       # the client's FIN/RST was seen
    cdef RecvBuf rbuf                      # bytes from the client
    cdef OutBuf out                        # answer heads / error answers not yet sent
    cdef OutBuf reqhead                    # the request head as sent upstream (kept for a retry)
    cdef Py_ssize_t reqhead_sent           # bytes of reqhead the upstream took
    cdef double deadline                   # header / idle / close deadline by state (a request runs on its exchange's)
    cdef Py_ssize_t head_scan              # bytes of a partial head already searched for its blank line
    cdef Exchange ex                       # the current request's rules and state; None while idle (see Front)
    cdef char peer[48]                     # the client's address as text (the exchange's X-Forwarded-For, hash key)
    cdef int peer_len
    cdef sockaddr_in6 client               # the client's address and port (a sockaddr_in for IPv4), for PROXY headers
    # --- the current request, as HTTP/1 carries it ---
    cdef Upstream up                       # upstream connection, None before acquired / after release
    cdef HttpPool pool                     # the routed cluster's pool (the exchange's connector)
    cdef int req_method                    # parser Method id
    cdef int req_minor                     # request HTTP minor version
    cdef bint req_upgrade                  # Upgrade + Connection: upgrade
    cdef bint req_expect                   # Expect: 100-continue
    cdef bint client_keep                  # the client connection may carry another request
    cdef bint up_keep                      # the upstream connection may be reused
    cdef bint req_done                     # request body fully forwarded
    cdef bint resp_started                 # a response byte came from the upstream
    cdef bint resp_head_done               # the final response head was forwarded
    cdef bint resp_done                    # response body fully forwarded
    cdef bint resp_fresh                   # no byte of the final response head has left yet (a 502 still fits)
    cdef Py_ssize_t resp_mark              # bytes queued in `out` before the final response head
    cdef int status                        # final response status
    cdef BodyFrame req_body                # request body framing
    cdef BodyFrame resp_body               # response body framing
    cdef Py_ssize_t req_ready              # framed request bytes at rbuf.start not yet sent
    cdef Py_ssize_t resp_ready             # framed response bytes at up.rbuf.start not yet sent
    cdef unsigned long long ex_in          # request bytes of this exchange
    cdef unsigned long long ex_out         # response bytes of this exchange
    cdef bint retry_pending                # a retry is scheduled (backoff timer)
    cdef Py_ssize_t body_mark              # rbuf offset of the request body (for a replay)
    cdef Py_ssize_t tmo_off                # offset of the fastmesh-timeout-ms digits in reqhead, -1 = none
    cdef FilterRequest freq                # the request as its filters saw it (their edits live there), or None
    cdef Py_ssize_t filter_head            # DS_FILTER: the length of the request head waiting at rbuf.start
    cdef Bridge bridge                     # carries requests to clusters spoken to over a leg (h2); None before one
    cdef Tls *tls                          # the client side's TLS; NULL: cleartext (the I/O calls test only this)
    cdef bytes identity                    # the client certificate's verified URI SAN (SPIFFE ID), None: none

    cdef void run(self) noexcept
    cdef int handshake(self) noexcept
    cdef void handshake_expired(self) noexcept
    cdef int read_request(self) noexcept
    cdef int begin_exchange(self, Py_ssize_t head_len) noexcept
    cdef int forward_request(self, Py_ssize_t head_len) noexcept
    cdef int forward_bridged(self, Py_ssize_t head_len) noexcept
    cdef int run_filters(self, object chain, Py_ssize_t head_len) noexcept
    cdef int filtered(self, object outcome, Py_ssize_t head_len) noexcept
    cdef void respond_answer(self, object answer, Py_ssize_t head_len) noexcept
    cdef void response_replaced(self, int err) noexcept
    cdef int step_exchange(self) noexcept
    cdef int read_response_head(self) noexcept
    cdef int on_response_head(self, Py_ssize_t head_len) noexcept
    cdef int finish_exchange(self) noexcept
    cdef int flush_out(self) noexcept
    cdef int upstream_lost(self) noexcept
    cdef void try_timed_out(self) noexcept
    cdef bint awaits_client(self) noexcept
    cdef void retry(self) noexcept
    cdef void send_next_try(self) noexcept
    cdef void end_request(self) noexcept
    cdef int take_upstream(self) noexcept
    cdef void drop_upstream(self, bint reuse) noexcept
    cdef void respond_error(self, int err, int code, bint keep) noexcept
    cdef void upgrade(self) noexcept
    cdef void hold_exchange(self) noexcept
    cdef void rest(self) noexcept
    cdef void to_h2(self) noexcept
    cdef void close(self) noexcept
