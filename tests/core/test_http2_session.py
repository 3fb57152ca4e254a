"""The HTTP/2 session engine (fastmesh._core.http2.session) driven with bytes: `h2` as a real peer, `hyperframe`
and `hpack` for the frames a well-behaved peer would never send (RFC 9113's MUSTs for an intermediary)."""
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from fastmesh._core.http2.limits import H2Limits
from fastmesh._core.http2.recorder import Recorder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RECV_ERROR = -2
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED = 0, 1, 2, 3, 4, 5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"example.com"), (b":path", b"/up")]


# ---- peers and frames ----

def h2_peer(client: bool = True, settings: dict | None = None) -> h2.connection.H2Connection:
    """An h2 connection that lets us send what it would normally refuse (the session must catch it)."""
    config = h2.config.H2Configuration(client_side=client, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config)
    if settings:
        conn.local_settings = h2.settings.Settings(client=client, initial_values=settings)
    conn.initiate_connection()
    return conn


def frames(data: bytes) -> list[Frame]:
    """The frames in data (what the session queued), parsed by hyperframe."""
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def goaway(data: bytes) -> GoAwayFrame | None:
    found = [f for f in frames(data) if isinstance(f, GoAwayFrame)]
    return found[-1] if found else None


def resets(data: bytes) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in frames(data) if isinstance(f, RstStreamFrame)]


def raw(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """A frame as bytes, built by hand (hyperframe refuses to build the invalid ones)."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def block(fields, encoder: hpack.Encoder | None = None) -> bytes:
    return (encoder or hpack.Encoder()).encode(fields, huffman=False)


def headers(stream: int, fields, end_stream: bool = True, encoder=None, flags=()) -> bytes:
    f = HeadersFrame(stream, block(fields, encoder))
    f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    for flag in flags:
        f.flags.add(flag)
    return f.serialize()


def data_frame(stream: int, payload: bytes, end_stream: bool = False, pad: int = 0) -> bytes:
    f = DataFrame(stream, payload)
    if end_stream:
        f.flags.add("END_STREAM")
    if pad:
        f.flags.add("PADDED")
        f.pad_length = pad
    return f.serialize()


def server(**limits) -> Recorder:
    """A server session that has seen a client's preface and SETTINGS and ACKed them (output taken)."""
    srv = Recorder(limits=H2Limits(**limits)) if limits else Recorder()
    assert srv.feed(PREFACE + SettingsFrame(0).serialize()) == 24 + 9
    srv.take()
    srv.events.clear()
    return srv


def connected(**limits) -> tuple[Recorder, h2.connection.H2Connection]:
    """A server session and an h2 client, handshake done both ways."""
    srv = Recorder(limits=H2Limits(**limits)) if limits else Recorder()
    cli = h2_peer()
    pump(cli, srv)
    srv.events.clear()
    return srv, cli


def pump(cli: h2.connection.H2Connection, srv: Recorder) -> list:
    """Move bytes both ways until quiet; returns the h2 events the peer saw."""
    seen = []
    for _ in range(50):
        moved = False
        out = cli.data_to_send()
        if out:
            assert srv.feed(out) == len(out)
            moved = True
        back = srv.take()
        if back:
            seen.extend(cli.receive_data(back))
            moved = True
        if not moved:
            return seen
    raise AssertionError("the peers never went quiet")


def kinds(events, kind):
    return [e for e in events if e[0] == kind]


# ---- preface and SETTINGS ----

def test_server_sends_its_settings_and_window_then_acks_the_clients():
    srv = Recorder()
    first = frames(srv.take())
    assert isinstance(first[0], SettingsFrame)
    assert first[0].settings[SettingsFrame.ENABLE_PUSH] == 0
    assert first[0].settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert first[0].settings[SettingsFrame.INITIAL_WINDOW_SIZE] == H2Limits().initial_window
    assert first[0].settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    assert isinstance(first[1], WindowUpdateFrame) and first[1].stream_id == 0
    assert first[1].window_increment == 16 * 1024 * 1024 - 65535
    assert srv.feed(PREFACE[:10]) == 0                  # a partial preface waits for more
    assert srv.feed(PREFACE + SettingsFrame(0, settings={4: 1000}).serialize()) == 24 + 15
    ack = frames(srv.take())
    assert len(ack) == 1 and isinstance(ack[0], SettingsFrame) and "ACK" in ack[0].flags
    assert srv.events == [("settings",)]


def test_client_sends_the_preface_first():
    cli = Recorder(client=True)
    out = cli.take()
    assert out.startswith(PREFACE)
    assert isinstance(frames(out[24:])[0], SettingsFrame)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    PREFACE[:20] + b"XXXX",
])
def test_bad_preface_is_a_connection_error(data):
    srv = Recorder()
    srv.take()
    assert srv.feed(data) == RECV_ERROR
    assert goaway(srv.take()).error_code == PROTOCOL_ERROR
    assert srv.is_finished


