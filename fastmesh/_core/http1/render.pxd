# HTTP/1 rendering: forwarded request and response heads (the view, the router's path rewrite and the edit
# list written straight into the output buffer) and the proxy's own error answers.

from fastmesh._core.buffer cimport OutBuf
from fastmesh._core.request cimport RequestView, EditList, Span, Field
from fastmesh._core.router cimport Router
from fastmesh._core.http1.parser cimport Head

cdef enum:
    BUDGET_DIGITS = 9              # the fastmesh-timeout-ms value is rendered this wide, so a retry restamps it
    MAX_CONN_TOKENS = 16           # Connection field tokens honoured when dropping the fields they name

# The tokens of every Connection field among fields (names any case) into tok/tlen (room for MAX_CONN_TOKENS):
# the names of further hop-by-hop fields. Returns how many.
cdef int connection_tokens(const char *base, const Field *fields, int n, const char **tok,
                           Py_ssize_t *tlen) noexcept
# Whether the field name (n bytes) is one of the ntok tokens, ignoring ASCII case.
cdef bint in_tokens(const char *name, Py_ssize_t n, const char **tok, Py_ssize_t *tlen, int ntok) noexcept

# The request head as sent upstream into o (cleared first): origin-form target (the route's rewrite), the
# fields as received less hop-by-hop ones and those the edits remove, then the edits' fields. Returns the
# offset in o of the deadline digits (stamp_budget fills them), or -1 when the edits carry no deadline.
# `local`: the listener address ("host:port") a request without Host is sent with (HTTP/1.0 only).
cdef Py_ssize_t render_request(OutBuf *o, const char *buf, const Head *h, const RequestView *v, Router router,
                               int route, const EditList *edits, bint upgrading, Span local) noexcept
# The request head sent upstream for a request that came as a view alone (a downgraded HTTP/2 request): the
# method and the route's target, Host from `authority` (as the client sent it), the view's fields less those
# HTTP/1 frames itself or treats as hop-by-hop and those the edits remove, Cookie fields joined into one, then
# Content-Length (content_length >= 0) or chunked framing, then the edits, the deadline with `budget` ms (and as
# grpc-timeout too for a gRPC request). Returns -1 (no digits to stamp).
cdef Py_ssize_t render_view_request(OutBuf *o, const RequestView *v, Span authority, Router router, int route,
                                    const EditList *edits, long long content_length, bint chunked, long long budget,
                                    bint grpc) noexcept
# The edit list's matching, for any codec that renders a forwarded head (the HTTP/2 leg too): _edit_lengths has
# bit n set when some edit matches field names of n bytes (the quick test); _edit_drops says whether an edit
# removes the field `name` (the deadline edit replaces grpc-timeout as well) and marks in *present the own
# add-if-absent edits the field satisfies.
cdef unsigned long long _edit_lengths(const EditList *edits) noexcept
cdef bint _edit_drops(const EditList *edits, unsigned long long lengths, const char *name, Py_ssize_t n,
                      unsigned int *present) noexcept
# A deadline budget as a grpc-timeout value (at most 8 digits and a unit) into out (room for 24); its length.
cdef int grpc_timeout_text(char *out, long long ms) noexcept
# Write ms (0..999999999) into the BUDGET_DIGITS digits at o.data + at.
cdef void stamp_budget(OutBuf *o, Py_ssize_t at, long long ms) noexcept
# Whether a response head carries fastmesh-retried (a hop below already applied its retries).
cdef bint marked_retried(const char *buf, const Head *h) noexcept
# The response head as sent to the client, appended to o. `edits` and `retried` (>= 0: fastmesh-retried's
# value) apply to final answers only; the Connection field follows tunnel / client_keep / the client's version.
cdef void render_response(OutBuf *o, const char *buf, const Head *h, const EditList *edits, int retried,
                          bint tunnel, bint dechunk, bint client_keep, int client_minor) noexcept
# A final response head that came as fields (an HTTP/2 answer a leg passed on: names lowercase, no pseudo-header
# fields), as HTTP/1.1 for the client, appended to o: the status line (a standard reason phrase), the fields less
# those HTTP/1 frames itself or treats as hop-by-hop, then the framing we chose (Content-Length when length >= 0,
# else chunked when `chunked`, else none: the close ends the body), the edits' fields, fastmesh-retried
# (retried >= 0) and the Connection field for client_keep and the client's version.
cdef void render_leg_response(OutBuf *o, int status, const char *base, const Field *fields, int n,
                              const EditList *edits, int retried, long long length, bint chunked, bint client_keep,
                              int client_minor) noexcept
# The end of a chunked body with trailer fields (the same fields dropped as in heads): "0", the fields, the blank
# line.
cdef void render_chunk_trailers(OutBuf *o, const char *base, const Field *fields, int n) noexcept
# The proxy's answer for ProxyError err (errors.pxd; `code`: a parse code choosing a 4xx/5xx status for
# PE_BAD_REQUEST, else 0), appended to o; the body is left out for HEAD. Returns the status.
cdef int render_error(OutBuf *o, int err, int code, bint keep, int retried, bint head_only) noexcept
# The text body of that answer into body (room for size bytes); its length. Every codec's error body says the same.
cdef int error_text(char *body, int size, int err, int code) noexcept
# A request filter's own answer (filters.pyx checked and spelled its parts): the status line, `fields` ((name,
# value) bytes), Content-Length and, unless keep, Connection: close; then body unless head_only.
cdef void render_answer(OutBuf *o, int status, bytes reason, list fields, bytes body, bint keep,
                        bint head_only) noexcept
