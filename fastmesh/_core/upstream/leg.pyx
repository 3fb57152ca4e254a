"""A stream's upstream leg (Interface 3): the seam between a downstream stream and the try that carries it.

The stream (the owner) keeps the Exchange: routing, deadlines, retries, reports and answers stay there. A leg
takes one try at a time: it gets a connection through the exchange's connector (its endpoint walk, failover and
connection breaker), renders the request for its protocol, pulls the request body from the owner as the
connection takes it, and pushes the response back: head, body bytes (the owner takes what its client's window
allows; the leg stops reading until resume()), trailers, the end, or a failure as a ProxyError.

Legs: http1/leg.pyx (an HTTP/1 pool connection, one request at a time); an h2 leg (a stream on a shared upstream
HTTP/2 connection) implements the same class. The base methods here do the part of a try every kind shares (its
fields, the connection breaker's queue); the rest a leg kind overrides. failed_verdict and clock_verdict are the
owners' shared rules: what a failed try or a clock that ran out means for the request.
"""
from fastmesh._core.request cimport Field
from fastmesh._core.exchange cimport Exchange, V_RETRY
from fastmesh._core.policy cimport RETRY_RESET, RETRY_TIMEOUT
from fastmesh._core.errors cimport (
    PE_NONE, PE_NO_ENDPOINTS, PE_OVERLOADED, PE_RESET, PE_BODY_TIMEOUT, PE_DEADLINE_EXCEEDED,
)
from fastmesh._core.upstream.connector cimport Connector, CONNECT_FULL


cdef class LegOwner:

    cdef Py_ssize_t body_peek(self, const char **p) noexcept:
        return 0

    cdef void body_took(self, Py_ssize_t n) noexcept:
        pass

    cdef bint body_ended(self) noexcept:
        return True

    cdef int body_trailers(self, const char **base, const Field **fields) noexcept:
        return 0

    cdef void leg_info(self, Leg leg, int status, const char *base, const Field *fields, int n) noexcept:
        pass

    cdef int leg_head(self, Leg leg, int status, const char *base, const Field *fields, int n, bint end) noexcept:
        return 1

    cdef Py_ssize_t leg_data(self, Leg leg, const char *p, Py_ssize_t n, bint end) noexcept:
        return n

    cdef void leg_trailers(self, Leg leg, const char *base, const Field *fields, int n) noexcept:
        pass

    cdef void leg_failed(self, Leg leg, int err) noexcept:
        pass

    cdef void leg_progress(self, Leg leg) noexcept:
        pass


cdef class Leg:

    def __cinit__(self):
        self.endpoint = -1

    cdef int start(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept:
        return PE_NO_ENDPOINTS

    cdef void request_ready(self) noexcept:
        pass

    cdef void resume(self) noexcept:
        pass

    cdef void cancel(self) noexcept:
        self.state = LEG_IDLE
        self.owner = None

    cdef void tick(self, double now) noexcept:
        pass

    cdef bint fits(self, Connector connector) noexcept:
        return False

    cdef void begin_try(self, LegOwner owner, Exchange ex, const LegRequest *req) noexcept:
        self.owner = owner
        self.ex = ex
        self.req = req[0]
        self.endpoint = -1
        self.head_done = False
        self.stale = False
        self.req_done = False

    cdef int take(self) noexcept:
        return PE_NO_ENDPOINTS

    cdef int no_connection(self, int outcome) noexcept:
        """The connector found no connection: with every slot taken (the circuit breaker), wait for one or refuse at
        once; else no endpoint could be tried."""
        if outcome != CONNECT_FULL:
            self.state = LEG_IDLE
            return PE_NO_ENDPOINTS
        if not self.ex.wait(self):
            self.state = LEG_IDLE
            return PE_OVERLOADED
        self.state = LEG_WAITING
        return PE_NONE

    cdef void unwait(self) noexcept:
        cdef Exchange ex = self.ex
        if self.state == LEG_WAITING and ex is not None and ex.waiting:
            ex.waiting = False
            ex.connector.unwait(self)

    cdef void fail(self, int err) noexcept:
        cdef LegOwner owner = self.owner
        self.state = LEG_IDLE
        self.owner = None
        if owner is not None:
            owner.leg_failed(self, err)

    cdef void slot_free(self) noexcept:
        """A connection slot opened up while the try waited for one."""
        cdef int r
        self.ex.waiting = False
        if self.state != LEG_WAITING:
            return
        r = self.take()
        if r != PE_NONE:
            self.fail(r)


cdef int failed_verdict(Exchange ex, Leg leg, int err, double now) noexcept:
    if leg.head_done:
        ex.response_broke(leg.endpoint, now)
        return PE_RESET
    if err == PE_RESET:
        if ex.try_failed(leg.endpoint, RETRY_RESET, not leg.stale, now) == V_RETRY:
            return OWNER_RETRY
        return ex.error
    return err


cdef int clock_verdict(Exchange ex, Leg leg, bint body_end, bint awaits_client, double idle_timeout,
                       double now) noexcept:
    cdef int ep
    if ex.deadline_passed(now):
        # Out of time while the client still owed body bytes: the client's doing (408), else 504.
        return PE_BODY_TIMEOUT if awaits_client else PE_DEADLINE_EXCEEDED
    if not body_end and ex.body_overdue(now, awaits_client, idle_timeout):
        return PE_BODY_TIMEOUT
    if leg is None:
        return OWNER_WAIT
    if leg.state == LEG_WAITING and now >= ex.try_deadline:
        leg.cancel()
        return ex.wait_expired()
    if (leg.state == LEG_ACTIVE or leg.state == LEG_CONNECTING) and not leg.head_done and now >= ex.try_deadline:
        ep = leg.endpoint
        leg.cancel()
        if ex.try_failed(ep, RETRY_TIMEOUT, True, now) == V_RETRY:
            return OWNER_RETRY
        return ex.error
    leg.tick(now)
    return OWNER_WAIT
