"""HTTP/1 body framing (fastmesh._core.http1.framing): body-length decisions, chunked decoder, chunk encoder."""
import pytest

from fastmesh._core.http1.framing import (
    LAST_CHUNK,
    ChunkedReader,
    encode_chunk_size,
    request_framing,
    response_framing,
)
from fastmesh._core.http1.parser import HttpParseError


def head(start: bytes, *lines: bytes) -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def decode(data: bytes, **limits):
    r = ChunkedReader(**limits)
    body = b"".join(r.feed(data))
    return body, r


def decode_error(data: bytes, **limits) -> HttpParseError:
    with pytest.raises(HttpParseError) as info:
        decode(data, **limits)
    return info.value


# ---- request framing (RFC 9112 section 6.3) ----

@pytest.mark.parametrize("lines,expected", [
    ((b"Host: a",), ("none", 0, True)),
    ((b"Host: a", b"Content-Length: 0"), ("none", 0, True)),
    ((b"Host: a", b"Content-Length: 42"), ("length", 42, True)),
    ((b"Host: a", b"Transfer-Encoding: chunked"), ("chunked", -1, True)),
    ((b"Host: a", b"Connection: close"), ("none", 0, False)),
])
def test_request_framing(lines, expected):
    assert request_framing(head(b"POST / HTTP/1.1", *lines)) == expected


def test_request_framing_http10_keep_alive():
    assert request_framing(head(b"GET / HTTP/1.0")) == ("none", 0, False)
    assert request_framing(head(b"GET / HTTP/1.0", b"Connection: keep-alive")) == ("none", 0, True)


