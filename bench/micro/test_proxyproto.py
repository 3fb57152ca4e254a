"""Micro-benchmark of the PROXY protocol codec: what reading a connection's header costs a listener with
proxy_protocol (once per connection, never per request), and what writing one costs a cluster that sends it (once
per upstream connection). bench_parse/bench_encode loop in C; the per-header ns are in extra_info.
Run: pytest bench/micro/test_proxyproto.py -o addopts=""
"""
import ipaddress
import struct

import pytest

from fastmesh._core.proxyproto.codec import bench_encode, bench_parse, encode

# Short C loops, many rounds, minimum kept: a loop that outlasts a scheduler time slice on a busy machine measures
# the wait for the CPU, not the codec.
COUNT = 2_000
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V4 = (("192.168.100.200", 56324), ("10.0.0.11", 443))
V6 = (("2001:db8:85a3::8a2e:370:7334", 56324), ("2001:db8::11", 443))
# What HAProxy's send-proxy-v2-ssl-cn adds to a v2 header: an SSL TLV with a version and a CN sub-TLV, plus ALPN.
TLVS = (b"\x01\x00\x02h2" + b"\x20\x00\x1a\x07\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x08client-a")
HEADERS = {
    "v1-tcp4": encode(1, *V4),
    "v1-tcp6": encode(1, *V6),
    "v2-tcp4": encode(2, *V4),
    "v2-tcp6": encode(2, *V6),
    "v2-tcp4-tlvs": SIG + b"\x21\x11" + struct.pack("!H", 12 + len(TLVS)) + ipaddress.ip_address(V4[0][0]).packed
    + ipaddress.ip_address(V4[1][0]).packed + struct.pack("!HH", V4[0][1], V4[1][1]) + TLVS,
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_parse(benchmark, name):
    data = HEADERS[name] + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    per = benchmark.pedantic(bench_parse, (data, COUNT), rounds=300)
    benchmark.extra_info["ns_per_header_min"] = round(benchmark.stats.stats.min / COUNT * 1e9, 1)
    assert per > 0


@pytest.mark.parametrize("version, family", [(1, "tcp4"), (1, "tcp6"), (2, "tcp4"), (2, "tcp6")])
def test_encode(benchmark, version, family):
    src, dst = V4 if family == "tcp4" else V6
    per = benchmark.pedantic(bench_encode, (version, src, dst, COUNT), rounds=300)
    benchmark.extra_info["ns_per_header_min"] = round(benchmark.stats.stats.min / COUNT * 1e9, 1)
    assert per > 0
