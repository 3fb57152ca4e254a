"""A stream's upstream leg (Interface 3): the seam between a downstream stream and the try that carries it.

The stream (the owner) keeps the Exchange: routing, deadlines, retries, reports and answers stay there. A leg
takes one try at a time: it gets a connection through the exchange's connector (its endpoint walk, failover and
connection breaker), renders the request for its protocol, pulls the request body from the owner as the
connection takes it, and pushes the response back: head, body bytes (the owner takes what its client's window
allows; the leg stops reading until resume()), trailers, the end, or a failure as a ProxyError.

Legs: http1/leg.pyx (an HTTP/1 pool connection, one request at a time); an h2 leg (a stream on a shared upstream
HTTP/2 connection) implements the same class. The base methods here do nothing: a leg kind overrides them.
"""
from fastmesh._core.request cimport Field
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.errors cimport PE_NO_ENDPOINTS
from fastmesh._core.upstream.connector cimport Connector


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
