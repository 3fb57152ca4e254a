"""HTTP/1.x heads on the Python side: the one parser of request and response heads that the admin server, the demo
backends, the active health checker and the test backends share.

Control-plane code, not the data path (that is _core/http1/parser.pyx): pure Python, bytes in and a head out, no
sockets. Strict where a lax reader lets requests be smuggled or misread: lines end in CRLF (a bare LF only when
the caller asks, for people typing into nc), method and field names are tokens, no whitespace before a colon, no
obs-fold, no control characters in a target or a value, and one body framing (conflicting or malformed
Content-Length, or Content-Length beside Transfer-Encoding, is refused). Every error carries the status a server
answers it with.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
TARGET = frozenset(range(0x21, 0x7F))                                    # visible ASCII: no space, no control
FIELD_VALUE = frozenset([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])  # HTAB, SP, VCHAR, obs-text
MAX_FIELDS = 100            # header fields per head by default; more is refused with 431 (502 in a response)
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([1-5][0-9][0-9])(?: (.*))?", re.DOTALL)
_LF_END = re.compile(rb"\r?\n\r?\n")


class HeadError(ValueError):
    """A head that cannot be read as HTTP/1.x; status is what a server answers (502 for a response head)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Fields:
    """Lookups over `headers`: (name, value) pairs in arrival order, names as spelled on the wire."""
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of field `name` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        """Every value of field `name` (case-insensitive), in order."""
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` field, lower case (Connection, Upgrade, Expect...)."""
        return {t.strip().lower() for v in self.header_all(name) for t in v.split(",") if t.strip()}


@dataclass
class RequestHead(_Fields):
    """A request line and its header fields (values decoded as Latin-1, their surrounding whitespace dropped)."""
    method: str
    target: str
    version: str                        # "HTTP/1.0" or "HTTP/1.1"
    headers: list[tuple[str, str]]

    @property
    def keep_alive(self) -> bool:
        """Whether the client keeps the connection open after this exchange (HTTP/1.0 only when it asks)."""
        tokens = self.tokens("connection")
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


@dataclass
class ResponseHead(_Fields):
    """A status line and its header fields."""
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]


def head_end(data: bytes | bytearray, start: int = 0, *, lf_ok: bool = False) -> int:
    """The offset just past the empty line that ends the head in data (searching from start); -1 if not there yet."""
    if not lf_ok:
        i = data.find(b"\r\n\r\n", start)
        return i + 4 if i >= 0 else -1
    m = _LF_END.search(data, start)
    return m.end() if m is not None else -1


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of a request line without its line end; HeadError 400, or 505 for HTTP/x.y."""
    parts = line.split(b" ")
    if (len(parts) != 3 or not parts[0] or not parts[1] or not TOKEN.issuperset(parts[0])
            or not TARGET.issuperset(parts[1])):
        raise HeadError(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if _VERSION.fullmatch(version):
            raise HeadError(505, f"{version.decode()} is not supported; use HTTP/1.1")
        raise HeadError(400, "malformed request line")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def parse_request_head(data: bytes, *, lf_ok: bool = False, max_fields: int | None = MAX_FIELDS) -> RequestHead:
    """A request head, its ending empty line included (as head_end() finds it); HeadError if malformed."""
    lines = _lines(data, lf_ok, 400)
    method, target, version = parse_request_line(lines[0])
    return RequestHead(method, target, version, _fields(lines[1:], 400, max_fields))


def parse_response_head(data: bytes, *, max_fields: int | None = MAX_FIELDS) -> ResponseHead:
    """A response head, its ending empty line included; HeadError (status 502) if malformed."""
    lines = _lines(data, False, 502)
    m = _STATUS_LINE.fullmatch(lines[0])
    reason = (m[3] or b"") if m is not None else b""
    if m is None or not FIELD_VALUE.issuperset(reason):
        raise HeadError(502, f"malformed status line {lines[0][:60]!r}")
    fields = _fields(lines[1:], 502, max_fields)
    return ResponseHead(m[1].decode("ascii"), int(m[2]), reason.decode("latin-1"), fields)


def body_framing(head: RequestHead) -> tuple[bool, int]:
    """(chunked, content_length) of the request's body: (False, 0) when it has none. HeadError 400 for framing
    that two readers could take differently, 501 for a transfer coding other than chunked."""
    te = head.header_all("transfer-encoding")
    cl = head.header_all("content-length")
    if te:
        if cl:
            raise HeadError(400, "both Content-Length and Transfer-Encoding")
        if [t.strip().lower() for v in te for t in v.split(",")] != ["chunked"]:
            raise HeadError(501, "only Transfer-Encoding: chunked is understood")
        return True, 0
    if not cl:
        return False, 0
    values = {v.strip(" \t") for item in cl for v in item.split(",")}
    if len(values) != 1:
        raise HeadError(400, "conflicting Content-Length")
    value = values.pop()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise HeadError(400, f"bad Content-Length {value[:20]!r}")
    return False, int(value)


def _lines(data: bytes, lf_ok: bool, status: int) -> list[bytes]:
    """The head's lines without their ends or the final empty line."""
    if lf_ok:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    else:
        lines = data.split(b"\r\n")
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise HeadError(status, "the head does not end with an empty line")
    del lines[-2:]
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise HeadError(status, "bare CR or LF in the head")
    return lines


def _fields(lines: list[bytes], status: int, max_fields: int | None) -> list[tuple[str, str]]:
    if max_fields is not None and len(lines) > max_fields:
        raise HeadError(431 if status == 400 else status, f"more than {max_fields} header fields")
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        # A name must be a token: this refuses whitespace before the colon and obs-fold continuation lines.
        if not colon or not name or not TOKEN.issuperset(name):
            raise HeadError(status, f"malformed header line {line[:60]!r}")
        value = value.strip(b" \t")
        if not FIELD_VALUE.issuperset(value):
            raise HeadError(status, f"control character in header {name.decode('latin-1')!r}")
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
    return fields
