# Proxy errors as values: why the proxy answers a request itself, and that answer for every codec.
#
# The exchange (exchange.pyx) and the codecs choose one of these; only errors.pyx maps it to a wire answer:
# an HTTP status and `fastmesh-error` text (HTTP/1 and HTTP/2 answers), an RST_STREAM code (an HTTP/2 stream
# that cannot be answered any more) and a grpc-status (gRPC answers in trailers). Codecs render; nobody else
# writes a status or a cause string.

from fastmesh._core.includes.system cimport ECONNREFUSED


cdef enum ProxyError:
    PE_NONE = 0                        # no error
    PE_BAD_REQUEST = 1                 # the request broke the protocol (the codec's parse code picks 400/414/431/...)
    PE_HEADER_TIMEOUT = 2              # the request head did not arrive within header_timeout (408)
    PE_BODY_TIMEOUT = 3                # the request body stalled (408)
    PE_NO_ROUTE = 4                    # no route matches the request (404)
    PE_OVERLOADED = 5                  # a circuit breaker refused it: requests or connections at their limit (503)
    PE_NO_ENDPOINTS = 6                # the cluster has no endpoint left to try (503)
    PE_CONNECT_REFUSED = 7             # every connect tried was refused (503)
    PE_CONNECT_TIMEOUT = 8             # the last connect tried timed out (503)
    PE_CONNECT_FAILED = 9              # the last connect tried failed otherwise (503)
    PE_RESET = 10                      # the upstream connection broke before a response head (502)
    PE_BAD_RESPONSE = 11               # the upstream's response broke the protocol (502)
    PE_RESPONSE_TIMEOUT = 12           # no response head within the try's timeout (504)
    PE_DEADLINE_EXCEEDED = 13          # the request's deadline (timeout / fastmesh-timeout-ms) passed (504)
    PE_METHOD_NOT_ALLOWED = 14         # CONNECT where no route names it: a reverse proxy is no tunnel (405)
    PE_PLUGIN = 15                     # a filter plugin failed: raised, or answered what cannot be sent (500)
    PE_PLUGIN_TIMEOUT = 16             # an async request filter took longer than its timeout (504)
    PE_RATE_LIMITED = 17               # the route's rate limit has no token for the request's key (429)
    PE_HEAD_TOO_LARGE = 18             # request head over the h2 upstream's SETTINGS_MAX_HEADER_LIST_SIZE (431)
    PE_FORBIDDEN = 19                  # the route allows only some client identities and this one is not (403)

cdef enum:
    PE_COUNT = 20                      # one past the last ProxyError: the tables are sized by it

# RST_STREAM / GOAWAY error codes (RFC 9113 section 7) the table uses.
cdef enum:
    H2_NO_ERROR = 0x0
    H2_PROTOCOL_ERROR = 0x1
    H2_INTERNAL_ERROR = 0x2
    H2_REFUSED_STREAM = 0x7            # not processed at all: a client may send it again anywhere
    H2_CANCEL = 0x8

# gRPC status codes (grpc/doc/statuscodes.md) the table uses.
cdef enum:
    GRPC_CANCELLED = 1
    GRPC_DEADLINE_EXCEEDED = 4
    GRPC_PERMISSION_DENIED = 7
    GRPC_RESOURCE_EXHAUSTED = 8
    GRPC_UNIMPLEMENTED = 12
    GRPC_INTERNAL = 13
    GRPC_UNAVAILABLE = 14

ctypedef struct ErrorInfo:
    int status                         # HTTP status of the answer
    const char *reason                 # its reason phrase (HTTP/1)
    const char *cause                  # the `fastmesh-error` value: short, stable, for logs and clients
    int rst_code                       # HTTP/2 RST_STREAM code when no answer can be sent any more
    int grpc_status                    # gRPC status of the answer

# The wire answer of err (PE_NONE and unknown values: a 500 "internal error").
cdef const ErrorInfo *error_info(int err) noexcept nogil

# The ProxyError of a failed connect: ECONNREFUSED, 0 (timeout) or any other errno.
cdef inline int connect_error(int err) noexcept nogil:
    if err == ECONNREFUSED:
        return PE_CONNECT_REFUSED
    if err == 0:
        return PE_CONNECT_TIMEOUT
    return PE_CONNECT_FAILED
