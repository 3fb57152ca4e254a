"""Proxy errors -> HTTP status, reason, `fastmesh-error` cause, RST_STREAM code, grpc-status: the one table.

The HTTP/1 codec renders an ErrorInfo as a small text/plain answer; an HTTP/2 codec will render the same entry
as a HEADERS frame (or RST_STREAM with rst_code once a response has started), and a gRPC answer carries
grpc_status. The choices follow what a client can do next: REFUSED_STREAM and UNAVAILABLE for a request no
backend saw (safe to send again), CANCEL and DEADLINE_EXCEEDED for time that ran out.
"""

cdef ErrorInfo _TABLE[PE_COUNT]
cdef ErrorInfo _INTERNAL


cdef void _set(int err, int status, const char *reason, const char *cause, int rst, int grpc) noexcept:
    _TABLE[err].status = status
    _TABLE[err].reason = reason
    _TABLE[err].cause = cause
    _TABLE[err].rst_code = rst
    _TABLE[err].grpc_status = grpc


_set(PE_NONE, 500, b"Internal Server Error", b"internal error", H2_INTERNAL_ERROR, GRPC_INTERNAL)
_set(PE_BAD_REQUEST, 400, b"Bad Request", b"bad request", H2_PROTOCOL_ERROR, GRPC_INTERNAL)
_set(PE_HEADER_TIMEOUT, 408, b"Request Timeout", b"header timeout", H2_CANCEL, GRPC_CANCELLED)
_set(PE_BODY_TIMEOUT, 408, b"Request Timeout", b"body timeout", H2_CANCEL, GRPC_CANCELLED)
_set(PE_NO_ROUTE, 404, b"Not Found", b"no route", H2_REFUSED_STREAM, GRPC_UNIMPLEMENTED)
_set(PE_OVERLOADED, 503, b"Service Unavailable", b"overloaded", H2_REFUSED_STREAM, GRPC_UNAVAILABLE)
_set(PE_NO_ENDPOINTS, 503, b"Service Unavailable", b"no endpoints", H2_REFUSED_STREAM, GRPC_UNAVAILABLE)
_set(PE_CONNECT_REFUSED, 503, b"Service Unavailable", b"connect refused", H2_REFUSED_STREAM, GRPC_UNAVAILABLE)
_set(PE_CONNECT_TIMEOUT, 503, b"Service Unavailable", b"connect timeout", H2_REFUSED_STREAM, GRPC_UNAVAILABLE)
_set(PE_CONNECT_FAILED, 503, b"Service Unavailable", b"connect failed", H2_REFUSED_STREAM, GRPC_UNAVAILABLE)
_set(PE_RESET, 502, b"Bad Gateway", b"reset", H2_INTERNAL_ERROR, GRPC_UNAVAILABLE)
_set(PE_BAD_RESPONSE, 502, b"Bad Gateway", b"bad response", H2_INTERNAL_ERROR, GRPC_INTERNAL)
_set(PE_RESPONSE_TIMEOUT, 504, b"Gateway Timeout", b"response timeout", H2_CANCEL, GRPC_DEADLINE_EXCEEDED)
_set(PE_DEADLINE_EXCEEDED, 504, b"Gateway Timeout", b"deadline exceeded", H2_CANCEL, GRPC_DEADLINE_EXCEEDED)
_set(PE_METHOD_NOT_ALLOWED, 405, b"Method Not Allowed", b"connect not allowed", H2_REFUSED_STREAM,
     GRPC_UNIMPLEMENTED)
_set(PE_PLUGIN, 500, b"Internal Server Error", b"plugin", H2_INTERNAL_ERROR, GRPC_INTERNAL)
_set(PE_PLUGIN_TIMEOUT, 504, b"Gateway Timeout", b"plugin timeout", H2_CANCEL, GRPC_DEADLINE_EXCEEDED)
_set(PE_RATE_LIMITED, 429, b"Too Many Requests", b"rate limited", H2_REFUSED_STREAM, GRPC_RESOURCE_EXHAUSTED)
_set(PE_HEAD_TOO_LARGE, 431, b"Request Header Fields Too Large", b"head too large for upstream", H2_REFUSED_STREAM,
     GRPC_RESOURCE_EXHAUSTED)
_set(PE_FORBIDDEN, 403, b"Forbidden", b"forbidden", H2_REFUSED_STREAM, GRPC_PERMISSION_DENIED)
_INTERNAL = _TABLE[0]


cdef const ErrorInfo *error_info(int err) noexcept nogil:
    if 0 < err < PE_COUNT:
        return &_TABLE[err]
    return &_INTERNAL


NAMES = ("none", "bad_request", "header_timeout", "body_timeout", "no_route", "overloaded", "no_endpoints",
         "connect_refused", "connect_timeout", "connect_failed", "reset", "bad_response", "response_timeout",
         "deadline_exceeded", "method_not_allowed", "plugin", "plugin_timeout", "rate_limited", "head_too_large",
         "forbidden")


def describe(int err) -> dict:
    """The table entry of err by name: status, reason, cause, rst_code, grpc_status (for tests and tooling)."""
    cdef const ErrorInfo *e = error_info(err)
    return {"name": NAMES[err] if 0 <= err < PE_COUNT else "internal", "status": e.status,
            "reason": e.reason.decode("ascii"), "cause": e.cause.decode("ascii"), "rst_code": e.rst_code,
            "grpc_status": e.grpc_status}


def table() -> list:
    """Every proxy error (PE_NONE excluded), in enum order."""
    return [describe(i) for i in range(1, PE_COUNT)]


def connect_error_of(int err) -> int:
    """connect_error(): the ProxyError of a failed connect's errno (0: a timeout)."""
    return connect_error(err)
