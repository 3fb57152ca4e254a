"""HTTP/2 request heads as request views: pseudo-header fields become method, authority and path.

Routing, the exchange and logs read the view (request.pxd); only this module knows how HTTP/2 spells a request:
:method, :authority (or, without it, a host field: RFC 9113 section 8.3.1), :path with its query, :scheme. The
regular fields follow the pseudo-header fields in the block (the session checked the order, the names and the
values), so the view's fields are the block's from the first regular one on. Nothing is copied: every span
points into the stream's decoded header block, which lives as long as the stream.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memchr, memcpy

from fastmesh._core.request cimport RequestView, Span, Field, span_of, find_field, field_value, fold_eq, method_id
from fastmesh._core.upstream.leg cimport LegRequest
from fastmesh._core.http1.view cimport host_part
from fastmesh._core.http2.hpack cimport HeaderBlock

cdef const char *GRPC_TYPE = b"application/grpc"    # and its subtypes: application/grpc+proto, ...


cdef inline bint _pseudo(const char *base, const Field *f, const char *name, Py_ssize_t n) noexcept nogil:
    return f.name_len == n and fold_eq(base + f.name_off, name, n)


cdef void view_from_block(RequestView *v, LegRequest *r, const HeaderBlock *b, long long content_length,
                          bint end_stream) noexcept nogil:
    cdef const char *base = b.data
    cdef const Field *f
    cdef Span authority, path, ctype
    cdef const char *q
    cdef Py_ssize_t i
    cdef int k = 0, j
    v.base = base
    v.method = 0
    v.method_token = span_of(base, 0)
    authority = span_of(base, 0)
    path = span_of(base, 0)
    r.scheme = span_of(base, 0)
    while k < b.n and b.fields[k].name_len > 0 and base[b.fields[k].name_off] == b':':
        f = &b.fields[k]
        if _pseudo(base, f, b":method", 7):
            v.method_token = field_value(base, f)
            v.method = method_id(v.method_token.ptr, v.method_token.len)
        elif _pseudo(base, f, b":authority", 10):
            authority = field_value(base, f)
        elif _pseudo(base, f, b":path", 5):
            path = field_value(base, f)
        elif _pseudo(base, f, b":scheme", 7):
            r.scheme = field_value(base, f)
        k += 1
    v.fields = b.fields + k
    v.num_fields = b.n - k
    v.identity_field = True            # the decoder has no id for it: the exchange always lists its removal
    if authority.len == 0:
        j = find_field(base, v.fields, v.num_fields, b"host", 4, 0)
        if j >= 0:
            authority = field_value(base, &v.fields[j])
    r.authority = authority
    # Routing's host: userinfo (which HTTP/2 forbids in :authority anyway), port and a final dot removed.
    i = authority.len - 1
    while i >= 0 and authority.ptr[i] != b'@':
        i -= 1
    v.authority = host_part(span_of(authority.ptr + i + 1, authority.len - i - 1))
    v.has_path = path.len > 0
    q = <const char *>memchr(path.ptr, b'?', path.len) if path.len else NULL
    if q != NULL:
        v.path = span_of(path.ptr, q - path.ptr)
        v.query = span_of(q, path.len - (q - path.ptr))
    else:
        v.path = path
        v.query = span_of(path.ptr + path.len, 0)
    r.view = v
    r.content_length = content_length
    r.has_body = not end_stream
    r.te_trailers = find_field(base, v.fields, v.num_fields, b"te", 2, 0) >= 0
    j = find_field(base, v.fields, v.num_fields, b"content-type", 12, 0)
    r.grpc = False
    if j >= 0:
        ctype = field_value(base, &v.fields[j])
        r.grpc = ctype.len >= 16 and fold_eq(ctype.ptr, GRPC_TYPE, 16) and (
            ctype.len == 16 or ctype.ptr[16] == b'+' or ctype.ptr[16] == b';')


# ---- Python-facing: tests read what the HTTP/2 codec would route by, sans IO ----

def request_parts(list fields not None, long long content_length=-1, bint end_stream=True) -> dict:
    """The view and leg request made of a decoded header list [(name, value), ...] (pseudo-header fields first)."""
    cdef HeaderBlock b
    cdef RequestView v
    cdef LegRequest r
    cdef int i
    cdef Py_ssize_t pos = 0
    data = b"".join(n + val for n, val in fields)
    b.data = <char *>malloc(max(len(data), 1))
    b.fields = <Field *>malloc(sizeof(Field) * max(len(fields), 1))
    if b.data == NULL or b.fields == NULL:
        free(b.data)
        free(b.fields)
        raise MemoryError()
    try:
        memcpy(b.data, <const char *>data, len(data))
        b.len = b.cap = len(data)
        b.n = b.cap_fields = len(fields)
        for i, (n, val) in enumerate(fields):
            b.fields[i].name_off = pos
            b.fields[i].name_len = len(n)
            b.fields[i].value_off = pos + len(n)
            b.fields[i].value_len = len(val)
            b.fields[i].id = 0
            pos += len(n) + len(val)
        view_from_block(&v, &r, &b, content_length, end_stream)
        return {
            "method": v.method, "method_token": v.method_token.ptr[:v.method_token.len],
            "authority": v.authority.ptr[:v.authority.len], "host_upstream": r.authority.ptr[:r.authority.len],
            "path": v.path.ptr[:v.path.len], "query": v.query.ptr[:v.query.len], "has_path": v.has_path,
            "scheme": r.scheme.ptr[:r.scheme.len], "grpc": r.grpc, "te_trailers": r.te_trailers,
            "has_body": r.has_body, "content_length": r.content_length,
            "fields": [(v.base[v.fields[i].name_off:v.fields[i].name_off + v.fields[i].name_len],
                        v.base[v.fields[i].value_off:v.fields[i].value_off + v.fields[i].value_len])
                       for i in range(v.num_fields)],
        }
    finally:
        free(b.data)
        free(b.fields)