def test_first_frame_must_be_settings():
    srv = Recorder()
    srv.take()
    assert srv.feed(PREFACE + PingFrame(0, b"12345678").serialize()) == RECV_ERROR
    assert goaway(srv.take()).error_code == PROTOCOL_ERROR


def test_settings_ack_timeout():
    srv = server()
    srv.at(1.0)
    assert srv.at(5.0) == 0
    assert srv.at(12.0) == RECV_ERROR
    assert goaway(srv.take()).error_code == SETTINGS_TIMEOUT


def test_settings_acked_in_time_keeps_the_connection():
    srv = server()
    srv.at(1.0)
    srv.feed(SettingsFrame(0, flags=["ACK"]).serialize())
    assert srv.at(100.0) == 0
    assert srv.take() == b""


@pytest.mark.parametrize("settings,code", [
    ({SettingsFrame.ENABLE_PUSH: 2}, PROTOCOL_ERROR),
    ({SettingsFrame.INITIAL_WINDOW_SIZE: 2 ** 31}, FLOW_CONTROL_ERROR),
    ({SettingsFrame.MAX_FRAME_SIZE: 16383}, PROTOCOL_ERROR),
    ({SettingsFrame.MAX_FRAME_SIZE: 2 ** 24}, PROTOCOL_ERROR),
    ({8: 2}, PROTOCOL_ERROR),                                      # SETTINGS_ENABLE_CONNECT_PROTOCOL
])
def test_bad_settings_values(settings, code):
    srv = server()
    assert srv.feed(SettingsFrame(0, settings=settings).serialize()) == RECV_ERROR
    assert goaway(srv.take()).error_code == code


