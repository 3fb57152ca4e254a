# HTTP/1.1 body framing: C-level declarations for the body-length decision, the chunked decoder and encoder.

from fastmesh._core.http1.parser cimport Head, Limits

cdef enum BodyKind:
    BODY_NONE = 0          # no body follows the head
    BODY_LENGTH = 1        # exactly `length` bytes follow (Content-Length > 0)
    BODY_CHUNKED = 2       # chunked coding: run a ChunkedDecoder over what follows
    BODY_UNTIL_CLOSE = 3   # response body ends when the upstream closes (no keep-alive)
    BODY_TUNNEL = 4        # the connection becomes an opaque tunnel (2xx to CONNECT, 101 to Upgrade)

cdef enum ChunkState:
    CHUNK_SIZE = 0         # reading the hex digits of a chunk-size line
    CHUNK_SIZE_WS = 1      # whitespace after the size: only ";" (an extension) may follow
    CHUNK_EXT = 2          # inside chunk extensions, up to the CR
    CHUNK_SIZE_LF = 3      # CR of the size line seen, LF must follow
    CHUNK_DATA = 4         # `remaining` bytes of chunk data to pass through
    CHUNK_DATA_CR = 5      # chunk data ended, CR must follow
    CHUNK_DATA_LF = 6      # LF must follow
    CHUNK_TRAILERS = 7     # after the last chunk: trailer fields, then the final empty line
    CHUNK_DONE = 8         # body complete; bytes after it belong to the next message
    CHUNK_ERROR = 9        # rejected; `error` holds the ERR_* code

ctypedef struct ChunkedDecoder:
    int state                       # ChunkState
    int error                       # ERR_* code once state is CHUNK_ERROR, 0 before
    int digits                      # hex digits read on the current size line
    unsigned long long size         # chunk size accumulated from the digits so far
    unsigned long long remaining    # data bytes still expected in the current chunk
    Py_ssize_t line_len             # bytes of the current size line consumed so far (vs max_chunk_line)
    unsigned long long body_bytes   # chunk data bytes passed through in total
    Py_ssize_t trailers_off         # once CHUNK_DONE: trailer section offset in the final feed's buffer
    Py_ssize_t trailers_len         # and its length incl. the final CRLF (2 when there are no trailers)
    Limits limits                   # copy of the limits: max_chunk_line, and the header limits for trailers
    Head *trailers                  # optional (may be NULL): receives trailer fields, offsets as above

# Body framing of a request head that parse_request() accepted (RFC 9112 section 6.3). Returns a BodyKind
# and sets length[0] (bytes for BODY_LENGTH, 0 for none, -1 otherwise), or a negative ERR_* code when
# the head's framing facts are inconsistent (a Head that did not come from parse_request).
cdef int request_body(const Head *h, long long *length) noexcept nogil
# Body framing of a response head: `request_method` is the Method id of the request it answers and
# `request_upgrade` whether that request asked for an Upgrade. 1xx (but 101), 204, 304 and answers to
# HEAD have no body; 2xx to CONNECT and 101 become tunnels; otherwise CL / chunked / until close.
cdef int response_body(const Head *h, int request_method, bint request_upgrade,
                       long long *length) noexcept nogil
# Whether the connection may carry another message after this one (HTTP/1.1 default keep-alive unless
# "close"; HTTP/1.0 only with "keep-alive"; never after a close-delimited body).
cdef bint keep_alive(const Head *h, int body_kind) noexcept nogil

# Start a decoder for one chunked body. `lim` may be NULL for the defaults; `trailers` may be NULL.
cdef void chunked_init(ChunkedDecoder *d, const Limits *lim, Head *trailers) noexcept nogil
# Feed buf[0:len]. Returns how many bytes were consumed (the caller drops them; bytes not consumed must be
# fed again with more data appended), or a negative ERR_* code. Sets data_off[0]/data_len[0] to at most
# one span of chunk data inside buf (data_len 0 when none); it returns right after a span so the caller
# can forward it, then call again with the rest. Stops at CHUNK_DONE: bytes after it are not consumed.
# Trailers are consumed only once the whole trailer section is in buf.
cdef Py_ssize_t chunked_feed(ChunkedDecoder *d, const char *buf, Py_ssize_t len, Py_ssize_t *data_off,
                             Py_ssize_t *data_len) noexcept nogil
# Remove from the trailer section sec[0:len] (field lines and the final CRLF, as chunked_feed() reported it,
# parsed into th whose offsets are `base` bytes ahead of sec) every field the parser has an id for, moving
# the others down in place. Returns the new length (the final CRLF included; len itself when none goes).
cdef Py_ssize_t trailers_strip(char *sec, Py_ssize_t len, const Head *th, Py_ssize_t base) noexcept nogil
# Write the chunk-size line for a chunk of `size` bytes ("1a2b\r\n", lowercase hex) to out, which must
# have room for CHUNK_LINE_MAX bytes; returns the bytes written. A body ends with the last chunk and
# the empty line: "0\r\n\r\n" (framing.LAST_CHUNK).
cdef Py_ssize_t chunk_size_line(char *out, unsigned long long size) noexcept nogil

cdef enum:
    CHUNK_LINE_MAX = 18    # 16 hex digits + CRLF, rounded up
