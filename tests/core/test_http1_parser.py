"""HTTP/1 head parser (fastmesh._core.http1.parser): one test per rule and per limit, driven with plain bytes."""
import pytest

from fastmesh._core.http1.parser import (
    HttpParseError,
    char_class_table,
    head_end_hint,
    parse_request_bytes,
    parse_response_bytes,
    request_head_length,
)

TCHAR = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
VCHAR = set(range(0x21, 0x7F))
OBS_TEXT = set(range(0x80, 0x100))
HOST = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%")


def req(*lines: bytes, start=b"GET / HTTP/1.1", body=b"") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def rejected(data: bytes, **limits) -> HttpParseError:
    with pytest.raises(HttpParseError) as info:
        parse_request_bytes(data, **limits)
    return info.value


def rejected_response(data: bytes) -> HttpParseError:
    with pytest.raises(HttpParseError) as info:
        parse_response_bytes(data)
    return info.value


# ---- the byte-class table matches the grammars ----

@pytest.mark.parametrize("bit,members", [
    (1, TCHAR),
    (2, VCHAR | OBS_TEXT | {0x20, 0x09}),
    (4, VCHAR | OBS_TEXT),
    (8, set(b"0123456789abcdefABCDEF")),
    (16, set(b"0123456789")),
    (32, HOST),
    (64, {0x20, 0x09}),
])
def test_char_class_table_matches_grammar(bit, members):
    table = char_class_table()
    assert len(table) == 256
    assert {i for i in range(256) if table[i] & bit} == members


# ---- accepted messages ----

def test_typical_request_fields_and_offsets():
    data = req(b"Host: example.com", b"User-Agent:  curl/8.0 \t", b"Accept: */*", body=b"tail")
    consumed, h = parse_request_bytes(data)
    assert consumed == len(data) - 4
    assert h["method"] == b"GET" and h["method_id"] == "GET"
    assert h["target"] == b"/" and h["target_form"] == "origin"
    assert h["version"] == (1, 1)
    assert h["headers"] == [(b"Host", b"example.com"), (b"User-Agent", b"curl/8.0"), (b"Accept", b"*/*")]
    assert h["host"] == b"example.com"
    assert h["content_length"] is None and not h["chunked"]


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE",
                                    b"PATCH", b"PROPFIND", b"M-SEARCH", b"get"])
def test_methods(method):
    _, h = parse_request_bytes(req(b"Host: a", start=method + b" / HTTP/1.1"))
    assert h["method"] == method
    expected = method.decode() if method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS",
                                             b"TRACE", b"PATCH") else "OTHER"
    assert h["method_id"] == expected  # methods are case-sensitive: b"get" is not GET


def test_absolute_form_target_accepted():
    _, h = parse_request_bytes(req(b"Host: example.com", start=b"GET http://example.com:8080/a?b HTTP/1.1"))
    assert h["target"] == b"http://example.com:8080/a?b" and h["target_form"] == "absolute"


def test_authority_form_for_connect():
    _, h = parse_request_bytes(req(b"Host: example.com:443", start=b"CONNECT example.com:443 HTTP/1.1"))
    assert h["target_form"] == "authority"
    _, h = parse_request_bytes(req(b"Host: [::1]:443", start=b"CONNECT [::1]:443 HTTP/1.1"))
    assert h["target"] == b"[::1]:443"


def test_asterisk_form_for_options():
    _, h = parse_request_bytes(req(b"Host: a", start=b"OPTIONS * HTTP/1.1"))
    assert h["target_form"] == "asterisk"


@pytest.mark.parametrize("start", [b"GET * HTTP/1.1", b"CONNECT /x HTTP/1.1", b"CONNECT example.com HTTP/1.1",
                                   b"CONNECT example.com:https HTTP/1.1", b"GET example.com HTTP/1.1",
                                   b"GET 1http://x/ HTTP/1.1", b"GET ?x HTTP/1.1"])
def test_target_form_mismatch_rejected(start):
    assert rejected(req(b"Host: a", start=start)).status == 400


def test_obs_text_in_target_and_values_accepted():
    _, h = parse_request_bytes(req(b"Host: a", b"X-Name: caf\xc3\xa9", start=b"GET /caf\xc3\xa9 HTTP/1.1"))
    assert h["target"] == b"/caf\xc3\xa9" and h["headers"][1][1] == b"caf\xc3\xa9"


def test_http10_without_host():
    _, h = parse_request_bytes(b"GET / HTTP/1.0\r\n\r\n")
    assert h["version"] == (1, 0) and h["host"] is None and h["headers"] == []