@pytest.mark.parametrize("raw,code", [
    (b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00", FRAME_SIZE_ERROR),   # not a multiple of 6
    (b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x01", FRAME_SIZE_ERROR),  # ACK with payload
    (b"\x00\x00\x00\x04\x00\x00\x00\x00\x01", PROTOCOL_ERROR),     # SETTINGS on a stream
    (b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678", PROTOCOL_ERROR),   # PING on a stream
    (b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567", FRAME_SIZE_ERROR),  # PING of 7 bytes
    (b"\x00\x00\x08\x07\x00\x00\x00\x00\x01" + bytes(8), PROTOCOL_ERROR),      # GOAWAY on a stream
    (b"\x00\x00\x04\x07\x00\x00\x00\x00\x00" + bytes(4), FRAME_SIZE_ERROR),    # GOAWAY too short
    (b"\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"x", PROTOCOL_ERROR),          # DATA on stream 0
    (raw(1, 5, 0, block(GET)), PROTOCOL_ERROR),                                # HEADERS on stream 0
    (b"\x00\x00\x04\x03\x00\x00\x00\x00\x00" + bytes(4), PROTOCOL_ERROR),      # RST_STREAM on stream 0
    (b"\x00\x00\x05\x02\x00\x00\x00\x00\x00" + bytes(5), PROTOCOL_ERROR),      # PRIORITY on stream 0
    (raw(3, 0, 1, bytes(4)), PROTOCOL_ERROR),                                  # RST_STREAM on idle stream 1
    (raw(3, 0, 1, bytes(3)), FRAME_SIZE_ERROR),                                # RST_STREAM of 3 bytes
    (b"\x00\x00\x05\x08\x00\x00\x00\x00\x00" + bytes(5), FRAME_SIZE_ERROR),    # WINDOW_UPDATE of 5 bytes
    (raw(8, 0, 0, bytes(4)), PROTOCOL_ERROR),                                  # WINDOW_UPDATE 0 on the connection
    (WindowUpdateFrame(3, 10).serialize(), PROTOCOL_ERROR),                    # WINDOW_UPDATE on idle stream 3
    (data_frame(1, b"x"), PROTOCOL_ERROR),                                     # DATA on idle stream 1
    (headers(2, GET), PROTOCOL_ERROR),                                         # an even (server) stream id
    (PushPromiseFrame(1, promised_stream_id=2, data=block(GET), flags=["END_HEADERS"]).serialize(),
     PROTOCOL_ERROR),                                                          # a client cannot push
    (ContinuationFrame(1, block(GET), flags=["END_HEADERS"]).serialize(), PROTOCOL_ERROR),   # no HEADERS before
])
def test_connection_errors(raw, code):
    srv = server()
    assert srv.feed(raw) == RECV_ERROR
    assert goaway(srv.take()).error_code == code
    assert srv.is_finished


def test_oversize_frame():
    srv = server()
    big = data_frame(1, b"x" * 16385)
    assert srv.feed(headers(1, POST, end_stream=False) + big) == RECV_ERROR
    assert goaway(srv.take()).error_code == FRAME_SIZE_ERROR
    assert ("reset", 1, FRAME_SIZE_ERROR) in srv.events and ("closed", 1) in srv.events


# ---- requests and responses ----

def test_request_and_response_with_h2_as_the_client():
    srv, cli = connected()
    cli.send_headers(1, GET + [(b"user-agent", b"t"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], end_stream=True)
    pump(cli, srv)
    (ev,) = srv.events
    assert ev == ("headers", 1, GET + [(b"user-agent", b"t"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], True)
    srv.events.clear()
    srv.respond(1, 200, [(b"Content-Type", b"text/plain"), (b"content-length", b"5")])
    assert srv.send(1, b"hello", True) == 5
    seen = pump(cli, srv)
    resp = [e for e in seen if isinstance(e, h2.events.ResponseReceived)][0]
    assert resp.headers == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert b"".join(e.data for e in seen if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert any(isinstance(e, h2.events.StreamEnded) for e in seen)
    assert srv.events == [("closed", 1)]
    assert srv.stream(1) is None


def test_request_body_and_trailers_both_ways():
    srv, cli = connected()
    cli.send_headers(1, POST + [(b"te", b"trailers")], end_stream=False)
    cli.send_data(1, b"abc")
    cli.send_data(1, b"def")
    cli.send_headers(1, [(b"x-sum", b"1")], end_stream=True)
    pump(cli, srv)
    assert srv.events == [("headers", 1, POST + [(b"te", b"trailers")], False), ("data", 1, b"abc", False),
                          ("data", 1, b"def", False), ("trailers", 1, [(b"x-sum", b"1")])]
    srv.events.clear()
    srv.respond(1, 200)
    srv.send(1, b"body")
    srv.trailers(1, [(b"grpc-status", b"0")])
    seen = pump(cli, srv)
    trailers = [e for e in seen if isinstance(e, h2.events.TrailersReceived)]
    assert trailers[0].headers == [(b"grpc-status", b"0")]
    assert srv.events == [("closed", 1)]


def test_send_headers_drops_connection_specific_fields_and_lowercases():
    srv, cli = connected()
    cli.send_headers(1, GET, end_stream=True)
    pump(cli, srv)
    base = b"Connection: closeKeep-Alive: 5X-Name: vTransfer-Encoding: chunkedTE: gzip"
    offsets = [(0, 10, 12, 5), (17, 10, 29, 1), (30, 6, 38, 1), (39, 17, 58, 7), (65, 2, 69, 4)]
    srv.respond_fields(1, 204, base, offsets, end=True)
    seen = pump(cli, srv)
    resp = [e for e in seen if isinstance(e, h2.events.ResponseReceived)][0]
    assert resp.headers == [(b":status", b"204"), (b"x-name", b"v")]


def test_client_role_against_an_h2_server():
    cli = Recorder(client=True)
    peer = h2_peer(client=False)
    peer.receive_data(cli.take())
    cli.feed(peer.data_to_send())
    peer.receive_data(cli.take())
    sid = cli.request(GET + [(b"Accept", b"*/*")])
    assert sid == 1
    evs = peer.receive_data(cli.take())
    req = [e for e in evs if isinstance(e, h2.events.RequestReceived)][0]
    assert req.headers == GET + [(b"accept", b"*/*")]                 # names lowercased on the way out
    peer.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
    peer.send_headers(1, [(b":status", b"200"), (b"content-length", b"3")])
    peer.send_data(1, b"abc")
    peer.send_headers(1, [(b"x-t", b"1")], end_stream=True)
    cli.events.clear()
    cli.feed(peer.data_to_send())
    assert cli.events == [
        ("headers", 1, [(b":status", b"103"), (b"link", b"</a>")], False),
        ("headers", 1, [(b":status", b"200"), (b"content-length", b"3")], False),
        ("data", 1, b"abc", False), ("trailers", 1, [(b"x-t", b"1")]), ("closed", 1)]
    assert cli.request(GET) == 3                                       # ids go up by two


def test_client_head_request_content_length_promises_no_body():
    cli = Recorder(client=True)
    peer = h2_peer(client=False)
    peer.receive_data(cli.take())
    cli.feed(peer.data_to_send())
    sid = cli.request([(b":method", b"HEAD")] + GET[1:])
    peer.receive_data(cli.take())
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100")], end_stream=True)
    cli.events.clear()
    cli.feed(peer.data_to_send())
    assert cli.events[0][0] == "headers" and cli.events[-1] == ("closed", 1)
    assert not kinds(cli.events, "reset")


def test_client_role_response_errors_reset_the_stream():
    cli = Recorder(client=True)
    cli.feed(SettingsFrame(0).serialize())
    cli.take()
    cli.request(GET)
    cli.take()
    enc = hpack.Encoder()
    cli.feed(headers(1, [(b"content-type", b"x")], end_stream=False, encoder=enc))   # no :status
    assert resets(cli.take()) == [(1, PROTOCOL_ERROR)]
    assert ("reset", 1, PROTOCOL_ERROR) in cli.events
    cli.request(GET)
    cli.take()
    cli.feed(headers(3, [(b":status", b"101")], end_stream=False, encoder=enc))
    assert resets(cli.take()) == [(3, PROTOCOL_ERROR)]


def test_a_server_does_not_open_streams_to_the_client():
    cli = Recorder(client=True)
    cli.feed(SettingsFrame(0).serialize())
    cli.take()
    assert cli.feed(headers(1, [(b":status", b"200")])) == RECV_ERROR
    assert goaway(cli.take()).error_code == PROTOCOL_ERROR


def test_push_promise_to_a_client_is_refused():
    cli = Recorder(client=True)
    cli.feed(SettingsFrame(0).serialize())
    cli.request(GET)
    cli.take()
    pp = PushPromiseFrame(1, promised_stream_id=2, data=block(GET), flags=["END_HEADERS"]).serialize()
    assert cli.feed(pp) == RECV_ERROR
    assert goaway(cli.take()).error_code == PROTOCOL_ERROR


def test_server_enable_push_1_is_an_error_for_a_client():
    cli = Recorder(client=True)
    assert cli.feed(SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 1}).serialize()) == RECV_ERROR


# ---- stream states and ids ----

def test_decreasing_stream_id():
    srv = server()
    enc = hpack.Encoder()
    srv.feed(headers(5, GET, encoder=enc))
    srv.respond(5, 200, end=True)
    srv.take()
    assert srv.feed(headers(3, GET, encoder=enc)) == RECV_ERROR
    assert goaway(srv.take()).error_code == PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed():
    srv = server()
    srv.feed(headers(1, GET))
    srv.take()
    srv.feed(data_frame(1, b"late"))
    assert resets(srv.take()) == [(1, STREAM_CLOSED)]
    assert ("reset", 1, STREAM_CLOSED) in srv.events


def test_data_on_a_closed_stream_is_stream_closed():
    srv = server()
    srv.feed(headers(1, GET))
    srv.respond(1, 200, end=True)
    srv.take()
    srv.feed(data_frame(1, b"late"))
    assert resets(srv.take()) == [(1, STREAM_CLOSED)]


def test_frames_after_our_reset_are_ignored():
    srv = server()
    srv.feed(headers(1, POST, end_stream=False))
    srv.rst(1, CANCEL)
    assert resets(srv.take()) == [(1, CANCEL)]
    assert srv.feed(data_frame(1, b"in flight") + WindowUpdateFrame(1, 100).serialize()) > 0
    assert srv.take() == b""
    assert srv.events[-1] == ("closed", 1)


def test_headers_after_the_peer_reset_is_stream_closed():
    srv = server()
    enc = hpack.Encoder()
    srv.feed(headers(1, POST, end_stream=False, encoder=enc))
    srv.feed(RstStreamFrame(1, CANCEL).serialize())
    assert srv.events[-2:] == [("reset", 1, CANCEL), ("closed", 1)]
    assert srv.feed(headers(1, [(b"x", b"y")], encoder=enc)) == RECV_ERROR
    assert goaway(srv.take()).error_code == STREAM_CLOSED


def test_rst_stream_both_ways_with_h2():
    srv, cli = connected()
    cli.send_headers(1, POST, end_stream=False)
    cli.send_headers(3, POST, end_stream=False)
    pump(cli, srv)
    cli.reset_stream(1, CANCEL)
    pump(cli, srv)
    assert srv.events[-2:] == [("reset", 1, CANCEL), ("closed", 1)]
    srv.rst(3, INTERNAL_ERROR)
    seen = pump(cli, srv)
    assert [(e.stream_id, e.error_code) for e in seen if isinstance(e, h2.events.StreamReset)] == [(3, 2)]
    assert srv.events[-1] == ("closed", 3)
    assert srv.resets_sent == 1 and srv.resets_received == 1


def test_priority_is_parsed_and_ignored():
    srv = server()
    srv.feed(PriorityFrame(3, depends_on=1, stream_weight=10).serialize())   # on an idle stream: allowed
    srv.feed(headers(1, GET, flags=["PRIORITY"]))
    assert srv.events[0][:2] == ("headers", 1)
    assert srv.take() == b""
    srv.feed(b"\x00\x00\x04\x02\x00\x00\x00\x00\x05" + bytes(4))                # 4 bytes: FRAME_SIZE_ERROR
    assert resets(srv.take()) == [(5, FRAME_SIZE_ERROR)]
    srv.feed(PriorityFrame(7, depends_on=7).serialize())                      # depends on itself
    assert resets(srv.take()) == [(7, PROTOCOL_ERROR)]


def test_headers_depending_on_itself_is_a_stream_error():
    srv = server()
    f = HeadersFrame(1, block(GET), depends_on=1, stream_weight=16,
                     flags=["END_HEADERS", "END_STREAM", "PRIORITY"])
    srv.feed(f.serialize())
    assert resets(srv.take()) == [(1, PROTOCOL_ERROR)]
    assert not kinds(srv.events, "headers")


def test_padding_on_data_and_headers():
    srv = server()
    f = HeadersFrame(1, block(POST), pad_length=7, flags=["END_HEADERS", "PADDED"])
    srv.feed(f.serialize() + data_frame(1, b"payload", end_stream=True, pad=20))
    assert srv.events == [("headers", 1, POST, False), ("data", 1, b"payload", True)]


def test_padding_longer_than_the_frame():
    srv = server()
    srv.feed(headers(1, POST, end_stream=False))
    bad = b"\x00\x00\x03\x00\x08\x00\x00\x00\x01" + b"\x05ab"
    assert srv.feed(bad) == RECV_ERROR
    assert goaway(srv.take()).error_code == PROTOCOL_ERROR


def test_unknown_frame_types_are_ignored():
    srv = server()
    srv.feed(raw(0xfa, 0xff, 0, b"whatever") + raw(0xfb, 0, 1, b"") + headers(1, GET))
    assert srv.events[0][:2] == ("headers", 1)


# ---- header blocks: CONTINUATION ----

def test_headers_split_over_continuation():
    srv = server()
    b = block(GET + [(b"x-long", b"v" * 100)])
    f1 = HeadersFrame(1, b[:10], flags=["END_STREAM"]).serialize()
    f2 = ContinuationFrame(1, b[10:50]).serialize()
    f3 = ContinuationFrame(1, b[50:], flags=["END_HEADERS"]).serialize()
    srv.feed(f1 + f2 + f3)
    assert srv.events == [("headers", 1, GET + [(b"x-long", b"v" * 100)], True)]


@pytest.mark.parametrize("between", [
    data_frame(3, b"x"),
    headers(3, GET),
    PingFrame(0, b"12345678").serialize(),
    ContinuationFrame(3, b"", flags=["END_HEADERS"]).serialize(),
])
def test_continuation_interleaved(between):
    srv = server()
    b = block(GET)
    srv.feed(HeadersFrame(1, b[:5], flags=["END_STREAM"]).serialize())
    assert srv.feed(between + ContinuationFrame(1, b[5:], flags=["END_HEADERS"]).serialize()) == RECV_ERROR
    assert goaway(srv.take()).error_code == PROTOCOL_ERROR


def test_bad_hpack_is_a_compression_error():
    srv = server()
    bad = HeadersFrame(1, b"\xff\xff\xff\xff\x0f", flags=["END_HEADERS", "END_STREAM"]).serialize()
    assert srv.feed(bad) == RECV_ERROR
    assert goaway(srv.take()).error_code == COMPRESSION_ERROR


# ---- header validation (RFC 9113 8.2, 8.3) ----

@pytest.mark.parametrize("fields", [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],                      # no :path
    [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],                           # no :scheme
    [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],                          # no :method
    GET + [(b":method", b"GET")],                                                              # :method twice
    [(b":method", b"GET"), (b":scheme", b"http"), (b"x", b"y"), (b":path", b"/")],            # pseudo after a field
    GET + [(b":status", b"200")],                                                              # response pseudo
    GET + [(b":foo", b"bar")],                                                                 # unknown pseudo
    GET + [(b":protocol", b"websocket")],                                                      # not offered
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"")],     # empty :path
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"x")],    # not absolute
    [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],                   # CONNECT + :path
    [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":authority", b"a:443")],              # CONNECT + :scheme
    GET + [(b"X-Upper", b"v")],                                                                # uppercase name
    GET + [(b"x name", b"v")],                                                                 # space in name
    GET + [(b"x:y", b"v")],                                                                    # colon in name
    GET + [(b"connection", b"close")],
    GET + [(b"keep-alive", b"5")],
    GET + [(b"proxy-connection", b"keep-alive")],
    GET + [(b"transfer-encoding", b"chunked")],
    GET + [(b"upgrade", b"h2c")],
    GET + [(b"te", b"gzip")],
    GET + [(b"x", b" leading")],
    GET + [(b"x", b"trailing\t")],
    GET + [(b"x", b"a\r\nb: c")],
    GET + [(b"x", b"a\x00b")],
    GET + [(b"x", b"a\nb")],
    GET + [(b"host", b"other.example")],                                                       # Host != :authority
    GET + [(b"content-length", b"abc")],
    GET + [(b"content-length", b"1"), (b"content-length", b"2")],
    GET + [(b"content-length", b"5")],                                                         # END_STREAM, no body
])
def test_malformed_requests_are_stream_errors(fields):
    srv = server()
    srv.feed(headers(1, fields))
    assert resets(srv.take()) == [(1, PROTOCOL_ERROR)]
    assert srv.events == []                           # the I/O layer never heard of the stream
    srv.feed(headers(3, GET))                          # the connection goes on
    assert srv.events[0][:2] == ("headers", 3)


