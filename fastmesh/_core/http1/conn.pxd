# Downstream HTTP/1 connections (client side) and the per-listener HttpProxy that owns them.

from libc.stdint cimport uint32_t, uint64_t
from fastmesh._core.stats cimport StatsBlock
from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.includes.system cimport sockaddr_storage
from fastmesh._core.reactor cimport Reactor, Acceptor, BufferPool
from fastmesh._core.http1.parser cimport Head, Limits
from fastmesh._core.http1.framing cimport ChunkedDecoder
from fastmesh._core.http1.pool cimport Upstream, UpstreamUser, HttpPool
from fastmesh._core.upstream.connector cimport ConnectTry
from fastmesh._core.router cimport Router
from fastmesh._core.policy cimport ClusterPolicy


cdef enum DownstreamState:
    DS_HEAD = 1                # reading a request head (header_timeout runs)
    DS_IDLE = 2                # keep-alive between requests (idle_timeout runs)
    DS_EXCHANGE = 3            # a request is being proxied
    DS_CLOSING = 4             # flushing a last answer, then close
    DS_UPGRADING = 5           # flushing a 101 answer, then the connection becomes a TCP relay
    DS_CLOSED = 6


ctypedef struct BodyFrame:
    int kind                   # framing.BodyKind
    long long length           # BODY_LENGTH: the whole body's length (a retry starts over)
    long long remaining        # BODY_LENGTH: bytes still to pass
    bint done                  # the whole body has been framed
    bint dechunk               # pass only the chunk data (an HTTP/1.0 client cannot read chunked)
    Py_ssize_t skip            # dechunk: framing bytes after the span being sent, dropped once it is out
    ChunkedDecoder dec         # BODY_CHUNKED: validates the chunked coding and finds its end


cdef class HttpProxy(Acceptor):
    # Per http listener: router, upstream pools, options, the open downstream connections and counters.
    cdef Reactor reactor                   # epoll set
    cdef readonly str name                 # listener name
    cdef Router router                     # request -> route -> cluster index
    cdef list pools                        # HttpPool per cluster index of the router
    cdef Limits limits                     # request head limits (414/431)
    cdef Limits resp_limits                # response head limits
    cdef BufferPool buffers                # receive buffers for downstream connections
    cdef readonly double header_timeout    # a request head must arrive within this
    cdef readonly double idle_timeout      # keep-alive idle between requests
    cdef bint forwarded                    # add Via / X-Forwarded-For / X-Forwarded-Proto
    cdef bytes rid_name                    # request id header name (lowercase), b"" when disabled
    cdef readonly object access_log        # callable(fields tuple) per request, or None (off: costs nothing)
    cdef bint draining                     # shutting down: finish exchanges, keep no connection alive
    cdef bint trust_headers                # honour fastmesh-timeout-ms from clients (else strip it)
    cdef Downstream head                   # open downstream connections (intrusive list)
    cdef readonly long active              # open downstream connections
    cdef readonly unsigned long long accepted       # downstream connections accepted, ever
    cdef readonly unsigned long long requests       # requests answered, ever
    cdef unsigned long long classes[6]     # answers by status class: [0] unused, [1] 1xx ... [5] 5xx
    cdef readonly unsigned long long bytes_in       # request bytes received (heads and bodies)
    cdef readonly unsigned long long bytes_out      # response bytes sent
    cdef StatsBlock stats                  # the block the slot pointers below point into (kept alive through this)
    cdef uint64_t *counters                # this listener's L_FIELDS slots (stats.pxd)
    cdef uint64_t **class_slots            # per cluster index: its R_FIELDS slots for this listener, or NULL
    cdef uint64_t **hist_slots             # per cluster index: its request-duration histogram, or NULL
    cdef int stat_clusters                 # entries in class_slots / hist_slots

    cdef void unlink(self, Downstream d) noexcept
    cdef object tunnel_for(self, HttpPool pool)
    cdef void count_answer(self, int cluster, int status, double seconds) noexcept


