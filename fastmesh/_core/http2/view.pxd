# The HTTP/2 side of the request view: a decoded request header block becomes a RequestView (request.pxd) and the
# LegRequest a stream's upstream leg renders, without a copy.

from fastmesh._core.request cimport RequestView
from fastmesh._core.upstream.leg cimport LegRequest
from fastmesh._core.http2.hpack cimport HeaderBlock

# Fill v and r from the request head b (pseudo-header fields first, as the session validated them): :method,
# :authority (else the host field) for routing, :path split at "?" (CONNECT: none), the regular fields as the
# view's fields. `content_length`: the session's parsed content-length (-1: none); `end_stream`: no body follows.
cdef void view_from_block(RequestView *v, LegRequest *r, const HeaderBlock *b, long long content_length,
                          bint end_stream) noexcept nogil
