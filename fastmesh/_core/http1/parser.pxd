# HTTP/1.1 message head parser: C-level declarations (Head, Limits, byte classes) other modules cimport.
#
# The parser is sans-IO and zero-copy: it reads a buffer and fills a Head with offsets into that buffer.
# Offsets are uint32: Limits keep every head far below 4 GiB, and half-size entries keep a Head (~2 KiB)
# in a few cache lines.

from libc.stdint cimport uint32_t
# Method ids and the field struct are the request view's (request.pxd): the parser fills them in place.
from fastmesh._core.request cimport (  # no-cython-lint (re-exported to the parser's users)
    Field, Method, METHOD_OTHER, METHOD_GET, METHOD_HEAD, METHOD_POST, METHOD_PUT, METHOD_DELETE, METHOD_CONNECT,
    METHOD_OPTIONS, METHOD_TRACE, METHOD_PATCH, method_id,
)

cdef enum:
    # Capacity of Head.headers; Limits.max_headers may only lower it.
    HEAD_MAX_FIELDS = 100

cdef enum TargetForm:
    TARGET_ORIGIN = 0     # "/path?query"
    TARGET_ABSOLUTE = 1   # "scheme://authority/path" (what clients send to a forward proxy)
    TARGET_AUTHORITY = 2  # "host:port", CONNECT only
    TARGET_ASTERISK = 3   # "*", OPTIONS only

cdef enum FieldId:
    # Names the codec recognises while parsing; bit (1 << id) of Head.seen is set for each one present.
    FIELD_OTHER = 0
    FIELD_HOST = 1
    FIELD_CONTENT_LENGTH = 2
    FIELD_TRANSFER_ENCODING = 3
    FIELD_CONNECTION = 4
    FIELD_KEEP_ALIVE = 5
    FIELD_PROXY_CONNECTION = 6
    FIELD_TE = 7
    FIELD_TRAILER = 8
    FIELD_UPGRADE = 9
    FIELD_EXPECT = 10
    FIELD_PROXY_AUTHENTICATE = 11
    FIELD_PROXY_AUTHORIZATION = 12
    FIELD_HTTP2_SETTINGS = 13     # only meaningful with Upgrade: h2c, which a proxy never forwards
    # fastmesh-client-identity: only noted in Head.seen; the field keeps FIELD_OTHER as its id and is forwarded or
    # removed like any other (the exchange decides)
    FIELD_CLIENT_IDENTITY = 14

cdef enum CharClass:
    # Bits of CHAR_CLASS[byte]; each set is written out from its RFC 9110/9112/3986 grammar.
    CC_TCHAR = 1          # tchar: method and field-name bytes
    CC_FIELD = 2          # VCHAR / obs-text / SP / HTAB: field values, reason phrase, chunk extensions
    CC_TARGET = 4         # VCHAR / obs-text: request-target bytes (no SP, no CTL)
    CC_HEX = 8            # HEXDIG: chunk sizes
    CC_DIGIT = 16         # DIGIT: Content-Length, status code
    CC_HOST = 32          # uri-host / port bytes: unreserved, sub-delims, ":", "[", "]", "%"
    CC_WS = 64            # SP / HTAB (OWS)

cdef extern from *:
    """
    /* Byte classes for the HTTP/1 parser: bit set of CC_* per byte value (see parser.pxd). Every
       module that cimports parser.pxd gets a copy; the attribute keeps the ones that never read it quiet. */
    #if defined(__GNUC__)
    __attribute__((unused))
    #endif
    static const unsigned char fm_http1_char_class[256] = {
          0,  0,  0,  0,  0,  0,  0,  0,  0, 66,  0,  0,  0,  0,  0,  0,  /* 0x00 */
          0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 0x10 */
         66, 39,  6,  7, 39, 39, 39, 39, 38, 38, 39, 39, 38, 39, 39,  6,  /* 0x20 */
         63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 38, 38,  6, 38,  6,  6,  /* 0x30 */
          6, 47, 47, 47, 47, 47, 47, 39, 39, 39, 39, 39, 39, 39, 39, 39,  /* 0x40 */
         39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 38,  6, 38,  7, 39,  /* 0x50 */
          7, 47, 47, 47, 47, 47, 47, 39, 39, 39, 39, 39, 39, 39, 39, 39,  /* 0x60 */
         39, 39, 39, 39, 39, 39, 39, 39, 39, 39, 39,  6,  7,  6, 39,  0,  /* 0x70 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0x80 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0x90 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xA0 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xB0 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xC0 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xD0 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xE0 */
          6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0xF0 */
    };
    """
    # One 256-byte table for every byte class, so a scan loop touches a single cache-resident array.
    const unsigned char CHAR_CLASS "fm_http1_char_class"[256]

ctypedef struct Limits:
    Py_ssize_t max_start_line    # bytes of the request/status line incl. CRLF (and skipped empty lines); 414
    Py_ssize_t max_header_bytes  # bytes of the field section incl. the final empty line; 431
    int max_headers              # field lines allowed, 1..HEAD_MAX_FIELDS; 431 beyond
    Py_ssize_t max_chunk_line    # bytes of one chunk-size line incl. extensions and CRLF; 400 beyond