@pytest.mark.parametrize("fields", [
    GET + [(b"te", b"trailers")],
    GET + [(b"te", b"Trailers")],
    GET + [(b"host", b"EXAMPLE.com")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"*")],
    GET + [(b"x", b"")],
    GET + [(b"x", b"inner space ok")],
])
def test_wellformed_requests_pass(fields):
    srv = server()
    srv.feed(headers(1, fields))
    assert srv.events == [("headers", 1, fields, True)]


def test_content_length_vs_data():
    srv = server()
    enc = hpack.Encoder()
    srv.feed(headers(1, POST + [(b"content-length", b"3")], end_stream=False, encoder=enc))
    srv.feed(data_frame(1, b"ab", end_stream=True))                    # fewer
    assert resets(srv.take()) == [(1, PROTOCOL_ERROR)]
    srv.feed(headers(3, POST + [(b"content-length", b"3")], end_stream=False, encoder=enc))
    srv.feed(data_frame(3, b"abcd"))                                    # more
    assert resets(srv.take()) == [(3, PROTOCOL_ERROR)]
    srv.feed(headers(5, POST + [(b"content-length", b"3")], end_stream=False, encoder=enc))
    srv.feed(data_frame(5, b"ab") + headers(5, [(b"x", b"y")], encoder=enc))   # trailers end it short
    assert resets(srv.take()) == [(5, PROTOCOL_ERROR)]
    srv.feed(headers(7, POST + [(b"content-length", b"3")], end_stream=False, encoder=enc))
    srv.feed(data_frame(7, b"a") + data_frame(7, b"bc", end_stream=True))
    assert srv.take() == b"" and srv.events[-1] == ("data", 7, b"bc", True)


