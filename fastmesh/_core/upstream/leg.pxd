# A stream's upstream leg (Interface 3): one try of a downstream request carried by one upstream connection, and
# the owner (the downstream stream, which keeps the Exchange) it reports to. HTTP/1 legs: http1/leg.pyx.

from fastmesh._core.request cimport RequestView, Span, Field
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.http1.pool cimport UpstreamUser
from fastmesh._core.upstream.connector cimport Connector

cdef class Leg                  # declared below; the owner's events name it


cdef enum OwnerVerdict:
    # What failed_verdict / clock_verdict ask of an owner, besides a ProxyError to answer with (> 0).
    OWNER_WAIT = 0                 # nothing to do now
    OWNER_RETRY = -1               # the exchange retries: wait its backoff, then start the next try


cdef enum LegState:
    LEG_IDLE = 0                   # no try under way (made, finished, or cancelled)
    LEG_WAITING = 1                # queued for a connection slot (the connection breaker); slot_free() resumes it
    LEG_CONNECTING = 2             # a connect is under way
    LEG_ACTIVE = 3                 # the request is being sent / the response read
    LEG_DONE = 4                   # the response ended (leg_end / leg_trailers reported); nothing more happens


ctypedef struct LegRequest:
    # The request a leg renders for its connection; everything points into the owner's stream (valid until it ends).
    const RequestView *view        # method, path, query and the regular fields (no pseudo-headers)
    Span authority                 # the authority as the client sent it (port kept): Host (HTTP/1) / :authority (h2)
    Span scheme                    # the request's scheme ("http" / "https"), for an h2 leg's :scheme
    long long content_length       # the client's content-length, -1 when it sent none
    bint has_body                  # a body follows the head (it may still turn out empty)
    bint te_trailers               # the client sent `te: trailers` (an h2 leg passes it on; HTTP/1 drops it)
    bint grpc                      # a gRPC request (content-type application/grpc*): deadline as grpc-timeout too


cdef class LegOwner:
    # The downstream side of a leg: the stream that owns the Exchange. Request bytes are pulled from it; response
    # events are pushed to it. Every method is a C call; the owner may cancel the leg from inside any of them.
    #
    # The request body, pulled (the owner keeps it: bounded by the client's flow-control window, and kept whole
    # for a retry while it is small):
    cdef Py_ssize_t body_peek(self, const char **p) noexcept   # body bytes the leg may take now (0: none yet)
    cdef void body_took(self, Py_ssize_t n) noexcept           # the leg took n of the bytes peeked
    cdef bint body_ended(self) noexcept                        # no body byte follows the ones peeked
    # The request's trailer fields (after body_ended): count, with *base and *fields set; 0 when none.
    cdef int body_trailers(self, const char **base, const Field **fields) noexcept
    # The response, pushed:
    # An interim (1xx, not 101) response head, fields as below: passed on to a client that can take it, or dropped.
    cdef void leg_info(self, Leg leg, int status, const char *base, const Field *fields, int n) noexcept
    # A final response head. `fields` point into `base` (names in any case; the owner renders them its way and
    # drops connection-specific ones); `end`: no body follows. Returns 1 to go on, 0 when the owner cancelled the
    # leg (a retry, an answer of its own).
    cdef int leg_head(self, Leg leg, int status, const char *base, const Field *fields, int n, bint end) noexcept
    # Response body bytes; returns how many the owner took (fewer: the leg holds the rest and stops reading until
    # resume()). `end` with the last ones (n may be 0): the response is complete.
    cdef Py_ssize_t leg_data(self, Leg leg, const char *p, Py_ssize_t n, bint end) noexcept
    # The response ended with trailer fields (framing fields already removed).
    cdef void leg_trailers(self, Leg leg, const char *base, const Field *fields, int n) noexcept
    # The try failed: a ProxyError (errors.pxd). Before the head (leg.head_done false): PE_RESET (the exchange's
    # try_failed decides; leg.stale: the endpoint is not to blame), a connect error, PE_NO_ENDPOINTS, PE_OVERLOADED,
    # PE_BAD_RESPONSE. After it: the response broke mid-body (the owner resets its stream). The leg is idle again.
    cdef void leg_failed(self, Leg leg, int err) noexcept
    # The leg took request bytes: the owner may credit its client's flow-control window (a no-op by default).
    cdef void leg_progress(self, Leg leg) noexcept


cdef class Leg(UpstreamUser):
    # One try on one upstream connection. An UpstreamUser so that HTTP/1 pool connections can wake it (other legs
    # ignore those events). A leg is reused by its owner for every try (and request) it carries.
    cdef LegOwner owner                # who gets the events, None while idle
    cdef Exchange ex                   # the owner's exchange: connector, endpoint walk (ct), deadlines, edits
    cdef LegRequest req                # the request of the current try
    cdef readonly int state            # LegState
    cdef readonly int endpoint         # endpoint of the current connection, -1 before one
    cdef readonly bint head_done       # a final response head was reported (leg_head)
    cdef readonly bint stale           # failed on a reused connection before a response byte: not the endpoint's fault
    cdef readonly bint req_done        # the whole request (body and trailers) was handed to the connection

    # Begin a try of ex's request on a connection from ex.connector (stamping ex.budget_ms into the deadline
    # field). PE_NONE when the try is under way or queued for a slot; otherwise a ProxyError to answer with.
    cdef int start(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept
    cdef void request_ready(self) noexcept     # the owner has more body (or its end) for the leg
    cdef void resume(self) noexcept            # the owner can take response bytes again
    cdef void cancel(self) noexcept            # end the try now (a reset upstream unless it had ended); leg idle
    cdef void tick(self, double now) noexcept  # the owner's sweep: the leg's own clocks (a connect timeout)
    cdef bint fits(self, Connector connector) noexcept   # whether this kind of leg carries tries to `connector`
    # For the leg kinds (the common part of their tries):
    cdef void begin_try(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept   # a try's fields reset
    cdef int take(self) noexcept               # a connection for the try (the kind's): PE_NONE or a ProxyError
    cdef int no_connection(self, int outcome) noexcept   # the connector found none: queue for a slot, or why not
    cdef void unwait(self) noexcept            # leave the connection breaker's queue, if in it
    cdef void fail(self, int err) noexcept     # end the try (the kind lets its connection go), tell the owner
    cdef void slot_free(self) noexcept         # a connection slot opened up while the try waited for one


# The rules every owner follows, whatever its codec (one place, so the h1 -> h2 bridge and an HTTP/2 stream agree):
# its leg failed with err (leg_failed): the exchange hears it (a broken response after the head; a reset before it,
# retried or not); OWNER_RETRY, or the ProxyError to answer with (PE_RESET after the head: the owner cuts its
# client's response short).
cdef int failed_verdict(Exchange ex, Leg leg, int err, double now) noexcept
# The owner's sweep while no response head came: the request's deadline (408 when the client still owed body
# bytes, else 504), the client's body clocks (408), a wait for a connection slot, the try's response head (retried,
# or 504); else the leg's own clocks run. OWNER_WAIT, OWNER_RETRY or the ProxyError to answer with.
cdef int clock_verdict(Exchange ex, Leg leg, bint body_end, bint awaits_client, double idle_timeout,
                       double now) noexcept
