# The HTTP/1 leg: one try of a stream's request over an HttpPool connection (Interface 3, upstream/leg.pxd).

from fastmesh._core.upstream.leg cimport Leg
from fastmesh._core.http1.pool cimport Upstream, HttpPool
from fastmesh._core.http1.body cimport BodyFrame


cdef class H1Leg(Leg):
    cdef HttpPool pool                 # the cluster's pool (the exchange's connector) of the current try
    cdef Upstream up                   # the connection, None before one is acquired and after it went back
    cdef BodyFrame resp                # response body framing (chunked: decoded; the owner gets data spans)
    cdef bint chunked                  # the request body goes chunked (the client sent no content-length)
    cdef bint resp_started             # a response byte came (a failure is no stale keep-alive any more)
    cdef bint up_keep                  # the response allows the connection to be reused
    cdef bint blocked                  # the owner took fewer bytes than offered: reading waits for resume()
    cdef Py_ssize_t pending            # response data bytes at up.rbuf.start not yet taken by the owner
    cdef Py_ssize_t skip               # framing bytes right after them, dropped once they are taken
    cdef Py_ssize_t tr_off             # once a chunked body ended: its trailer section's offset after the last data
    cdef Py_ssize_t tr_len             # and its length (2: no trailer field)

    cdef int take(self) noexcept
    cdef void run(self) noexcept
    cdef int send_request(self) noexcept
    cdef void read_response(self) noexcept
    cdef int on_head(self, Py_ssize_t head_len) noexcept
    cdef int pass_body(self) noexcept
    cdef void chunked_end(self) noexcept
    cdef void lost(self) noexcept
    cdef void fail(self, int err) noexcept
    cdef void finish(self) noexcept
    cdef void drop(self, bint reuse) noexcept
