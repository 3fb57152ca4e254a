# Upstream HTTP/2: per cluster, shared client connections to each endpoint that multiplex the streams of many
# requests, and the leg (upstream/leg.pxd) that carries one try as a stream on one of them.

from libc.stdint cimport uint32_t
from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.reactor cimport EventTarget
from fastmesh._core.upstream.connector cimport Connector, ConnectTry
from fastmesh._core.upstream.leg cimport Leg
from fastmesh._core.http2.session cimport Session
from fastmesh._core.http2.streams cimport Stream
from fastmesh._core.http2.limits cimport H2Limits
from fastmesh._core.tls.context cimport Tls

cdef class H2Upstream                  # declared below
cdef class H2Leg
cdef class H2Pool


cdef enum H2UpState:
    H2_CONNECTING = 1                  # the TCP connect is under way; legs attached wait to open their streams
    H2_OPEN = 2                        # streams open and new ones may (up to the peer's MAX_CONCURRENT_STREAMS)
    H2_GOAWAY = 3                      # the peer's GOAWAY came (or we retire it): old streams finish, no new ones
    H2_CLOSED = 4


cdef class ClientSession(Session):
    # The session of one upstream connection (client role): its events go to the connection's legs.
    cdef H2Upstream up                 # the connection it belongs to (None once closed)


cdef class H2Upstream(EventTarget):
    # One HTTP/2 connection to an endpoint, shared by the legs of many requests.
    cdef H2Pool pool                   # the cluster's pool
    cdef H2Upstream next               # next connection to the same endpoint (the pool's list)
    cdef int fd                        # the socket; -1 once closed
    # The cluster's TLS on this connection (NULL: cleartext); its handshake runs in H2_CONNECTING, under the
    # connect deadline.
    cdef Tls *tls
    cdef readonly int endpoint         # endpoint index in the cluster
    cdef readonly int state            # H2UpState
    cdef ClientSession sess            # the protocol engine; frames out go to sess.out
    cdef RecvBuf rbuf                  # bytes from the server the session has not taken yet
    cdef bint readable                 # edge-triggered readiness of fd
    cdef bint writable
    cdef bint flush_due                # a flush is scheduled for the end of this loop pass (Reactor.again)
    cdef bint in_receive               # sess.receive() is running: legs hold gRPC heads until it returns
    cdef readonly int users            # legs attached: streams open or waiting to open
    cdef int nwaiting                  # of them, legs without a stream yet (waiting for the connect or a slot)
    cdef H2Leg first                   # attached legs, oldest first (H2Leg.prev_on / next_on)
    cdef H2Leg last
    cdef H2Leg held                    # legs holding a gRPC response head until this receive() ends (next_held)
    cdef double deadline               # connecting: the connect deadline; idle (no users): when it closes
    cdef double last_read              # when bytes last came from the server (keepalive: silence since then)
    cdef double ping_sent              # when our keepalive PING went out, 0 when none is awaited

    cdef int cap(self) noexcept
    cdef void attach(self, H2Leg leg) noexcept
    cdef void detach(self, H2Leg leg) noexcept
    cdef void open_waiting(self) noexcept
    cdef void settled(self) noexcept
    cdef void release_held(self) noexcept
    cdef void run(self) noexcept
    cdef void want_flush(self) noexcept
    cdef int flush(self) noexcept
    cdef void connect_failed(self, int err) noexcept
    cdef int keepalive(self, double now) noexcept
    cdef void handshake(self) noexcept
    cdef void connected(self) noexcept
    cdef void lost(self) noexcept
    cdef void goaway(self) noexcept
    cdef void close(self) noexcept


cdef class H2Pool(Connector):
    # Per cluster: the shared connector (picks, failover, breaker) plus the endpoint's HTTP/2 connections. A
    # connection counts once against max_connections however many streams it carries.
    cdef list heads                    # per endpoint: first H2Upstream or None
    cdef H2Upstream chosen             # the connection has_idle() found room on, for the connect() under way
    cdef readonly H2Limits limits      # our settings for every connection (windows, frame and list sizes)
    cdef readonly int max_streams      # streams per connection at most, whatever the peer allows
    cdef readonly double idle_timeout  # seconds a connection with no stream is kept
    cdef readonly double keepalive_interval    # seconds of silence from a server before a PING asks (0: never)
    cdef readonly double keepalive_timeout     # seconds that PING (or any byte) has to come back, else it is dead
    cdef readonly unsigned long long keepalive_failures   # connections found dead that way, ever
    cdef readonly bint retired         # replaced by a reload: its streams finish, then its connections close
    cdef readonly unsigned long long opened    # connections opened, ever
    cdef readonly unsigned long long streams   # streams opened, ever (each a try of a request)
    cdef readonly unsigned long long reuses    # tries that went on a connection already open or connecting, ever
    cdef readonly unsigned long long refused   # streams the server refused or left beyond its GOAWAY, ever

    cdef H2Upstream acquire(self, H2Leg leg, ConnectTry *t, int *outcome)
    cdef void unlink(self, H2Upstream up) noexcept


cdef class H2Leg(Leg):
    # One try as a stream on a shared upstream connection (Interface 3). Reused by its owner for each try.
    cdef H2Pool pool                   # the cluster's pool of the current try
    cdef H2Upstream up                 # the connection, None before one and after the stream ended
    cdef Stream s                      # the stream, None until it opens and once it closed
    cdef H2Leg prev_on                 # neighbours among the legs attached to the same connection
    cdef H2Leg next_on
    cdef H2Leg next_held               # next leg in H2Upstream.held
    cdef OutBuf pend                   # response body bytes the owner did not take yet (bounded by our window)
    cdef bint pend_end                 # the response ended after the bytes in pend
    cdef bint pend_trailers            # ...with trailer fields (s.trailers) to pass on after them
    cdef bint blocked                  # the owner took fewer bytes than offered: delivery waits for resume()
    cdef bint body_sent                # a request body byte went upstream (a refused stream may be replayed until then)
    cdef bint holding                  # a gRPC response head held until the receive() batch ends
    cdef bint opened                   # its stream was opened on the current connection (it waits no more)
    cdef bint counted                  # holds a stream slot of its connection (up.users) and the endpoint's gauge

    cdef int take(self) noexcept
    cdef void retake(self) noexcept
    cdef void open(self) noexcept
    cdef int send_head(self) except -1
    cdef void send_body(self) noexcept
    cdef void on_info(self) noexcept
    cdef void on_head(self, bint end) noexcept
    cdef int report_head(self, bint end, int code) noexcept
    cdef void on_data(self, const char *p, Py_ssize_t n, bint end) noexcept
    cdef void deliver(self, const char *p, Py_ssize_t n, bint end) noexcept
    cdef void on_trailers(self) noexcept
    cdef void trailers(self) noexcept
    cdef void on_reset(self, uint32_t code) noexcept
    cdef void fail(self, int err) noexcept
    cdef void finish(self) noexcept
    cdef void drop(self) noexcept
