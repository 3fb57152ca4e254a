"""HTTP/1.1 request/response head parser: bytes in, offsets out (sans-IO, zero-copy, strict against smuggling).

parse_request()/parse_response() re-parse from the start of the buffer on every call (picohttpparser's
model): they return the head length, 0 for "need more bytes", or a negative ERR_* code (codes.pxd maps
each one to its HTTP status). No call allocates, raises or touches a Python object. Callers that buffer a
slow head should call again only when find_head_end() finds the blank line or the buffer outgrows the
limits, so a byte-at-a-time peer cannot make parsing quadratic.

A prefix of a message never yields an error that the whole message would not: scans stop at the limit,
and every check looks only at bytes already seen, left to right.

Speed: each field line is first scanned whole for its ending control byte, 16 bytes per step (SSE2 where
the compiler has it, a byte loop elsewhere); the name and whitespace loops then run without bound checks,
since that control byte stops them. All membership tests use one 256-entry class table (parser.pxd).

Strict rules (a proxy that is more lenient than its peers is how requests get smuggled); each has a test:
 1. Line ends are CRLF only. A bare LF ends nothing: it is an error (ERR_BARE_LF), in requests and in
    responses, because a peer that accepts LF alone would split lines where we do not. A CR not followed
    by LF is an error (ERR_BARE_CR).
 2. Request line is exactly  method SP target SP "HTTP/" DIGIT "." DIGIT CRLF  with single spaces.
    Method and field names are 1*tchar (ERR_BAD_METHOD / ERR_BAD_FIELD_NAME). Methods are case-sensitive.
 3. The target has no SP, no CTL and no DEL (ERR_BAD_TARGET); obs-text (>= 0x80) is let through, as nginx
    does, because it cannot move a message boundary. Forms: origin ("/..."), absolute ("scheme://authority
    [/path][?query]", the authority non-empty, of Host-value bytes, without userinfo: it becomes the
    forwarded Host), authority (CONNECT only, "host:port") and asterisk (OPTIONS only). A fragment ("#")
    is refused in every form (a client never sends one; HAProxy and Envoy refuse it too), so it is never
    forwarded. Anything else is ERR_BAD_TARGET.
 4. Only HTTP/1.0 and HTTP/1.1 (ERR_VERSION_NOT_SUPPORTED -> 505); a malformed version is ERR_BAD_VERSION.
 5. Empty lines (CRLF) before a request line are skipped (RFC 9112 section 2.2) within the start-line limit.
 6. A whitespace-led line right after the start line is rejected (ERR_WS_BEFORE_FIRST_FIELD); later it is
    obs-fold, also rejected (ERR_OBS_FOLD). Whitespace between a field name and the colon is rejected
    (ERR_WS_BEFORE_COLON).
 7. Field values: VCHAR, obs-text, SP, HTAB. NUL, other controls and DEL are rejected (ERR_BAD_FIELD_VALUE).
    Leading and trailing OWS is trimmed from the value offsets.
 8. Content-Length is 1*DIGIT: no sign, no spaces inside, no comma list, at most 18 digits after leading
    zeros (ERR_BAD_CONTENT_LENGTH). Repeated Content-Length lines with the same value are merged (RFC 9110
    section 8.6 allows it; cl_repeated tells the connection to forward one); different values are
    ERR_CONFLICTING_CONTENT_LENGTH.
 9. Content-Length together with Transfer-Encoding is rejected in requests and responses
    (ERR_CONTENT_LENGTH_WITH_TE), never resolved by precedence.
10. Transfer-Encoding elements must be tokens (no parameters) and at least one must be present
    (ERR_BAD_TRANSFER_ENCODING). In a request the codings must be exactly one final "chunked": chunked
    followed by anything is ERR_CHUNKED_NOT_LAST (400), any other coding is ERR_UNKNOWN_TRANSFER_CODING (501)
    since we implement only chunked. In a response, chunked twice is ERR_CHUNKED_NOT_LAST; other codings
    without a final chunked mean "read until close" (RFC 9112 section 6.3), decided in framing.pyx.
11. Transfer-Encoding in an HTTP/1.0 message is rejected (ERR_TE_IN_HTTP10): RFC 9112 section 6.1 says
    its framing is faulty.
12. HTTP/1.1 requests need exactly one Host (ERR_MISSING_HOST / ERR_MULTIPLE_HOST); its value may only hold
    uri-host/port bytes (ERR_BAD_HOST). HTTP/1.0 requests may omit it (render.pyx then adds one upstream).
    An Upgrade list naming h2c sets upgrade_h2c, and HTTP2-Settings has a field id, so the connection can
    drop both (cleartext HTTP/2 is never upgraded to through the proxy).
13. Limits: start line over max_start_line -> ERR_START_LINE_TOO_LONG (414); field section over
    max_header_bytes -> ERR_HEADERS_TOO_LARGE (431); more than max_headers lines -> ERR_TOO_MANY_HEADERS (431).
14. Responses: status line is version SP 3DIGIT [SP reason] CRLF (a missing reason is tolerated, as h11
    does), status 100..599, otherwise ERR_BAD_STATUS_LINE.
"""

