"""HTTP/1.1 body framing: how long a body is (RFC 9112 section 6.3), the chunked decoder and the size-line encoder.

The head-level smuggling rules (Content-Length vs Transfer-Encoding, codings, versions) are enforced once,
by parser.pyx while it reads the head; request_body()/response_body() only turn an accepted head into a
BodyKind, and refuse a Head whose facts are not a combination parse_request() can produce.

The chunked decoder is an explicit state machine (ChunkState) fed any split of the body:
 - chunk-size is 1*HEXDIG, at most 63 bits (ERR_CHUNK_SIZE_OVERFLOW); leading zeros are allowed but the
   whole size line, extensions included, is bounded by Limits.max_chunk_line (ERR_CHUNK_LINE_TOO_LONG);
 - whitespace after the size is accepted only before a ";" (BWS before an extension); "5 \\r\\n", "0x5",
   "-5", "+5" and an empty size are ERR_BAD_CHUNK_SIZE;
 - extensions are tolerated and skipped: any VCHAR/obs-text/SP/HTAB up to the CRLF, never CTLs, so a bare
   LF or CR inside one (the aiohttp/fasthttp smuggling bug class) is rejected (ERR_BARE_LF / ERR_BARE_CR);
 - chunk data must be followed by exactly CRLF (ERR_BAD_CHUNK_END);
 - trailers are parsed with parse_fields(), the same rules and limits as a head's field section; they are
   only reported (Head offsets), never merged into the head;
 - trailers_strip() removes, in place, every trailer field the parser knows by name (Host, Content-Length,
   Transfer-Encoding, Expect, the hop-by-hop set, HTTP2-Settings): framing, routing and connection fields
   are not allowed in a trailer section (RFC 9110 section 6.5.1), and a peer that merged one into the head
   would frame or route the message differently. body.pyx forwards what is left, both ways.
"""

from fastmesh._core.codes cimport (
    ERR_BARE_CR, ERR_BARE_LF, ERR_BAD_CHUNK_SIZE, ERR_CHUNK_SIZE_OVERFLOW, ERR_BAD_CHUNK_EXTENSION,
    ERR_CHUNK_LINE_TOO_LONG, ERR_BAD_CHUNK_END, ERR_BAD_TRANSFER_ENCODING, ERR_UNEXPECTED_SWITCH,
    make_error,
)
from libc.string cimport memmove

from fastmesh._core.http1.parser cimport (
    Head, Limits, HeaderField, CHAR_CLASS, CC_HEX, CC_FIELD, FIELD_OTHER, METHOD_HEAD, METHOD_CONNECT, METHOD_OTHER,
    METHOD_GET, METHOD_POST, METHOD_PUT, METHOD_DELETE, METHOD_OPTIONS, METHOD_TRACE, METHOD_PATCH,
    limits_init, head_reset, parse_request, parse_response, parse_fields,
)

ctypedef unsigned char uchar

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HTAB = 9

LAST_CHUNK = b"0\r\n\r\n"


# ---------------------------------------------------------------------------------------------------
# Body length decision.

cdef int request_body(const Head *h, long long *length) noexcept nogil:
    length[0] = -1
    if h.te_present:
        # The only Transfer-Encoding parse_request() lets through: HTTP/1.1, a single final chunked, no CL.
        if not h.chunked or h.te_other or h.te_chunked_not_last or h.content_length >= 0 \
                or h.minor_version != 1:
            return ERR_BAD_TRANSFER_ENCODING
        return BODY_CHUNKED
    if h.content_length > 0:
        length[0] = h.content_length
        return BODY_LENGTH
    length[0] = 0
    return BODY_NONE


