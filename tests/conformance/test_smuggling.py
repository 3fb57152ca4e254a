"""Smuggling-vector table: each known way to make two HTTP/1 parsers disagree, and what fastmesh answers.

A row is (name, message, expected). `expected` is the HTTP status fastmesh answers (the message is refused
before any byte is forwarded) or ACCEPT(kind, body) when the message is legal and unambiguous; then
`body` is the payload the framing yields and everything after it must be left for the next message.
Sources: RFC 9112 sections 2.2, 5, 6, 7 and 11.2; aiohttp's THREAT_MODEL.md (section 5.1) and advisories
(CVE-2023-37276, CVE-2024-52304); the classic CL.TE / TE.CL / TE.TE families.
"""
from typing import NamedTuple

import h11
import pytest

from fastmesh._core.http1.framing import ChunkedReader, request_framing, response_framing
from fastmesh._core.http1.parser import HttpParseError, parse_request_bytes, parse_response_bytes


class ACCEPT(NamedTuple):
    kind: str       # framing.BODY_KINDS name
    body: bytes     # payload the framing yields


NEXT = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"  # a smuggled request hiding after the first one


def R(*lines: bytes, start=b"POST / HTTP/1.1", body=b"") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked"

REQUESTS = [
    # --- CL.TE / TE.CL: both framings present ----------------------------------------------------
    ("cl-then-te", R(b"Host: a", b"Content-Length: 6", CHUNKED, body=b"0\r\n\r\nX"), 400),
    ("te-then-cl", R(b"Host: a", CHUNKED, b"Content-Length: 3", body=b"3\r\nabc\r\n0\r\n\r\n"), 400),
    ("cl-zero-with-te", R(b"Host: a", b"Content-Length: 0", CHUNKED, body=b"0\r\n\r\n"), 400),
    # --- TE.TE: obfuscated Transfer-Encoding ------------------------------------------------------
    ("te-xchunked", R(b"Host: a", b"Transfer-Encoding: xchunked"), 501),
    ("te-chunked-suffix", R(b"Host: a", b"Transfer-Encoding: chunkedx"), 501),
    ("te-quoted", R(b"Host: a", b"Transfer-Encoding: \"chunked\""), 400),
    ("te-parameter", R(b"Host: a", b"Transfer-Encoding: chunked;q=1.0"), 400),
    ("te-space-before-colon", R(b"Host: a", b"Transfer-Encoding : chunked"), 400),
    ("te-tab-before-colon", R(b"Host: a", b"Transfer-Encoding\t: chunked"), 400),
    ("te-vertical-tab", R(b"Host: a", b"Transfer-Encoding: \x0bchunked"), 400),
    ("te-form-feed", R(b"Host: a", b"Transfer-Encoding:\x0cchunked"), 400),
    ("te-nul-suffix", R(b"Host: a", b"Transfer-Encoding: chunked\x00"), 400),
    ("te-obs-fold", R(b"Host: a", b"Transfer-Encoding: identity", b" chunked"), 400),
    ("te-leading-space-line", R(b" Transfer-Encoding: chunked", b"Host: a"), 400),
    ("te-chunked-then-identity", R(b"Host: a", CHUNKED, b"Transfer-Encoding: identity"), 400),
    ("te-chunked-twice", R(b"Host: a", b"Transfer-Encoding: chunked, chunked"), 400),
    ("te-chunked-not-last", R(b"Host: a", b"Transfer-Encoding: chunked, gzip"), 400),
    ("te-gzip-then-chunked", R(b"Host: a", b"Transfer-Encoding: gzip, chunked"), 501),
    ("te-empty", R(b"Host: a", b"Transfer-Encoding:"), 400),
    ("te-in-http10", R(CHUNKED, start=b"POST / HTTP/1.0", body=b"0\r\n\r\n"), 400),
    ("te-lf-injected-into-value", R(b"Host: a", b"X-Abc: x\nTransfer-Encoding: chunked"), 400),
    ("te-cr-injected-into-value", R(b"Host: a", b"X-Abc: \rxTransfer-Encoding: chunked",  # CVE-2023-37276
                                    body=b"1\r\nA\r\n0\r\n\r\n"), 400),
    ("te-name-underscore-is-not-te", R(b"Host: a", b"Transfer_Encoding: chunked", body=b"0\r\n\r\n"),
     ACCEPT("none", b"")),
    ("te-tab-ows-is-fine", R(b"Host: a", b"Transfer-Encoding:\tchunked\t", body=b"1\r\nA\r\n0\r\n\r\n"),
     ACCEPT("chunked", b"A")),
    ("te-case-insensitive", R(b"Host: a", b"transfer-encoding: CHUNKED", body=b"1\r\nA\r\n0\r\n\r\n"),
     ACCEPT("chunked", b"A")),
    # --- Content-Length forms -----------------------------------------------------------------------
    ("cl-plus-sign", R(b"Host: a", b"Content-Length: +3", body=b"abc"), 400),
    ("cl-negative", R(b"Host: a", b"Content-Length: -1"), 400),
    ("cl-hex", R(b"Host: a", b"Content-Length: 0x3", body=b"abc"), 400),
    ("cl-space-inside", R(b"Host: a", b"Content-Length: 1 2"), 400),
    ("cl-comma-list", R(b"Host: a", b"Content-Length: 3, 3", body=b"abc"), 400),
    ("cl-conflicting-lines", R(b"Host: a", b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400),
    ("cl-overflow-wraps-elsewhere", R(b"Host: a", b"Content-Length: 18446744073709551619"), 400),
    ("cl-unicode-digit", R(b"Host: a", b"Content-Length: \xd9\xa3"), 400),
    ("cl-empty", R(b"Host: a", b"Content-Length:"), 400),
    ("cl-identical-lines-merge", R(b"Host: a", b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),
     ACCEPT("length", b"abc")),
    ("cl-ows-trimmed", R(b"Host: a", b"Content-Length: \t3 ", body=b"abc"), ACCEPT("length", b"abc")),
    ("cl-leading-zeros", R(b"Host: a", b"Content-Length: 003", body=b"abc"), ACCEPT("length", b"abc")),
    ("cl-zero-then-next", R(b"Host: a", b"Content-Length: 0", start=b"GET / HTTP/1.1"), ACCEPT("none", b"")),
    # --- chunked body syntax ------------------------------------------------------------------------
    ("chunk-ext-bare-lf", R(b"Host: a", CHUNKED, body=b"2;\nxx\r\n0\r\n\r\n"), 400),  # CVE-2024-52304
    ("chunk-ext-bare-cr", R(b"Host: a", CHUNKED, body=b"2;a\rxx\r\n0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", R(b"Host: a", CHUNKED, body=b"2\nxx\r\n0\r\n\r\n"), 400),
    ("chunk-size-trailing-space", R(b"Host: a", CHUNKED, body=b"2 \r\nxx\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x-prefix", R(b"Host: a", CHUNKED, body=b"0x2\r\nxx\r\n0\r\n\r\n"), 400),
    ("chunk-size-wraps-64-bits", R(b"Host: a", CHUNKED, body=b"10000000000000002\r\nxx\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", R(b"Host: a", CHUNKED, body=b"-2\r\nxx\r\n0\r\n\r\n"), 400),
    ("chunk-data-too-long", R(b"Host: a", CHUNKED, body=b"2\r\nxxx\r\n0\r\n\r\n"), 400),
    ("chunk-data-lf-only", R(b"Host: a", CHUNKED, body=b"2\r\nxx\n0\r\n\r\n"), 400),
    ("chunk-last-bare-lf", R(b"Host: a", CHUNKED, body=b"0\n\r\n"), 400),
    ("chunk-trailer-obs-fold", R(b"Host: a", CHUNKED, body=b"0\r\nX: 1\r\n 2\r\n\r\n"), 400),
    ("chunk-trailer-bare-lf", R(b"Host: a", CHUNKED, body=b"0\r\nX: 1\n\r\n"), 400),
    ("chunk-ext-quoted", R(b"Host: a", CHUNKED, body=b"2;a=\"b;c\"\r\nxx\r\n0\r\n\r\n"), ACCEPT("chunked", b"xx")),
    ("chunk-ext-bws", R(b"Host: a", CHUNKED, body=b"2 ;a\r\nxx\r\n0\r\n\r\n"), ACCEPT("chunked", b"xx")),
    ("chunk-trailer-cl-not-merged", R(b"Host: a", CHUNKED, body=b"1\r\nA\r\n0\r\nContent-Length: 50\r\n\r\n"),
     ACCEPT("chunked", b"A")),
    # --- line endings, whitespace, field syntax -----------------------------------------------------
    ("request-line-bare-lf", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("field-bare-lf", b"GET / HTTP/1.1\r\nHost: a\nContent-Length: 5\r\n\r\n", 400),
    ("final-bare-lf", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("leading-bare-lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bare-cr-in-value", R(b"Host: a", b"X: a\rContent-Length: 5"), 400),
    ("nul-in-value", R(b"Host: a", b"X: a\x00b"), 400),
    ("del-in-value", R(b"Host: a", b"X: a\x7fb"), 400),
    ("nul-in-name", R(b"Host: a", b"Content-Length\x00: 5"), 400),
    ("empty-name", R(b"Host: a", b": x"), 400),
    ("no-colon", R(b"Host: a", b"Content-Length 5"), 400),
    ("leading-empty-lines", b"\r\n\r\n" + R(b"Host: a", start=b"GET / HTTP/1.1"), ACCEPT("none", b"")),
    # --- request line ---------------------------------------------------------------------------------
    ("target-with-space", R(b"Host: a", start=b"GET /a HTTP/1.1 HTTP/1.1"), 400),
    ("target-with-tab", R(b"Host: a", start=b"GET /a\tb HTTP/1.1"), 400),
    ("target-with-nul", R(b"Host: a", start=b"GET /a\x00b HTTP/1.1"), 400),
    ("method-with-nul", R(b"Host: a", start=b"G\x00ET / HTTP/1.1"), 400),
    ("double-space", R(b"Host: a", start=b"GET  / HTTP/1.1"), 400),
    ("lowercase-version", R(b"Host: a", start=b"GET / http/1.1"), 400),
    ("version-2", R(b"Host: a", start=b"GET / HTTP/2.0"), 505),
    ("version-1.2", R(b"Host: a", start=b"GET / HTTP/1.2"), 505),
    ("http09", b"GET /\r\n\r\n", 400),
    ("absolute-form", R(b"Host: a", start=b"GET http://a/x HTTP/1.1"), ACCEPT("none", b"")),
    # --- Host (routing / cache-key confusion) ---------------------------------------------------------
    ("host-missing", R(b"Content-Length: 0"), 400),
    ("host-twice", R(b"Host: a", b"Host: b"), 400),
    ("host-twice-case", R(b"Host: a", b"host: a"), 400),
    ("host-with-space", R(b"Host: a b"), 400),
    ("host-with-userinfo", R(b"Host: evil@a"), 400),
    ("host-with-slash", R(b"Host: a/b"), 400),
    # --- limits -----------------------------------------------------------------------------------------
    ("line-too-long", R(b"Host: a", start=b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414),
    ("headers-too-large", R(b"Host: a", b"X: " + b"v" * 66000), 431),
    ("too-many-headers", R(b"Host: a", *[b"X-%d: 1" % i for i in range(100)]), 431),
]


def outcome(message: bytes):
    """What fastmesh does with a request: its error status, or ACCEPT(kind, body) plus the leftover."""
    try:
        consumed, _ = parse_request_bytes(message)
        assert consumed > 0, "vector must hold a whole head"
        kind, length, _ = request_framing(message[:consumed])
        rest = message[consumed:]
        if kind == "length":
            return ACCEPT(kind, rest[:length]), rest[length:]
        if kind == "chunked":
            reader = ChunkedReader()
            body = b"".join(reader.feed(rest))
            assert reader.done, "vector must hold a whole chunked body"
            return ACCEPT(kind, body), reader.unused
        return ACCEPT(kind, b""), rest
    except HttpParseError as e:
        return e.status, None


@pytest.mark.parametrize("name,message,expected", REQUESTS, ids=[row[0] for row in REQUESTS])
def test_request_vector(name, message, expected):
    got, rest = outcome(message)
    assert got == expected
    if isinstance(expected, ACCEPT):
        # Whatever follows a message we accept is left intact for the next one.
        got2, rest2 = outcome(message + NEXT)
        assert got2 == expected and rest2 == rest + NEXT


def test_table_names_unique():
    names = [row[0] for row in REQUESTS]
    assert len(names) == len(set(names))


def h11_body(message: bytes):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(message)
    body = b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return "rejected"
        if isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return body
        elif event is h11.NEED_DATA:
            return None


ACCEPTED = [row for row in REQUESTS if isinstance(row[2], ACCEPT) and row[0] != "leading-empty-lines"]
# h11 refuses these although RFC 9112 allows them (BWS before a chunk extension). A refusal cannot
# desynchronise two parsers; a different body could.
H11_STRICTER = {"chunk-ext-bws"}


@pytest.mark.parametrize("name,message,expected", ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_h11_frames_accepted_vectors_the_same(name, message, expected):
    # An independent parser must find the same body in everything we let through.
    assert h11_body(message) == ("rejected" if name in H11_STRICTER else expected.body)


RESPONSES = [
    ("resp-cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "error"),
    ("resp-conflicting-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "error"),
    ("resp-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n", "error"),
    ("resp-obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "error"),
    ("resp-te-in-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "error"),
    ("resp-chunked-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "error"),
    ("resp-cr-in-value", b"HTTP/1.1 200 OK\r\nSet-Cookie: a\rb\r\n\r\n", "error"),
    ("resp-unknown-coding-until-close", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "until-close"),
    ("resp-no-length-until-close", b"HTTP/1.1 200 OK\r\n\r\n", "until-close"),
    ("resp-304-ignores-cl", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "none"),
]


@pytest.mark.parametrize("name,message,expected", RESPONSES, ids=[row[0] for row in RESPONSES])
def test_response_vector(name, message, expected):
    try:
        parse_response_bytes(message)
        got = response_framing(message)[0]
    except HttpParseError:
        got = "error"
    assert got == expected
