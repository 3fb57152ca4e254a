"""fastmesh/httpwire.py, the Python side's one head parser: valid heads read as h11 reads them, malformed ones are
refused with the status a server answers, body framing and keep-alive follow RFC 9112."""
import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmesh.httpwire import (
    TOKEN, HeadError, RequestHead, body_framing, head_end, parse_request_head, parse_request_line, parse_response_head,
)


def h11_request(data: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return (event.method.decode(), event.target.decode(), f"HTTP/{event.http_version.decode()}",
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()])


def h11_response(data: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
    return (event.status_code, event.reason.decode("latin-1"),
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()])


VALID_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1&z=%20 HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PURGE /cache HTTP/1.1\r\nHost: a\r\nX-Tab:\tvalue with\ttabs \t\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\nSet-Thing: a\r\nset-thing: b\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID_REQUESTS)
def test_valid_requests_read_as_h11_reads_them(data: bytes) -> None:
    head = parse_request_head(data)
    assert (head.method, head.target, head.version, head.headers) == h11_request(data)


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),                          # bare LF line ends
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),              # bare CR inside a line
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),         # obs-fold
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),                   # whitespace before the colon
    (b"GET / HTTP/1.1\r\n: a\r\n\r\n", 400),                        # empty field name
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),                  # NUL in a value
    (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", 400),                  # DEL in a value
    (b"G(T / HTTP/1.1\r\n\r\n", 400),                               # method not a token
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),                            # space in the target
    (b"GET /caf\xe9 HTTP/1.1\r\n\r\n", 400),                        # non-ASCII target
    (b"GET  / HTTP/1.1\r\n\r\n", 400),                              # two spaces
    (b"GET /\r\n\r\n", 400),                                        # HTTP/0.9
    (b"\r\nGET / HTTP/1.1\r\n\r\n", 400),                           # empty line before the request line
    (b"GET / HTCPCP/1.0\r\n\r\n", 400),                             # not HTTP
    (b"GET / http/1.1\r\n\r\n", 400),                               # versions are case-sensitive
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 400),                        # no empty line at the end
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
])
def test_malformed_requests_are_refused_with_their_status(data: bytes, status: int) -> None:
    with pytest.raises(HeadError) as info:
        parse_request_head(data)
    assert info.value.status == status and str(info.value)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n: a\r\n\r\n",
])
def test_h11_refuses_them_too(data: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def test_bare_lf_only_when_asked_and_field_limit() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\nHost: a\r\nX: b\n\n", lf_ok=True)
    assert (head.method, head.headers) == ("GET", [("Host", "a"), ("X", "b")])
    with pytest.raises(HeadError):
        parse_request_head(b"GET / HTTP/1.1\nHost: a\rb\n\n", lf_ok=True)      # a CR not before LF still fails
    many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 150 + b"\r\n"
    assert len(parse_request_head(many, max_fields=None).headers) == 150
    with pytest.raises(HeadError):
        parse_request_head(many, max_fields=149)


def test_request_line_alone() -> None:
    assert parse_request_line(b"DELETE /a?b HTTP/1.0") == ("DELETE", "/a?b", "HTTP/1.0")
    for line in (b"hello", b"HELLO there", b"\x16\x03\x01\x00", b"GET / HTTP/1.1\r"):
        with pytest.raises(HeadError):
            parse_request_line(line)


def test_head_end() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"
    assert head_end(data) == len(data) - 4
    assert head_end(data, 5) == len(data) - 4 and head_end(data[:-6]) == -1
    assert head_end(b"GET / HTTP/1.1\nHost: a\n\nrest") == -1
    assert head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", lf_ok=True) == 24
    assert head_end(bytearray(b"GET / HTTP/1.1\r\n\nrest"), lf_ok=True) == 17


def _head(*fields: str, version: str = "HTTP/1.1") -> RequestHead:
    return parse_request_head(f"POST / {version}\r\n{''.join(f + chr(13) + chr(10) for f in fields)}\r\n".encode())


@pytest.mark.parametrize("fields, framing", [
    ((), (False, 0)),
    (("Content-Length: 0",), (False, 0)),
    (("Content-Length: 12",), (False, 12)),
    (("Content-Length: 3, 3", "content-length: 3"), (False, 3)),     # the same value repeated is one length
    (("Transfer-Encoding: chunked",), (True, 0)),
    (("Transfer-Encoding: Chunked",), (True, 0)),
])
def test_body_framing(fields: tuple[str, ...], framing: tuple[bool, int]) -> None:
    assert body_framing(_head(*fields)) == framing


@pytest.mark.parametrize("fields, status", [
    (("Content-Length: 3", "Content-Length: 4"), 400),
    (("Content-Length: 3, 4",), 400),
    (("Content-Length: -3",), 400),
    (("Content-Length: +3",), 400),
    (("Content-Length: 0x10",), 400),
    (("Content-Length: 1234567890123456789",), 400),
    (("Content-Length: 3", "Transfer-Encoding: chunked"), 400),
    (("Transfer-Encoding: gzip",), 501),
    (("Transfer-Encoding: gzip, chunked",), 501),
    (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 501),
])
def test_ambiguous_framing_is_refused(fields: tuple[str, ...], status: int) -> None:
    with pytest.raises(HeadError) as info:
        body_framing(_head(*fields))
    assert info.value.status == status


@pytest.mark.parametrize("version, connection, keep", [
    ("HTTP/1.1", None, True), ("HTTP/1.1", "close", False), ("HTTP/1.1", "Upgrade, Close", False),
    ("HTTP/1.0", None, False), ("HTTP/1.0", "Keep-Alive", True), ("HTTP/1.0", "close", False),
])
def test_keep_alive(version: str, connection: str | None, keep: bool) -> None:
    fields = (f"Connection: {connection}",) if connection else ()
    head = _head(*fields, version=version)
    assert head.keep_alive is keep
    assert head.header("connection") == connection and head.header("CONNECTION") == connection


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    b"HTTP/1.1 404 \r\n\r\n",                                           # an empty reason
    b"HTTP/1.1 503\r\nRetry-After: 1\r\n\r\n",                          # no reason at all
    b"HTTP/1.0 302 Found It, Here\r\nLocation: /x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
])
def test_valid_responses_read_as_h11_reads_them(data: bytes) -> None:
    head = parse_response_head(data)
    assert (head.status, head.reason, head.headers) == h11_response(data)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 099 x\r\n\r\n", b"HTTP/1.1 600 x\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n", b"FOO 200 OK\r\n\r\n", b"HTTP/1.1  200 OK\r\n\r\n", b"HTTP/1.1 200 OK\n\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n\r\n",
])
def test_malformed_responses_are_refused(data: bytes) -> None:
    with pytest.raises(HeadError) as info:
        parse_response_head(data)
    assert info.value.status == 502


_names = st.text(alphabet=sorted(chr(c) for c in TOKEN), min_size=1, max_size=20)
_values = st.text(alphabet=[chr(c) for c in [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]], max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_names, _values), max_size=20))
def test_any_valid_fields_read_back_as_h11_reads_them(fields: list[tuple[str, str]]) -> None:
    data = ("GET / HTTP/1.1\r\n" + "".join(f"{n}:{v}\r\n" for n, v in fields) + "\r\n").encode("latin-1")
    head = parse_request_head(data)
    assert head.headers == [(n, v.strip(" \t")) for n, v in fields]
    if not any(n.lower() in ("content-length", "transfer-encoding", "host") for n, _ in fields):
        assert head.headers == h11_request(data.replace(b"\r\n\r\n", b"\r\nHost: a\r\n\r\n", 1))[3][:-1]
