"""HTTP/1 rendering: what the exchange decided, written as HTTP/1 bytes.

Forwarded heads are built with one copy per field line: the line as received ("Name: value"), unless it is
hop-by-hop (Connection, Keep-Alive, Proxy-*, TE, Trailer, HTTP2-Settings, Upgrade unless upgrading, and any
field the Connection field names) or an edit removes it. Then the edit list's fields follow (request.pxd: the
exchange's own, then the route's), and the deadline field with fixed-width digits that stamp_budget() rewrites
for each try. Error answers come from errors.pyx's table: one place gives a ProxyError its status and cause.

What is forwarded is canonical (each rule has a row in tests/conformance/test_smuggling.py, FORWARDED):
 1. Transfer-Encoding leaves as exactly "Transfer-Encoding: chunked" (requests: the only coding the parser
    lets through; responses: when chunked is the only coding), however it was spelled.
 2. Content-Length leaves as one line of plain digits (repeats merged, leading zeros and OWS gone), both ways.
 3. Trailer fields the parser knows by name are removed in place (body.pyx, framing.trailers_strip).
 4. Upgrade naming h2c is no upgrade: Upgrade and HTTP2-Settings are dropped, the request goes on as HTTP/1.1.
 5. An absolute-form target goes upstream in origin-form with Host set to its authority (RFC 9112 3.2.2);
    an HTTP/1.0 request without Host gets the listener address it came to. Fragments never parse.
 6. CONNECT matches only routes that name it; otherwise 405 with `allow`, and the connection closes.
 7. A final response head is framed together with the body bytes already read (conn.pyx, body.pyx).
"""
from libc.stdint cimport uint32_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strlen

from fastmesh._core.buffer cimport OutBuf, ob_add, ob_free, ob_reserve
from fastmesh._core.codes cimport error_status, error_reason
from fastmesh._core.errors cimport (
    ErrorInfo, error_info, PE_BAD_REQUEST, PE_NO_ROUTE, PE_METHOD_NOT_ALLOWED, PE_RATE_LIMITED,
)
from fastmesh._core.http1.parser cimport (
    Head, HeaderField, FIELD_OTHER, FIELD_CONNECTION, FIELD_KEEP_ALIVE, FIELD_PROXY_CONNECTION, FIELD_TE,
    FIELD_TRAILER, FIELD_UPGRADE, FIELD_PROXY_AUTHENTICATE, FIELD_PROXY_AUTHORIZATION, FIELD_TRANSFER_ENCODING,
    FIELD_CONTENT_LENGTH, FIELD_HOST, FIELD_HTTP2_SETTINGS, TARGET_ABSOLUTE,
)
from fastmesh._core.http1.view cimport target_authority
from fastmesh._core.request cimport (
    RequestView, Span, Field, Edit, EditList, edit_at, find_field, fold_eq, span_of, EDIT_ADD, EDIT_REMOVE,
    EDIT_ADD_ABSENT, EDIT_DEADLINE, EDITS_OWN,
)
from fastmesh._core.router cimport Router
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.http1.view cimport view_parse

cdef const char *RETRIED_FIELD = b"fastmesh-retried"
cdef const char *GRPC_TIMEOUT = b"grpc-timeout"
cdef const char *CONN_UPGRADE = b"Connection: upgrade\r\n"
cdef const char *CONN_CLOSE = b"Connection: close\r\n"
cdef const char *CONN_KEEP = b"Connection: keep-alive\r\n"
cdef const char *TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"     # the one spelling every parser agrees on
cdef const char *ALLOW = b"allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n"   # 405 to a CONNECT


cdef inline bint _token_is(const char *name, Py_ssize_t n, const char *tok, Py_ssize_t tlen) noexcept:
    cdef Py_ssize_t i
    cdef char a, b
    if tlen != n:
        return False
    for i in range(n):
        a = name[i]
        b = tok[i]
        if 65 <= a <= 90:
            a = a + 32
        if 65 <= b <= 90:
            b = b + 32
        if a != b:
            return False
    return True