def test_empty_lines_before_request_line_skipped():
    data = b"\r\n\r\n" + req(b"Host: a")
    consumed, h = parse_request_bytes(data)
    assert consumed == len(data) and h["method"] == b"GET"


def test_value_whitespace_trimmed_and_empty_values():
    _, h = parse_request_bytes(req(b"Host: a", b"X-A:", b"X-B: \t ", b"X-C:\tin  side\t"))
    assert h["headers"][1:] == [(b"X-A", b""), (b"X-B", b""), (b"X-C", b"in  side")]


def test_htab_inside_value_accepted():
    long_value = b"a" * 20 + b"\t" + b"b" * 20  # HTAB inside a word-at-a-time scan
    _, h = parse_request_bytes(req(b"Host: a", b"X: " + long_value))
    assert h["headers"][1][1] == long_value


def test_framing_facts():
    _, h = parse_request_bytes(req(
        b"Host: a", b"Connection: Keep-Alive, close ,Upgrade", b"Upgrade: websocket",
        b"Expect: 100-Continue", b"Content-Length: 0012", b"TE: trailers", b"Trailer: X",
        b"Proxy-Connection: x", b"Keep-Alive: 5", b"Proxy-Authorization: y"))
    assert h["connection_close"] and h["connection_keep_alive"] and h["connection_upgrade"]
    assert h["upgrade"] and h["expect_continue"]
    assert h["content_length"] == 12
    assert h["seen"] == {"host", "connection", "upgrade", "expect", "content-length", "te", "trailer",
                         "proxy-connection", "keep-alive", "proxy-authorization"}
    assert h["field_ids"][0] == 1  # FIELD_HOST


def test_unrelated_expect_and_connection_tokens():
    _, h = parse_request_bytes(req(b"Host: a", b"Expect: 200-ok", b"Connection: closed, keep"))
    assert not h["expect_continue"] and not h["connection_close"] and not h["connection_keep_alive"]


@pytest.mark.parametrize("lines, names", [
    ([], False),
    ([b"Connection: keep-alive"], False),
    ([b"Connection: Keep-Alive , UPGRADE", b"connection: keep-alive"], False),
    ([b"Connection: ,, keep-alive,"], False),
    ([b"Connection: close"], True),                   # a field may be called "close"
    ([b"Connection: keep-alive", b"Connection: X-A"], True),
    ([b"Connection: keep-alive x-a"], True),          # one element to the parser, two tokens to a renderer
    ([b"Connection: keep-alive, x-a"], True),
])
def test_connection_names_only_when_an_element_may_name_a_field(lines: list[bytes], names: bool) -> None:
    """Renderers collect Connection's tokens only when this is set: every element but keep-alive and upgrade
    (fields dropped by id anyway) may name a field to drop."""
    _, h = parse_request_bytes(req(b"Host: a", *lines))
    assert h["connection_names"] is names


def test_identical_content_length_lines_merged():
    _, h = parse_request_bytes(req(b"Host: a", b"Content-Length: 5", b"content-length: 05"))
    assert h["content_length"] == 5 and h["cl_repeated"]


def test_transfer_encoding_chunked_case_insensitive_and_list_whitespace():
    _, h = parse_request_bytes(req(b"Host: a", b"Transfer-Encoding: , ChUnKeD ,"))
    assert h["chunked"] and h["te_present"]


def test_request_head_length_fast_path():
    data = req(b"Host: a")
    assert request_head_length(data) == len(data)
    assert request_head_length(data[:-1]) == 0
    with pytest.raises(HttpParseError):
        request_head_length(b"GET / HTTP/1.1\nHost: a\r\n\r\n")


# ---- one test per strict rule (status from codes.pyx) ----