from libc.stdint cimport uint32_t
from libc.string cimport memcmp, memchr

from fastmesh._core.codes cimport (
    ERR_BAD_METHOD, ERR_BAD_TARGET, ERR_BAD_VERSION, ERR_VERSION_NOT_SUPPORTED, ERR_BAD_STATUS_LINE,
    ERR_START_LINE_TOO_LONG, ERR_BARE_CR, ERR_BARE_LF, ERR_WS_BEFORE_FIRST_FIELD, ERR_OBS_FOLD,
    ERR_BAD_FIELD_NAME, ERR_WS_BEFORE_COLON, ERR_BAD_FIELD_VALUE, ERR_HEADERS_TOO_LARGE,
    ERR_TOO_MANY_HEADERS, ERR_BAD_CONTENT_LENGTH, ERR_CONFLICTING_CONTENT_LENGTH,
    ERR_CONTENT_LENGTH_WITH_TE, ERR_BAD_TRANSFER_ENCODING, ERR_CHUNKED_NOT_LAST,
    ERR_UNKNOWN_TRANSFER_CODING, ERR_TE_IN_HTTP10, ERR_MISSING_HOST, ERR_MULTIPLE_HOST, ERR_BAD_HOST,
    make_error,
)
from fastmesh._core.codes import HttpParseError  # noqa: F401  # no-cython-lint (re-exported for the wrappers' callers)

ctypedef unsigned char uchar

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HTAB = 9

# Content-Length values at or above this before the next digit would need more than 18 digits.
cdef long long CL_DIGITS_CAP = 100000000000000000

cdef Limits _DEFAULT_LIMITS
limits_init(&_DEFAULT_LIMITS)


# ---------------------------------------------------------------------------------------------------
# Block scans. Values and targets are long runs of ordinary bytes; testing 16 at a time and jumping to
# the first suspicious one keeps them at a few instructions per block. Only CTLs and DEL are flagged
# (bytes < `below`, or 0x7F): the table then judges that single byte.

cdef extern from *:
    """
    #if defined(__SSE2__) && defined(__GNUC__)
    #include <emmintrin.h>
    #endif
    /* Index of the first byte in p[0:16] that is < below (1..128) or == 0x7F; 16 when there is none. */
    static inline int fm_find_ctl16(const unsigned char *p, unsigned char below) {
    #if defined(__SSE2__) && defined(__GNUC__)
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i top = _mm_set1_epi8((char)(below - 1));
        /* unsigned v <= below - 1  <=>  max(v, below - 1) == below - 1 */
        __m128i low = _mm_cmpeq_epi8(_mm_max_epu8(v, top), top);
        __m128i del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7F));
        int mask = _mm_movemask_epi8(_mm_or_si128(low, del));
        return mask ? __builtin_ctz((unsigned)mask) : 16;
    #else
        int i;
        for (i = 0; i < 16; i++)
            if (p[i] < below || p[i] == 0x7F)
                return i;
        return 16;
    #endif
    }
    """
    int fm_find_ctl16(const unsigned char *p, unsigned char below) nogil


cdef inline Py_ssize_t _scan_class(const uchar *b, Py_ssize_t p, Py_ssize_t end, uchar cls,
                                   uchar below) noexcept nogil:
    # Index of the first byte in b[p:end] outside class `cls`, or end. `below` is the byte value under
    # which the class has gaps (0x20 for field bytes, whose only member there is HTAB; 0x21 for target
    # bytes); every byte at or above it is in the class except DEL.
    cdef int i
    while p + 16 <= end:
        i = fm_find_ctl16(b + p, below)
        if i == 16:
            p += 16
            continue
        p += i
        if not (CHAR_CLASS[b[p]] & cls):
            return p
        p += 1  # an HTAB inside a value
    while p < end and CHAR_CLASS[b[p]] & cls:
        p += 1
    return p


cdef inline Py_ssize_t _skip_tchars(const uchar *b, Py_ssize_t p) noexcept nogil:
    # Index of the first non-tchar byte at or after p. The caller guarantees one exists in the buffer
    # (the CTL ending the line), and each byte is read only after the one before it was a tchar, so
    # the unrolled reads never pass it.
    while True:
        if not (CHAR_CLASS[b[p]] & CC_TCHAR):
            return p
        if not (CHAR_CLASS[b[p + 1]] & CC_TCHAR):
            return p + 1
        if not (CHAR_CLASS[b[p + 2]] & CC_TCHAR):
            return p + 2
        if not (CHAR_CLASS[b[p + 3]] & CC_TCHAR):
            return p + 3
        p += 4