cdef bint in_tokens(const char *name, Py_ssize_t n, const char **tok, Py_ssize_t *tlen, int ntok) noexcept:
    cdef int k
    for k in range(ntok):
        if _token_is(name, n, tok[k], tlen[k]):
            return True
    return False


cdef int connection_tokens(const char *base, const Field *fields, int n, const char **tok,
                           Py_ssize_t *tlen) noexcept:
    """The tokens of every Connection field (any case): the names of further hop-by-hop fields to drop."""
    cdef int i, k = 0
    cdef const char *p
    cdef const char *end
    cdef const char *start
    for i in range(n):
        if fields[i].name_len != 10 or not fold_eq(base + fields[i].name_off, b"connection", 10):
            continue
        p = base + fields[i].value_off
        end = p + fields[i].value_len
        while p < end and k < MAX_CONN_TOKENS:
            while p < end and (p[0] == 32 or p[0] == 9 or p[0] == 44):
                p += 1
            start = p
            while p < end and p[0] != 44 and p[0] != 32 and p[0] != 9:
                p += 1
            if p > start:
                tok[k] = start
                tlen[k] = p - start
                k += 1
    return k


cdef inline bint _hop_by_hop(uint32_t fid, bint upgrading) noexcept:
    if fid == FIELD_OTHER:
        return False
    if fid == FIELD_UPGRADE:
        return not upgrading
    return (fid == FIELD_CONNECTION or fid == FIELD_KEEP_ALIVE or fid == FIELD_PROXY_CONNECTION
            or fid == FIELD_TE or fid == FIELD_TRAILER or fid == FIELD_PROXY_AUTHENTICATE
            or fid == FIELD_PROXY_AUTHORIZATION or fid == FIELD_HTTP2_SETTINGS)


cdef bytes _DIGIT_PAIRS = "".join(f"{i:02d}" for i in range(100)).encode("ascii")
cdef const char *DIGIT_PAIRS = _DIGIT_PAIRS     # "000102...99": two digits of 0..99 at 2 * value


cdef void _content_length(OutBuf *o, long long value) noexcept:
    """A Content-Length line in its one canonical form: no leading zeros, no whitespace, one line."""
    cdef char line[40]
    cdef int n = 38
    cdef unsigned long long v = <unsigned long long>value     # the parser's values are >= 0
    cdef unsigned int r
    line[38] = 13
    line[39] = 10
    while v >= 100:          # two digits per division (a digit-pair table), then the last one or two
        r = <unsigned int>(v % 100)
        v //= 100
        n -= 2
        line[n] = DIGIT_PAIRS[2 * r]
        line[n + 1] = DIGIT_PAIRS[2 * r + 1]
    if v >= 10:
        n -= 2
        line[n] = DIGIT_PAIRS[2 * v]
        line[n + 1] = DIGIT_PAIRS[2 * v + 1]
    else:
        n -= 1
        line[n] = <char>(48 + v)
    n -= 16
    memcpy(line + n, b"Content-Length: ", 16)
    ob_add(o, line + n, 40 - n)


cdef inline void _line(OutBuf *o, Span name, Span value) noexcept:
    # "name: value\r\n" with one room check.
    cdef char *p
    if ob_reserve(o, name.len + value.len + 4) < 0:
        return
    p = o.data + o.len
    memcpy(p, name.ptr, name.len)
    p[name.len] = 58
    p[name.len + 1] = 32
    memcpy(p + name.len + 2, value.ptr, value.len)
    p[name.len + 2 + value.len] = 13
    p[name.len + 3 + value.len] = 10
    o.len += name.len + value.len + 4


cdef inline void _field_line(OutBuf *o, const char *buf, const HeaderField *f) noexcept:
    # "Name: value" as received and its line end: when no OWS trails the value, the received CRLF follows it, so
    # the line goes out in one copy (one room check, one memcpy); otherwise the trimmed value and a CRLF.
    cdef uint32_t end = f.value_off + f.value_len
    if buf[end] == 13 and buf[end + 1] == 10:
        ob_add(o, buf + f.name_off, end + 2 - f.name_off)
    else:
        ob_add(o, buf + f.name_off, end - f.name_off)
        ob_add(o, "\r\n", 2)


