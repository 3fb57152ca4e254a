"""HTTP/2 frame codec (fastmesh._core.http2.frames) against hyperframe, and the stream state table (streams)."""
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame

from fastmesh._core.http2.frames import decode_header, encode_frame, encode_headers, unpad
from fastmesh._core.http2.streams import next_state

IDLE, RESERVED_LOCAL, RESERVED_REMOTE, OPEN, HALF_LOCAL, HALF_REMOTE, CLOSED = range(7)
SEND_HEADERS, RECV_HEADERS, SEND_END, RECV_END, SEND_RST, RECV_RST = range(6)


def parse(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


@pytest.mark.parametrize("ftype,flags,stream,payload", [
    (0, 1, 1, b"hello"), (6, 0, 0, b"12345678"), (8, 0, 2 ** 31 - 1, b"\x00\x00\x01\x00"), (0xfa, 0xff, 7, b""),
])
def test_encode_and_decode_header(ftype, flags, stream, payload):
    data = encode_frame(ftype, flags, stream, payload)
    assert decode_header(data) == (len(payload), ftype, flags, stream)
    assert data[9:] == payload
    assert data == len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def test_reserved_bit_is_cleared_on_read():
    assert decode_header(b"\x00\x00\x00\x00\x00\x80\x00\x00\x03")[3] == 3


def test_data_frame_matches_hyperframe():
    (f,) = parse(encode_frame(0, 1, 5, b"abc"))
    assert isinstance(f, DataFrame) and f.data == b"abc" and "END_STREAM" in f.flags and f.stream_id == 5


@pytest.mark.parametrize("size,max_frame,count", [(10, 16384, 1), (16384, 16384, 1), (16385, 16384, 2),
                                                  (50000, 16384, 4), (0, 16384, 1)])
def test_header_block_split_into_continuation(size, max_frame, count):
    block = bytes(i % 251 for i in range(size))
    out = parse(encode_headers(3, block, True, max_frame))
    assert len(out) == count
    assert isinstance(out[0], HeadersFrame) and "END_STREAM" in out[0].flags
    assert all(isinstance(f, ContinuationFrame) and "END_STREAM" not in f.flags for f in out[1:])
    assert ["END_HEADERS" in f.flags for f in out] == [False] * (count - 1) + [True]
    assert b"".join(f.data for f in out) == block


def test_padding():
    padded = DataFrame(1, b"body", pad_length=10, flags=["PADDED"]).serialize()[9:]
    assert unpad(0x8, padded) == b"body"
    assert unpad(0x8, b"\x05abc") is None                # pad length beyond the payload
    assert unpad(0x8, b"") is None
    assert unpad(0, b"plain") == b"plain"
    prio = HeadersFrame(1, b"blk", depends_on=3, stream_weight=10, pad_length=2,
                        flags=["PADDED", "PRIORITY"]).serialize()[9:]
    assert unpad(0x28, prio, True) == b"blk"
    assert unpad(0x20, b"\x00\x00\x00", True) is None    # priority fields cut short


@pytest.mark.parametrize("state,event,after", [
    (IDLE, RECV_HEADERS, OPEN), (IDLE, SEND_HEADERS, OPEN), (IDLE, RECV_END, -1), (IDLE, RECV_RST, -1),
    (OPEN, RECV_END, HALF_REMOTE), (OPEN, SEND_END, HALF_LOCAL), (OPEN, RECV_RST, CLOSED), (OPEN, SEND_RST, CLOSED),
    (HALF_REMOTE, SEND_HEADERS, HALF_REMOTE), (HALF_REMOTE, RECV_HEADERS, -1), (HALF_REMOTE, SEND_END, CLOSED),
    (HALF_LOCAL, RECV_HEADERS, HALF_LOCAL), (HALF_LOCAL, SEND_HEADERS, -1), (HALF_LOCAL, RECV_END, CLOSED),
    (RESERVED_LOCAL, SEND_HEADERS, HALF_REMOTE), (RESERVED_REMOTE, RECV_HEADERS, HALF_LOCAL),
    (CLOSED, RECV_HEADERS, -1), (CLOSED, SEND_RST, -1),
])
def test_stream_transitions(state, event, after):
    assert next_state(state, event) == after


def test_every_closed_transition_is_invalid():
    assert all(next_state(CLOSED, e) == -1 for e in range(6))
    with pytest.raises(ValueError):
        next_state(7, 0)