def test_trailers_must_end_the_stream_and_carry_no_pseudo_headers():
    srv = server()
    enc = hpack.Encoder()
    srv.feed(headers(1, POST, end_stream=False, encoder=enc))
    srv.feed(headers(1, [(b"x", b"y")], end_stream=False, encoder=enc))
    assert resets(srv.take()) == [(1, PROTOCOL_ERROR)]
    srv.feed(headers(3, POST, end_stream=False, encoder=enc))
    srv.feed(headers(3, [(b":path", b"/")], end_stream=True, encoder=enc))
    assert resets(srv.take()) == [(3, PROTOCOL_ERROR)]


def test_header_list_too_large_is_answered_431():
    srv, cli = connected(max_header_list_size=4096)
    cli.send_headers(1, GET + [(b"x-big", b"v" * 5000)], end_stream=True)
    seen = pump(cli, srv)
    resp = [e for e in seen if isinstance(e, h2.events.ResponseReceived)][0]
    assert resp.headers[0] == (b":status", b"431")
    assert any(isinstance(e, h2.events.StreamEnded) for e in seen)
    assert srv.events == [("rejected", 1, 431), ("closed", 1)]
    cli.send_headers(3, GET, end_stream=True)                       # HPACK stayed in sync
    pump(cli, srv)
    assert srv.events[-1] == ("headers", 3, GET, True)


