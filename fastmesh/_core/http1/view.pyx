"""HTTP/1 request heads as request views: the host and path rules of RFC 9112 applied to the parser's offsets.

Routing, the exchange and logs read the view (request.pxd); only this module knows how HTTP/1 spells a host
(absolute-form and authority-form targets win over Host) and a path (absolute-form without a path means "/").
Nothing is copied: every span points into the receive buffer the head was parsed from.
"""
from libc.stdio cimport snprintf
from libc.string cimport memchr, strlen

from fastmesh._core.codes cimport make_error
from fastmesh._core.http1.parser cimport (
    Head, parse_request, TARGET_ABSOLUTE, TARGET_ASTERISK, TARGET_AUTHORITY, FIELD_CLIENT_IDENTITY,
)
from fastmesh._core.request cimport RequestView, Span, Field, span_of
from fastmesh._core.includes.system cimport (
    sockaddr, sockaddr_storage, sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6, inet_ntop,
)

cdef extern from "<sys/socket.h>" nogil:
    int getsockname(int fd, sockaddr *addr, socklen_t *len)

cdef extern from "<arpa/inet.h>" nogil:
    unsigned short ntohs(unsigned short v)

# The path of an absolute-form target that has none ("http://a.example" means "/").
cdef const char *SLASH = b"/"
cdef char LOCAL[64]                    # the listener address listener_address() found last


cdef inline Py_ssize_t _absolute_path_start(const char *t, Py_ssize_t n, Span *authority) noexcept nogil:
    # In "scheme://authority/path?query", the index where the path starts; sets authority (empty when
    # the target has no "//"). The parser already checked "scheme:" (the first ":" ends the scheme).
    cdef const char *colon = <const char *>memchr(t, b':', n)
    cdef Py_ssize_t i = (colon - t) + 1 if colon != NULL else n
    cdef Py_ssize_t start
    authority.ptr = t + i
    authority.len = 0
    if i + 1 < n and t[i] == b'/' and t[i + 1] == b'/':
        i += 2
        start = i
        while i < n and t[i] != b'/' and t[i] != b'?' and t[i] != b'#':
            i += 1
        authority.ptr = t + start
        authority.len = i - start
    return i


cdef Span target_authority(const char *buf, const Head *h) noexcept nogil:
    cdef Span s
    s.ptr = buf + h.target_off
    s.len = 0
    if h.target_form == TARGET_ABSOLUTE:
        _absolute_path_start(s.ptr, h.target_len, &s)
    elif h.target_form == TARGET_AUTHORITY:
        s.len = h.target_len
    return s


cdef Span host_part(Span s) noexcept nogil:
    cdef const char *t
    cdef Py_ssize_t i
    if s.len > 0 and s.ptr[0] == b'[':
        t = <const char *>memchr(s.ptr, b']', s.len)  # an IPv6 literal keeps its brackets
        if t != NULL:
            s.len = t - s.ptr + 1
    else:
        i = s.len - 1
        while i >= 0 and <unsigned char>(s.ptr[i] - 48) < 10:
            i -= 1
        if i >= 0 and s.ptr[i] == b':':
            s.len = i
    if s.len > 0 and s.ptr[s.len - 1] == b'.':
        s.len -= 1                           # "example.com." is example.com
    return s


cdef Span request_host(const char *buf, const Head *h) noexcept nogil:
    cdef Span s
    cdef const Field *f
    cdef Py_ssize_t i
    s.ptr = buf + h.target_off
    s.len = 0
    if h.target_form == TARGET_ABSOLUTE or h.target_form == TARGET_AUTHORITY:
        s = target_authority(buf, h)
        i = s.len - 1
        while i >= 0 and s.ptr[i] != b'@':   # userinfo ends at the last "@"
            i -= 1
        s.ptr += i + 1
        s.len -= i + 1
    elif h.host_index >= 0:
        f = &h.headers[h.host_index]
        s.ptr = buf + f.value_off
        s.len = f.value_len
    return host_part(s)


cdef void request_path(const char *buf, const Head *h, Span *path, Span *rest) noexcept nogil:
    cdef const char *t = buf + h.target_off
    cdef Py_ssize_t n = h.target_len, start = 0, end
    cdef const char *q
    cdef Span authority
    if h.target_form == TARGET_AUTHORITY or h.target_form == TARGET_ASTERISK:
        path.ptr = t
        path.len = n if h.target_form == TARGET_ASTERISK else 0
        rest.ptr = t + n
        rest.len = 0
        return
    if h.target_form == TARGET_ABSOLUTE:
        start = _absolute_path_start(t, n, &authority)
    q = <const char *>memchr(t + start, b'?', n - start)
    end = q - t if q != NULL else n
    path.ptr = t + start
    path.len = end - start
    rest.ptr = t + end
    rest.len = n - end
    if path.len == 0 and h.target_form == TARGET_ABSOLUTE:
        path.ptr = SLASH
        path.len = 1


cdef void view_init(RequestView *v, const char *buf, const Head *h) noexcept nogil:
    v.base = buf
    v.method = h.method
    v.method_token.ptr = buf + h.method_off
    v.method_token.len = h.method_len
    v.authority = request_host(buf, h)
    request_path(buf, h, &v.path, &v.query)
    v.has_path = h.target_form != TARGET_AUTHORITY
    v.fields = h.headers
    v.num_fields = h.num_headers
    v.identity_field = (h.seen >> FIELD_CLIENT_IDENTITY) & 1


cdef object log_names(const char *buf, const Head *h):
    cdef const Field *f
    method = buf[h.method_off:h.method_off + h.method_len]
    target = buf[h.target_off:h.target_off + h.target_len]
    authority = b""
    if h.host_index >= 0:
        f = &h.headers[h.host_index]
        authority = buf[f.value_off:f.value_off + f.value_len]
    return (method, authority, target)


cdef Span listener_address(int fd, const Head *h) noexcept:
    cdef sockaddr_storage local
    cdef socklen_t alen = sizeof(local)
    cdef int n = 0
    if h.host_index < 0 and h.target_form != TARGET_ABSOLUTE and getsockname(fd, <sockaddr *>&local, &alen) == 0:
        if local.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>&local).sin_addr, LOCAL, 48)
            n = strlen(LOCAL)
            n += snprintf(LOCAL + n, 16, ":%d", ntohs((<sockaddr_in *>&local).sin_port))
        elif local.ss_family == AF_INET6:
            LOCAL[0] = b'['
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>&local).sin6_addr, LOCAL + 1, 47)
            n = strlen(LOCAL)
            n += snprintf(LOCAL + n, 16, "]:%d", ntohs((<sockaddr_in6 *>&local).sin6_port))
    return span_of(LOCAL, n)


cdef int view_parse(bytes raw_head, Head *h, RequestView *v) except -1:
    cdef Py_ssize_t r = parse_request(raw_head, len(raw_head), h, NULL)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        raise ValueError("incomplete request head")
    view_init(v, raw_head, h)
    return 0


def request_parts(bytes raw_head not None) -> tuple:
    """(host, path, rest) as routing sees a request head: the view's authority, path and query."""
    cdef Head h
    cdef RequestView v
    view_parse(raw_head, &h, &v)
    return v.authority.ptr[:v.authority.len], v.path.ptr[:v.path.len], v.query.ptr[:v.query.len]