def test_bare_lf_line_end_rejected():
    assert rejected(b"GET / HTTP/1.1\nHost: a\r\n\r\n").status == 400
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\n\r\n").detail == "LF without CR"
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\r\n\n").detail == "LF without CR"
    assert rejected(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").detail == "LF without CR"


def test_bare_cr_rejected():
    assert rejected(b"GET / HTTP/1.1\rHost: a\r\n\r\n").status == 400
    assert rejected(req(b"Host: a", b"X: a\rb")).detail in ("CR not followed by LF",
                                                            "control character in header value")
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\r\n\rX").detail == "CR not followed by LF"
    assert rejected(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n").detail == "CR not followed by LF"


def test_obs_fold_rejected():
    e = rejected(req(b"Host: a", b"X-A: one", b" two"))
    assert (e.status, e.detail) == (400, "obsolete line folding")
    assert rejected(req(b"Host: a", b"X-A: one", b"\ttwo")).detail == "obsolete line folding"


def test_whitespace_before_first_header_rejected():
    e = rejected(req(b" Host: a"))
    assert (e.status, e.detail) == (400, "whitespace before the first header line")


def test_whitespace_between_name_and_colon_rejected():
    e = rejected(req(b"Host : a"))
    assert (e.status, e.detail) == (400, "whitespace between header name and colon")
    assert rejected(req(b"Host: a", b"Transfer-Encoding\t: chunked")).status == 400


@pytest.mark.parametrize("name", [b"X(y)", b"X/y", b"X\x00y", b"X\x7fy", b"X\xc3\xa9", b"", b"X\"y", b"X@y"])
def test_invalid_field_name_rejected(name):
    e = rejected(req(b"Host: a", name + b": v"))
    assert e.status == 400


def test_line_without_colon_rejected():
    assert rejected(req(b"Host: a", b"NoColonHere")).detail == "invalid header name"


@pytest.mark.parametrize("method", [b"G(T", b"GE\x00T", b"G\xc3T", b"G@T", b"G:T"])
def test_invalid_method_rejected(method):
    assert rejected(req(b"Host: a", start=method + b" / HTTP/1.1")).detail == "invalid method"


def test_empty_method_rejected():
    assert rejected(req(b"Host: a", start=b" / HTTP/1.1")).detail == "invalid method"


@pytest.mark.parametrize("byte", [0x00, 0x01, 0x08, 0x0B, 0x0C, 0x0E, 0x1F, 0x7F])
def test_control_bytes_in_value_rejected(byte):
    for value in (bytes([byte]), b"abc" + bytes([byte]) + b"def", b"x" * 30 + bytes([byte]) + b"y" * 30):
        e = rejected(req(b"Host: a", b"X-Bad: " + value))
        assert (e.status, e.detail) == (400, "control character in header value")


def test_lf_inside_value_rejected():
    assert rejected(req(b"Host: a", b"X-Bad: a\nTransfer-Encoding: chunked")).detail == "LF without CR"


@pytest.mark.parametrize("target", [b"/a b", b"/a\x00", b"/a\x7f", b"/a\tb", b"/\x01"])
def test_target_with_space_or_controls_rejected(target):
    assert rejected(req(b"Host: a", start=b"GET " + target + b" HTTP/1.1")).status == 400


def test_double_space_in_request_line_rejected():
    assert rejected(req(b"Host: a", start=b"GET  / HTTP/1.1")).detail == "invalid request target"
    assert rejected(req(b"Host: a", start=b"GET /  HTTP/1.1")).detail == "malformed HTTP version"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"])
def test_unsupported_version_505(version):
    e = rejected(req(b"Host: a", start=b"GET / " + version))
    assert (e.status, e.reason) == (505, "HTTP Version Not Supported")


@pytest.mark.parametrize("version", [b"http/1.1", b"HTTP/1.10", b"HTTP/11", b"HTTP/1.x", b"HTTP 1.1",
                                     b"HTTP/1.1 ", b"HTTPS/1.1", b""])
def test_malformed_version_400(version):
    assert rejected(req(b"Host: a", start=b"GET / " + version)).status == 400


def test_http09_request_rejected():
    assert rejected(b"GET /\r\n\r\n").status == 400


def test_missing_host_in_http11_rejected():
    e = rejected(req(b"Accept: */*"))
    assert (e.status, e.detail) == (400, "missing Host header")


def test_multiple_host_rejected():
    e = rejected(req(b"Host: a", b"Host: a"))
    assert (e.status, e.detail) == (400, "multiple Host headers")


@pytest.mark.parametrize("value", [b"a b", b"a/b", b"user@host", b"a\"b", b"caf\xc3\xa9"])
def test_invalid_host_value_rejected(value):
    assert rejected(req(b"Host: " + value)).detail == "invalid Host header"


def test_empty_host_value_accepted():
    _, h = parse_request_bytes(req(b"Host:"))
    assert h["host"] == b""


@pytest.mark.parametrize("value", [b"", b"-1", b"+1", b"1.0", b"0x10", b"1 2", b"1,1", b"1, 1", b"abc",
                                   b"1" * 19, b"\xd9\xa1"])
def test_malformed_content_length_rejected(value):
    e = rejected(req(b"Host: a", b"Content-Length: " + value))
    assert (e.status, e.detail) == (400, "invalid Content-Length")


def test_content_length_18_digits_accepted():
    _, h = parse_request_bytes(req(b"Host: a", b"Content-Length: " + b"9" * 18))
    assert h["content_length"] == 10 ** 18 - 1


def test_conflicting_content_length_rejected():
    e = rejected(req(b"Host: a", b"Content-Length: 5", b"Content-Length: 6"))
    assert (e.status, e.detail) == (400, "conflicting Content-Length values")


def test_content_length_with_transfer_encoding_rejected():
    e = rejected(req(b"Host: a", b"Content-Length: 5", b"Transfer-Encoding: chunked"))
    assert (e.status, e.detail) == (400, "Content-Length with Transfer-Encoding")
    assert rejected(req(b"Host: a", b"Transfer-Encoding: chunked", b"Content-Length: 5")).status == 400


@pytest.mark.parametrize("value", [b"gzip", b"identity", b"xchunked", b"chunkedx", b"gzip, chunked",
                                   b"deflate,chunked"])
def test_unknown_transfer_coding_501(value):
    e = rejected(req(b"Host: a", b"Transfer-Encoding: " + value))
    assert (e.status, e.reason) == (501, "Not Implemented")


@pytest.mark.parametrize("lines", [
    [b"Transfer-Encoding: chunked, gzip"],
    [b"Transfer-Encoding: chunked, chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
])
def test_chunked_not_last_400(lines):
    e = rejected(req(b"Host: a", *lines))
    assert (e.status, e.detail) == (400, "chunked is not the final transfer coding")


@pytest.mark.parametrize("value", [b"", b" ", b",", b"chunked;q=1", b"\"chunked\"", b"chun ked", b"chunked/1"])
def test_malformed_transfer_encoding_400(value):
    e = rejected(req(b"Host: a", b"Transfer-Encoding: " + value))
    assert (e.status, e.detail) == (400, "malformed Transfer-Encoding")


def test_transfer_encoding_in_http10_rejected():
    e = rejected(req(b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.0"))
    assert (e.status, e.detail) == (400, "Transfer-Encoding in an HTTP/1.0 message")


# ---- limits ----

def test_request_line_limit_414():
    target = b"/" + b"a" * 100
    line = b"GET " + target + b" HTTP/1.1\r\n"
    data = req(b"Host: a", start=b"GET " + target + b" HTTP/1.1")
    assert parse_request_bytes(data, max_start_line=len(line))[0] == len(data)
    e = rejected(data, max_start_line=len(line) - 1)
    assert (e.status, e.reason) == (414, "URI Too Long")
    # Without its end yet, a line already over the limit is rejected at once.
    assert rejected(data[:len(line) - 1], max_start_line=len(line) - 2).status == 414


def test_default_request_line_limit_8k():
    assert rejected(b"GET /" + b"a" * 8200).status == 414
    data = req(b"Host: a", start=b"GET /" + b"a" * 8000 + b" HTTP/1.1")
    assert parse_request_bytes(data)[0] == len(data)


def test_header_bytes_limit_431():
    data = req(b"Host: a", b"X-Pad: " + b"p" * 200)
    section = len(data) - len(b"GET / HTTP/1.1\r\n")
    assert parse_request_bytes(data, max_header_bytes=section)[0] == len(data)
    e = rejected(data, max_header_bytes=section - 1)
    assert (e.status, e.reason) == (431, "Request Header Fields Too Large")
    assert rejected(data[:100], max_header_bytes=50).status == 431


def test_default_header_bytes_limit_64k():
    assert rejected(req(b"Host: a", b"X: " + b"v" * 70000)).status == 431


def test_header_count_limit_431():
    lines = [b"Host: a"] + [b"X-%d: v" % i for i in range(9)]
    assert parse_request_bytes(req(*lines), max_headers=10)[1]["headers"][-1] == (b"X-8", b"v")
    e = rejected(req(*lines), max_headers=9)
    assert (e.status, e.detail) == (431, "too many header lines")


def test_default_header_count_limit_100():
    lines = [b"Host: a"] + [b"X-%d: v" % i for i in range(99)]
    assert len(parse_request_bytes(req(*lines))[1]["headers"]) == 100
    assert rejected(req(*lines, b"X-Extra: v")).status == 431


def test_invalid_limits_rejected():
    with pytest.raises(ValueError):
        parse_request_bytes(b"", max_headers=101)
    with pytest.raises(ValueError):
        parse_request_bytes(b"", max_start_line=0)


# ---- partial input: every split gives the whole-input result ----

MESSAGES = [
    req(b"Host: example.com", b"User-Agent: x", b"Content-Length: 3", body=b"abc"),
    b"\r\n" + req(b"Host: a", b"Transfer-Encoding: chunked", start=b"POST /upload?x=1 HTTP/1.1"),
    req(b"Host: a", b"X-Long: " + b"v" * 40 + b"\t" + b"w" * 40, start=b"PATCH http://a/b HTTP/1.1"),
    b"GET / HTTP/1.0\r\n\r\n",
    req(b"Host: a:1", start=b"CONNECT a:1 HTTP/1.1"),
]


@pytest.mark.parametrize("data", MESSAGES)
def test_every_prefix_needs_more_then_whole_parses(data):
    whole = parse_request_bytes(data)
    assert whole[0] > 0
    head_len = whole[0]
    for cut in range(head_len):
        assert parse_request_bytes(data[:cut]) == (0, None), cut
    for cut in range(head_len, len(data) + 1):
        assert parse_request_bytes(data[:cut]) == whole


BAD_MESSAGES = [
    req(b"Host: a", b"X: a\x00b"),
    req(b"Host: a", b"X: one", b" fold"),
    req(b"Host: a", b"Content-Length: 1", b"Content-Length: 2"),
    req(b"Host : a"),
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    req(b"Host: a", start=b"GET /a\x01 HTTP/1.1"),
    req(b"Host: a", start=b"GET / HTTP/2.0"),
    req(b"Host: a", b"Content-Length: 1", b"Transfer-Encoding: chunked"),
]


@pytest.mark.parametrize("data", BAD_MESSAGES)
def test_prefixes_of_bad_messages_never_disagree(data):
    whole = rejected(data)
    for cut in range(len(data)):
        try:
            assert parse_request_bytes(data[:cut]) == (0, None), cut
        except HttpParseError as e:
            assert e.code == whole.code, cut


# ---- responses ----

def test_response_status_line():
    data = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    consumed, h = parse_response_bytes(data)
    assert consumed == len(data)
    assert (h["status"], h["reason"], h["version"], h["content_length"]) == (404, b"Not Found", (1, 1), 0)


def test_response_reason_optional_and_with_obs_text():
    assert parse_response_bytes(b"HTTP/1.1 200\r\n\r\n")[1]["reason"] == b""
    assert parse_response_bytes(b"HTTP/1.1 200 \r\n\r\n")[1]["reason"] == b""
    assert parse_response_bytes(b"HTTP/1.0 200 \xc3\xa9 ok\r\n\r\n")[1]["reason"] == b"\xc3\xa9 ok"


def test_response_every_prefix_needs_more():
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: t\r\n\r\n"
    for cut in range(len(data)):
        assert parse_response_bytes(data[:cut]) == (0, None)
    assert parse_response_bytes(data)[0] == len(data)


@pytest.mark.parametrize("line", [b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 099 x", b"HTTP/1.1 600 x",
                                  b"HTTP/1.1  200 OK", b"HTTP/1.1 2x0 OK", b"HTTP/1.1 200 O\x01K",
                                  b"HTTP/1.1\t200 OK"])
def test_bad_status_line(line):
    assert rejected_response(line + b"\r\n\r\n").status == 400


def test_response_version_rules():
    assert rejected_response(b"HTTP/2.0 200 OK\r\n\r\n").status == 505
    assert rejected_response(b"HTTP/1.1 200 OK\nX: y\r\n\r\n").detail == "LF without CR"


def test_response_framing_rules():
    assert rejected_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             ).detail == "Content-Length with Transfer-Encoding"
    assert rejected_response(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             ).detail == "Transfer-Encoding in an HTTP/1.0 message"
    assert rejected_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                             ).detail == "chunked is not the final transfer coding"
    # Codings without a final chunked are legal in a response: the body runs until close (framing.pyx).
    _, h = parse_response_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    assert h["te_present"] and not h["chunked"] and h["te_other"]
    _, h = parse_response_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert h["chunked"]


def test_response_needs_no_host_and_allows_repeated_fields():
    _, h = parse_response_bytes(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n")
    assert h["headers"] == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


# ---- head-end hint ----

def test_head_end_hint():
    data = req(b"Host: a") + b"body"
    end = len(data) - 4
    assert head_end_hint(data) == end
    assert head_end_hint(data[:end - 1]) == -1
    # Resuming just after a split inside the CRLFCRLF still finds it.
    assert head_end_hint(data, end - 1) == end
    assert head_end_hint(b"\r\n\r\n", 0) == 4