cdef int response_body(const Head *h, int request_method, bint request_upgrade,
                       long long *length) noexcept nogil:
    cdef int status = h.status
    length[0] = -1
    if status == 101:
        return <int>BODY_TUNNEL if request_upgrade else <int>ERR_UNEXPECTED_SWITCH
    if status < 200 or status == 204 or status == 304 or request_method == METHOD_HEAD:
        length[0] = 0
        return BODY_NONE
    if request_method == METHOD_CONNECT and status < 300:
        return BODY_TUNNEL
    if h.te_present:
        if h.content_length >= 0 or h.minor_version != 1 or (h.chunked and h.te_chunked_not_last):
            return ERR_BAD_TRANSFER_ENCODING
        # A final chunked frames the body; other codings alone leave only the close to end it.
        return <int>BODY_CHUNKED if h.chunked else <int>BODY_UNTIL_CLOSE
    if h.content_length > 0:
        length[0] = h.content_length
        return BODY_LENGTH
    if h.content_length == 0:
        length[0] = 0
        return BODY_NONE
    return BODY_UNTIL_CLOSE


cdef bint keep_alive(const Head *h, int body_kind) noexcept nogil:
    if body_kind == BODY_UNTIL_CLOSE or body_kind == BODY_TUNNEL or h.conn_close:
        return False
    if h.minor_version >= 1:
        return True
    return h.conn_keep_alive != 0


# ---------------------------------------------------------------------------------------------------
# Chunked decoder.

cdef void chunked_init(ChunkedDecoder *d, const Limits *lim, Head *trailers) noexcept nogil:
    d.state = CHUNK_SIZE
    d.error = 0
    d.digits = 0
    d.size = 0
    d.remaining = 0
    d.line_len = 0
    d.body_bytes = 0
    d.trailers_off = 0
    d.trailers_len = 0
    if lim == NULL:
        limits_init(&d.limits)
    else:
        d.limits = lim[0]
    d.trailers = trailers


cdef inline Py_ssize_t _fail(ChunkedDecoder *d, int code) noexcept nogil:
    d.state = CHUNK_ERROR
    d.error = code
    return code


cdef inline void _new_size_line(ChunkedDecoder *d) noexcept nogil:
    d.state = CHUNK_SIZE
    d.digits = 0
    d.size = 0
    d.line_len = 0


cdef Py_ssize_t chunked_feed(ChunkedDecoder *d, const char *buf, Py_ssize_t len, Py_ssize_t *data_off,
                             Py_ssize_t *data_len) noexcept nogil:
    cdef const uchar *b = <const uchar *>buf
    cdef Py_ssize_t p = 0, r
    cdef unsigned long long n
    cdef int state
    cdef uchar c
    cdef Head scratch
    cdef Head *th
    data_off[0] = 0
    data_len[0] = 0
    if d.state == CHUNK_ERROR:
        return d.error
    while p < len:
        state = d.state
        if state == CHUNK_DATA:
            if data_len[0] != 0:
                return p  # one span per call: the caller forwards it, then feeds the rest
            n = <unsigned long long>(len - p)
            if n > d.remaining:
                n = d.remaining
            data_off[0] = p
            data_len[0] = <Py_ssize_t>n
            d.remaining -= n
            d.body_bytes += n
            p += <Py_ssize_t>n
            if d.remaining == 0:
                d.state = CHUNK_DATA_CR
            continue
        if state == CHUNK_TRAILERS:
            th = d.trailers if d.trailers != NULL else &scratch
            head_reset(th)
            r = parse_fields(buf, p, len, th, &d.limits)
            if r == 0:
                return p  # keep the partial trailer section unconsumed until it is whole
            if r < 0:
                return _fail(d, <int>r)
            d.trailers_off = p
            d.trailers_len = r - p
            d.state = CHUNK_DONE
            return r
        if state == CHUNK_DONE:
            return p

        c = b[p]
        if state == CHUNK_DATA_CR:
            if c != CR:
                return _fail(d, ERR_BAD_CHUNK_END)
            d.state = CHUNK_DATA_LF
            p += 1
            continue
        if state == CHUNK_DATA_LF:
            if c != LF:
                return _fail(d, ERR_BAD_CHUNK_END)
            _new_size_line(d)
            p += 1
            continue

        # The size line: SIZE, SIZE_WS, EXT, SIZE_LF, bounded as a whole by max_chunk_line.
        d.line_len += 1
        if d.line_len > d.limits.max_chunk_line:
            return _fail(d, ERR_CHUNK_LINE_TOO_LONG)
        if state == CHUNK_SIZE:
            if CHAR_CLASS[c] & CC_HEX:
                if d.size >> 59:
                    return _fail(d, ERR_CHUNK_SIZE_OVERFLOW)
                d.size = (d.size << 4) | <unsigned long long>(c - 48 if c <= 57 else (c | 0x20) - 87)
                d.digits += 1
            elif d.digits == 0:
                return _fail(d, ERR_BARE_LF if c == LF else ERR_BAD_CHUNK_SIZE)
            elif c == CR:
                d.state = CHUNK_SIZE_LF
            elif c == b';':
                d.state = CHUNK_EXT
            elif c == SP or c == HTAB:
                d.state = CHUNK_SIZE_WS
            else:
                return _fail(d, ERR_BARE_LF if c == LF else ERR_BAD_CHUNK_SIZE)
        elif state == CHUNK_SIZE_WS:
            if c == b';':
                d.state = CHUNK_EXT
            elif c != SP and c != HTAB:
                return _fail(d, ERR_BARE_LF if c == LF else ERR_BAD_CHUNK_SIZE)
        elif state == CHUNK_EXT:
            if c == CR:
                d.state = CHUNK_SIZE_LF
            elif not (CHAR_CLASS[c] & CC_FIELD):
                return _fail(d, ERR_BARE_LF if c == LF else ERR_BAD_CHUNK_EXTENSION)
        elif state == CHUNK_SIZE_LF:
            if c != LF:
                return _fail(d, ERR_BARE_CR)
            if d.size == 0:
                d.state = CHUNK_TRAILERS
            else:
                d.state = CHUNK_DATA
                d.remaining = d.size
        p += 1
    return p


