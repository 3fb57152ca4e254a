# HTTP/1 rendering: forwarded request and response heads (the view, the router's path rewrite and the edit
# list written straight into the output buffer) and the proxy's own error answers.

from fastmesh._core.buffer cimport OutBuf
from fastmesh._core.request cimport RequestView, EditList, Span
from fastmesh._core.router cimport Router
from fastmesh._core.http1.parser cimport Head

cdef enum:
    BUDGET_DIGITS = 9              # the fastmesh-timeout-ms value is rendered this wide, so a retry restamps it

# The request head as sent upstream into o (cleared first): origin-form target (the route's rewrite), the
# fields as received less hop-by-hop ones and those the edits remove, then the edits' fields. Returns the
# offset in o of the deadline digits (stamp_budget fills them), or -1 when the edits carry no deadline.
# `local`: the listener address ("host:port") a request without Host is sent with (HTTP/1.0 only).
cdef Py_ssize_t render_request(OutBuf *o, const char *buf, const Head *h, const RequestView *v, Router router,
                               int route, const EditList *edits, bint upgrading, Span local) noexcept
# Write ms (0..999999999) into the BUDGET_DIGITS digits at o.data + at.
cdef void stamp_budget(OutBuf *o, Py_ssize_t at, long long ms) noexcept
# Whether a response head carries fastmesh-retried (a hop below already applied its retries).
cdef bint marked_retried(const char *buf, const Head *h) noexcept
# The response head as sent to the client, appended to o. `edits` and `retried` (>= 0: fastmesh-retried's
# value) apply to final answers only; the Connection field follows tunnel / client_keep / the client's version.
cdef void render_response(OutBuf *o, const char *buf, const Head *h, const EditList *edits, int retried,
                          bint tunnel, bint dechunk, bint client_keep, int client_minor) noexcept
# The proxy's answer for ProxyError err (errors.pxd; `code`: a parse code choosing a 4xx/5xx status for
# PE_BAD_REQUEST, else 0), appended to o; the body is left out for HEAD. Returns the status.
cdef int render_error(OutBuf *o, int err, int code, bint keep, int retried, bint head_only) noexcept
# A request filter's own answer (filters.pyx checked and spelled its parts): the status line, `fields` (whole
# "name: value\r\n" lines), Content-Length and, unless keep, Connection: close; then body unless head_only.
cdef void render_answer(OutBuf *o, int status, bytes reason, bytes fields, bytes body, bint keep,
                        bint head_only) noexcept
