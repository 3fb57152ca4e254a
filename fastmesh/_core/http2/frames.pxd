# HTTP/2 frames (RFC 9113 4, 6): type, flag, error and setting numbers; the 9-byte header read inline; writers
# that append whole frames to an OutBuf (no object per frame).

from libc.stdint cimport uint8_t, uint32_t
from fastmesh._core.buffer cimport OutBuf

cdef enum:
    FRAME_HEADER_LEN = 9           # length(24) type(8) flags(8) R+stream id(32)
    # Frame types (RFC 9113 6); any other type is an extension frame and is ignored.
    FT_DATA = 0x0
    FT_HEADERS = 0x1
    FT_PRIORITY = 0x2
    FT_RST_STREAM = 0x3
    FT_SETTINGS = 0x4
    FT_PUSH_PROMISE = 0x5
    FT_PING = 0x6
    FT_GOAWAY = 0x7
    FT_WINDOW_UPDATE = 0x8
    FT_CONTINUATION = 0x9
    # Flags.
    FLAG_END_STREAM = 0x1          # DATA, HEADERS
    FLAG_ACK = 0x1                 # SETTINGS, PING
    FLAG_END_HEADERS = 0x4         # HEADERS, PUSH_PROMISE, CONTINUATION
    FLAG_PADDED = 0x8              # DATA, HEADERS, PUSH_PROMISE
    FLAG_PRIORITY = 0x20           # HEADERS

cdef enum H2Error:
    # Error codes of RST_STREAM and GOAWAY (RFC 9113 7).
    H2_NO_ERROR = 0x0
    H2_PROTOCOL_ERROR = 0x1
    H2_INTERNAL_ERROR = 0x2
    H2_FLOW_CONTROL_ERROR = 0x3
    H2_SETTINGS_TIMEOUT = 0x4
    H2_STREAM_CLOSED = 0x5
    H2_FRAME_SIZE_ERROR = 0x6
    H2_REFUSED_STREAM = 0x7
    H2_CANCEL = 0x8
    H2_COMPRESSION_ERROR = 0x9
    H2_CONNECT_ERROR = 0xa
    H2_ENHANCE_YOUR_CALM = 0xb
    H2_INADEQUATE_SECURITY = 0xc
    H2_HTTP_1_1_REQUIRED = 0xd

cdef enum:
    # SETTINGS identifiers (RFC 9113 6.5.2); unknown ones are ignored.
    SET_HEADER_TABLE_SIZE = 0x1
    SET_ENABLE_PUSH = 0x2
    SET_MAX_CONCURRENT_STREAMS = 0x3
    SET_INITIAL_WINDOW_SIZE = 0x4
    SET_MAX_FRAME_SIZE = 0x5
    SET_MAX_HEADER_LIST_SIZE = 0x6
    SET_ENABLE_CONNECT_PROTOCOL = 0x8
    # Protocol bounds.
    DEFAULT_WINDOW = 65535         # initial stream and connection window before SETTINGS
    DEFAULT_MAX_FRAME = 16384      # SETTINGS_MAX_FRAME_SIZE's initial value and lower bound
    MAX_MAX_FRAME = 16777215       # SETTINGS_MAX_FRAME_SIZE's upper bound (2^24-1)
    MAX_WINDOW = 2147483647        # a flow-control window may not pass 2^31-1
    PREFACE_LEN = 24               # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

ctypedef struct FrameHeader:
    # One frame's 9-byte header, decoded.
    uint32_t length                # payload length (24 bits)
    uint8_t type                   # FT_* (or an unknown extension type)
    uint8_t flags                  # FLAG_* bits
    uint32_t stream                # stream id, reserved bit cleared


cdef inline void read_header(const unsigned char *p, FrameHeader *h) noexcept nogil:
    h.length = (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
    h.type = p[3]
    h.flags = p[4]
    h.stream = ((<uint32_t>p[5] & 0x7f) << 24) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 8) | p[8]


cdef inline uint32_t read_u32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void put_header(char *p, uint32_t length, uint8_t ftype, uint8_t flags, uint32_t stream) noexcept nogil:
    p[0] = <char>((length >> 16) & 0xff)
    p[1] = <char>((length >> 8) & 0xff)
    p[2] = <char>(length & 0xff)
    p[3] = <char>ftype
    p[4] = <char>flags
    p[5] = <char>((stream >> 24) & 0x7f)
    p[6] = <char>((stream >> 16) & 0xff)
    p[7] = <char>((stream >> 8) & 0xff)
    p[8] = <char>(stream & 0xff)


cdef inline void put_u32(char *p, uint32_t v) noexcept nogil:
    p[0] = <char>((v >> 24) & 0xff)
    p[1] = <char>((v >> 16) & 0xff)
    p[2] = <char>((v >> 8) & 0xff)
    p[3] = <char>(v & 0xff)


# Writers: each appends one whole frame to o and returns 0, or -1 when memory ran out (o unchanged).
cdef int write_frame(OutBuf *o, uint8_t ftype, uint8_t flags, uint32_t stream, const char *payload,
                     Py_ssize_t n) noexcept
cdef int write_data(OutBuf *o, uint32_t stream, const char *data, Py_ssize_t n, bint end_stream) noexcept
cdef int write_settings(OutBuf *o, const uint32_t *ids, const uint32_t *values, int n) noexcept
cdef int write_settings_ack(OutBuf *o) noexcept
cdef int write_ping(OutBuf *o, const char *opaque, bint ack) noexcept
cdef int write_rst(OutBuf *o, uint32_t stream, uint32_t code) noexcept
cdef int write_goaway(OutBuf *o, uint32_t last_stream, uint32_t code, const char *debug, Py_ssize_t n) noexcept
cdef int write_window_update(OutBuf *o, uint32_t stream, uint32_t increment) noexcept
# A header block: HEADERS with the first max_frame bytes, CONTINUATION frames with the rest.
cdef int write_headers(OutBuf *o, uint32_t stream, const char *block, Py_ssize_t n, bint end_stream,
                       Py_ssize_t max_frame) noexcept
# Remove padding (and HEADERS' priority fields) from a payload in place: *p and *n are moved to the content.
# Returns 0, or -1 when the pad length / priority fields do not fit the frame (PROTOCOL_ERROR / FRAME_SIZE_ERROR).
cdef int strip_padding(const unsigned char **p, Py_ssize_t *n, uint8_t flags, bint headers) noexcept
