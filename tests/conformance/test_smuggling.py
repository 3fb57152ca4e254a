"""Smuggling-vector table: each known way to make two HTTP/1 parsers disagree, and what fastmesh answers.

A row is (name, message, expected). `expected` is the HTTP status fastmesh answers (the message is refused
before any byte is forwarded) or ACCEPT(kind, body) when the message is legal and unambiguous; then
`body` is the payload the framing yields and everything after it must be left for the next message.
Sources: RFC 9112 sections 2.2, 5, 6, 7 and 11.2; aiohttp's THREAT_MODEL.md (section 5.1) and advisories
(CVE-2023-37276, CVE-2024-52304); the classic CL.TE / TE.CL / TE.TE families.

A message we accept in a lenient form must leave in the one form every parser agrees on. TRAILERS checks the
codec's trailer filter; FORWARDED runs each forwarding rule end to end (a real proxy on 127.0.0.1 between a
raw client socket and a backend that records the bytes it gets and answers with scripted bytes).
"""
import asyncio
import re
from typing import NamedTuple

import h11
import pytest

from fastmesh import Proxy

from fastmesh._core.http1.framing import ChunkedReader, request_framing, response_framing, strip_trailers
from fastmesh._core.http1.parser import HttpParseError, parse_request_bytes, parse_response_bytes
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh._testbase.scripted import ScriptedBackend


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
    # The authority of an absolute-form target becomes the forwarded Host: the same bytes as a Host value.
    ("absolute-form-userinfo", R(b"Host: a", start=b"GET http://evil@a/x HTTP/1.1"), 400),
    ("absolute-form-empty-authority", R(b"Host: a", start=b"GET http:///x HTTP/1.1"), 400),
    ("absolute-form-no-authority", R(b"Host: a", start=b"GET http:/x HTTP/1.1"), 400),
    ("absolute-form-quote-in-authority", R(b"Host: a", start=b"GET http://a\"b/x HTTP/1.1"), 400),
    # A fragment is never sent by a client and never forwarded (RFC 9112 section 3.2; CVE-2023-45539).
    ("fragment-in-origin-form", R(b"Host: a", start=b"GET /x#/admin HTTP/1.1"), 400),
    ("fragment-in-absolute-form", R(b"Host: a", start=b"GET http://a/x#y HTTP/1.1"), 400),
    ("fragment-after-query", R(b"Host: a", start=b"GET /x?a=1#b HTTP/1.1"), 400),
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


# ---- trailer sections: what is forwarded ------------------------------------------------------------------

TRAILERS = [
    ("no-trailers", b"\r\n", b"\r\n"),
    ("plain-kept", b"X-Sum: 1\r\nX-Other: 2\r\n\r\n", b"X-Sum: 1\r\nX-Other: 2\r\n\r\n"),
    ("content-length-dropped", b"Content-Length: 50\r\nX-Sum: 1\r\n\r\n", b"X-Sum: 1\r\n\r\n"),
    ("transfer-encoding-dropped", b"X-Sum: 1\r\ntransfer-encoding: chunked\r\n\r\n", b"X-Sum: 1\r\n\r\n"),
    ("host-dropped", b"Host: evil.example\r\n\r\n", b"\r\n"),
    ("hop-by-hop-dropped", b"Connection: close\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\n"
     b"Upgrade: h2c\r\nProxy-Authorization: x\r\nProxy-Connection: close\r\nHTTP2-Settings: AA\r\n"
     b"X-Sum: 1\r\n\r\n", b"X-Sum: 1\r\n\r\n"),
    ("interleaved", b"A: 1\r\nHost: h\r\nB: 2\r\nContent-Length: 3\r\nC: 3\r\n\r\n",
     b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
]


@pytest.mark.parametrize("name,section,forwarded", TRAILERS, ids=[row[0] for row in TRAILERS])
def test_trailer_section_forwarded_without_framing_fields(name, section, forwarded):
    assert strip_trailers(section) == forwarded


# ---- forwarding, end to end -------------------------------------------------------------------------------

WAIT = 5.0
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RecordingBackend(ScriptedBackend):
    """Records each request's raw bytes (its end found by h11, a strict parser) and answers with `answer`: a list
    of byte strings written with a short pause between them (so the proxy reads them apart), then closes."""

    def __init__(self, answer: list[bytes]) -> None:
        super().__init__("recorder")
        self.answer = answer
        self.received: list[bytes] = []
        self.rejected: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        raw = b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.rejected.append(str(exc))
                return
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), WAIT)
                if not data:
                    return
                raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                break
        self.received.append(raw)
        for i, piece in enumerate(self.answer):
            if i:
                await asyncio.sleep(0.2)
            writer.write(piece)
            await writer.drain()