cdef unsigned long long _edit_lengths(const EditList *edits) noexcept:
    """Bit n set: some edit matches field names of n bytes (most fields then cost one test)."""
    # The own edits and the route's in two plain loops (edit_at's choice between them, once per edit, cost more
    # than the test itself).
    return _lengths_of(edits.own, edits.n) | _lengths_of(edits.route, edits.route_n)


cdef inline unsigned long long _lengths_of(const Edit *x, int n) noexcept:
    cdef unsigned long long lengths = 0
    cdef int k
    for k in range(n):
        if x[k].kind == EDIT_ADD:
            continue
        if x[k].name.len < 64:
            lengths |= 1ULL << x[k].name.len
        else:
            lengths = ~0ULL          # a name too long for the mask: every field is compared
        if x[k].kind == EDIT_DEADLINE:
            lengths |= 1ULL << 12    # grpc-timeout
    return lengths


cdef bint _edit_drops(const EditList *edits, unsigned long long lengths, const char *name, Py_ssize_t n,
                      unsigned int *present) noexcept:
    """Whether an edit removes the field called name (any case); marks in *present the own add-if-absent edits
    the field satisfies."""
    cdef const Edit *x
    cdef int k
    # Two plain C tests: a conditional expression mixing the two result types would go through Python objects.
    if n < 64:
        if not ((lengths >> n) & 1):
            return False
    elif lengths != ~0ULL:
        return False
    for k in range(edits.n + edits.route_n):
        x = edit_at(edits, k)
        if x.kind == EDIT_DEADLINE and n == 12 and fold_eq(name, GRPC_TIMEOUT, 12):
            return True              # the deadline replaces a gRPC client's too (its value renders shrunk)
        if x.kind == EDIT_ADD or x.name.len != n or not fold_eq(name, x.name.ptr, x.name.len):
            continue
        if x.kind == EDIT_REMOVE or x.kind == EDIT_DEADLINE:
            return True
        if x.kind == EDIT_ADD_ABSENT and k < EDITS_OWN:
            present[0] |= 1u << k
    return False


cdef Py_ssize_t _edit_fields(OutBuf *o, const EditList *edits, unsigned int present, long long budget,
                             bint grpc) noexcept:
    """The edits' own fields. The deadline: with budget >= 0 its value in ms (and, for a gRPC request, the same
    budget as grpc-timeout), else fixed-width digits for stamp_budget; returns their offset, or -1."""
    cdef const Edit *x
    cdef Py_ssize_t at = -1
    cdef char digits[24]
    cdef int k, n
    for k in range(edits.n + edits.route_n):
        x = edit_at(edits, k)
        if x.kind == EDIT_ADD or (x.kind == EDIT_ADD_ABSENT and not (k < EDITS_OWN and (present >> k) & 1)):
            _line(o, x.name, x.value)
        elif x.kind == EDIT_DEADLINE and budget >= 0:
            n = snprintf(digits, sizeof(digits), "%lld", budget)
            _line(o, x.name, span_of(digits, n))
            if grpc:
                n = grpc_timeout_text(digits, budget)
                _line(o, span_of(GRPC_TIMEOUT, 12), span_of(digits, n))
        elif x.kind == EDIT_DEADLINE:
            ob_add(o, x.name.ptr, x.name.len)
            ob_add(o, ": ", 2)
            at = o.len
            ob_add(o, "000000000\r\n", BUDGET_DIGITS + 2)
    return at


