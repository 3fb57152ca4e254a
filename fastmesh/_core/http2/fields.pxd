# Field names HTTP/2 treats apart: the connection-specific fields RFC 9113 section 8.2.2 forbids (te is handled
# apart: only "te: trailers" may pass). Inline, for the session (validation, trailers), the renderer and the
# upstream leg alike.

from libc.string cimport memcmp
from fastmesh._core.request cimport fold_eq


# By lowercase name (as HPACK decoded it).
cdef inline bint connection_specific(const char *p, Py_ssize_t n) noexcept nogil:
    if n == 10:
        return memcmp(p, b"connection", 10) == 0 or memcmp(p, b"keep-alive", 10) == 0
    if n == 16:
        return memcmp(p, b"proxy-connection", 16) == 0
    if n == 17:
        return memcmp(p, b"transfer-encoding", 17) == 0
    if n == 7:
        return memcmp(p, b"upgrade", 7) == 0
    return False


# By a name in any case (an HTTP/1 field crossing into HTTP/2).
cdef inline bint connection_specific_any_case(const char *p, Py_ssize_t n) noexcept nogil:
    if n == 10:
        return fold_eq(p, b"connection", 10) or fold_eq(p, b"keep-alive", 10)
    if n == 16:
        return fold_eq(p, b"proxy-connection", 16)
    if n == 17:
        return fold_eq(p, b"transfer-encoding", 17)
    if n == 7:
        return fold_eq(p, b"upgrade", 7)
    return False
