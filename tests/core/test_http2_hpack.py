"""HPACK (fastmesh._core.http2.hpack): RFC 7541 appendix C, the `hpack` package as oracle both ways, size updates,
malformed blocks and the HPACK bomb."""
import resource

import hpack
import pytest
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, given, settings, strategies as st

from fastmesh._core.http2.hpack import (
    STATIC_TABLE, Decoder, Encoder, HeaderListTooLarge, HpackError, huffman_decode, huffman_encode,
)


def dehex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def pairs(*items: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in items]


# ---------------------------------------------------------------------------------------------------------------
# RFC 7541 appendix C

def test_c2_1_literal_with_indexing():
    d = Decoder()
    assert d.decode_block(dehex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == \
        pairs(("custom-key", "custom-header"))
    assert d.table == pairs(("custom-key", "custom-header"))
    assert d.table_size == 55


def test_c2_2_literal_without_indexing():
    d = Decoder()
    assert d.decode_block(dehex("040c 2f73 616d 706c 652f 7061 7468")) == pairs((":path", "/sample/path"))
    assert d.table == [] and d.table_size == 0


def test_c2_3_literal_never_indexed():
    d = Decoder()
    assert d.decode_block(dehex("1008 7061 7373 776f 7264 0673 6563 7265 74")) == pairs(("password", "secret"))
    assert d.table == [] and d.table_size == 0


def test_c2_4_indexed():
    d = Decoder()
    assert d.decode_block(b"\x82") == pairs((":method", "GET"))
    assert d.table == []


REQUESTS = [
    pairs((":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")),
    pairs((":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
          ("cache-control", "no-cache")),
    pairs((":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
          ("custom-key", "custom-value")),
]
REQUEST_TABLES = [
    (pairs((":authority", "www.example.com")), 57),
    (pairs(("cache-control", "no-cache"), (":authority", "www.example.com")), 110),
    (pairs(("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")), 164),
]
C3 = ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]
C4 = ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]

DATE1 = "Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = "Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    pairs((":status", "302"), ("cache-control", "private"), ("date", DATE1), ("location", "https://www.example.com")),
    pairs((":status", "307"), ("cache-control", "private"), ("date", DATE1), ("location", "https://www.example.com")),
    pairs((":status", "200"), ("cache-control", "private"), ("date", DATE2), ("location", "https://www.example.com"),
          ("content-encoding", "gzip"), ("set-cookie", COOKIE)),
]
RESPONSE_TABLES = [
    (pairs(("location", "https://www.example.com"), ("date", DATE1), ("cache-control", "private"),
           (":status", "302")), 222),
    (pairs((":status", "307"), ("location", "https://www.example.com"), ("date", DATE1),
           ("cache-control", "private")), 222),
    (pairs(("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE2)), 215),
]
C5 = ["""4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d""",
      "4803 3330 37c1 c0bf",
      """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31"""]
C6 = ["""4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
      "4883 640e ffc1 c0bf",
      """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07"""]

SEQUENCES = {
    "C.3": (C3, REQUESTS, REQUEST_TABLES, 4096, False),
    "C.4": (C4, REQUESTS, REQUEST_TABLES, 4096, True),
    "C.5": (C5, RESPONSES, RESPONSE_TABLES, 256, False),
    "C.6": (C6, RESPONSES, RESPONSE_TABLES, 256, True),
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_appendix_c_decode(name):
    wires, lists, tables, size, _ = SEQUENCES[name]
    d = Decoder(max_table_size=size)
    for wire, expected, (table, table_size) in zip(wires, lists, tables):
        assert d.decode_block(dehex(wire)) == expected
        assert d.table == table
        assert d.table_size == table_size


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_appendix_c_encode(name):
    """Our encoder makes the RFC's choices: static matches, incremental indexing, Huffman when shorter."""
    wires, lists, tables, size, huffman = SEQUENCES[name]
    if name == "C.6":
        # The RFC Huffman-codes "307" although that is no shorter (3 bytes either way): we send it raw, which
        # costs the peer less to decode. Everything else is byte for byte the RFC's.
        wires = [wires[0], "4803 333037 c1c0bf", wires[2]]
    e = Encoder(huffman=huffman, peer_table_size=size)
    for wire, fields, (table, table_size) in zip(wires, lists, tables):
        assert e.encode_block(fields).hex() == dehex(wire).hex()
        assert e.table == table
        assert e.table_size == table_size


def test_appendix_c_status_path():
    """status() gives the same bytes as the generic path: one byte for the static statuses."""
    e = Encoder(huffman=False, peer_table_size=256)
    assert e.encode_status(302) == dehex("4803 333032")
    assert e.encode_status(200) == b"\x88"
    assert e.encode_status(302) == b"\xbe"           # now in the dynamic table
    statuses = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}
    for status, index in statuses.items():
        assert Encoder().encode_status(status) == bytes([0x80 | index])
        assert STATIC_TABLE[index - 1] == (b":status", str(status).encode())


def test_huffman_strings():
    for text, code in [("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"), ("no-cache", "a8eb 1064 9cbf"),
                       ("custom-key", "25a8 49e9 5ba9 7d7f"), ("302", "6402"), ("gzip", "9bd9 ab"),
                       ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3")]:
        assert huffman_encode(text.encode()) == dehex(code)
        assert huffman_decode(dehex(code)) == text.encode()
    every = bytes(range(256)) * 3
    assert huffman_decode(huffman_encode(every)) == every
    assert huffman_decode(b"") == b""


def huffman_oracle(data: bytes) -> bytes | None:
    try:
        return decode_huffman(data)
    except hpack.HPACKDecodingError:
        return None


def huffman_ours(data: bytes) -> bytes | None:
    try:
        return huffman_decode(data)
    except HpackError:
        return None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=7))
def test_huffman_decoding_agrees_with_hpack(data, how, bit):
    """Valid strings, their truncations, flipped bits and raw bytes: accepted and refused exactly as hpack does."""
    if how:
        data = huffman_encode(data)
        if how == 2 and data:
            data = data[:-1] + bytes([data[-1] ^ (1 << bit)])
        elif how == 3 and data:
            data = data[:bit % len(data)]
    expected = huffman_oracle(data)
    assert huffman_ours(data) == expected
    if how == 1:
        assert expected is not None


# ---------------------------------------------------------------------------------------------------------------
# Field ids: the static-table index of the name

def test_field_ids_are_static_name_indices():
    e = hpack.Encoder()
    block = e.encode([(":method", "POST"), (":path", "/x"), (":authority", "a"), ("cookie", "k=v"),
                      ("content-length", "3"), ("x-custom", "1"), ("accept", "*/*")])
    d = Decoder()
    assert [(n, i) for n, _, i in d.decode_fields(block)] == [
        (b":method", 2), (b":path", 4), (b":authority", 1), (b"cookie", 32), (b"content-length", 28),
        (b"x-custom", 0), (b"accept", 19)]
    # The same names from the dynamic table keep their ids; a literal name (not indexed) is looked up.
    again = e.encode([(":authority", "a"), ("cookie", "k=v"), ("x-custom", "1")])
    assert [i for _, _, i in d.decode_fields(again)] == [1, 32, 0]
    literal_names = b"\x00\x04date\x01x" + b"\x00\x07:status\x03201"      # literal names, not indices
    assert [(n, i) for n, _, i in Decoder().decode_fields(literal_names)] == [(b"date", 33), (b":status", 8)]


# ---------------------------------------------------------------------------------------------------------------
# The `hpack` package as oracle

STATIC_NAMES = sorted({n for n, _ in STATIC_TABLE})
names = st.one_of(st.sampled_from(STATIC_NAMES),
                  st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24)
                  .map(str.encode))
values = st.one_of(st.sampled_from([v for _, v in STATIC_TABLE if v] + [b"", b"gzip", b"https", b"GET"]),
                   st.binary(max_size=80),
                   st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/.=; ", max_size=300).map(str.encode))
fields = st.tuples(names, values, st.booleans())
blocks = st.lists(fields, max_size=14)
table_sizes = st.one_of(st.none(), st.sampled_from([0, 32, 100, 256, 1000, 4096, 8192, 65536]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(table_sizes, blocks), min_size=1, max_size=6), st.booleans(), st.booleans())
def test_ours_encodes_hpack_decodes(sequence, huffman, indexing):
    ours = Encoder(huffman=huffman, indexing=indexing)
    theirs = hpack.Decoder(max_header_list_size=1 << 30)
    for peer_size, block in sequence:
        if peer_size is not None:          # the peer's SETTINGS_HEADER_TABLE_SIZE changed (and we acked it)
            theirs.max_allowed_table_size = peer_size
            ours.set_peer_table_size(peer_size)
        wire = ours.encode_block(block)
        decoded = theirs.decode(wire, raw=True)
        assert [(h[0], h[1]) for h in decoded] == [(n, v) for n, v, _ in block]
        assert [not h.indexable for h in decoded] == [s for _, _, s in block]
        assert list(theirs.header_table.dynamic_entries) == ours.table
        assert theirs.header_table_size == ours.table_max_size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(table_sizes, blocks, st.booleans()), min_size=1, max_size=6))