# ---- flow control ----

def test_large_response_through_small_windows():
    srv = Recorder()
    cli = h2_peer(settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pump(cli, srv)
    cli.send_headers(1, GET, end_stream=True)
    pump(cli, srv)
    body = bytes(range(256)) * 1000                                 # 256000 bytes
    srv.respond(1, 200)
    sent = srv.send(1, body, True)
    assert sent == 1000                                             # the stream window
    assert srv.window_of(1) == 0
    got = bytearray()
    windows = 0
    for _ in range(2000):
        evs = cli.receive_data(srv.take())
        for e in evs:
            if isinstance(e, h2.events.DataReceived):
                got += e.data
                cli.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        out = cli.data_to_send()
        if out:
            srv.feed(out)
        while ("window", 1) in srv.events:
            srv.events.remove(("window", 1))
            windows += 1
            sent += srv.send(1, body[sent:], True)
        if len(got) == len(body):
            break
    assert sent == len(body)
    assert bytes(got) == body
    assert windows > 100


def test_connection_window_limits_all_streams():
    srv = Recorder()
    cli = h2_peer(settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 20})
    pump(cli, srv)
    cli.send_headers(1, GET, end_stream=True)
    cli.send_headers(3, GET, end_stream=True)
    pump(cli, srv)
    assert srv.connection_windows[0] == 65535                      # the client never raised its connection window
    srv.respond(1, 200)
    srv.respond(3, 200)
    assert srv.send(1, b"x" * 60000) == 60000
    assert srv.send(3, b"y" * 60000) == 5535
    cli.increment_flow_control_window(100000)
    pump(cli, srv)
    assert ("window", 3) in srv.events


