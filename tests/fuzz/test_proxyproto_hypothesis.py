"""Property tests for the PROXY protocol codec: arbitrary bytes never crash it or make it read past them, a
prefix of a header is never refused when the whole is accepted, and every header our encoder writes (for any
addresses and ports) parses back to them, whatever follows it."""
import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmesh._core.proxyproto.codec import V1, V2, ProxyHeaderError, encode, parse

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# Pieces that steer random input into both versions' deeper states.
PIECES = [b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"1.2.3.4 ", b"::1 ", b"65535 ", b"0", b" ", b"\r\n", b"\r",
          b"\n", SIG, b"\x20", b"\x21", b"\x11", b"\x21", b"\x31", b"\x00\x0c", b"\x00\x24", b"\xff\xff", b"\x00",
          bytes(12), bytes(36), b"\x04\x00\x00", b"\x01\x00\x05"]
proxyish = st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join)
ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


def outcome(data, accept=V1 | V2):
    try:
        return parse(data, accept)
    except ProxyHeaderError as e:
        return ("refused", e.reason)


@FUZZ
@given(data=st.binary(max_size=300) | proxyish, accept=st.sampled_from([V1, V2, V1 | V2]))
def test_any_bytes_give_a_verdict_within_them(data, accept):
    result = outcome(data, accept)
    if result is None or result[0] == "refused":
        return
    length, version, src, dst = result
    assert 0 < length <= len(data)
    assert (src is None) == (dst is None)
    # What follows a complete header never changes it.
    assert outcome(data[:length] + b"\xffGARBAGE", accept) == result


@FUZZ
@given(data=st.binary(max_size=300) | proxyish)
def test_prefixes_of_an_accepted_header_wait(data):
    result = outcome(data)
    if result is None or result[0] == "refused":
        return
    for i in range(result[0]):
        assert outcome(data[:i]) is None, i


@FUZZ
@given(version=st.sampled_from([1, 2]), family=st.sampled_from([v4, v6]), data=st.data(), sport=ports, dport=ports,
       rest=st.binary(max_size=64))
def test_encoded_headers_round_trip(version, family, data, sport, dport, rest):
    src, dst = data.draw(family), data.draw(family)
    header = encode(version, (src, sport), (dst, dport))
    length, got_version, got_src, got_dst = parse(header + rest)
    assert (length, got_version) == (len(header), version)
    assert ipaddress.ip_address(got_src[0]) == ipaddress.ip_address(src) and got_src[1] == sport
    assert ipaddress.ip_address(got_dst[0]) == ipaddress.ip_address(dst) and got_dst[1] == dport


@FUZZ
@given(src=v4, dst=v4, sport=ports, dport=ports,
       tlvs=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=8))
def test_v2_with_any_tlvs_parses_to_its_addresses(src, dst, sport, dport, tlvs):
    body = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
    body += b"".join(bytes([t]) + struct.pack("!H", len(v)) + v for t, v in tlvs)
    header = SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body
    assert parse(header) == (len(header), 2, (src, sport), (dst, dport))
