# The HTTP/1 side of the request view: a parsed Head becomes a RequestView (request.pxd) without a copy.

from fastmesh._core.request cimport RequestView, Span
from fastmesh._core.http1.parser cimport Head

# The authority of an absolute-form or authority-form target as sent (port kept; the parser refused
# userinfo), else an empty span: what a forwarded request's Host must say (RFC 9112 section 3.2.2).
cdef Span target_authority(const char *buf, const Head *h) noexcept nogil
# A host as routing sees it, from an authority without userinfo: the port and a final dot removed (an IPv6
# literal keeps its brackets).
cdef Span host_part(Span s) noexcept nogil
# The request host as routing sees it: the absolute-form or authority-form target's authority (RFC 9112
# section 3.2.2: it wins over Host), else the Host value; userinfo, port and a final dot removed.
# Empty (len 0) when the request names no host.
cdef Span request_host(const char *buf, const Head *h) noexcept nogil
# The target's path (before "?") and the rest (from "?", or empty). An absolute-form target without a
# path gives "/"; authority-form gives an empty path; asterisk-form gives "*".
cdef void request_path(const char *buf, const Head *h, Span *path, Span *rest) noexcept nogil
# Fill v from the request head h parsed over buf: spans and fields point into buf (h.headers are the fields).
cdef void view_init(RequestView *v, const char *buf, const Head *h) noexcept nogil
# (method, authority, target) bytes as the client sent them: what the access log names a request by.
cdef object log_names(const char *buf, const Head *h)
# The listener address the client on fd connected to ("ip:port"), for an HTTP/1.0 request without Host (it goes
# upstream as HTTP/1.1, which needs one); an empty span for any other request. A syscall, on that rare path only.
cdef Span listener_address(int fd, const Head *h) noexcept
# Parse a complete request head (default limits) into h and v; raises the parser's HttpParseError, or
# ValueError for an incomplete head. For the Python-facing wrappers (tests, explain), not the data path.
cdef int view_parse(bytes raw_head, Head *h, RequestView *v) except -1