def test_receive_window_updates_at_half_a_window():
    srv, cli = connected(initial_window=65535, connection_window=65535 * 4)
    cli.send_headers(1, POST, end_stream=False)
    pump(cli, srv)
    frames_seen = []
    total = 0
    for _ in range(64):                                  # 1 MiB in 16 KiB frames
        cli.send_data(1, b"z" * 16384)
        srv.feed(cli.data_to_send())
        out = srv.take()
        frames_seen += frames(out)
        cli.receive_data(out)
        total += 16384
    updates = [f for f in frames_seen if isinstance(f, WindowUpdateFrame)]
    stream_updates = [f.window_increment for f in updates if f.stream_id == 1]
    conn_updates = [f.window_increment for f in updates if f.stream_id == 0]
    # Neither one per frame (flood) nor too few (stall): about one per half window.
    assert all(inc >= 65535 // 2 for inc in stream_updates)
    assert total // 65535 <= len(stream_updates) <= 2 * total // 65535 + 1
    assert conn_updates and all(inc >= 65535 * 2 for inc in conn_updates)
    assert sum(len(e[2]) for e in kinds(srv.events, "data")) == total


def test_no_credit_until_the_io_layer_consumed():
    srv = Recorder(auto_consume=False, limits=H2Limits(initial_window=65535))
    cli = h2_peer()
    pump(cli, srv)
    cli.send_headers(1, POST, end_stream=False)
    cli.send_data(1, b"a" * 16384)
    cli.send_data(1, b"a" * 16384)
    cli.send_data(1, b"a" * 16384)
    cli.send_data(1, b"a" * 16383)
    pump(cli, srv)
    assert cli.local_flow_control_window(1) == 0
    assert srv.stream(1).windows[1] == 0
    # One more byte overruns the stream window: a stream error FLOW_CONTROL_ERROR.
    srv.feed(data_frame(1, b"!"))
    assert resets(srv.take()) == [(1, FLOW_CONTROL_ERROR)]


def test_consumed_credits_the_peer():
    srv = Recorder(auto_consume=False, limits=H2Limits(initial_window=65535))
    cli = h2_peer()
    pump(cli, srv)
    cli.send_headers(1, POST, end_stream=False)
    for _ in range(4):
        cli.send_data(1, b"a" * 10000)
    pump(cli, srv)
    srv.consume(1, 20000)
    assert srv.take() == b""                                        # less than half a window
    srv.consume(1, 20000)
    ups = [(f.stream_id, f.window_increment) for f in frames(srv.take()) if isinstance(f, WindowUpdateFrame)]
    assert ups == [(1, 40000)]


def test_unconsumed_data_of_a_closed_stream_is_credited_to_the_connection():
    srv = Recorder(auto_consume=False, limits=H2Limits(initial_window=65535, connection_window=65535))
    cli = h2_peer()
    pump(cli, srv)
    cli.send_headers(1, POST, end_stream=False)
    for _ in range(4):
        cli.send_data(1, b"a" * 10000)
    pump(cli, srv)
    assert srv.connection_windows[1] == 65535 - 40000
    cli.reset_stream(1, CANCEL)
    pump(cli, srv)
    assert srv.connection_windows[1] == 65535
    assert cli.outbound_flow_control_window == 65535


def test_a_smaller_stream_window_binds_only_once_acked():
    srv = Recorder(auto_consume=False, limits=H2Limits(initial_window=1000))
    srv.feed(PREFACE + SettingsFrame(0).serialize())
    srv.take()
    enc = hpack.Encoder()
    srv.feed(headers(1, POST, end_stream=False, encoder=enc) + data_frame(1, b"x" * 16000))
    assert resets(srv.take()) == []                     # the client had not seen our SETTINGS yet (6.9.3)
    assert srv.stream(1).windows[1] == 65535 - 16000
    srv.feed(SettingsFrame(0, flags=["ACK"]).serialize())
    assert srv.stream(1).windows[1] == 1000 - 16000
    srv.feed(headers(3, POST, end_stream=False, encoder=enc) + data_frame(3, b"x" * 1001))
    assert resets(srv.take()) == [(3, FLOW_CONTROL_ERROR)]


def test_window_update_overflow():
    srv, cli = connected()
    assert srv.feed(WindowUpdateFrame(0, 2 ** 31 - 1).serialize()) == RECV_ERROR
    assert goaway(srv.take()).error_code == FLOW_CONTROL_ERROR
    srv = server()
    srv.feed(headers(1, GET))
    srv.feed(WindowUpdateFrame(1, 2 ** 31 - 1).serialize())
    assert resets(srv.take()) == [(1, FLOW_CONTROL_ERROR)]
    srv.feed(headers(3, GET))
    srv.feed(b"\x00\x00\x04\x08\x00\x00\x00\x00\x03" + bytes(4))  # increment 0 on a stream
    assert resets(srv.take()) == [(3, PROTOCOL_ERROR)]


def test_initial_window_change_overflowing_a_stream():
    srv = server()
    srv.feed(headers(1, GET))
    srv.feed(WindowUpdateFrame(1, 2 ** 31 - 1 - 65535).serialize())
    assert srv.take() == b""
    assert srv.feed(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65536}).serialize()) == RECV_ERROR
    assert goaway(srv.take()).error_code == FLOW_CONTROL_ERROR