def test_hpack_encodes_ours_decodes(sequence):
    theirs = hpack.Encoder()
    ours = Decoder(max_list_size=1 << 30)
    ours.set_table_size_setting(65536)
    for size, block, huffman in sequence:
        if size is not None:
            theirs.header_table_size = size
        wire = theirs.encode([(n, v, s) for n, v, s in block], huffman=huffman)
        assert ours.decode_block(wire) == [(n, v) for n, v, _ in block]
        assert ours.table == list(theirs.header_table.dynamic_entries)
        assert ours.table_max_size == theirs.header_table_size


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_fail_cleanly(data):
    """No input crashes the decoder; where both decoders accept a block, they agree."""
    ours = Decoder()
    try:
        got = ours.decode_block(data)
    except HpackError:
        return
    try:
        expected = hpack.Decoder().decode(data, raw=True)
    except hpack.HPACKError:
        return
    assert got == [(h[0], h[1]) for h in expected]


# ---------------------------------------------------------------------------------------------------------------
# Encoder choices

def test_sensitive_fields_are_never_indexed():
    e = Encoder()
    wire = e.encode_block([("authorization", "Bearer abc"), ("cookie", "a=1"), ("cookie", "x" * 40),
                           ("x-secret", "s", True)])
    decoded = hpack.Decoder().decode(wire, raw=True)
    assert [h.indexable for h in decoded] == [False, False, True, False]
    assert e.table == [(b"cookie", b"x" * 40)]
    fresh = Encoder().encode_block([("authorization", "Bearer abc")])
    assert e.encode_block([("authorization", "Bearer abc")]) == fresh      # not indexed: the same literal again


