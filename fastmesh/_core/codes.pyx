"""Error codes -> HTTP status, reason phrase and description: the one place a codec error becomes a wire answer."""

# Written by hand for now; the layout plan has tools/gen_tables.py generate this table later.
# Index i of each table describes code -i (codes are negative), index 0 is unused.

cdef int _STATUS[ERR_COUNT]
cdef const char *_DETAIL[ERR_COUNT]


cdef inline void _set(int code, int status, const char *detail) noexcept:
    _STATUS[-code] = status
    _DETAIL[-code] = detail


_set(ERR_BAD_METHOD, 400, b"invalid method")
_set(ERR_BAD_TARGET, 400, b"invalid request target")
_set(ERR_BAD_VERSION, 400, b"malformed HTTP version")
_set(ERR_VERSION_NOT_SUPPORTED, 505, b"only HTTP/1.0 and HTTP/1.1 are supported")
_set(ERR_BAD_STATUS_LINE, 400, b"malformed status line")
_set(ERR_START_LINE_TOO_LONG, 414, b"request line too long")
_set(ERR_BARE_CR, 400, b"CR not followed by LF")
_set(ERR_BARE_LF, 400, b"LF without CR")
_set(ERR_WS_BEFORE_FIRST_FIELD, 400, b"whitespace before the first header line")
_set(ERR_OBS_FOLD, 400, b"obsolete line folding")
_set(ERR_BAD_FIELD_NAME, 400, b"invalid header name")
_set(ERR_WS_BEFORE_COLON, 400, b"whitespace between header name and colon")
_set(ERR_BAD_FIELD_VALUE, 400, b"control character in header value")
_set(ERR_HEADERS_TOO_LARGE, 431, b"header section too large")
_set(ERR_TOO_MANY_HEADERS, 431, b"too many header lines")
_set(ERR_BAD_CONTENT_LENGTH, 400, b"invalid Content-Length")
_set(ERR_CONFLICTING_CONTENT_LENGTH, 400, b"conflicting Content-Length values")
_set(ERR_CONTENT_LENGTH_WITH_TE, 400, b"Content-Length with Transfer-Encoding")
_set(ERR_BAD_TRANSFER_ENCODING, 400, b"malformed Transfer-Encoding")
_set(ERR_CHUNKED_NOT_LAST, 400, b"chunked is not the final transfer coding")
_set(ERR_UNKNOWN_TRANSFER_CODING, 501, b"unsupported transfer coding")
_set(ERR_TE_IN_HTTP10, 400, b"Transfer-Encoding in an HTTP/1.0 message")
_set(ERR_MISSING_HOST, 400, b"missing Host header")
_set(ERR_MULTIPLE_HOST, 400, b"multiple Host headers")
_set(ERR_BAD_HOST, 400, b"invalid Host header")
_set(ERR_BAD_CHUNK_SIZE, 400, b"invalid chunk size")
_set(ERR_CHUNK_SIZE_OVERFLOW, 400, b"chunk size too large")
_set(ERR_BAD_CHUNK_EXTENSION, 400, b"invalid chunk extension")
_set(ERR_CHUNK_LINE_TOO_LONG, 400, b"chunk size line too long")
_set(ERR_BAD_CHUNK_END, 400, b"chunk data not followed by CRLF")
_set(ERR_UNEXPECTED_SWITCH, 502, b"101 Switching Protocols without an Upgrade request")


cdef int error_status(int code) noexcept nogil:
    if code >= 0 or -code >= ERR_COUNT:
        return 500
    return _STATUS[-code]


cdef const char *error_reason(int code) noexcept nogil:
    cdef int status = error_status(code)
    if status == 400:
        return b"Bad Request"
    if status == 414:
        return b"URI Too Long"
    if status == 431:
        return b"Request Header Fields Too Large"
    if status == 501:
        return b"Not Implemented"
    if status == 502:
        return b"Bad Gateway"
    if status == 505:
        return b"HTTP Version Not Supported"
    return b"Internal Server Error"


cdef const char *error_detail(int code) noexcept nogil:
    if code >= 0 or -code >= ERR_COUNT:
        return b"unknown error"
    return _DETAIL[-code]


class HttpParseError(ValueError):
    """A message was rejected: `.status` and `.reason` are the HTTP answer, `.code` the codec's error code."""

    def __init__(self, code: int, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.code = code
        self.status = status
        self.reason = reason
        self.detail = detail


cdef object make_error(int code):
    return HttpParseError(code, error_status(code), error_reason(code).decode("ascii"),
                          error_detail(code).decode("ascii"))


def status_of(int code) -> int:
    """Python view of error_status() for tests and tooling."""
    return error_status(code)


def error_for(int code) -> HttpParseError:
    """Python view of make_error() for tests and tooling."""
    return make_error(code)
