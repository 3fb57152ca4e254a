# HTTP/2 rendering: response heads with the exchange's response edits, and the proxy's own answers (plain or
# gRPC trailers-only), through the session's HPACK encoder.

from fastmesh._core.request cimport Field, EditList
from fastmesh._core.http2.session cimport Session
from fastmesh._core.http2.streams cimport Stream

# A response head on s: :status, the fields (names in any case; connection-specific ones and those the Connection
# field names are dropped), the edits' added fields, fastmesh-retried when retried >= 0. `end`: no body follows.
cdef int render_head(Session sess, Stream s, int status, const char *base, const Field *fields, int n,
                     const EditList *edits, int retried, bint end) except -1
# An interim (1xx) head on s, the stream left open: :status and the fields, dropped as in render_head (no edits).
cdef int render_interim(Session sess, Stream s, int status, const char *base, const Field *fields, int n) except -1
# The proxy's answer for ProxyError err (errors.pxd; `code`: a parse code for PE_BAD_REQUEST, the Retry-After
# seconds for PE_RATE_LIMITED, else 0; retry_ms: PE_RATE_LIMITED's wait in ms) on s, ending the stream: for a gRPC
# request trailers-only (status 200, grpc-status, grpc-message, fastmesh-error; a rate limit's wait as
# grpc-retry-pushback-ms and retry-after), else the status with a short text body (none for HEAD) and
# fastmesh-error. Returns the HTTP status sent.
cdef int render_error(Session sess, Stream s, int err, int code, bint grpc, int retried, bint head_only,
                      int retry_ms) except -1
# A request filter's own answer head on s (filters.pyx checked and spelled its parts): :status, the (name, value)
# bytes `fields`, content-length `length`. `end`: no body follows (the codec sends it, as flow control allows).
cdef int render_answer(Session sess, Stream s, int status, list fields, Py_ssize_t length, bint end) except -1