cdef int grpc_timeout_text(char *out, long long ms) noexcept:
    # At most 8 digits: milliseconds while they fit, else whole seconds (rounded down: never a longer budget).
    if ms <= 99999999:
        return snprintf(out, 24, "%lldm", ms)
    return snprintf(out, 24, "%lldS", ms // 1000)


cdef void _target(OutBuf *o, const RequestView *v, Router router, int route) noexcept:
    """The origin-form target upstream: the path with the route's rewrite, then the query."""
    cdef Span head, tail
    router.rewrite_path(route, v, &head, &tail)
    ob_add(o, head.ptr, head.len)
    ob_add(o, tail.ptr, tail.len)
    ob_add(o, v.query.ptr, v.query.len)


cdef Py_ssize_t render_request(OutBuf *o, const char *buf, const Head *h, const RequestView *v, Router router,
                               int route, const EditList *edits, bint upgrading, Span local) noexcept:
    cdef const HeaderField *f
    cdef const char *tok[MAX_CONN_TOKENS]
    cdef Py_ssize_t tlen[MAX_CONN_TOKENS]
    cdef int ntok = 0, i
    cdef unsigned int present = 0          # bit k: the request has the field own edit k adds only when absent
    cdef unsigned long long lengths
    cdef bint seen_cl = False
    cdef bint host_from_target = h.target_form == TARGET_ABSOLUTE
    cdef Py_ssize_t at
    cdef Span host
    o.off = 0
    o.len = 0
    ob_add(o, buf + h.method_off, h.method_len)
    ob_add(o, " ", 1)
    if v.has_path:
        _target(o, v, router, route)
    else:
        ob_add(o, buf + h.target_off, h.target_len)      # CONNECT keeps its authority-form target
    ob_add(o, " HTTP/1.1\r\n", 11)
    if h.conn_names:      # a Connection field lists more than keep-alive / upgrade (fields dropped by id anyway)
        ntok = connection_tokens(buf, h.headers, h.num_headers, tok, tlen)
    lengths = _edit_lengths(edits)
    if host_from_target or h.host_index < 0:
        # RFC 9112 section 3.2.2: an absolute-form target's authority is the Host (a received Host is ignored);
        # an HTTP/1.0 request without one gets the listener address it came to.
        host = target_authority(buf, h) if host_from_target else local
        _line(o, span_of(b"Host", 4), host)
    for i in range(h.num_headers):
        f = &h.headers[i]
        if _hop_by_hop(f.id, upgrading):
            continue
        if f.id == FIELD_CONTENT_LENGTH:
            if not seen_cl:    # identical repeats were merged by the parser: send one, in plain digits
                seen_cl = True
                _content_length(o, h.content_length)
            continue
        if f.id == FIELD_TRANSFER_ENCODING:
            ob_add(o, TE_CHUNKED, 28)       # the parser let only a single final chunked through
            continue
        if f.id == FIELD_HOST and host_from_target:
            continue
        if f.id == FIELD_OTHER:
            if ntok and in_tokens(buf + f.name_off, f.name_len, tok, tlen, ntok):
                continue
            if _edit_drops(edits, lengths, buf + f.name_off, f.name_len, &present):
                continue
        # The field line as received ("Name: value"), one copy.
        _field_line(o, buf, f)
    if upgrading:
        ob_add(o, CONN_UPGRADE, 21)
    at = _edit_fields(o, edits, present, -1, False)
    ob_add(o, "\r\n", 2)
    return at


cdef bint _not_for_http1(const char *name, Py_ssize_t n) noexcept:
    """Fields of a downgraded (HTTP/2) request that HTTP/1 frames or routes itself, or that are hop-by-hop: host
    (Host comes from the authority), content-length and transfer-encoding (the framing is ours), te, and the
    connection-specific ones RFC 9113 section 8.2.2 forbids (refused by the session; dropped here regardless)."""
    if n == 2:
        return fold_eq(name, b"te", 2)
    if n == 4:
        return fold_eq(name, b"host", 4)
    if n == 7:
        return fold_eq(name, b"upgrade", 7) or fold_eq(name, b"trailer", 7)
    if n == 10:
        return fold_eq(name, b"connection", 10) or fold_eq(name, b"keep-alive", 10)
    if n == 14:
        return fold_eq(name, b"content-length", 14) or fold_eq(name, b"http2-settings", 14)
    if n == 16:
        return fold_eq(name, b"proxy-connection", 16)
    if n == 17:
        return fold_eq(name, b"transfer-encoding", 17)
    return False


cdef Py_ssize_t render_view_request(OutBuf *o, const RequestView *v, Span authority, Router router, int route,
                                    const EditList *edits, long long content_length, bint chunked, long long budget,
                                    bint grpc) noexcept:
    cdef const Field *f
    cdef const char *base = v.base
    cdef unsigned int present = 0
    cdef unsigned long long lengths = _edit_lengths(edits)
    cdef int i, cookies = 0
    cdef Py_ssize_t at
    o.off = 0
    o.len = 0
    ob_add(o, v.method_token.ptr, v.method_token.len)
    ob_add(o, " ", 1)
    if v.has_path:
        _target(o, v, router, route)
    else:
        ob_add(o, authority.ptr, authority.len)     # CONNECT: authority-form
    ob_add(o, " HTTP/1.1\r\n", 11)
    _line(o, span_of(b"Host", 4), authority)
    for i in range(v.num_fields):
        f = &v.fields[i]
        if f.name_len == 6 and fold_eq(base + f.name_off, b"cookie", 6):
            cookies += 1
            continue
        if _not_for_http1(base + f.name_off, f.name_len):
            continue
        if _edit_drops(edits, lengths, base + f.name_off, f.name_len, &present):
            continue
        _line(o, span_of(base + f.name_off, f.name_len), span_of(base + f.value_off, f.value_len))
    if cookies and _edit_drops(edits, lengths, b"cookie", 6, &present):
        cookies = 0
    if cookies:
        # HTTP/2 may split Cookie into one field per cookie; HTTP/1 wants one line, joined by "; " (RFC 9113
        # section 8.2.3).
        ob_add(o, "cookie: ", 8)
        for i in range(v.num_fields):
            f = &v.fields[i]
            if f.name_len == 6 and fold_eq(base + f.name_off, b"cookie", 6):
                ob_add(o, base + f.value_off, f.value_len)
                cookies -= 1
                if cookies:
                    ob_add(o, "; ", 2)
        ob_add(o, "\r\n", 2)
    if content_length >= 0:
        _content_length(o, content_length)
    elif chunked:
        ob_add(o, TE_CHUNKED, 28)
    at = _edit_fields(o, edits, present, budget, grpc)
    ob_add(o, "\r\n", 2)
    return at


cdef void stamp_budget(OutBuf *o, Py_ssize_t at, long long ms) noexcept:
    # Two digits per division, in 32 bits (ms <= 999999999 < 2**32): a fraction of the 9 64-bit divisions.
    cdef char *d = o.data + at
    cdef unsigned int v, r
    cdef int i
    if at < 0:
        return
    v = <unsigned int>(ms % 1000000000)
    for i in range(BUDGET_DIGITS - 2, 0, -2):
        r = v % 100
        v //= 100
        d[i] = DIGIT_PAIRS[2 * r]
        d[i + 1] = DIGIT_PAIRS[2 * r + 1]
    d[0] = <char>(48 + v % 10)


cdef bint marked_retried(const char *buf, const Head *h) noexcept:
    return find_field(buf, h.headers, h.num_headers, RETRIED_FIELD, 16, 0) >= 0


cdef void _retried(OutBuf *o, int retried) noexcept:
    cdef char line[40]
    cdef int n = snprintf(line, sizeof(line), "fastmesh-retried: %d\r\n", retried)
    ob_add(o, line, n)


cdef void render_response(OutBuf *o, const char *buf, const Head *h, const EditList *edits, int retried,
                          bint tunnel, bint dechunk, bint client_keep, int client_minor) noexcept:
    cdef const HeaderField *f
    cdef const Edit *x
    cdef const char *tok[MAX_CONN_TOKENS]
    cdef Py_ssize_t tlen[MAX_CONN_TOKENS]
    cdef int ntok = 0, i
    cdef bint seen_cl = False
    cdef char line[16]
    # "HTTP/1.1 NNN " by hand: snprintf showed up in the profile (the parser guarantees 100 <= status <= 599).
    memcpy(line, b"HTTP/1.1 ", 9)
    line[9] = <char>(48 + h.status // 100)
    line[10] = <char>(48 + (h.status // 10) % 10)
    line[11] = <char>(48 + h.status % 10)
    line[12] = 32
    ob_add(o, line, 13)
    ob_add(o, buf + h.reason_off, h.reason_len)
    ob_add(o, "\r\n", 2)
    if h.conn_names:      # a Connection field lists more than keep-alive / upgrade (fields dropped by id anyway)
        ntok = connection_tokens(buf, h.headers, h.num_headers, tok, tlen)
    for i in range(h.num_headers):
        f = &h.headers[i]
        if _hop_by_hop(f.id, tunnel):
            continue
        if f.id == FIELD_OTHER and ntok and in_tokens(buf + f.name_off, f.name_len, tok, tlen, ntok):
            continue
        if f.id == FIELD_TRANSFER_ENCODING:
            if dechunk:
                continue
            if h.chunked and not h.te_other:
                ob_add(o, TE_CHUNKED, 28)   # chunked alone, however it was spelled
                continue
        elif f.id == FIELD_CONTENT_LENGTH:
            if not seen_cl:
                seen_cl = True
                _content_length(o, h.content_length)
            continue
        _field_line(o, buf, f)
    if h.status >= 200 or h.status == 101:
        for i in range(edits.n + edits.route_n):
            x = edit_at(edits, i)
            if x.kind == EDIT_ADD:
                _line(o, x.name, x.value)
        if retried >= 0:
            _retried(o, retried)
        if tunnel:
            ob_add(o, CONN_UPGRADE, 21)
        elif not client_keep:
            ob_add(o, CONN_CLOSE, 19)
        elif client_minor == 0:
            ob_add(o, CONN_KEEP, 24)
    ob_add(o, "\r\n", 2)


cdef const char *_reason(int status) noexcept:
    """A reason phrase for a status that came without one (an HTTP/2 answer); empty for the rare ones."""
    if status == 200:
        return b"OK"
    if status == 201:
        return b"Created"
    if status == 204:
        return b"No Content"
    if status == 206:
        return b"Partial Content"
    if status == 301:
        return b"Moved Permanently"
    if status == 302:
        return b"Found"
    if status == 304:
        return b"Not Modified"
    if status == 400:
        return b"Bad Request"
    if status == 401:
        return b"Unauthorized"
    if status == 403:
        return b"Forbidden"
    if status == 404:
        return b"Not Found"
    if status == 500:
        return b"Internal Server Error"
    if status == 502:
        return b"Bad Gateway"
    if status == 503:
        return b"Service Unavailable"
    if status == 504:
        return b"Gateway Timeout"
    return b""


cdef void render_leg_response(OutBuf *o, int status, const char *base, const Field *fields, int n,
                              const EditList *edits, int retried, long long length, bint chunked, bint client_keep,
                              int client_minor) noexcept:
    cdef const Field *f
    cdef const Edit *x
    cdef const char *reason = _reason(status)
    cdef char line[16]
    cdef int i
    memcpy(line, b"HTTP/1.1 ", 9)
    line[9] = <char>(48 + (status // 100) % 10)
    line[10] = <char>(48 + (status // 10) % 10)
    line[11] = <char>(48 + status % 10)
    line[12] = 32
    ob_add(o, line, 13)
    ob_add(o, reason, strlen(reason))
    ob_add(o, "\r\n", 2)
    for i in range(n):
        f = &fields[i]
        if _not_for_http1(base + f.name_off, f.name_len):
            continue
        _line(o, span_of(base + f.name_off, f.name_len), span_of(base + f.value_off, f.value_len))
    if length >= 0:
        _content_length(o, length)
    elif chunked:
        ob_add(o, TE_CHUNKED, 28)
    for i in range(edits.n + edits.route_n):
        x = edit_at(edits, i)
        if x.kind == EDIT_ADD:
            _line(o, x.name, x.value)
    if retried >= 0:
        _retried(o, retried)
    if not client_keep:
        ob_add(o, CONN_CLOSE, 19)
    elif client_minor == 0:
        ob_add(o, CONN_KEEP, 24)
    ob_add(o, "\r\n", 2)


cdef void render_chunk_trailers(OutBuf *o, const char *base, const Field *fields, int n) noexcept:
    cdef const Field *f
    cdef int i
    ob_add(o, "0\r\n", 3)
    for i in range(n):
        f = &fields[i]
        if _not_for_http1(base + f.name_off, f.name_len):
            continue
        _line(o, span_of(base + f.name_off, f.name_len), span_of(base + f.value_off, f.value_len))
    ob_add(o, "\r\n", 2)


cdef int error_text(char *body, int size, int err, int code) noexcept:
    cdef const ErrorInfo *e = error_info(err)
    if err == PE_NO_ROUTE:
        return snprintf(body, size, "no route for this request\n")
    if err == PE_BAD_REQUEST:
        return snprintf(body, size, "%s\n", error_reason(code) if code < 0 else e.reason)
    return snprintf(body, size, "%s: %s\n", e.reason, e.cause)


cdef int render_error(OutBuf *o, int err, int code, bint keep, int retried, bint head_only) noexcept:
    cdef const ErrorInfo *e = error_info(err)
    cdef int status = e.status
    cdef const char *reason = e.reason
    cdef char line[192]
    cdef char body[128]
    cdef int n, blen
    if err == PE_BAD_REQUEST and code < 0:
        status = error_status(code)
        reason = error_reason(code)
    blen = error_text(body, sizeof(body), err, code)
    n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                 "fastmesh-error: %s\r\n%s", status, reason, blen, e.cause, "" if keep else "connection: close\r\n")
    ob_add(o, line, n)
    if err == PE_METHOD_NOT_ALLOWED:
        ob_add(o, ALLOW, strlen(ALLOW))
    elif err == PE_RATE_LIMITED:
        n = snprintf(line, sizeof(line), "retry-after: %d\r\n", code)     # code: the seconds until a token
        ob_add(o, line, n)
    if retried >= 0:
        _retried(o, retried)
    ob_add(o, "\r\n", 2)
    if not head_only:
        ob_add(o, body, blen)
    return status


cdef void render_answer(OutBuf *o, int status, bytes reason, list fields, bytes body, bint keep,
                        bint head_only) noexcept:
    cdef char line[96]
    cdef bytes name, value
    cdef int n = snprintf(line, sizeof(line), "HTTP/1.1 %d ", status)
    ob_add(o, line, n)
    ob_add(o, reason, len(reason))
    ob_add(o, "\r\n", 2)
    for name, value in fields:
        ob_add(o, name, len(name))
        ob_add(o, ": ", 2)
        ob_add(o, value, len(value))
        ob_add(o, "\r\n", 2)
    n = snprintf(line, sizeof(line), "content-length: %zd\r\n%s\r\n", len(body),
                 "" if keep else "connection: close\r\n")
    ob_add(o, line, n)
    if not head_only:
        ob_add(o, body, len(body))


# ---- Python-facing: tests render what the HTTP/1 codec would send, sans IO ----

def forwarded_head(Exchange ex not None, bytes raw_head not None, bint upgrading=False, long long budget_ms=-1):
    """The request head the HTTP/1 codec forwards for raw_head once `ex` routed it (Exchange.start): its
    edits rendered; the deadline digits stamped with budget_ms when >= 0."""
    cdef Head h
    cdef RequestView v
    cdef OutBuf o
    cdef Py_ssize_t at
    cdef bytearray buf = bytearray(raw_head)      # the codec's receive buffer: trace_in_place may write into it
    view_parse(raw_head, &h, &v)
    o.data = NULL
    o.off = o.len = o.cap = 0
    try:
        ex.trace_in_place(buf)
        at = render_request(&o, buf, &h, &v, ex.router, ex.route, &ex.request_edits, upgrading,
                            span_of(b"127.0.0.1:80", 12))
        if budget_ms >= 0:
            stamp_budget(&o, at, budget_ms)
        return o.data[:o.len]
    finally:
        ob_free(&o)


def error_answer(int err, int code=0, bint keep=True, int retried=-1, bint head_only=False) -> bytes:
    """The answer the HTTP/1 codec sends for ProxyError err."""
    cdef OutBuf o
    o.data = NULL
    o.off = o.len = o.cap = 0
    try:
        render_error(&o, err, code, keep, retried, head_only)
        return o.data[:o.len]
    finally:
        ob_free(&o)