cdef class Downstream(UpstreamUser):
    # One client connection and the exchange (request/response) it is running.
    cdef HttpProxy proxy                   # owner
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
    cdef char peer[48]                     # client IP as text (X-Forwarded-For)
    cdef int peer_len
    cdef double deadline                   # header / idle / response / close deadline, by state
    cdef Py_ssize_t head_scan              # bytes of a partial head already searched for its blank line
    cdef double started                    # when the current request head was complete
    # --- the current exchange ---
    cdef Upstream up                       # upstream connection, None before acquired / after release
    cdef HttpPool pool                     # the routed cluster's pool
    cdef int cluster                       # router cluster index
    cdef Router router                     # the route table the current request was matched with
    cdef int route                         # matched route index (in `router`)
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
    cdef int status                        # final response status
    cdef BodyFrame req_body                # request body framing
    cdef BodyFrame resp_body               # response body framing
    cdef Py_ssize_t req_ready              # framed request bytes at rbuf.start not yet sent
    cdef Py_ssize_t resp_ready             # framed response bytes at up.rbuf.start not yet sent
    cdef unsigned long long ex_in          # request bytes of this exchange
    cdef unsigned long long ex_out         # response bytes of this exchange
    cdef object log_fields                 # (method, authority, path) when the access log is on
    # --- resilience ---
    cdef int tries                         # tries of the current request (1 = first), retries = tries - 1
    cdef ConnectTry ct                     # the walk over endpoints: connects this try, endpoints failed, hash key
    cdef bint counted                      # counted in policy.requests_active
    cdef bint retrying                     # counted in policy.retries_active
    cdef bint waiting                      # queued in pool.waiters for a connection slot
    cdef bint retry_pending                # a retry is scheduled (backoff timer)
    cdef bint body_replayable              # the whole request body sits in rbuf from body_mark on
    cdef Py_ssize_t body_mark              # rbuf offset of the request body (for a replay)
    cdef double total_deadline             # request deadline (timeout / fastmesh-timeout-ms), 0 = none
    cdef Py_ssize_t tmo_off                # offset of the fastmesh-timeout-ms digits in reqhead, -1 = none
    cdef double try_started                # when the current try got its connection (latency for the balancer)

    cdef void run(self) noexcept
    cdef bint body_can_finish(self) noexcept
    cdef int read_request(self) noexcept
    cdef int begin_exchange(self, Py_ssize_t head_len) noexcept
    cdef int step_exchange(self) noexcept
    cdef int read_response_head(self) noexcept
    cdef int on_response_head(self, Py_ssize_t head_len) noexcept
    cdef int finish_exchange(self) noexcept
    cdef int flush_out(self) noexcept
    cdef int upstream_lost(self) noexcept
    cdef bint may_retry(self, int cls, int status) noexcept
    cdef void retry(self) noexcept
    cdef void end_request(self) noexcept
    cdef void stamp_deadline(self) noexcept
    cdef double try_deadline(self) noexcept
    cdef object describe(self, const char *buf, Head *h)
    cdef void log_request(self, int endpoint)
    cdef void random_id(self, char *out) noexcept
    cdef void add_retried(self, OutBuf *o) noexcept
    cdef bint request_key(self, const char *buf, Head *h) noexcept
    cdef void report(self, int ep, int status, bint failed) noexcept
    cdef int pump_body(self, RecvBuf *src, int sfd, bint *s_readable, bint s_hangup, int dfd, bint *d_writable,
                       OutBuf *dpend, BodyFrame *f, Py_ssize_t *ready, bint request) noexcept
    cdef void build_request_head(self, const char *buf, Head *h) noexcept
    cdef void build_response_head(self, const char *buf, Head *h, bint tunnel) noexcept
    cdef bint take_upstream(self) noexcept
    cdef void drop_upstream(self, bint reuse) noexcept
    cdef void respond_error(self, int err, int code, bint keep) noexcept
    cdef void upgrade(self) noexcept
    cdef void close(self) noexcept
