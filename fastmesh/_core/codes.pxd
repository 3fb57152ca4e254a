# Error codes of the compiled codecs and the wire answer each one maps to (the mapping lives in codes.pyx only).
#
# Parse functions return a byte count (> 0), 0 for "need more bytes", or one of these negative codes, so a
# single Py_ssize_t carries every outcome and the hot path never raises.

cdef enum HttpError:
    # --- start line -------------------------------------------------------------------------------
    ERR_BAD_METHOD = -1                # method is empty or holds a non-tchar byte (400)
    ERR_BAD_TARGET = -2                # request target empty, has SP/CTL, or is not a valid form (400)
    ERR_BAD_VERSION = -3               # version is not exactly "HTTP/" DIGIT "." DIGIT (400)
    ERR_VERSION_NOT_SUPPORTED = -4     # well-formed version other than HTTP/1.0 or HTTP/1.1 (505)
    ERR_BAD_STATUS_LINE = -5           # response status line malformed or status outside 100..599 (400)
    ERR_START_LINE_TOO_LONG = -6       # request/status line longer than Limits.max_start_line (414)
    # --- line endings and field syntax -------------------------------------------------------------
    ERR_BARE_CR = -7                   # CR not followed by LF (400)
    ERR_BARE_LF = -8                   # LF not preceded by CR (400)
    ERR_WS_BEFORE_FIRST_FIELD = -9     # whitespace-led line right after the start line (400)
    ERR_OBS_FOLD = -10                 # obsolete line folding (continuation line) (400)
    ERR_BAD_FIELD_NAME = -11           # empty field name, non-tchar byte in it, or no colon (400)
    ERR_WS_BEFORE_COLON = -12          # whitespace between field name and colon (400)
    ERR_BAD_FIELD_VALUE = -13          # NUL or other control byte (not HTAB) in a field value (400)
    ERR_HEADERS_TOO_LARGE = -14        # field section longer than Limits.max_header_bytes (431)
    ERR_TOO_MANY_HEADERS = -15         # more field lines than Limits.max_headers (431)
    # --- framing (request smuggling) ---------------------------------------------------------------
    ERR_BAD_CONTENT_LENGTH = -16       # Content-Length not 1*DIGIT, or too large (400)
    ERR_CONFLICTING_CONTENT_LENGTH = -17   # two Content-Length lines with different values (400)
    ERR_CONTENT_LENGTH_WITH_TE = -18   # Content-Length and Transfer-Encoding together (400)
    ERR_BAD_TRANSFER_ENCODING = -19    # Transfer-Encoding empty or an element is not a token (400)
    ERR_CHUNKED_NOT_LAST = -20         # "chunked" present but not the single final coding (400)
    ERR_UNKNOWN_TRANSFER_CODING = -21  # request coding other than chunked (we implement only chunked) (501)
    ERR_TE_IN_HTTP10 = -22             # Transfer-Encoding in an HTTP/1.0 message: framing is faulty (400)
    ERR_MISSING_HOST = -23             # HTTP/1.1 request without Host (400)
    ERR_MULTIPLE_HOST = -24            # more than one Host line (400)
    ERR_BAD_HOST = -25                 # Host value with bytes outside the uri-host/port alphabet (400)
    # --- chunked body ------------------------------------------------------------------------------
    ERR_BAD_CHUNK_SIZE = -26           # chunk size missing or not hex, or junk after it (400)
    ERR_CHUNK_SIZE_OVERFLOW = -27      # chunk size does not fit in 63 bits (400)
    ERR_BAD_CHUNK_EXTENSION = -28      # control byte inside a chunk extension (400)
    ERR_CHUNK_LINE_TOO_LONG = -29      # chunk size line (with extensions) over Limits.max_chunk_line (400)
    ERR_BAD_CHUNK_END = -30            # chunk data not followed by CRLF (400)
    # --- response framing --------------------------------------------------------------------------
    ERR_UNEXPECTED_SWITCH = -31        # 101 Switching Protocols to a request that asked for no upgrade (502)

cdef enum:
    # One past the most negative code: the tables in codes.pyx are sized by it.
    ERR_COUNT = 32

# HTTP status to answer a peer whose *request* failed with `code` (400, 414, 431, 501 or 505; 502 for
# the response-only codes). A failed *response* from an upstream is answered 502 whatever the code.
cdef int error_status(int code) noexcept nogil
# Standard reason phrase for error_status(code), e.g. b"Request Header Fields Too Large" (static storage).
cdef const char *error_reason(int code) noexcept nogil
# Short human description of the code for logs, e.g. b"Content-Length with Transfer-Encoding" (static storage).
cdef const char *error_detail(int code) noexcept nogil
# A Python HttpParseError for `code` (used by the Python wrappers and the connection layer's error path).
cdef object make_error(int code)