def test_huffman_only_when_shorter():
    e = Encoder(indexing=False)
    raw = bytes(range(0x80, 0xa0))                   # long codes: Huffman would be longer
    wire = e.encode_block([("x-bin", raw)])
    assert wire[0] == 0x00 and wire[1] & 0x80        # the name "x-bin" is shorter in Huffman ...
    value_at = 2 + (wire[1] & 0x7f)
    assert wire[value_at] == len(raw) and wire[value_at + 1:] == raw    # ... the value is not
    assert hpack.Decoder().decode(wire, raw=True) == [(b"x-bin", raw)]


def test_large_fields_are_not_inserted():
    e = Encoder()
    big = b"v" * 3100                                # 3100 + 5 + 32 > 3/4 of 4096
    wire = e.encode_block([("x-big", big), ("x-small", "v")])
    assert e.table == [(b"x-small", b"v")]
    assert hpack.Decoder().decode(wire, raw=True) == [(b"x-big", big), (b"x-small", b"v")]


def test_repeated_fields_come_from_the_dynamic_table():
    e = Encoder()
    block = [(":method", "GET"), (":scheme", "https"), (":authority", "api.example.com"), (":path", "/v1/items"),
             ("user-agent", "grpc-python/1.60"), ("accept", "application/json"), ("x-request-id", "abc")]
    first = e.encode_block(block)
    second = e.encode_block(block)
    assert len(second) == len(block)                 # one byte per field
    d = hpack.Decoder()
    assert d.decode(first, raw=True) == d.decode(second, raw=True)
    # A changed value reuses the name from the dynamic table.
    third = e.encode_block([("x-request-id", "abd")])
    assert third[0] == 0x40 | 62                     # literal with indexing, name from index 62 (the newest)
    assert d.decode(third, raw=True) == [(b"x-request-id", b"abd")]


# ---------------------------------------------------------------------------------------------------------------
# Table size updates

def test_encoder_announces_size_changes():
    e = Encoder()
    assert e.encode_block([("x-a", "1")])[0] == 0x40
    e.set_peer_table_size(0)
    e.set_peer_table_size(4096)
    wire = e.encode_block([])
    assert wire == b"\x20" + b"\x3f\xe1\x1f"         # the smallest size reached, then the final one
    assert e.table == []
    e.set_peer_table_size(100)
    assert e.encode_block([]) == b"\x3f\x45"
    assert e.encode_block([]) == b""                 # announced once
    e.set_peer_table_size(65536)                     # more than we use: capped at max_table_size
    assert e.encode_block([]) == b"\x3f\xe1\x1f" and e.table_max_size == 4096
    e.set_peer_table_size(8192)
    assert e.encode_block([]) == b""
    assert Encoder(max_table_size=256).encode_block([]) == b"\x3f\xe1\x01"


def test_decoder_size_updates():
    d = Decoder()
    d.decode_block(dehex(C3[0]))
    assert d.table_size == 57
    assert d.decode_block(b"\x20\x82") == pairs((":method", "GET"))     # size 0 empties the table
    assert d.table == [] and d.table_max_size == 0
    assert d.decode_block(b"\x20\x3f\xe1\x1f\x82") == pairs((":method", "GET"))     # two updates at the start
    assert d.table_max_size == 4096