cdef Py_ssize_t trailers_strip(char *sec, Py_ssize_t len, const Head *th, Py_ssize_t base) noexcept nogil:
    cdef Py_ssize_t w = 0, start, end
    cdef int i
    cdef const HeaderField *f
    if th.seen == 0:
        return len
    for i in range(th.num_headers):
        f = &th.headers[i]
        start = f.name_off - base
        # A line runs to the next one's name, the last one to the final CRLF; its own CRLF included.
        end = th.headers[i + 1].name_off - base if i + 1 < th.num_headers else len - 2
        if f.id != FIELD_OTHER:
            continue
        if start != w:
            memmove(sec + w, sec + start, end - start)
        w += end - start
    sec[w] = b'\r'
    sec[w + 1] = b'\n'
    return w + 2


# ---------------------------------------------------------------------------------------------------
# Chunked encoder.

cdef Py_ssize_t chunk_size_line(char *out, unsigned long long size) noexcept nogil:
    cdef const char *digits = b"0123456789abcdef"
    cdef char tmp[16]
    cdef int n = 0, i
    while True:
        tmp[n] = digits[size & 15]
        n += 1
        size >>= 4
        if size == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    out[n] = b'\r'
    out[n + 1] = b'\n'
    return n + 2


# ---------------------------------------------------------------------------------------------------
# Python wrappers: for tests, fuzzers and benchmarks only.

BODY_KINDS = ("none", "length", "chunked", "until-close", "tunnel")
_METHOD_IDS = {b"GET": METHOD_GET, b"HEAD": METHOD_HEAD, b"POST": METHOD_POST, b"PUT": METHOD_PUT,
               b"DELETE": METHOD_DELETE, b"CONNECT": METHOD_CONNECT, b"OPTIONS": METHOD_OPTIONS,
               b"TRACE": METHOD_TRACE, b"PATCH": METHOD_PATCH}


def request_framing(bytes head):
    """(kind, length, keep_alive) for a request head; raises HttpParseError if the head is rejected."""
    cdef Head h
    cdef long long length
    cdef Py_ssize_t r = parse_request(head, len(head), &h, NULL)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        raise ValueError("incomplete head")
    cdef int kind = request_body(&h, &length)
    if kind < 0:
        raise make_error(kind)
    return BODY_KINDS[kind], length, bool(keep_alive(&h, kind))


