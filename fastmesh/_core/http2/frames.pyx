# HTTP/2 frame writers (RFC 9113 4.1, 6): each appends one whole frame to an OutBuf, header and payload in one
# reservation; the 9-byte header reader and the numbers are inline in frames.pxd.

from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from fastmesh._core.buffer cimport OutBuf, ob_reserve, ob_free


cdef int write_frame(OutBuf *o, uint8_t ftype, uint8_t flags, uint32_t stream, const char *payload,
                     Py_ssize_t n) noexcept:
    cdef char *p
    if ob_reserve(o, FRAME_HEADER_LEN + n) < 0:
        return -1
    p = o.data + o.len
    put_header(p, <uint32_t>n, ftype, flags, stream)
    if n > 0:
        memcpy(p + FRAME_HEADER_LEN, payload, n)
    o.len += FRAME_HEADER_LEN + n
    return 0


cdef int write_data(OutBuf *o, uint32_t stream, const char *data, Py_ssize_t n, bint end_stream) noexcept:
    return write_frame(o, FT_DATA, FLAG_END_STREAM if end_stream else 0, stream, data, n)


cdef int write_settings(OutBuf *o, const uint32_t *ids, const uint32_t *values, int n) noexcept:
    cdef char *p
    cdef int i
    if ob_reserve(o, FRAME_HEADER_LEN + 6 * n) < 0:
        return -1
    p = o.data + o.len
    put_header(p, <uint32_t>(6 * n), FT_SETTINGS, 0, 0)
    p += FRAME_HEADER_LEN
    for i in range(n):
        p[0] = <char>((ids[i] >> 8) & 0xff)
        p[1] = <char>(ids[i] & 0xff)
        put_u32(p + 2, values[i])
        p += 6
    o.len += FRAME_HEADER_LEN + 6 * n
    return 0


cdef int write_settings_ack(OutBuf *o) noexcept:
    return write_frame(o, FT_SETTINGS, FLAG_ACK, 0, NULL, 0)


cdef int write_ping(OutBuf *o, const char *opaque, bint ack) noexcept:
    return write_frame(o, FT_PING, FLAG_ACK if ack else 0, 0, opaque, 8)


cdef int write_rst(OutBuf *o, uint32_t stream, uint32_t code) noexcept:
    cdef char payload[4]
    put_u32(payload, code)
    return write_frame(o, FT_RST_STREAM, 0, stream, payload, 4)


cdef int write_goaway(OutBuf *o, uint32_t last_stream, uint32_t code, const char *debug, Py_ssize_t n) noexcept:
    cdef char *p
    if ob_reserve(o, FRAME_HEADER_LEN + 8 + n) < 0:
        return -1
    p = o.data + o.len
    put_header(p, <uint32_t>(8 + n), FT_GOAWAY, 0, 0)
    put_u32(p + FRAME_HEADER_LEN, last_stream & 0x7fffffff)
    put_u32(p + FRAME_HEADER_LEN + 4, code)
    if n > 0:
        memcpy(p + FRAME_HEADER_LEN + 8, debug, n)
    o.len += FRAME_HEADER_LEN + 8 + n
    return 0


cdef int write_window_update(OutBuf *o, uint32_t stream, uint32_t increment) noexcept:
    cdef char payload[4]
    put_u32(payload, increment & 0x7fffffff)
    return write_frame(o, FT_WINDOW_UPDATE, 0, stream, payload, 4)


cdef int write_headers(OutBuf *o, uint32_t stream, const char *block, Py_ssize_t n, bint end_stream,
                       Py_ssize_t max_frame) noexcept:
    cdef Py_ssize_t first = n if n <= max_frame else max_frame
    cdef Py_ssize_t frames = 1 + (n - first + max_frame - 1) // max_frame
    cdef Py_ssize_t chunk
    cdef uint8_t flags = FLAG_END_STREAM if end_stream else 0
    cdef char *p
    if ob_reserve(o, frames * FRAME_HEADER_LEN + n) < 0:
        return -1
    p = o.data + o.len
    put_header(p, <uint32_t>first, FT_HEADERS, flags | (FLAG_END_HEADERS if first == n else 0), stream)
    memcpy(p + FRAME_HEADER_LEN, block, first)
    p += FRAME_HEADER_LEN + first
    block += first
    n -= first
    while n > 0:
        chunk = n if n <= max_frame else max_frame
        put_header(p, <uint32_t>chunk, FT_CONTINUATION, FLAG_END_HEADERS if chunk == n else 0, stream)
        memcpy(p + FRAME_HEADER_LEN, block, chunk)
        p += FRAME_HEADER_LEN + chunk
        block += chunk
        n -= chunk
    o.len = p - o.data
    return 0


cdef int strip_padding(const unsigned char **p, Py_ssize_t *n, uint8_t flags, bint headers) noexcept:
    cdef Py_ssize_t pad = 0
    cdef const unsigned char *q = p[0]
    cdef Py_ssize_t m = n[0]
    if flags & FLAG_PADDED:
        if m < 1:
            return -1
        pad = q[0]
        q += 1
        m -= 1
    if headers and flags & FLAG_PRIORITY:
        if m < 5:
            return -1
        q += 5
        m -= 5
    if pad > m:
        return -1
    p[0] = q
    n[0] = m - pad
    return 0


# --- Python-level helpers for tests and benchmarks (never on the data path) ---

def encode_frame(int ftype, int flags, uint32_t stream, bytes payload):
    """One frame as bytes (header + payload), as write_frame appends it."""
    cdef OutBuf o
    o.data = NULL
    o.off = 0
    o.len = 0
    o.cap = 0
    try:
        if write_frame(&o, <uint8_t>ftype, <uint8_t>flags, stream, payload, len(payload)) < 0:
            raise MemoryError()
        return o.data[:o.len]
    finally:
        ob_free(&o)


def encode_headers(uint32_t stream, bytes block, bint end_stream, Py_ssize_t max_frame):
    """A header block as HEADERS + CONTINUATION frames, as write_headers appends them."""
    cdef OutBuf o
    o.data = NULL
    o.off = 0
    o.len = 0
    o.cap = 0
    try:
        if write_headers(&o, stream, block, len(block), end_stream, max_frame) < 0:
            raise MemoryError()
        return o.data[:o.len]
    finally:
        ob_free(&o)


def decode_header(bytes data):
    """(length, type, flags, stream) of the 9-byte frame header at the start of data."""
    cdef FrameHeader h
    if len(data) < FRAME_HEADER_LEN:
        raise ValueError("a frame header is 9 bytes")
    read_header(<const unsigned char *><const char *>data, &h)
    return (h.length, h.type, h.flags, h.stream)


def unpad(int flags, bytes payload, bint headers=False):
    """The content of a padded DATA / HEADERS payload, or None when the padding does not fit."""
    cdef const unsigned char *p = <const unsigned char *><const char *>payload
    cdef Py_ssize_t n = len(payload)
    if strip_padding(&p, &n, <uint8_t>flags, headers) < 0:
        return None
    return (<const char *>p)[:n]