# One field line: name and value offsets, FieldId (request.pxd's Field, so a Head's fields are a view's).
ctypedef Field HeaderField

ctypedef struct Head:
    int method                   # Method id (requests); METHOD_OTHER means "read method_off/len"
    uint32_t method_off          # offset of the method token (after any skipped empty lines)
    uint32_t method_len          # length of the method token
    uint32_t target_off          # offset of the request target
    uint32_t target_len          # length of the request target
    int target_form              # TargetForm of the request target
    int minor_version            # 0 for HTTP/1.0, 1 for HTTP/1.1 (the only versions accepted)
    int status                   # response status code 100..599; 0 for requests
    uint32_t reason_off          # offset of the reason phrase (responses; may be empty)
    uint32_t reason_len          # length of the reason phrase
    long long content_length     # Content-Length value, -1 when absent
    unsigned char cl_repeated    # 1 when identical Content-Length lines were merged into one value
    unsigned char te_present     # 1 when a Transfer-Encoding line is present
    unsigned char chunked        # 1 when the final transfer coding is chunked
    unsigned char te_other       # 1 when a transfer coding other than chunked is listed
    unsigned char te_chunked_not_last  # 1 when chunked is followed by another coding
    unsigned char conn_close     # Connection lists "close"
    unsigned char conn_keep_alive  # Connection lists "keep-alive"
    unsigned char conn_upgrade   # Connection lists "upgrade"
    # Connection lists an element other than "keep-alive" and "upgrade" (which name fields that are dropped by id
    # anyway): only then can it name a further field to drop, so only then do renderers collect its tokens
    unsigned char conn_names
    unsigned char upgrade        # an Upgrade line is present
    unsigned char upgrade_h2c    # an Upgrade line lists "h2c" (cleartext HTTP/2: never forwarded)
    unsigned char expect_continue  # Expect is "100-continue"
    int host_index               # index in headers[] of the Host line, -1 when absent
    uint32_t seen                # bit (1 << FieldId) for each recognised field present (hop-by-hop checks)
    int num_headers              # entries used in headers[]
    HeaderField headers[HEAD_MAX_FIELDS]  # field lines in wire order

# Defaults: 8 KiB start line, 64 KiB field section, 100 field lines, 4 KiB chunk-size line.
cdef inline void limits_init(Limits *lim) noexcept nogil:
    lim.max_start_line = 8192
    lim.max_header_bytes = 65536
    lim.max_headers = HEAD_MAX_FIELDS
    lim.max_chunk_line = 4096

# Clear the facts of a Head before parse_fields() fills it (parse_request/parse_response do this).
cdef inline void head_reset(Head *h) noexcept nogil:
    h.method = METHOD_OTHER
    h.method_off = 0
    h.method_len = 0
    h.target_off = 0
    h.target_len = 0
    h.target_form = TARGET_ORIGIN
    h.minor_version = 0
    h.status = 0
    h.reason_off = 0
    h.reason_len = 0
    h.content_length = -1
    h.cl_repeated = 0
    h.te_present = 0
    h.chunked = 0
    h.te_other = 0
    h.te_chunked_not_last = 0
    h.conn_close = 0
    h.conn_keep_alive = 0
    h.conn_upgrade = 0
    h.conn_names = 0
    h.upgrade = 0
    h.upgrade_h2c = 0
    h.expect_continue = 0
    h.host_index = -1
    h.seen = 0
    h.num_headers = 0

# Parse a request head at buf[0:len]. Returns the head length (> 0, start line through the empty line),
# 0 when more bytes are needed and nothing is wrong so far, or a negative ERR_* from codes.pxd.
# lim may be NULL for the defaults. On success every offset in h is relative to buf.
cdef Py_ssize_t parse_request(const char *buf, Py_ssize_t len, Head *h, const Limits *lim) noexcept nogil
# Same for a response head (status line, no Host rule, Transfer-Encoding rules for responses).
cdef Py_ssize_t parse_response(const char *buf, Py_ssize_t len, Head *h, const Limits *lim) noexcept nogil
# Parse field lines from buf[pos] through the empty line into h (which head_reset() cleared, or which
# holds the fields so far). Returns the index just past the empty line, 0 for more, or ERR_*.
# lim must not be NULL here. Offsets are relative to buf, which must be shorter than 4 GiB.
# Used for head field sections and for chunked trailers (same rules, same limits).
cdef Py_ssize_t parse_fields(const char *buf, Py_ssize_t pos, Py_ssize_t len, Head *h,
                             const Limits *lim) noexcept nogil
# Hint for callers that buffer a partial head: index just past the first CRLFCRLF at or after
# start - 3 (so a boundary split between reads is found), or -1. parse_request() remains the judge.
cdef Py_ssize_t find_head_end(const char *buf, Py_ssize_t len, Py_ssize_t start) noexcept nogil