async def exchange(request: bytes, answer: list[bytes], routes: str = "") -> tuple[bytes, RecordingBackend]:
    """Send `request` through a fresh proxy to a RecordingBackend; (every byte the client got until the proxy
    closed or went quiet, the backend)."""
    async with RecordingBackend(answer) as backend:
        async with Proxy.from_toml(web_config([backend.address], listener=routes)) as proxy:
            host, port = proxy.addresses["web"]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            got = b""
            try:
                while True:
                    data = await asyncio.wait_for(reader.read(65536), 1.5)
                    if not data:
                        break
                    got += data
            except (TimeoutError, ConnectionResetError):
                pass
            writer.close()
            await no_connection_left(proxy)
    return got, backend


def upstream(backend: RecordingBackend) -> bytes:
    assert not backend.rejected, backend.rejected
    assert len(backend.received) == 1, backend.received
    return backend.received[0]


def head_lines(message: bytes) -> list[bytes]:
    return message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def field_lines(message: bytes, name: bytes) -> list[bytes]:
    return [line for line in head_lines(message)[1:] if line.split(b":", 1)[0].lower() == name.lower()]


def chunked_post(*fields: bytes, body: bytes = b"5\r\nhello\r\n0\r\n\r\n") -> bytes:
    return R(b"Host: a.example", *fields, start=b"POST /up HTTP/1.1", body=body)