def test_request_framing_rejects_what_the_parser_rejects():
    with pytest.raises(HttpParseError) as info:
        request_framing(head(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip"))
    assert info.value.status == 501


# ---- response framing ----

@pytest.mark.parametrize("status,lines,method,expected", [
    (b"200 OK", (b"Content-Length: 5",), b"GET", ("length", 5, True)),
    (b"200 OK", (b"Content-Length: 0",), b"GET", ("none", 0, True)),
    (b"200 OK", (b"Transfer-Encoding: chunked",), b"GET", ("chunked", -1, True)),
    (b"200 OK", (), b"GET", ("until-close", -1, False)),
    (b"200 OK", (b"Transfer-Encoding: gzip",), b"GET", ("until-close", -1, False)),
    (b"200 OK", (b"Transfer-Encoding: chunked, gzip",), b"GET", ("until-close", -1, False)),
    (b"200 OK", (b"Transfer-Encoding: gzip, chunked",), b"GET", ("chunked", -1, True)),
    (b"200 OK", (b"Content-Length: 5",), b"HEAD", ("none", 0, True)),
    (b"200 OK", (b"Transfer-Encoding: chunked",), b"HEAD", ("none", 0, True)),
    (b"204 No Content", (), b"GET", ("none", 0, True)),
    (b"304 Not Modified", (b"Content-Length: 100",), b"GET", ("none", 0, True)),
    (b"100 Continue", (), b"POST", ("none", 0, True)),
    (b"103 Early Hints", (b"Link: </a>",), b"GET", ("none", 0, True)),
    (b"200 Connection established", (), b"CONNECT", ("tunnel", -1, False)),
    (b"407 Proxy Auth", (b"Content-Length: 3",), b"CONNECT", ("length", 3, True)),
    (b"200 OK", (b"Content-Length: 5", b"Connection: close"), b"GET", ("length", 5, False)),
])
def test_response_framing(status, lines, method, expected):
    assert response_framing(head(b"HTTP/1.1 " + status, *lines), method) == expected


def test_response_framing_http10():
    assert response_framing(head(b"HTTP/1.0 200 OK", b"Content-Length: 2")) == ("length", 2, False)
    assert response_framing(head(b"HTTP/1.0 200 OK", b"Content-Length: 2", b"Connection: keep-alive")
                            ) == ("length", 2, True)


def test_switching_protocols_only_when_asked():
    data = head(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: upgrade")
    assert response_framing(data, b"GET", True) == ("tunnel", -1, False)
    with pytest.raises(HttpParseError) as info:
        response_framing(data, b"GET", False)
    assert info.value.status == 502


# ---- chunked decoder ----

BODY = (b"5\r\nhello\r\n"
        b"1A;name=value;quoted=\"a b\"\r\n" + b"z" * 26 + b"\r\n"
        b"000001\r\n!\r\n"
        b"0\r\n"
        b"X-Checksum: abc\r\n"
        b"X-Empty:\r\n"
        b"\r\n")
PAYLOAD = b"hello" + b"z" * 26 + b"!"


def test_decode_whole_body_with_extensions_and_trailers():
    body, r = decode(BODY + b"GET / HTTP/1.1\r\n")
    assert body == PAYLOAD and r.done and r.body_bytes == len(PAYLOAD)
    assert r.trailers == [(b"X-Checksum", b"abc"), (b"X-Empty", b"")]
    assert r.unused == b"GET / HTTP/1.1\r\n"  # the next message is not consumed


def test_decode_without_trailers():
    body, r = decode(b"3\r\nabc\r\n0\r\n\r\n")
    assert body == b"abc" and r.done and r.trailers == []


def test_uppercase_and_leading_zero_sizes():
    assert decode(b"00A\r\n0123456789\r\n0\r\n\r\n")[0] == b"0123456789"


@pytest.mark.parametrize("split", range(len(BODY) + 1))
def test_split_at_every_byte_same_result(split):
    r = ChunkedReader()
    body = b"".join(r.feed(BODY[:split]) + r.feed(BODY[split:]))
    assert body == PAYLOAD and r.done
    assert r.trailers == [(b"X-Checksum", b"abc"), (b"X-Empty", b"")]


def test_byte_at_a_time():
    r = ChunkedReader()
    body = b"".join(piece for i in range(len(BODY)) for piece in r.feed(BODY[i:i + 1]))
    assert body == PAYLOAD and r.done and r.unused == b""


def test_raw_feed_returns_one_span_per_step_and_keeps_partial_trailers():
    r = ChunkedReader()
    consumed, pieces = r.feed_raw(b"2\r\nab\r\n3\r\ncde\r\n0\r\nX-T: 1\r\n")
    assert pieces == [b"ab", b"cde"]
    # The partial trailer section stays unconsumed until its end arrives.
    assert consumed == len(b"2\r\nab\r\n3\r\ncde\r\n0\r\n") and not r.done


def test_raw_feed_stops_at_end_of_body():
    r = ChunkedReader()
    data = b"1\r\na\r\n0\r\n\r\nNEXT"
    consumed, pieces = r.feed_raw(data)
    assert (consumed, pieces, r.done) == (len(data) - 4, [b"a"], True)


@pytest.mark.parametrize("body,detail", [
    (b"\r\n", "invalid chunk size"),
    (b";ext\r\n", "invalid chunk size"),
    (b"x\r\n", "invalid chunk size"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
    (b"-5\r\n", "invalid chunk size"),
    (b"+5\r\n", "invalid chunk size"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
    (b"5\t\r\n", "invalid chunk size"),
    (b"5 x\r\n", "invalid chunk size"),
    (b"5\nhello\r\n0\r\n\r\n", "LF without CR"),
    (b"5;a\nb\r\nhello\r\n", "LF without CR"),
    (b"5;a\rb\r\nhello\r\n", "CR not followed by LF"),
    (b"5\rhello\r\n", "CR not followed by LF"),
    (b"5;a\x00\r\n", "invalid chunk extension"),
    (b"5;a\x7f\r\n", "invalid chunk extension"),
    (b"5\r\nhelloX\r\n", "chunk data not followed by CRLF"),
    (b"5\r\nhello\rX", "chunk data not followed by CRLF"),
    (b"5\r\nhello\n0\r\n\r\n", "chunk data not followed by CRLF"),
    (b"8000000000000000\r\n", "chunk size too large"),
    (b"1" + b"0" * 16 + b"\r\n", "chunk size too large"),
    (b"0\r\nX-T : 1\r\n\r\n", "whitespace between header name and colon"),
    (b"0\r\nX-T: 1\r\n fold\r\n\r\n", "obsolete line folding"),
    (b"0\r\nX-T: a\x00b\r\n\r\n", "control character in header value"),
    (b"0\r\nX-T: 1\n\r\n", "LF without CR"),
    (b"0\r\n\n", "LF without CR"),
])
def test_bad_chunked_bodies(body, detail):
    e = decode_error(body)
    assert (e.status, e.detail) == (400, detail)


def test_largest_chunk_size_accepted():
    r = ChunkedReader()
    consumed, pieces = r.feed_raw(b"7fffffffffffffff\r\nabc")
    assert pieces == [b"abc"] and consumed == 21 and not r.done


def test_chunk_extension_bounded():
    ext = b";" + b"e" * 100
    assert decode(b"1" + ext + b"\r\na\r\n0\r\n\r\n", max_chunk_line=len(ext) + 3)[0] == b"a"
    e = decode_error(b"1" + ext + b"\r\na\r\n0\r\n\r\n", max_chunk_line=len(ext) + 2)
    assert e.detail == "chunk size line too long"
    assert decode_error(b"0" * 5000 + b"1\r\n").detail == "chunk size line too long"  # default 4 KiB


def test_trailer_limits():
    trailers = b"0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    assert decode(trailers, max_headers=5)[1].done
    assert decode_error(trailers, max_headers=4).status == 431
    assert decode_error(b"0\r\nX: " + b"v" * 100 + b"\r\n\r\n", max_header_bytes=50).status == 431


def test_error_is_sticky():
    r = ChunkedReader()
    with pytest.raises(HttpParseError):
        r.feed(b"zz\r\n")
    with pytest.raises(HttpParseError):
        r.feed(b"0\r\n\r\n")


# ---- chunk encoder ----

@pytest.mark.parametrize("size,line", [(0, b"0\r\n"), (1, b"1\r\n"), (15, b"f\r\n"), (16, b"10\r\n"),
                                       (0xABCDEF, b"abcdef\r\n"), (2 ** 64 - 1, b"f" * 16 + b"\r\n")])
def test_encode_chunk_size(size, line):
    assert encode_chunk_size(size) == line


def test_encoder_round_trips_through_decoder():
    chunks = [b"a", b"b" * 15, b"c" * 16, b"d" * 300]
    wire = b"".join(encode_chunk_size(len(c)) + c + b"\r\n" for c in chunks) + LAST_CHUNK
    assert decode(wire)[0] == b"".join(chunks)
