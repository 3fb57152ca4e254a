# Downstream HTTP/2 connections (server role) of an http listener: the HTTP/2 codec around the session engine,
# one Exchange per stream, each try carried by an upstream leg (upstream/leg.pxd).

from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.reactor cimport EventTarget
from fastmesh._core.includes.system cimport sockaddr_in6
from fastmesh._core.request cimport RequestView
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.http1.conn cimport Front, Handoff
from fastmesh._core.http2.session cimport Session
from fastmesh._core.http2.streams cimport Stream
from fastmesh._core.http2.limits cimport H2Limits
from fastmesh._core.upstream.leg cimport Leg, LegOwner, LegRequest
from fastmesh._core.filters cimport FilterRequest
from fastmesh._core.tls.context cimport Tls


cdef class H2Conn                      # declared below


cdef enum RequestState:
    RQ_FREE = 0                        # on the connection's free list
    RQ_ACTIVE = 1                      # a request in flight: a try under way, or about to be
    RQ_BACKOFF = 2                     # waiting a retry's backoff
    RQ_ENDED = 3                       # answered (or abandoned): off the books, waiting for the session to close it
    RQ_FILTER = 4                      # an async filter plugin holds the request (filters.pyx); other streams go on


cdef class H2Front(Handoff):
    # An http listener's HTTP/2 side: its settings and limits, and its open HTTP/2 connections.
    cdef Front front                   # the listener's HttpProxy: router, pools, rules, counters, access log
    cdef readonly H2Limits limits      # settings and abuse limits every new connection starts with
    cdef H2Conn head                   # open connections (intrusive list)
    cdef readonly long active          # open HTTP/2 connections
    cdef readonly unsigned long long accepted   # connections that began with the preface, ever
    cdef readonly unsigned long long streams    # requests (streams) taken, ever
    cdef bint draining                 # shutting down: every connection got a graceful GOAWAY

    cdef void unlink(self, H2Conn c) noexcept


cdef class ServerSession(Session):
    # The session of one downstream connection: its events go to the connection.
    cdef H2Conn conn                   # the connection it belongs to (None once closed)


cdef class H2Request(LegOwner):
    # One stream's request: its exchange, its leg, the request view over the stream's decoded head, and the
    # request body on its way upstream (kept whole for a retry while small). Reused from a per-connection free list.
    cdef H2Conn conn                   # the connection (None once it closed)
    cdef Stream s                      # the session's stream, None once closed
    cdef H2Request prev                # neighbours in the connection's busy list / next in its free list
    cdef H2Request next
    cdef int state                     # RequestState
    cdef unsigned long long serial     # counts the requests this object carried (a retry timer names its own)
    cdef Exchange ex                   # routing, deadlines, retries, reports (reused)
    cdef Leg leg                       # the upstream try (reused while its kind fits the cluster)
    cdef RequestView view              # the request as routing sees it (points into s.head)
    cdef LegRequest req                # what the leg renders (points into s.head and view)
    cdef OutBuf body                   # request body bytes received and not yet dropped
    cdef Py_ssize_t body_off           # bytes of body the current try took
    cdef bint body_end                 # the client's side ended (END_STREAM): no body byte follows
    cdef bint keep_body                # the whole body stays in `body` (small enough to send again)
    cdef bint resp_started             # our response head went out (an error now is a RST_STREAM)
    cdef bint resp_done                # our whole response went out, or the stream was reset
    cdef bint head_only                # a HEAD request (errors carry no body)
    cdef int status                    # the answer's status (for counters and the log)
    cdef int err                       # the ProxyError we answered with, 0 for an upstream's answer (the log)
    cdef unsigned long long ex_in      # request body bytes received
    cdef unsigned long long ex_out     # response body bytes sent
    cdef FilterRequest freq            # the request as its filters saw it (their edits live there), or None
    cdef double filter_deadline        # RQ_FILTER: when the stream stops waiting for its filters (504)
    cdef bytes answer_body             # a filter's answer body not yet sent (flow control), or None
    cdef Py_ssize_t answer_off         # bytes of answer_body sent

    cdef void begin(self, Stream s, bint end_stream) noexcept
    cdef void forward(self) noexcept
    cdef void run_filters(self, object chain) noexcept
    cdef void filtered(self, object outcome) noexcept
    cdef void respond_answer(self, object answer) noexcept
    cdef void send_answer(self) noexcept
    cdef void forget_filters(self) noexcept
    cdef void send_try(self) noexcept
    cdef void on_body(self, const char *p, Py_ssize_t n, bint end) noexcept
    cdef void retry_later(self) noexcept
    cdef bint awaits_client(self) noexcept
    cdef void check(self, double now) noexcept
    cdef void answer(self, int err) noexcept
    cdef void answered_early(self) noexcept
    cdef void finish(self) noexcept
    cdef void stream_closed(self) noexcept


cdef class H2Conn(EventTarget):
    # One client connection speaking HTTP/2.
    cdef H2Front front                 # the listener's HTTP/2 side
    cdef H2Conn prev                   # list neighbours
    cdef H2Conn next
    cdef int fd                        # client socket, -1 once closed
    cdef ServerSession sess            # the protocol engine; frames out go to sess.out
    cdef RecvBuf rbuf                  # bytes from the client not yet taken by the session
    cdef bint readable                 # edge-triggered readiness of fd
    cdef bint writable
    cdef bint hangup                   # the client's FIN/RST was seen (read until EOF without a further edge)
    cdef bint closed
    cdef bint flush_due                # a flush is scheduled for the end of this loop pass (Reactor.again)
    cdef H2Request busy                # requests on the books (intrusive list, swept)
    cdef H2Request free                # spare H2Request objects (singly linked through next)
    cdef int nfree                     # entries in free
    cdef double idle_since             # when the connection last had no stream (0: it has some)
    cdef double ticked                 # when the session's clock last ran (tick)
    cdef char peer[48]                 # the client's address as text (each exchange's X-Forwarded-For)
    cdef int peer_len
    cdef sockaddr_in6 client           # the client's address and port (a sockaddr_in for IPv4), for PROXY headers
    cdef Tls *tls                      # the connection's TLS (ALPN chose h2), NULL: cleartext (prior knowledge)
    cdef bytes identity                # the client certificate's verified URI SAN, None: none

    cdef void run(self) noexcept
    cdef int flush(self) noexcept
    cdef void want_flush(self) noexcept
    cdef H2Request take_request(self) noexcept
    cdef void unbusy(self, H2Request r) noexcept
    cdef void recycle(self, H2Request r) noexcept
    cdef void sweep(self, double now) noexcept
    cdef void rest(self) noexcept
    cdef void close(self) noexcept