def response_framing(bytes head, bytes request_method=b"GET", bint request_upgrade=False):
    """(kind, length, keep_alive) for a response head answering `request_method`."""
    cdef Head h
    cdef long long length
    cdef Py_ssize_t r = parse_response(head, len(head), &h, NULL)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        raise ValueError("incomplete head")
    cdef int kind = response_body(&h, _METHOD_IDS.get(request_method, METHOD_OTHER), request_upgrade,
                                  &length)
    if kind < 0:
        raise make_error(kind)
    return BODY_KINDS[kind], length, bool(keep_alive(&h, kind))


def strip_trailers(bytes section) -> bytes:
    """A trailer section (field lines and the final CRLF) as it is forwarded; raises HttpParseError."""
    cdef Head th
    cdef Limits lim
    cdef bytearray buf = bytearray(section)
    cdef char *p = buf
    limits_init(&lim)
    head_reset(&th)
    cdef Py_ssize_t r = parse_fields(p, 0, len(buf), &th, &lim)
    if r < 0:
        raise make_error(<int>r)
    if r != len(buf):
        raise ValueError("not one whole trailer section")
    return bytes(buf[:trailers_strip(p, r, &th, 0)])


def encode_chunk_size(unsigned long long size) -> bytes:
    """The chunk-size line for a chunk of `size` bytes, e.g. b"1f\\r\\n"."""
    cdef char out[CHUNK_LINE_MAX]
    cdef Py_ssize_t n = chunk_size_line(out, size)
    return out[:n]


cdef class ChunkedReader:
    """Test driver for the chunked decoder: feed() buffers what the decoder leaves unconsumed."""

    cdef ChunkedDecoder d
    cdef Head trailer_head
    cdef bytes pending   # bytes fed but not consumed yet (a partial trailer section)
    cdef public list trailers   # (name, value) pairs once done
    cdef public bytes unused    # bytes after the end of the body, once done

    def __cinit__(self, max_chunk_line=None, max_header_bytes=None, max_headers=None):
        cdef Limits lim
        limits_init(&lim)
        if max_chunk_line is not None:
            lim.max_chunk_line = max_chunk_line
        if max_header_bytes is not None:
            lim.max_header_bytes = max_header_bytes
        if max_headers is not None:
            lim.max_headers = max_headers
        chunked_init(&self.d, &lim, &self.trailer_head)
        self.pending = b""
        self.trailers = []
        self.unused = b""

    @property
    def done(self) -> bool:
        return self.d.state == CHUNK_DONE

    @property
    def state(self) -> int:
        return self.d.state

    @property
    def body_bytes(self) -> int:
        return self.d.body_bytes

    def feed_raw(self, bytes data):
        """One pass of the decoder over `data` alone: (consumed, [data pieces]); raises on error."""
        cdef Py_ssize_t pos = 0, n, off, dlen
        cdef const char *p = data
        pieces = []
        while pos < len(data) and self.d.state != CHUNK_DONE:
            n = chunked_feed(&self.d, p + pos, len(data) - pos, &off, &dlen)
            if n < 0:
                raise make_error(<int>n)
            if dlen:
                pieces.append(data[pos + off:pos + off + dlen])
            if self.d.state == CHUNK_DONE:
                self._take_trailers(data, pos)
            pos += n
            if n == 0:
                break
        return pos, pieces

    def feed(self, bytes data):
        """Feed more body bytes; returns the chunk data pieces they completed. Raises HttpParseError."""
        if self.d.state == CHUNK_DONE:
            self.unused += data
            return []
        buf = self.pending + data
        consumed, pieces = self.feed_raw(buf)
        if self.d.state == CHUNK_DONE:
            self.unused = buf[consumed:]
            self.pending = b""
        else:
            self.pending = buf[consumed:]
        return pieces

    cdef _take_trailers(self, bytes data, Py_ssize_t base):
        cdef int i
        cdef HeaderField *f
        self.trailers = []
        for i in range(self.trailer_head.num_headers):
            f = &self.trailer_head.headers[i]
            self.trailers.append((data[base + f.name_off:base + f.name_off + f.name_len],
                                  data[base + f.value_off:base + f.value_off + f.value_len]))
