"""Property tests for the HTTP/1 codec: never crashes on arbitrary bytes, prefixes never disagree with the
whole message, and generated valid requests are read exactly as h11 (an independent parser) reads them."""
import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastmesh._core.http1.framing import ChunkedReader, encode_chunk_size, request_framing
from fastmesh._core.http1.parser import HttpParseError, head_end_hint, parse_request_bytes, parse_response_bytes

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIFF = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Bytes that steer the parser into its interesting states, so random input gets past the first line.
HTTPISH = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"\x00", b"\x7f", b"\xff", b"HTTP/1.1",
           b"Host: a", b"Content-Length: ", b"Transfer-Encoding: ", b"chunked", b"0", b"5", b"f", b"GET /",
           b"x"]

httpish = st.lists(st.sampled_from(HTTPISH), max_size=40).map(b"".join)
small_limits = st.fixed_dictionaries({}, optional={
    "max_start_line": st.integers(1, 64), "max_header_bytes": st.integers(1, 128),
    "max_headers": st.integers(1, 5)})


def outcome(parse, data, limits):
    try:
        return parse(data, **limits)
    except HttpParseError as e:
        assert e.status in (400, 414, 431, 501, 505)
        return ("error", e.code)


# ---- robustness: any bytes, any limits ----

@FUZZ
@given(data=st.binary(max_size=600) | httpish, limits=small_limits)
def test_request_parser_never_crashes(data, limits):
    result = outcome(parse_request_bytes, data, limits)
    if result[0] != "error":
        assert 0 <= result[0] <= len(data)


@FUZZ
@given(data=httpish | st.binary(max_size=600), prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: a\r\n"]))
def test_request_fields_never_crash(data, prefix):
    outcome(parse_request_bytes, prefix + data, {})


@FUZZ
@given(data=st.binary(max_size=600) | httpish.map(lambda b: b"HTTP/1.1 200 OK\r\n" + b))
def test_response_parser_never_crashes(data):
    try:
        consumed, _ = parse_response_bytes(data)
        assert 0 <= consumed <= len(data)
    except HttpParseError:
        pass


@FUZZ
@given(data=httpish | st.binary(max_size=400), cut=st.integers(0, 400), limits=small_limits)
def test_prefix_never_disagrees_with_whole(data, cut, limits):
    # A prefix is either "need more", or exactly what the whole message gives.
    whole = outcome(parse_request_bytes, data, limits)
    part = outcome(parse_request_bytes, data[:cut], limits)
    if part != (0, None):
        assert part == whole
    if whole[0] != "error" and whole[0] > 0 and cut >= whole[0]:
        assert part == whole


@FUZZ
@given(data=httpish.map(lambda b: b"HTTP/1.1 200 OK\r\n" + b) | st.binary(max_size=300), cut=st.integers(0, 400))
def test_response_prefix_never_disagrees_with_whole(data, cut):
    def run(buf):
        try:
            return parse_response_bytes(buf)
        except HttpParseError as e:
            return ("error", e.code)

    whole, part = run(data), run(data[:cut])
    if part != (0, None):
        assert part == whole


@FUZZ
@given(data=httpish | st.binary(max_size=200), start=st.integers(0, 200))
def test_head_end_hint_matches_reference(data, start):
    start = min(start, len(data))
    found = data.find(b"\r\n\r\n", max(start - 3, 0))
    assert head_end_hint(data, start) == (found + 4 if found >= 0 else -1)


CHUNKISH = [b"\r\n", b"\r", b"\n", b";", b" ", b"=", b"\x00", b"0", b"1", b"a", b"F", b"ff", b"x", b"X: 1",
            b"0\r\n\r\n", b"1\r\nz\r\n"]


@FUZZ
@given(data=st.lists(st.sampled_from(CHUNKISH), max_size=40).map(b"".join) | st.binary(max_size=300),
       cut=st.integers(0, 300))
def test_chunked_decoder_never_crashes_and_split_is_invisible(data, cut):
    def run(pieces):
        reader = ChunkedReader(max_chunk_line=64, max_header_bytes=128)
        out = []
        try:
            for piece in pieces:
                out += reader.feed(piece)
        except HttpParseError as e:
            return ("error", e.code)
        return b"".join(out), reader.done, reader.unused

    whole = run([data])
    split = run([data[:cut], data[cut:]])
    assert split == whole


# ---- differential: generated valid requests, read by us and by h11 ----

SPECIAL = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
token = st.text(alphabet=TCHAR.decode(), min_size=1, max_size=12).map(str.encode)
field_name = token.filter(lambda n: n.lower() not in SPECIAL)
vchar = st.sampled_from([bytes([c]) for c in list(range(0x21, 0x7F)) + [0x80, 0xA0, 0xC3, 0xFF]])
word = st.lists(vchar, min_size=1, max_size=10).map(b"".join)
field_value = st.lists(word, max_size=4).flatmap(
    lambda words: st.lists(st.sampled_from([b" ", b"\t", b" \t "]), min_size=len(words), max_size=len(words))
    .map(lambda seps: b"".join(w + s for w, s in zip(words, seps)).rstrip(b" \t")))
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
# Every visible byte but "#": a fragment is refused (parser rule 3), never part of a valid request.
target = st.lists(st.sampled_from([bytes([c]) for c in range(0x21, 0x7F) if c != 0x23]), max_size=40).map(
    lambda cs: b"/" + b"".join(cs))
host = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20).map(str.encode)
chunk_ext = st.sampled_from([b"", b";a", b";a=b", b";a=\"x y\"", b";a;b=c"])
chunks = st.lists(st.tuples(st.binary(min_size=1, max_size=40), chunk_ext), max_size=5)
trailers = st.lists(st.tuples(field_name, field_value), min_size=1, max_size=3) | st.just([])