def test_lowered_setting_requires_an_update():
    d = Decoder()
    d.decode_block(dehex(C3[0]))
    d.set_table_size_setting(100)
    with pytest.raises(HpackError):
        d.decode_block(b"\x82")                      # no update at the start of the next block
    d = Decoder()
    d.set_table_size_setting(100)
    assert d.decode_block(b"\x3f\x45\x82") == pairs((":method", "GET"))
    assert d.table_max_size == 100
    d = Decoder()
    d.set_table_size_setting(100)
    with pytest.raises(HpackError):
        d.decode_block(b"")                          # an empty block does not carry the update either


@pytest.mark.parametrize("wire", [
    "82 20",                                         # size update after a field
    "3f e2 1f",                                      # 4097 > the setting (4096)
    "20 82 3f e1 1f 82",                             # update after a field, even below the setting
])
def test_bad_size_updates(wire):
    with pytest.raises(HpackError):
        Decoder().decode_block(dehex(wire))


# ---------------------------------------------------------------------------------------------------------------
# Malformed blocks: COMPRESSION_ERROR, and the decoder stays failed

@pytest.mark.parametrize("wire", [
    "ff",                                            # truncated integer (prefix full, no continuation)
    "ff 80",                                         # truncated integer (continuation bit set at the end)
    "80",                                            # index 0
    "be",                                            # index 62, the dynamic table is empty
    "c0",                                            # past the table
    "ff ff ff ff ff 0f",                             # oversize integer (more than four continuation bytes)
    "ff 80 80 80 80 00",                             # padded integer, also too long
    "40 85 f1 e3 c2 e5",                             # name: Huffman string longer than what follows
    "00 03 61 62",                                   # value missing / short
    "40 01 61",                                      # literal name, value missing
    "41 81 ff",                                      # Huffman value: 8 bits of padding
    "41 81 00",                                      # Huffman value: padding of zeros ('0' then bad padding)
    "41 84 ff ff ff ff",                             # Huffman value: EOS (30 ones)
    "41 85 1f ff ff ff ff",                          # Huffman value: a symbol, then EOS
    "41 ff ff ff ff ff 0f",                          # string length integer overflow
])
def test_malformed_blocks(wire):
    d = Decoder()
    with pytest.raises(HpackError) as err:
        d.decode_block(dehex(wire))
    assert not isinstance(err.value, HeaderListTooLarge)
    with pytest.raises(HpackError):
        d.decode_block(b"\x82")                      # unusable after a COMPRESSION_ERROR


def test_huffman_padding_rules():
    one = huffman_encode(b"a")                       # 'a' is 5 bits: 3 bits of ones padding
    assert huffman_decode(one) == b"a"
    with pytest.raises(HpackError):
        huffman_decode(bytes([one[0] & 0xf8]))       # padding of zeros
    with pytest.raises(HpackError):
        huffman_decode(one + b"\xff")                # 11 bits of padding
    with pytest.raises(HpackError):
        huffman_decode(b"\xff\xff\xff\xfc")          # EOS, then padding
    assert huffman_decode(huffman_encode(b"0")) == b"0"


# ---------------------------------------------------------------------------------------------------------------
# The decoded list size and the HPACK bomb

def test_list_size_limit_keeps_the_table_in_sync():
    d = Decoder(max_list_size=100)
    block = hpack.Encoder().encode([("x-a", "a" * 40), ("x-b", "b" * 40), ("x-c", "c")])
    with pytest.raises(HeaderListTooLarge):
        d.decode_block(block)
    assert d.table == pairs(("x-c", "c"), ("x-b", "b" * 40), ("x-a", "a" * 40))     # every insertion happened
    assert d.decode_block(b"\xbe") == pairs(("x-c", "c"))                           # still usable, in sync
    d.max_list_size = 1000
    assert d.decode_block(b"\xc0\xbf") == pairs(("x-a", "a" * 40), ("x-b", "b" * 40))
    exact = Decoder(max_list_size=3 + 40 + 32)
    assert exact.decode_block(hpack.Encoder().encode([("x-a", "a" * 40)])) == pairs(("x-a", "a" * 40))


def test_hpack_bomb():
    """One 4000-byte entry referenced a million times: 4 GB decoded from 1 MB of wire, refused in bounded memory."""
    entry = hpack.Encoder().encode([("x", "b" * 4000)], huffman=False)    # literal with indexing
    assert Decoder().decode_block(entry) == [(b"x", b"b" * 4000)]
    wire = entry + b"\xbe" * 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = Decoder()
    with pytest.raises(HeaderListTooLarge) as err:
        d.decode_block(wire)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, grown_kib
    assert err.value.code == -2
    assert d.table == [(b"x", b"b" * 4000)]
    assert d.decode_block(b"\xbe") == [(b"x", b"b" * 4000)]