def test_settings_shrinking_the_window_makes_it_negative_then_recovers():
    srv, cli = connected()
    cli.send_headers(1, GET, end_stream=True)
    pump(cli, srv)
    assert srv.send(1, b"x" * 30000) == 30000
    srv.take()
    srv.feed(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 10000}).serialize())
    assert srv.stream(1).windows[0] == 10000 - 30000
    assert srv.send(1, b"y") == 0
    srv.feed(WindowUpdateFrame(1, 20001).serialize())
    assert ("window", 1) in srv.events
    assert srv.send(1, b"y", True) == 1


# ---- PING and GOAWAY ----

def test_ping_is_answered_and_ours_acknowledged():
    srv = server()
    srv.feed(PingFrame(0, b"abcdefgh").serialize())
    (ack,) = frames(srv.take())
    assert isinstance(ack, PingFrame) and "ACK" in ack.flags and ack.opaque_data == b"abcdefgh"
    srv.send_ping()
    (ours,) = frames(srv.take())
    srv.feed(PingFrame(0, ours.opaque_data, flags=["ACK"]).serialize())
    assert srv.events == [("ping_ack",)]


def test_graceful_goaway_two_steps():
    srv, cli = connected()
    cli.send_headers(1, POST, end_stream=False)
    pump(cli, srv)
    srv.go_away(graceful=True)
    out = frames(srv.take())
    assert isinstance(out[0], GoAwayFrame) and out[0].last_stream_id == 2 ** 31 - 1
    assert isinstance(out[1], PingFrame)
    # A stream the client opened before it saw the GOAWAY is still served.
    srv.feed(headers(3, GET, encoder=cli.encoder))
    assert srv.events[-1][:2] == ("headers", 3)
    srv.feed(PingFrame(0, out[1].opaque_data, flags=["ACK"]).serialize())
    final = goaway(srv.take())
    assert final.last_stream_id == 3 and final.error_code == NO_ERROR
    srv.feed(headers(5, GET, encoder=cli.encoder))                  # above the last id: ignored
    assert srv.events[-1][:2] != ("headers", 5) and srv.take() == b""
    assert not srv.is_finished
    srv.respond(3, 200, end=True)
    srv.feed(data_frame(1, b"", end_stream=True))
    srv.respond(1, 200, end=True)
    assert srv.is_finished


def test_graceful_goaway_without_ping_ack_finishes_on_tick():
    srv = server()
    srv.at(1.0)
    srv.feed(SettingsFrame(0, flags=["ACK"]).serialize())
    srv.go_away(graceful=True)
    srv.take()
    srv.at(3.0)
    assert srv.take() == b""
    srv.at(7.0)
    final = goaway(srv.take())
    assert final.last_stream_id == 0
    assert srv.is_finished


def test_goaway_with_an_error_fails_every_stream():
    srv = server()
    srv.feed(headers(1, POST, end_stream=False))
    srv.go_away(INTERNAL_ERROR)
    assert goaway(srv.take()).error_code == INTERNAL_ERROR
    assert srv.events[-2:] == [("reset", 1, INTERNAL_ERROR), ("closed", 1)]
    assert srv.is_finished


def test_goaway_received_by_a_client():
    cli = Recorder(client=True)
    peer = h2_peer(client=False)
    peer.receive_data(cli.take())
    cli.feed(peer.data_to_send())
    for _ in range(3):
        cli.request(GET)
    peer.receive_data(cli.take())
    cli.events.clear()
    cli.feed(GoAwayFrame(0, last_stream_id=3, error_code=NO_ERROR).serialize())
    assert ("reset", 5, REFUSED_STREAM) in cli.events and ("closed", 5) in cli.events
    assert cli.events[-1] == ("goaway", 3, NO_ERROR)
    assert cli.request(GET) is None
    assert not cli.is_finished                                      # streams 1 and 3 may still finish
    peer.send_headers(1, [(b":status", b"200")], end_stream=True)
    peer.send_headers(3, [(b":status", b"200")], end_stream=True)
    cli.feed(peer.data_to_send())
    assert cli.is_finished


def test_goaway_received_by_a_server():
    srv = server()
    srv.feed(headers(1, GET))
    srv.feed(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR).serialize())
    assert srv.events[-1] == ("goaway", 0, NO_ERROR)
    assert not srv.is_finished
    srv.respond(1, 200, end=True)
    assert srv.is_finished


def test_client_respects_max_concurrent_streams():
    cli = Recorder(client=True)
    cli.feed(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 2}).serialize())
    assert cli.request(GET) == 1 and cli.request(GET) == 3
    assert cli.request(GET) is None
    enc = hpack.Encoder()
    cli.feed(headers(1, [(b":status", b"200")], encoder=enc))
    assert cli.request(GET) == 5