def te_is_canonical(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    assert field_lines(up, b"transfer-encoding") == [b"Transfer-Encoding: chunked"]
    assert up.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def trailers_stripped(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    assert up.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-After: 2\r\n\r\n"), up


def no_h2c(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    for name in (b"upgrade", b"http2-settings"):
        assert field_lines(up, name) == [], up
    assert not any(b"upgrade" in line.lower() for line in field_lines(up, b"connection")), up


def host_from_authority(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    assert head_lines(up)[0] == b"GET /x?q=1 HTTP/1.1"
    assert field_lines(up, b"host") == [b"Host: a.example:8080"], up


def host_added(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    hosts = field_lines(up, b"host")
    assert len(hosts) == 1 and re.fullmatch(rb"Host: 127\.0\.0\.1:\d+", hosts[0]), up


def content_length_plain(got: bytes, up: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 200 ")
    assert field_lines(up, b"content-length") == [b"Content-Length: 3"], up
    assert up.endswith(b"\r\n\r\nabc")


def refused(status: int, cause: bytes):
    def check(got: bytes, backend: RecordingBackend) -> None:
        assert got.startswith(b"HTTP/1.1 %d " % status), got
        assert b"\r\nfastmesh-error: " + cause + b"\r\n" in got, got
        assert backend.received == []
    return check


def connect_refused(got: bytes, backend: RecordingBackend) -> None:
    refused(405, b"connect not allowed")(got, backend)
    assert b"\r\nallow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n" in got
    assert b"\r\nconnection: close\r\n" in got


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def client_head_and_body(got: bytes) -> tuple[bytes, bytes]:
    head, _, body = got.partition(b"\r\n\r\n")
    return head, body


def clean_502(got: bytes, backend: RecordingBackend) -> None:
    assert got.startswith(b"HTTP/1.1 502 "), got
    assert b"\r\nfastmesh-error: bad response\r\n" in got
    head, body = client_head_and_body(got)
    assert b"xx" not in body


def cut_after_valid_bytes(got: bytes, backend: RecordingBackend) -> None:
    # The head went out with the first chunk; the broken size line that followed never did.
    head, body = client_head_and_body(got)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"5\r\nhello\r\n", body


def response_trailers_stripped(got: bytes, backend: RecordingBackend) -> None:
    head, body = client_head_and_body(got)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n", body


def response_te_canonical(got: bytes, backend: RecordingBackend) -> None:
    head, body = client_head_and_body(got)
    assert field_lines(got, b"transfer-encoding") == [b"Transfer-Encoding: chunked"], head
    assert field_lines(got, b"content-length") == []
    assert body == b"2\r\nok\r\n0\r\n\r\n"


def response_cl_plain(got: bytes, backend: RecordingBackend) -> None:
    assert field_lines(got, b"content-length") == [b"Content-Length: 2"], got
    assert got.endswith(b"\r\n\r\nok")


# (name, client bytes, backend answer pieces, check(client got, upstream bytes | backend))
FORWARDED = [
    # Transfer-Encoding: whatever spelling the parser accepted, upstream sees exactly "chunked".
    ("fwd-te-upper-case", chunked_post(b"Transfer-Encoding: CHUNKED"), [OK], te_is_canonical),
    ("fwd-te-empty-list-element", chunked_post(b"Transfer-Encoding: , chunked"), [OK], te_is_canonical),
    ("fwd-te-extra-whitespace", chunked_post(b"Transfer-Encoding:\t  chunked \t"), [OK], te_is_canonical),
    ("fwd-cl-leading-zeros", R(b"Host: a", b"Content-Length: 003", body=b"abc"), [OK], content_length_plain),
    ("fwd-cl-repeated", R(b"Host: a", b"Content-Length: 3", b"content-length: 3", body=b"abc"), [OK],
     content_length_plain),
    # Trailer fields that frame, route or belong to the connection never reach the backend.
    ("fwd-request-trailer-framing-fields", chunked_post(
        CHUNKED, body=b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nContent-Length: 50\r\nHost: evil.example\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\nX-After: 2\r\n\r\n"), [OK], trailers_stripped),
    # Cleartext h2 upgrades never pass (they would tunnel past routing and policy).
    ("fwd-h2c-upgrade-removed", R(b"Host: a", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                                  b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", start=b"GET / HTTP/1.1"),
     [OK], no_h2c),
    ("fwd-h2c-settings-not-in-connection", R(b"Host: a", b"Connection: upgrade", b"Upgrade: H2C",
                                             b"HTTP2-Settings: AAMAAABk", start=b"GET / HTTP/1.1"),
     [OK], no_h2c),
    # Absolute-form: the authority is the Host (RFC 9112 section 3.2.2), the target goes as origin-form.
    ("fwd-absolute-form-host", R(b"Host: other.example", start=b"GET http://a.example:8080/x?q=1 HTTP/1.1"),
     [OK], host_from_authority),
    ("fwd-http10-without-host", b"GET /x HTTP/1.0\r\n\r\n", [OK], host_added),
    ("fwd-fragment-refused", R(b"Host: a", start=b"GET /x#y HTTP/1.1"), [OK], refused(400, b"bad request")),
    ("fwd-connect-refused", R(b"Host: a.example:443", start=b"CONNECT a.example:443 HTTP/1.1"), [OK],
     connect_refused),
    # Responses: a body whose framing breaks before the head left is a clean 502...
    ("fwd-resp-chunk-size-overflow", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [CHUNKED_HEAD + b"10000000000000002\r\nxx\r\n0\r\n\r\n"], clean_502),
    ("fwd-resp-bad-chunk-before-head-left", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [CHUNKED_HEAD + b"2\r\nxxZZ\r\n0\r\n\r\n"], clean_502),
    # ...after it, the connection closes with the valid bytes only: no half size line, no bad tail.
    ("fwd-resp-size-overflow-after-head", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [CHUNKED_HEAD + b"5\r\nhello\r\n1", b"0000000000000002\r\nxx\r\n0\r\n\r\n"], cut_after_valid_bytes),
    ("fwd-resp-trailer-framing-fields", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [CHUNKED_HEAD + b"2\r\nok\r\n0\r\nContent-Length: 9\r\nX-Sum: 1\r\nTransfer-Encoding: chunked\r\n"
      b"Connection: close\r\n\r\n"], response_trailers_stripped),
    ("fwd-resp-te-canonical", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,CHUNKED \r\n\r\n2\r\nok\r\n0\r\n\r\n"],
     response_te_canonical),
    ("fwd-resp-cl-canonical", R(b"Host: a", start=b"GET / HTTP/1.1"),
     [b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\ncontent-length: 2\r\n\r\nok"], response_cl_plain),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,request_bytes,answer,check", FORWARDED, ids=[row[0] for row in FORWARDED])
def test_forwarded_form(name, request_bytes, answer, check):
    got, backend = asyncio.run(exchange(request_bytes, answer))
    if check.__name__ in {"check", "connect_refused", "clean_502", "cut_after_valid_bytes",
                          "response_trailers_stripped", "response_te_canonical", "response_cl_plain"}:
        check(got, backend)
    else:
        check(got, upstream(backend))


def test_connect_tunnels_where_a_route_names_it():
    routes = '[[listeners.routes]]\nmethods = ["CONNECT"]\ncluster = "web"\n'
    request = R(b"Host: a.example:443", start=b"CONNECT a.example:443 HTTP/1.1")
    got, backend = asyncio.run(exchange(request, [b"HTTP/1.1 200 OK\r\n\r\n", b"tunnelled"], routes))
    assert head_lines(upstream(backend))[0] == b"CONNECT a.example:443 HTTP/1.1"
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"tunnelled")


def test_forwarded_table_names_unique():
    names = [row[0] for row in FORWARDED] + [row[0] for row in REQUESTS] + [row[0] for row in RESPONSES]
    assert len(names) == len(set(names))
