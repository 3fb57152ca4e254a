"""The PROXY protocol codec (fastmesh/_core/proxyproto/codec.pyx), driven with bytes: both versions, every
refusal, incomplete headers, and round trips through our encoder and through the bytes HAProxy sends."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from fastmesh._core.proxyproto.codec import V1, V2, ProxyHeaderError, encode, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if a.version == 4 else 0x21
    return v2(1, fam, a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs)


def refused(data: bytes, accept: int = V1 | V2) -> str:
    with pytest.raises(ProxyHeaderError) as info:
        parse(data, accept)
    return info.value.reason


@pytest.mark.parametrize("line, src, dst", [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    (b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", ("2001:db8::1", 1), ("::1", 65535)),
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
])
def test_v1_addresses(line, src, dst):
    assert parse(line + b"GET / HTTP/1.1\r\n") == (len(line), 1, src, dst)


def test_v1_unknown_keeps_the_socket_addresses():
    assert parse(b"PROXY UNKNOWN\r\n") == (15, 1, None, None)
    # Whatever follows UNKNOWN is ignored, as the spec says.
    line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse(line + b"x") == (len(line), 1, None, None)


def test_v1_incomplete_is_not_refused():
    line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n"
    for i in range(len(line)):
        assert parse(line[:i]) is None, i
    assert parse(line)[0] == len(line)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\n",             # LF without CR
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\rX",            # CR without LF
    b"PROXY TCP4 10.0.0.1  10.0.0.2 1000 80\r\n",          # two spaces
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80 \r\n",          # trailing space
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n",              # a field missing
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80 9\r\n",         # a field too many
    b"PROXY TCP4 10.0.0.256 10.0.0.2 1000 80\r\n",         # not an address
    b"PROXY TCP4 ::1 10.0.0.2 1000 80\r\n",                # IPv6 under TCP4
    b"PROXY TCP6 10.0.0.1 ::1 1000 80\r\n",                # IPv4 under TCP6
    b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 80\r\n",          # port out of range
    b"PROXY TCP4 10.0.0.1 10.0.0.2 -1 80\r\n",
    b"PROXY TCP4 10.0.0.1 10.0.0.2 100000 80\r\n",
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1a 80\r\n",
    b"PROXY UDP4 10.0.0.1 10.0.0.2 1 80\r\n",              # not a protocol of v1
    b"PROXY TCP5 10.0.0.1 10.0.0.2 1 80\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY \r\n",
    b"PROXY TCP4 10.0.0.1\x0010.0.0.2 1 80\r\n",           # NUL
])
def test_v1_malformed(line):
    assert refused(line) == "malformed"


def test_v1_longer_than_107_bytes_is_refused_without_waiting():
    assert parse(b"PROXY UNKNOWN " + b"a" * 92) is None          # 106 bytes, no CR yet: may still end
    assert refused(b"PROXY UNKNOWN " + b"a" * 93) == "too_long"   # 107 bytes without CRLF: cannot
    line = b"PROXY UNKNOWN " + b"a" * 91 + b"\r\n"                # exactly 107 with its CRLF
    assert parse(line) == (107, 1, None, None)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x03\x01\x00\xa5",
                                  b"P", b"POST", b"PROXZ", b"\r\n\r\n\x00\r\nQUIX", b"\r\r", b"\x00"])
def test_no_header_is_refused_at_the_first_byte_that_says_so(data):
    if data in (b"P",):
        assert parse(data) is None
    else:
        assert refused(data) == "not_proxy"


def test_v2_addresses_and_tlvs_skipped():
    hdr = v2_inet("10.1.2.3", "10.9.8.7", 40000, 8080)
    assert parse(hdr + b"rest") == (28, 2, ("10.1.2.3", 40000), ("10.9.8.7", 8080))
    hdr = v2_inet("2001:db8::5", "2001:db8::6", 1, 2)
    assert parse(hdr) == (52, 2, ("2001:db8::5", 1), ("2001:db8::6", 2))
    # TLVs (ALPN, authority, a unique id, a CRC32C, NOOP padding) are walked and skipped.
    tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x05\x00\x04abcd" + b"\x03\x00\x04\x00\x00\x00\x00" \
        + b"\x04\x00\x00"
    hdr = v2_inet("10.1.2.3", "10.9.8.7", 1, 2, tlvs)
    assert parse(hdr) == (len(hdr), 2, ("10.1.2.3", 1), ("10.9.8.7", 2))


def test_v2_local_and_other_families_keep_the_socket_addresses():
    assert parse(v2(0, 0x00, b"")) == (16, 2, None, None)
    # LOCAL with an address block: the addresses are ignored.
    assert parse(v2(0, 0x11, bytes(12))) == (28, 2, None, None)
    assert parse(v2(1, 0x00, b"")) == (16, 2, None, None)             # PROXY over AF_UNSPEC
    assert parse(v2(1, 0x31, bytes(216))) == (232, 2, None, None)    # AF_UNIX
    assert parse(v2(1, 0x12, bytes(12))) == (28, 2, None, None)      # UDP over IPv4


def test_v2_incomplete_is_not_refused():
    hdr = v2_inet("10.1.2.3", "10.9.8.7", 40000, 8080, b"\x04\x00\x10" + bytes(16))
    for i in range(len(hdr)):
        assert parse(hdr[:i]) is None, i


@pytest.mark.parametrize("data, reason", [
    (SIG + b"\x11\x11\x00\x0c" + bytes(12), "malformed"),          # version 1 in a v2 signature
    (SIG + b"\x31\x11\x00\x0c" + bytes(12), "malformed"),          # version 3
    (SIG + b"\x22\x11\x00\x0c" + bytes(12), "malformed"),          # command 2
    (SIG + b"\x21\x11\x00\x0b" + bytes(11), "malformed"),          # IPv4 block shorter than 12
    (SIG + b"\x21\x21\x00\x0c" + bytes(12), "malformed"),          # IPv6 block shorter than 36
    (SIG + b"\x21\x41\x00\x00", "malformed"),                      # family 4
    (SIG + b"\x21\x13\x00\x0c" + bytes(12), "malformed"),          # transport 3
    (v2(1, 0x11, bytes(12) + b"\x01\x00\x05abc"), "malformed"),    # a TLV longer than what is left
    (v2(1, 0x11, bytes(12) + b"\x01\x00"), "malformed"),           # a TLV cut in its header
    (SIG + b"\x21\x11\xff\xff", "too_long"),                       # 64 KiB announced: refused without waiting
])
def test_v2_refused(data, reason):
    assert refused(data) == reason


def test_a_listener_may_accept_one_version_only():
    v1, v2h = encode(1, ("1.1.1.1", 1), ("2.2.2.2", 2)), encode(2, ("1.1.1.1", 1), ("2.2.2.2", 2))
    assert parse(v1, V1)[1] == 1 and parse(v2h, V2)[1] == 2
    assert refused(v1, V2) == "version"
    assert refused(v2h, V1) == "version"


@pytest.mark.parametrize("version", [1, 2])
def test_encode_round_trips(version):
    for src, dst in [(("127.0.0.1", 50000), ("127.0.0.2", 80)), (("::1", 0), ("fe80::1", 65535))]:
        data = encode(version, src, dst)
        assert parse(data) == (len(data), version, src, dst)
    # An IPv4 client of an IPv6 listener: both written as IPv6 (IPv4-mapped), as HAProxy does.
    data = encode(version, ("192.0.2.1", 7), ("2001:db8::1", 443))
    assert parse(data)[2:] == (("::ffff:192.0.2.1", 7), ("2001:db8::1", 443))
    # Without addresses: v1 UNKNOWN, v2 LOCAL.
    assert parse(encode(version))[2:] == (None, None)


def test_encode_writes_what_haproxy_writes():
    # The exact bytes HAProxy's send-proxy and send-proxy-v2 put on the wire (proxy-protocol.txt, sections 2.1
    # and 2.2; checked against a live HAProxy in tests/e2e/test_proxy_protocol.py).
    assert encode(1, ("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode(1) == b"PROXY UNKNOWN\r\n"
    assert encode(2, ("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        SIG + b"\x21\x11\x00\x0c" + bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)
    assert encode(2) == SIG + b"\x20\x00\x00\x00"
