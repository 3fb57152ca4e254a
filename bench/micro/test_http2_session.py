"""Micro-benchmark of the HTTP/2 session engine: a server session fed a client's HEADERS (+END_STREAM) for N
streams, answering each in C (HEADERS :status 200 + content-type, then DATA with END_STREAM).

The client bytes come from the `h2` package (preface, SETTINGS, then N requests whose header blocks are the
typical 8-field request of bench/micro/test_hpack.py, HPACK-indexed after the first as any client sends them).
One round = a fresh session + receive() of all N requests + their answers queued in `out` (not sent). What a
request costs in the engine is the round time / N: frame parsing, HPACK decode, RFC 9113 8.2/8.3 validation,
the stream object, the answer's HPACK encode and frames, the stream closed; ns_per_request in extra_info.
Run: pytest bench/micro/test_http2_session.py --benchmark-only -o addopts=""
"""
import h2.config
import h2.connection

from fastmesh._core.http2.recorder import Answerer

N = 1000
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


def client_bytes(n: int) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    for i in range(n):
        conn.send_headers(1 + 2 * i, REQUEST, end_stream=True)
    return conn.data_to_send()


def test_answers_are_complete():
    data = client_bytes(10)
    s = Answerer()
    assert s.feed(data) == len(data)
    assert s.answered_count == 10 and s.num_streams == 0


def test_session_request_answer(benchmark):
    data = client_bytes(N)

    def round_():
        s = Answerer()
        s.feed(data)
        return s

    s = benchmark(round_)
    assert s.answered_count == N
    benchmark.extra_info["requests_per_round"] = N
    benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.median / N * 1e9, 1)


def test_h2_package_request_answer(benchmark):
    """The same rounds through the pure-Python `h2` package's server, for scale (N / 10 requests per round)."""
    n = N // 10
    data = client_bytes(n)
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)

    def round_():
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        for ev in conn.receive_data(data):
            if ev.__class__.__name__ == "StreamEnded":
                conn.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
                conn.send_data(ev.stream_id, b"ok", end_stream=True)
        conn.data_to_send()

    benchmark(round_)
    benchmark.extra_info["requests_per_round"] = n
    benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.median / n * 1e9, 1)