@st.composite
def valid_request(draw):
    method = draw(token.filter(lambda m: m != b"CONNECT"))
    tgt = draw(target)
    minor = draw(st.sampled_from([0, 1, 1, 1]))
    fields = draw(st.lists(st.tuples(field_name, field_value), max_size=8))
    fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from([b"Host", b"host", b"HOST"])),
                                                      draw(host)))
    framing = draw(st.sampled_from(["none", "length", "chunked", "chunked"] if minor else ["none", "length"]))
    body = b""
    payload = b""
    trailer_fields = []
    if framing == "length":
        payload = draw(st.binary(max_size=100))
        fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length", b"%d" % len(payload)))
        body = payload
    elif framing == "chunked":
        parts = draw(chunks)
        trailer_fields = draw(trailers)
        fields.insert(draw(st.integers(0, len(fields))), (b"Transfer-Encoding", b"chunked"))
        body = b"".join(b"%x" % len(data) + ext + b"\r\n" + data + b"\r\n" for data, ext in parts)
        body += b"0\r\n" + b"".join(n + b":" + draw(ows) + v + b"\r\n" for n, v in trailer_fields) + b"\r\n"
        payload = b"".join(data for data, _ in parts)
    wire = method + b" " + tgt + b" HTTP/1.%d\r\n" % minor
    wire += b"".join(n + b":" + draw(ows) + v + draw(ows) + b"\r\n" for n, v in fields) + b"\r\n"
    return wire, body, (method, tgt, minor, fields, payload, trailer_fields)


def read_with_h11(wire: bytes):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    payload = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            payload += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return request, payload, list(event.headers.raw_items())
        else:
            raise AssertionError(f"h11 wants more: {event!r}")


def read_with_fastmesh(wire: bytes, cut: int):
    # The head arrives in two pieces: the first parse must ask for more (or already be whole).
    consumed, h = parse_request_bytes(wire[:cut])
    if consumed == 0:
        consumed, h = parse_request_bytes(wire)
    kind, length, _ = request_framing(wire[:consumed])
    rest = wire[consumed:]
    if kind == "chunked":
        reader = ChunkedReader()
        payload = b"".join(reader.feed(rest[:cut]) + reader.feed(rest[cut:]))
        assert reader.done and reader.unused == b""
        return h, payload, reader.trailers
    assert len(rest) == max(length, 0)
    return h, rest, []


@DIFF
@given(message=valid_request(), cut=st.integers(0, 2000))
def test_agrees_with_h11_on_valid_requests(message, cut):
    wire, body, (method, tgt, minor, fields, payload, trailer_fields) = message
    event("chunked" if b"Transfer-Encoding" in wire else "length" if b"Content-Length" in wire else "none")
    event("trailers" if trailer_fields else "no trailers")
    h, our_payload, our_trailers = read_with_fastmesh(wire + body, cut)
    request, h11_payload, h11_trailers = read_with_h11(wire + body)
    assert h["method"] == request.method == method
    assert h["target"] == request.target == tgt
    assert h["version"] == (1, minor) and request.http_version == b"1.%d" % minor
    assert h["headers"] == list(request.headers.raw_items()) == fields
    assert our_payload == h11_payload == payload
    assert our_trailers == h11_trailers == trailer_fields


CHUNK_DATA, CHUNK_DATA_CR, CHUNK_TRAILERS = 4, 5, 7  # framing.pxd ChunkState values


@pytest.mark.parametrize("size", [0, 1, 9, 10, 15, 16, 255, 4096, 2 ** 32, 2 ** 63 - 1])
def test_encoded_size_lines_decode(size):
    # The encoder's size line is read back as a complete size line of the same size.
    reader = ChunkedReader()
    line = encode_chunk_size(size)
    consumed, pieces = reader.feed_raw(line + b"x")
    assert consumed == len(line) + (size > 0)
    assert reader.state == (CHUNK_TRAILERS if size == 0 else CHUNK_DATA_CR if size == 1 else CHUNK_DATA)
    assert pieces == ([b"x"] if size else [])
