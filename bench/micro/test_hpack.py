"""Micro-benchmark of HPACK: fastmesh's compiled decoder and encoder against the pure-Python `hpack` package.

Blocks: a typical request (:method, :scheme, :authority, :path, user-agent, accept, accept-encoding, cookie) and a
typical response (:status 200 and seven fields). Each is measured
  - cold: the first block of a connection (empty dynamic table: every field a literal, most inserted);
  - warm: the same block again (every field now in the dynamic table: one byte each).
The blocks our decoder reads are the ones the `hpack` package writes (any peer's encoder would do).
For fastmesh, bench_decode / bench_encode run the cdef path COUNT times in C (round time / COUNT = one block,
ns_per_block in extra_info); the cold loop empties the table before each block. "py" is Decoder.decode_block,
which also builds a bytes object per name and value (what a Python caller pays; the data path does not).
"no-index" encodes without the dynamic table (no hashing, no insertion): what the table costs and saves.
Run: pytest bench/micro/test_hpack.py --benchmark-only -o addopts=""
"""
import hpack
import pytest

from fastmesh._core.http2.hpack import Decoder, Encoder, bench_decode, bench_encode

COUNT = 1_000  # short rounds: on a shared machine the median then skips preempted ones

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"www.example.com"),
    (b":path", b"/static/app/main.3f9a1c.js?v=20240601"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"cookie", b"session=8f2b1c3d4e5f60718293a4b5c6d7e8f9; theme=dark; lang=en"),
]
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/json"),
    (b"content-length", b"1234"),
    (b"date", b"Mon, 02 Dec 2024 04:00:00 GMT"),
    (b"server", b"fastmesh"),
    (b"cache-control", b"no-cache"),
    (b"vary", b"accept-encoding"),
    (b"x-request-id", b"6f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f"),
]
BLOCKS = {"request": REQUEST, "response": RESPONSE}


def wire(name):
    """The first and the repeated block as the hpack package encodes them."""
    enc = hpack.Encoder()
    return enc.encode(BLOCKS[name]), enc.encode(BLOCKS[name])


def record(benchmark, divisor=1, **info):
    benchmark.extra_info["ns_per_block"] = round(benchmark.stats.stats.median / divisor * 1e9, 1)
    benchmark.extra_info.update(info)


def test_blocks_are_what_the_names_say():
    for name, fields in BLOCKS.items():
        first, again = wire(name)
        assert Decoder().decode_block(first) == fields
        d = Decoder()
        d.decode_block(first)
        assert d.decode_block(again) == fields and len(again) == len(fields)
        ours = Encoder()
        assert hpack.Decoder().decode(ours.encode_block(fields), raw=True) == fields
    assert len(REQUEST) == 8


@pytest.mark.parametrize("table", ["cold", "warm"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_decode_fastmesh(benchmark, name, table):
    first, again = wire(name)
    if table == "cold":
        total = benchmark(bench_decode, b"", first, COUNT, True)
    else:
        total = benchmark(bench_decode, first, again, COUNT, False)
    assert total == COUNT * len(BLOCKS[name])
    record(benchmark, COUNT, wire_bytes=len(first if table == "cold" else again))


@pytest.mark.parametrize("table", ["cold", "warm"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_decode_fastmesh_py(benchmark, name, table):
    first, again = wire(name)
    if table == "cold":
        result = benchmark(lambda: Decoder().decode_block(first))
    else:
        d = Decoder()
        d.decode_block(first)
        result = benchmark(d.decode_block, again)
    assert result == BLOCKS[name]
    record(benchmark)


@pytest.mark.parametrize("table", ["cold", "warm"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_decode_hpack(benchmark, name, table):
    first, again = wire(name)
    if table == "cold":
        result = benchmark(lambda: hpack.Decoder().decode(first, raw=True))
    else:
        d = hpack.Decoder()
        d.decode(first, raw=True)
        result = benchmark(d.decode, again, True)
    assert result == BLOCKS[name]
    record(benchmark)


@pytest.mark.parametrize("mode", ["cold", "warm", "no-index"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_encode_fastmesh(benchmark, name, mode):
    fields = BLOCKS[name]
    total = benchmark(bench_encode, fields, COUNT, mode == "cold", mode != "no-index")
    enc = Encoder(indexing=mode != "no-index")
    size = len(enc.encode_block(fields))
    if mode == "warm":
        size = len(enc.encode_block(fields))
    record(benchmark, COUNT, wire_bytes=size)
    assert total > 0


@pytest.mark.parametrize("table", ["cold", "warm"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_encode_hpack(benchmark, name, table):
    fields = BLOCKS[name]
    if table == "cold":
        result = benchmark(lambda: hpack.Encoder().encode(fields))
    else:
        enc = hpack.Encoder()
        enc.encode(fields)
        result = benchmark(enc.encode, fields)
    assert hpack.Decoder().decode(wire(name)[0], raw=True) == fields and result
    record(benchmark, wire_bytes=len(result))
