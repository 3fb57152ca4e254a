"""HTTP/2 rendering: what the exchange decided, written as HTTP/2 header blocks (the session encodes them).

A response head crosses from any upstream: its fields keep their order, names go lowercase (the session folds
them), and the fields HTTP/2 forbids (RFC 9113 section 8.2.2: Connection, Keep-Alive, Proxy-Connection,
Transfer-Encoding, Upgrade, and any field the Connection field names) stay behind. The exchange's response edits
and fastmesh-retried follow, as in http1/render.pyx; an interim (1xx) head carries the fields alone. Error
answers come from errors.pyx's table; a gRPC client gets them as gRPC errors: trailers-only, HTTP 200,
content-type application/grpc, grpc-status from the table, grpc-message with the cause, and fastmesh-error. A
request filter's answer goes out as the filter gave it.
"""
from libc.stdio cimport snprintf
from libc.string cimport strlen

from fastmesh._core.codes cimport error_status
from fastmesh._core.errors cimport ErrorInfo, error_info, PE_BAD_REQUEST, PE_METHOD_NOT_ALLOWED, PE_RATE_LIMITED
from fastmesh._core.request cimport Field, Edit, EditList, edit_at, EDIT_ADD
from fastmesh._core.http1.render cimport error_text, connection_tokens, in_tokens, MAX_CONN_TOKENS
from fastmesh._core.http2.session cimport Session
from fastmesh._core.http2.fields cimport connection_specific_any_case
from fastmesh._core.http2.streams cimport Stream


cdef int _head_fields(Session sess, int status, const char *base, const Field *fields, int n) except -1:
    """Begin a head block: :status, then the fields HTTP/2 may carry."""
    cdef const Field *f
    cdef const char *tok[MAX_CONN_TOKENS]
    cdef Py_ssize_t tlen[MAX_CONN_TOKENS]
    cdef int i, ntok = connection_tokens(base, fields, n, tok, tlen)
    sess.headers_begin()
    sess.headers_status(status)
    for i in range(n):
        f = &fields[i]
        if connection_specific_any_case(base + f.name_off, f.name_len):
            continue
        if ntok and in_tokens(base + f.name_off, f.name_len, tok, tlen, ntok):
            continue
        sess.headers_field(base + f.name_off, f.name_len, base + f.value_off, f.value_len, False)
    return 0


cdef int render_interim(Session sess, Stream s, int status, const char *base, const Field *fields, int n) except -1:
    _head_fields(sess, status, base, fields, n)
    return sess.headers_end(s, False)


cdef int render_head(Session sess, Stream s, int status, const char *base, const Field *fields, int n,
                     const EditList *edits, int retried, bint end) except -1:
    cdef const Edit *x
    cdef char digits[24]
    cdef int i, k
    _head_fields(sess, status, base, fields, n)
    for i in range(edits.n + edits.route_n):
        x = edit_at(edits, i)
        if x.kind == EDIT_ADD:
            sess.headers_field(x.name.ptr, x.name.len, x.value.ptr, x.value.len, False)
    if retried >= 0:
        k = snprintf(digits, sizeof(digits), "%d", retried)
        sess.headers_field(b"fastmesh-retried", 16, digits, k, False)
    return sess.headers_end(s, end)


cdef int render_error(Session sess, Stream s, int err, int code, bint grpc, int retried, bint head_only,
                      int retry_ms) except -1:
    cdef const ErrorInfo *e = error_info(err)
    cdef int status = e.status
    cdef char digits[24]
    cdef char body[128]
    cdef int n, blen
    cdef Py_ssize_t clen
    if err == PE_BAD_REQUEST and code < 0:
        status = error_status(code)
    clen = strlen(e.cause)
    sess.headers_begin()
    if grpc:
        # Trailers-only: the whole answer is one HEADERS frame with END_STREAM (gRPC over HTTP/2's spec).
        sess.headers_status(200)
        sess.headers_field(b"content-type", 12, b"application/grpc", 16, False)
        n = snprintf(digits, sizeof(digits), "%d", e.grpc_status)
        sess.headers_field(b"grpc-status", 11, digits, n, False)
        sess.headers_field(b"grpc-message", 12, e.cause, clen, False)
        sess.headers_field(b"fastmesh-error", 14, e.cause, clen, False)
        if err == PE_RATE_LIMITED:
            # When to call again, both ways a gRPC client may read it: grpc-retry-pushback-ms (gRPC's retry design,
            # A6: a client retrying RESOURCE_EXHAUSTED waits this long instead of its backoff) and Retry-After.
            n = snprintf(digits, sizeof(digits), "%d", retry_ms)
            sess.headers_field(b"grpc-retry-pushback-ms", 22, digits, n, False)
            n = snprintf(digits, sizeof(digits), "%d", code)
            sess.headers_field(b"retry-after", 11, digits, n, False)
        if retried >= 0:
            n = snprintf(digits, sizeof(digits), "%d", retried)
            sess.headers_field(b"fastmesh-retried", 16, digits, n, False)
        sess.headers_end(s, True)
        return status
    blen = error_text(body, sizeof(body), err, code)
    sess.headers_status(status)
    sess.headers_field(b"content-type", 12, b"text/plain", 10, False)
    n = snprintf(digits, sizeof(digits), "%d", blen)
    sess.headers_field(b"content-length", 14, digits, n, False)
    sess.headers_field(b"fastmesh-error", 14, e.cause, clen, False)
    if err == PE_METHOD_NOT_ALLOWED:
        sess.headers_field(b"allow", 5, b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH", 51, False)
    elif err == PE_RATE_LIMITED:
        n = snprintf(digits, sizeof(digits), "%d", code)                 # code: the seconds until a token
        sess.headers_field(b"retry-after", 11, digits, n, False)
    if retried >= 0:
        n = snprintf(digits, sizeof(digits), "%d", retried)
        sess.headers_field(b"fastmesh-retried", 16, digits, n, False)
    if head_only:
        sess.headers_end(s, True)
        return status
    sess.headers_end(s, False)
    sess.send_data(s, body, blen, True)
    return status


cdef int render_answer(Session sess, Stream s, int status, list fields, Py_ssize_t length, bint end) except -1:
    cdef bytes name, value
    cdef char digits[24]
    cdef int n = snprintf(digits, sizeof(digits), "%zd", length)
    sess.headers_begin()
    sess.headers_status(status)
    for name, value in fields:
        sess.headers_field(name, len(name), value, len(value), False)
    sess.headers_field(b"content-length", 14, digits, n, False)
    return sess.headers_end(s, end)