# ---------------------------------------------------------------------------------------------------
# Small helpers.

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* p[0:n] with 0x20 OR-ed into every byte equals lit[0:n]: 8 (or 4) bytes per compare, the last load overlapping
       the one before it, instead of one compare per byte. With n a constant at the call, the loops fold away. */
    static inline int fm_lower_eq(const unsigned char *p, const char *lit, Py_ssize_t n) {
        uint64_t a, b;
        uint32_t c, d;
        Py_ssize_t i;
        if (n >= 8) {
            for (i = 0; i + 8 < n; i += 8) {
                memcpy(&a, p + i, 8); memcpy(&b, lit + i, 8);
                if ((a | 0x2020202020202020ULL) != b) return 0;
            }
            memcpy(&a, p + n - 8, 8); memcpy(&b, lit + n - 8, 8);
            return (a | 0x2020202020202020ULL) == b;
        }
        if (n >= 4) {
            memcpy(&c, p, 4); memcpy(&d, lit, 4);
            if ((c | 0x20202020U) != d) return 0;
            memcpy(&c, p + n - 4, 4); memcpy(&d, lit + n - 4, 4);
            return (c | 0x20202020U) == d;
        }
        for (i = 0; i < n; i++)
            if ((p[i] | 0x20) != (unsigned char)lit[i]) return 0;
        return 1;
    }
    """
    bint fm_lower_eq(const unsigned char *p, const char *lit, Py_ssize_t n) noexcept nogil


cdef inline bint _lower_eq(const uchar *p, const char *lit, Py_ssize_t n) noexcept nogil:
    # Case-insensitive compare of validated bytes with a lowercase literal of letters, digits and "-".
    # OR-ing 0x20 maps only A-Z onto a-z among the bytes that can reach here (CTLs were rejected); the compare
    # ORs it into every byte, a word at a time (fm_lower_eq), which is the same test byte for byte.
    return fm_lower_eq(p, lit, n)


cdef inline int _field_id(const uchar *p, Py_ssize_t n) noexcept nogil:
    # Dispatch on length, then first letter, before comparing: most names fail at the length test.
    cdef uchar c = p[0] | 0x20
    if n == 4:
        if c == b'h' and _lower_eq(p, b"host", 4):
            return FIELD_HOST
    elif n == 10:
        if c == b'c' and _lower_eq(p, b"connection", 10):
            return FIELD_CONNECTION
        if c == b'k' and _lower_eq(p, b"keep-alive", 10):
            return FIELD_KEEP_ALIVE
    elif n == 14:
        if c == b'c' and _lower_eq(p, b"content-length", 14):
            return FIELD_CONTENT_LENGTH
        if c == b'h' and _lower_eq(p, b"http2-settings", 14):
            return FIELD_HTTP2_SETTINGS
    elif n == 17:
        if c == b't' and _lower_eq(p, b"transfer-encoding", 17):
            return FIELD_TRANSFER_ENCODING
    elif n == 7:
        if c == b'u' and _lower_eq(p, b"upgrade", 7):
            return FIELD_UPGRADE
        if c == b't' and _lower_eq(p, b"trailer", 7):
            return FIELD_TRAILER
    elif n == 6:
        if c == b'e' and _lower_eq(p, b"expect", 6):
            return FIELD_EXPECT
    elif n == 2:
        if c == b't' and _lower_eq(p, b"te", 2):
            return FIELD_TE
    elif n == 16:
        if c == b'p' and _lower_eq(p, b"proxy-connection", 16):
            return FIELD_PROXY_CONNECTION
    elif n == 18:
        if c == b'p' and _lower_eq(p, b"proxy-authenticate", 18):
            return FIELD_PROXY_AUTHENTICATE
    elif n == 19:
        if c == b'p' and _lower_eq(p, b"proxy-authorization", 19):
            return FIELD_PROXY_AUTHORIZATION
    return FIELD_OTHER


cdef inline bint _is_identity(const uchar *p, Py_ssize_t n) noexcept nogil:
    # fastmesh-client-identity (any case): asked only about names _field_id did not know.
    return n == 24 and (p[0] | 0x20) == b'f' and _lower_eq(p, b"fastmesh-client-identity", 24)


# ---------------------------------------------------------------------------------------------------
# Values of the fields that decide framing and connection handling.

cdef inline int _on_content_length(const uchar *v, Py_ssize_t n, Head *h) noexcept nogil:
    cdef long long value = 0
    cdef Py_ssize_t i
    cdef uchar c
    if n == 0:
        return ERR_BAD_CONTENT_LENGTH
    for i in range(n):
        c = v[i]
        if not (CHAR_CLASS[c] & CC_DIGIT) or value >= CL_DIGITS_CAP:
            return ERR_BAD_CONTENT_LENGTH
        value = value * 10 + (c - 48)
    if h.content_length >= 0:
        if h.content_length != value:
            return ERR_CONFLICTING_CONTENT_LENGTH
        h.cl_repeated = 1
    else:
        h.content_length = value
    return 0


cdef inline int _on_transfer_encoding(const uchar *v, Py_ssize_t n, Head *h) noexcept nogil:
    # Walk the comma list; empty elements are skipped (RFC 9110 section 5.6.1), each other element must
    # be a bare token. h.chunked tracks "the last coding so far is chunked".
    cdef Py_ssize_t i = 0, start, end
    cdef int elements = 0
    h.te_present = 1
    while i < n:
        while i < n and (v[i] == SP or v[i] == HTAB):
            i += 1
        start = i
        while i < n and CHAR_CLASS[v[i]] & CC_TCHAR:
            i += 1
        end = i
        while i < n and (v[i] == SP or v[i] == HTAB):
            i += 1
        if i < n and v[i] != b',':
            return ERR_BAD_TRANSFER_ENCODING
        i += 1
        if end == start:
            continue
        elements += 1
        if h.chunked:
            h.te_chunked_not_last = 1
        if end - start == 7 and _lower_eq(v + start, b"chunked", 7):
            h.chunked = 1
        else:
            h.chunked = 0
            h.te_other = 1
    if elements == 0:
        return ERR_BAD_TRANSFER_ENCODING
    return 0


cdef inline void _on_connection(const uchar *v, Py_ssize_t n, Head *h) noexcept nogil:
    cdef Py_ssize_t i = 0, start, end
    while i < n:
        while i < n and (v[i] == SP or v[i] == HTAB or v[i] == b','):
            i += 1
        start = i
        while i < n and v[i] != b',':
            i += 1
        end = i
        while end > start and (v[end - 1] == SP or v[end - 1] == HTAB):
            end -= 1
        if end - start == 10 and _lower_eq(v + start, b"keep-alive", 10):
            h.conn_keep_alive = 1
        elif end - start == 7 and _lower_eq(v + start, b"upgrade", 7):
            h.conn_upgrade = 1
        elif end > start:
            # Any other element, "close" too (a field may be called that), may name a field to drop.
            h.conn_names = 1
            if end - start == 5 and _lower_eq(v + start, b"close", 5):
                h.conn_close = 1


cdef inline bint _lists_h2c(const uchar *v, Py_ssize_t n) noexcept nogil:
    # Whether an Upgrade list names the protocol h2c (any version, any case): protocol-name ["/" version].
    cdef Py_ssize_t i = 0, start
    while i < n:
        while i < n and (v[i] == SP or v[i] == HTAB or v[i] == b','):
            i += 1
        start = i
        while i < n and v[i] != b',' and v[i] != b'/' and v[i] != SP and v[i] != HTAB:
            i += 1
        if i - start == 3 and _lower_eq(v + start, b"h2c", 3):
            return True
        while i < n and v[i] != b',':
            i += 1
    return False


cdef inline int _on_known_field(const uchar *b, Head *h, int fid, uint32_t voff, uint32_t vlen,
                                int index) noexcept nogil:
    cdef uint32_t i
    h.seen |= (<uint32_t>1) << fid
    if fid == FIELD_HOST:
        if h.host_index >= 0:
            return ERR_MULTIPLE_HOST
        h.host_index = index
        for i in range(vlen):
            if not (CHAR_CLASS[b[voff + i]] & CC_HOST):
                return ERR_BAD_HOST
    elif fid == FIELD_CONTENT_LENGTH:
        return _on_content_length(b + voff, vlen, h)
    elif fid == FIELD_TRANSFER_ENCODING:
        return _on_transfer_encoding(b + voff, vlen, h)
    elif fid == FIELD_CONNECTION:
        _on_connection(b + voff, vlen, h)
    elif fid == FIELD_UPGRADE:
        h.upgrade = 1
        if _lists_h2c(b + voff, vlen):
            h.upgrade_h2c = 1
    elif fid == FIELD_EXPECT:
        if vlen == 12 and _lower_eq(b + voff, b"100-continue", 12):
            h.expect_continue = 1
    return 0


# ---------------------------------------------------------------------------------------------------
# Field section.

cdef Py_ssize_t parse_fields(const char *buf, Py_ssize_t pos, Py_ssize_t len, Head *h,
                             const Limits *lim) noexcept nogil:
    cdef const uchar *b = <const uchar *>buf
    cdef Py_ssize_t limit_end = pos + lim.max_header_bytes
    # Scan bound: running into it means "need more" when it is the data's end, "too large" when the limit.
    cdef Py_ssize_t end = len if len < limit_end else limit_end
    cdef int out_of_room = ERR_HEADERS_TOO_LARGE if limit_end <= len else 0
    cdef int max_headers = lim.max_headers
    cdef Py_ssize_t p = pos, line_end, name_end, value_start, value_end
    cdef HeaderField *f
    cdef int fid, r
    cdef uchar c
    if max_headers > HEAD_MAX_FIELDS:
        max_headers = HEAD_MAX_FIELDS
    while True:
        if p >= end:
            return out_of_room
        c = b[p]
        if c == CR:
            if p + 1 >= end:
                return out_of_room
            if b[p + 1] != LF:
                return ERR_BARE_CR
            return p + 2
        if c == LF:
            return ERR_BARE_LF
        if c == SP or c == HTAB:
            return ERR_OBS_FOLD if h.num_headers > 0 else ERR_WS_BEFORE_FIRST_FIELD
        if h.num_headers >= max_headers:
            return ERR_TOO_MANY_HEADERS

        # Find the line's end first: the first CTL or DEL. Every byte before it is a field byte, and the
        # byte itself (never a tchar, SP or HTAB) stops the name and OWS loops below without bound checks.
        # Errors come out as a left-to-right scan would find them: the name is judged before the value.
        line_end = _scan_class(b, p, end, CC_FIELD, 0x20)
        if line_end >= end:
            return out_of_room

        f = &h.headers[h.num_headers]
        f.name_off = <uint32_t>p
        p = _skip_tchars(b, p)
        c = b[p]
        if c != b':' or p == f.name_off:
            if p > f.name_off and (c == SP or c == HTAB):
                return ERR_WS_BEFORE_COLON
            return ERR_BAD_FIELD_NAME
        name_end = p
        p += 1
        while b[p] == SP or b[p] == HTAB:
            p += 1
        value_start = p

        c = b[line_end]
        if c != CR:
            return ERR_BARE_LF if c == LF else ERR_BAD_FIELD_VALUE
        if line_end + 1 >= end:
            return out_of_room
        if b[line_end + 1] != LF:
            return ERR_BARE_CR
        value_end = line_end
        while value_end > value_start and (b[value_end - 1] == SP or b[value_end - 1] == HTAB):
            value_end -= 1

        f.name_len = <uint32_t>(name_end - f.name_off)
        f.value_off = <uint32_t>value_start
        f.value_len = <uint32_t>(value_end - value_start)
        fid = _field_id(b + f.name_off, f.name_len)
        h.num_headers += 1
        if fid != FIELD_OTHER:
            r = _on_known_field(b, h, fid, f.value_off, f.value_len, h.num_headers - 1)
            if r < 0:
                return r
        elif f.name_len == 24 and _is_identity(b + f.name_off, 24):
            # Noted, so that a request without one pays nothing for its removal (exchange.pyx); otherwise a plain
            # field (responses and trailers treat it like any other name).
            h.seen |= (<uint32_t>1) << FIELD_CLIENT_IDENTITY
        f.id = fid
        p = line_end + 2


# ---------------------------------------------------------------------------------------------------
# Start lines.

cdef inline Py_ssize_t _parse_version(const uchar *b, Py_ssize_t p, Py_ssize_t end, int *major,
                                      int *minor) noexcept nogil:
    # "HTTP/" DIGIT "." DIGIT at b[p]: index after it, 0 when b ends first, ERR_BAD_VERSION otherwise.
    # HTTP-name is case-sensitive (RFC 9112 section 2.3).
    cdef const char *pattern = b"HTTP/"
    cdef Py_ssize_t i
    if p + 8 <= end and memcmp(b + p, pattern, 5) == 0 and b[p + 6] == b'.' and \
            CHAR_CLASS[b[p + 5]] & CHAR_CLASS[b[p + 7]] & CC_DIGIT:
        major[0] = b[p + 5] - 48
        minor[0] = b[p + 7] - 48
        return p + 8
    for i in range(8):  # slow path: a short buffer, or a malformed version
        if p + i >= end:
            return 0
        if i < 5:
            if b[p + i] != <uchar>pattern[i]:
                return ERR_BAD_VERSION
        elif i == 6:
            if b[p + i] != b'.':
                return ERR_BAD_VERSION
        elif not (CHAR_CLASS[b[p + i]] & CC_DIGIT):
            return ERR_BAD_VERSION
    return ERR_BAD_VERSION  # not reached: the fast path takes every well-formed complete version


cdef inline bint _is_alpha(uchar c) noexcept nogil:
    return <uchar>((c | 0x20) - 97) < 26


cdef inline int _absolute_authority(const uchar *t, Py_ssize_t p, Py_ssize_t n) noexcept nogil:
    # After "scheme:" at t[p]: "//" and a non-empty authority of uri-host/port bytes, without userinfo
    # (RFC 9110 section 4.2.4: its presence is an error), then the path, the query or the end.
    # The authority becomes the forwarded Host, so it passes the same byte check as a Host value.
    cdef Py_ssize_t start
    if p + 2 > n or t[p] != b'/' or t[p + 1] != b'/':
        return ERR_BAD_TARGET
    p += 2
    start = p
    while p < n and t[p] != b'/' and t[p] != b'?':
        if not (CHAR_CLASS[t[p]] & CC_HOST):   # "@" (userinfo) is not a host byte
            return ERR_BAD_TARGET
        p += 1
    return <int>TARGET_ABSOLUTE if p > start else <int>ERR_BAD_TARGET


cdef inline int _target_form(const uchar *t, Py_ssize_t n, int method) noexcept nogil:
    # Which RFC 9112 section 3.2 form the (already byte-checked, non-empty) target has, or ERR_BAD_TARGET.
    cdef Py_ssize_t i, colon = -1
    cdef uchar c
    if memchr(t, b'#', n) != NULL:
        return ERR_BAD_TARGET     # a fragment is the client's business: never sent (RFC 9112 section 3.2)
    if t[0] == b'/':
        return <int>ERR_BAD_TARGET if method == METHOD_CONNECT else <int>TARGET_ORIGIN
    if method == METHOD_CONNECT:
        for i in range(n):
            if not (CHAR_CLASS[t[i]] & CC_HOST):
                return ERR_BAD_TARGET
            if t[i] == b':':
                colon = i
        if colon <= 0 or colon == n - 1:
            return ERR_BAD_TARGET
        for i in range(colon + 1, n):
            if not (CHAR_CLASS[t[i]] & CC_DIGIT):
                return ERR_BAD_TARGET
        return TARGET_AUTHORITY
    if t[0] == b'*':
        return <int>TARGET_ASTERISK if n == 1 and method == METHOD_OPTIONS else <int>ERR_BAD_TARGET
    if not _is_alpha(t[0]):
        return ERR_BAD_TARGET
    for i in range(1, n):  # scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) then ":"
        c = t[i]
        if c == b':':
            return _absolute_authority(t, i + 1, n)
        if not (_is_alpha(c) or CHAR_CLASS[c] & CC_DIGIT or c == b'+' or c == b'-' or c == b'.'):
            return ERR_BAD_TARGET
    return ERR_BAD_TARGET


cdef Py_ssize_t parse_request(const char *buf, Py_ssize_t len, Head *h, const Limits *lim) noexcept nogil:
    cdef const uchar *b = <const uchar *>buf
    if lim == NULL:
        lim = &_DEFAULT_LIMITS
    head_reset(h)
    cdef Py_ssize_t limit_end = lim.max_start_line
    cdef Py_ssize_t end = len if len < limit_end else limit_end
    cdef int out_of_room = ERR_START_LINE_TOO_LONG if limit_end <= len else 0
    cdef Py_ssize_t p = 0, start, r
    cdef int major = 0, minor = 0
    cdef uchar c

    while p < end and b[p] == CR:  # empty lines before the request line (RFC 9112 section 2.2)
        if p + 1 >= end:
            return out_of_room
        if b[p + 1] != LF:
            return ERR_BARE_CR
        p += 2

    start = p
    while p < end and CHAR_CLASS[b[p]] & CC_TCHAR:
        p += 1
    if p >= end:
        return out_of_room
    if b[p] != SP or p == start:
        return ERR_BARE_LF if p == start and b[p] == LF else ERR_BAD_METHOD
    h.method_off = <uint32_t>start
    h.method_len = <uint32_t>(p - start)
    h.method = method_id(<const char *>b + start, p - start)
    p += 1

    start = p
    p = _scan_class(b, p, end, CC_TARGET, 0x21)
    if p >= end:
        return out_of_room
    c = b[p]
    if p == start:
        return ERR_BAD_TARGET
    if c != SP:
        # "GET /\r\n" is an HTTP/0.9 request: no version at all.
        return ERR_BAD_VERSION if c == CR or c == LF else ERR_BAD_TARGET
    r = _target_form(b + start, p - start, h.method)
    if r < 0:
        return r
    h.target_form = <int>r
    h.target_off = <uint32_t>start
    h.target_len = <uint32_t>(p - start)
    p += 1

    r = _parse_version(b, p, end, &major, &minor)
    if r <= 0:
        return r if r < 0 else out_of_room
    p = r
    if p >= end:
        return out_of_room
    if b[p] != CR:
        return ERR_BARE_LF if b[p] == LF else ERR_BAD_VERSION
    if p + 1 >= end:
        return out_of_room
    if b[p + 1] != LF:
        return ERR_BARE_CR
    p += 2
    if major != 1 or minor > 1:
        return ERR_VERSION_NOT_SUPPORTED
    h.minor_version = minor

    r = parse_fields(buf, p, len, h, lim)
    if r <= 0:
        return r
    if minor == 1 and h.host_index < 0:
        return ERR_MISSING_HOST
    if h.te_present:
        if h.content_length >= 0:
            return ERR_CONTENT_LENGTH_WITH_TE
        if minor == 0:
            return ERR_TE_IN_HTTP10
        if h.te_chunked_not_last:
            return ERR_CHUNKED_NOT_LAST
        if h.te_other:
            return ERR_UNKNOWN_TRANSFER_CODING
    return r


cdef Py_ssize_t parse_response(const char *buf, Py_ssize_t len, Head *h, const Limits *lim) noexcept nogil:
    cdef const uchar *b = <const uchar *>buf
    if lim == NULL:
        lim = &_DEFAULT_LIMITS
    head_reset(h)
    cdef Py_ssize_t limit_end = lim.max_start_line
    cdef Py_ssize_t end = len if len < limit_end else limit_end
    cdef int out_of_room = ERR_START_LINE_TOO_LONG if limit_end <= len else 0
    cdef Py_ssize_t p, start, r
    cdef int major = 0, minor = 0, status = 0, i
    cdef uchar c

    r = _parse_version(b, 0, end, &major, &minor)
    if r <= 0:
        return r if r < 0 else out_of_room
    p = r
    if p >= end:
        return out_of_room
    if b[p] != SP:
        return ERR_BAD_STATUS_LINE
    p += 1
    for i in range(3):  # no-cython-lint: counts bytes, i unused
        if p >= end:
            return out_of_room
        if not (CHAR_CLASS[b[p]] & CC_DIGIT):
            return ERR_BAD_STATUS_LINE
        status = status * 10 + (b[p] - 48)
        p += 1
    if status < 100 or status > 599:
        return ERR_BAD_STATUS_LINE
    h.status = status
    if p >= end:
        return out_of_room
    c = b[p]
    if c == SP:
        p += 1
        start = p
        p = _scan_class(b, p, end, CC_FIELD, 0x20)
        if p >= end:
            return out_of_room
        h.reason_off = <uint32_t>start
        h.reason_len = <uint32_t>(p - start)
        c = b[p]
    if c != CR:
        return ERR_BARE_LF if c == LF else ERR_BAD_STATUS_LINE
    if p + 1 >= end:
        return out_of_room
    if b[p + 1] != LF:
        return ERR_BARE_CR
    p += 2
    if major != 1 or minor > 1:
        return ERR_VERSION_NOT_SUPPORTED
    h.minor_version = minor

    r = parse_fields(buf, p, len, h, lim)
    if r <= 0:
        return r
    if h.te_present:
        if h.content_length >= 0:
            return ERR_CONTENT_LENGTH_WITH_TE
        if minor == 0:
            return ERR_TE_IN_HTTP10
        if h.te_chunked_not_last and h.chunked:
            return ERR_CHUNKED_NOT_LAST
    return r


cdef Py_ssize_t find_head_end(const char *buf, Py_ssize_t len, Py_ssize_t start) noexcept nogil:
    cdef Py_ssize_t first = start - 3 if start > 3 else 0  # the match may start no earlier
    cdef Py_ssize_t p = first, i
    cdef const char *q
    while p < len:
        q = <const char *>memchr(buf + p, LF, len - p)
        if q == NULL:
            return -1
        i = q - buf  # a final LF: the three bytes before it must be CR LF CR
        if i >= first + 3 and buf[i - 1] == CR and buf[i - 2] == LF and buf[i - 3] == CR:
            return i + 1
        p = i + 1
    return -1


# ---------------------------------------------------------------------------------------------------
# Python wrappers: for tests, fuzzers and benchmarks only. The data path cimports the functions above.

METHOD_NAMES = ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
TARGET_FORMS = ("origin", "absolute", "authority", "asterisk")
FIELD_NAMES = ("", "host", "content-length", "transfer-encoding", "connection", "keep-alive",
               "proxy-connection", "te", "trailer", "upgrade", "expect", "proxy-authenticate",
               "proxy-authorization", "http2-settings")


cdef int make_limits(Limits *lim, object max_start_line, object max_header_bytes, object max_headers,
                     object max_chunk_line) except -1:
    limits_init(lim)
    if max_start_line is not None:
        lim.max_start_line = max_start_line
    if max_header_bytes is not None:
        lim.max_header_bytes = max_header_bytes
    if max_headers is not None:
        lim.max_headers = max_headers
    if max_chunk_line is not None:
        lim.max_chunk_line = max_chunk_line
    if not (0 < lim.max_start_line <= 1 << 30 and 0 < lim.max_header_bytes <= 1 << 30
            and 0 < lim.max_headers <= HEAD_MAX_FIELDS and 0 < lim.max_chunk_line <= 1 << 30):
        raise ValueError("limits must be positive, at most 1 GiB, and max_headers <= %d" % HEAD_MAX_FIELDS)
    return 0


cdef list fields_list(bytes data, const Head *h):
    cdef int i
    cdef const HeaderField *f
    out = []
    for i in range(h.num_headers):
        f = &h.headers[i]
        out.append((data[f.name_off:f.name_off + f.name_len], data[f.value_off:f.value_off + f.value_len]))
    return out


cdef dict head_dict(bytes data, const Head *h):
    cdef int i
    cdef const HeaderField *f
    host = None
    if h.host_index >= 0:
        f = &h.headers[h.host_index]
        host = data[f.value_off:f.value_off + f.value_len]
    return {
        "version": (1, h.minor_version),
        "headers": fields_list(data, h),
        "field_ids": [h.headers[i].id for i in range(h.num_headers)],
        "content_length": None if h.content_length < 0 else h.content_length,
        "cl_repeated": bool(h.cl_repeated),
        "te_present": bool(h.te_present),
        "chunked": bool(h.chunked),
        "te_other": bool(h.te_other),
        "connection_close": bool(h.conn_close),
        "connection_keep_alive": bool(h.conn_keep_alive),
        "connection_upgrade": bool(h.conn_upgrade),
        "connection_names": bool(h.conn_names),
        "upgrade": bool(h.upgrade),
        "upgrade_h2c": bool(h.upgrade_h2c),
        "expect_continue": bool(h.expect_continue),
        "host": host,
        "seen": {FIELD_NAMES[i] for i in range(1, len(FIELD_NAMES)) if h.seen & (1 << i)},
    }


def parse_request_bytes(bytes data, *, max_start_line=None, max_header_bytes=None, max_headers=None):
    """Parse a request head: (consumed, dict) on success, (0, None) when more bytes are needed.

    Raises HttpParseError (with .status and .reason) when the head is rejected.
    """
    cdef Head h
    cdef Limits lim
    make_limits(&lim, max_start_line, max_header_bytes, max_headers, None)
    cdef Py_ssize_t r = parse_request(data, len(data), &h, &lim)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        return 0, None
    d = head_dict(data, &h)
    d["method"] = data[h.method_off:h.method_off + h.method_len]
    d["method_id"] = METHOD_NAMES[h.method]
    d["target"] = data[h.target_off:h.target_off + h.target_len]
    d["target_form"] = TARGET_FORMS[h.target_form]
    return r, d


def parse_response_bytes(bytes data, *, max_start_line=None, max_header_bytes=None, max_headers=None):
    """Parse a response head: (consumed, dict) on success, (0, None) when more bytes are needed.

    Raises HttpParseError when the head is rejected (a proxy answers such upstream errors with 502).
    """
    cdef Head h
    cdef Limits lim
    make_limits(&lim, max_start_line, max_header_bytes, max_headers, None)
    cdef Py_ssize_t r = parse_response(data, len(data), &h, &lim)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        return 0, None
    d = head_dict(data, &h)
    d["status"] = h.status
    d["reason"] = data[h.reason_off:h.reason_off + h.reason_len]
    return r, d


def request_head_length(bytes data) -> int:
    """The cheapest Python call into the parser (default limits): head length, 0 for more, or raises."""
    cdef Head h
    cdef Py_ssize_t r = parse_request(data, len(data), &h, NULL)
    if r < 0:
        raise make_error(<int>r)
    return r


def head_end_hint(bytes data, Py_ssize_t start=0) -> int:
    """Python view of find_head_end()."""
    if start < 0 or start > len(data):
        raise ValueError("start out of range")
    return find_head_end(data, len(data), start)


def bench_parse_request(bytes data, Py_ssize_t count) -> int:
    """Parse `data` `count` times in C without the GIL (benchmarks); returns the sum of the results."""
    cdef Head h
    cdef const char *p = data
    cdef Py_ssize_t n = len(data), i, total = 0
    with nogil:
        for i in range(count):  # no-cython-lint: counts bytes, i unused
            total += parse_request(p, n, &h, &_DEFAULT_LIMITS) + h.num_headers
    return total


def bench_parse_response(bytes data, Py_ssize_t count) -> int:
    """Like bench_parse_request() for a response head."""
    cdef Head h
    cdef const char *p = data
    cdef Py_ssize_t n = len(data), i, total = 0
    with nogil:
        for i in range(count):  # no-cython-lint: counts bytes, i unused
            total += parse_response(p, n, &h, &_DEFAULT_LIMITS) + h.num_headers
    return total


def char_class_table() -> bytes:
    """The 256-entry byte-class table, so tests can check it against the RFC grammars."""
    return bytes([CHAR_CLASS[i] for i in range(256)])
