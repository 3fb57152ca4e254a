"""W3C trace context and span export end to end: real clients (httpx over HTTP/1 and HTTP/2, grpcio) -> fastmesh ->
real backends that echo what they received, on 127.0.0.1. The backend's traceparent must be a child of the caller's
(same trace id, fastmesh's span id as its parent) and that span id the one exported: to the OpenTelemetry SDK's
InMemorySpanExporter, and over OTLP/HTTP to a receiver the test runs (decoding ExportTraceServiceRequest with
opentelemetry-proto). An unreachable collector costs the requests nothing; its spans are dropped and counted."""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (   # noqa: E402
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter   # noqa: E402
from opentelemetry.trace import SpanKind   # noqa: E402

from fastmesh import Proxy   # noqa: E402
from fastmesh._testbase.grpc_backends import GrpcBackend, GrpcClient   # noqa: E402
from fastmesh._testbase.http_backend import HttpBackend   # noqa: E402
from fastmesh._testbase.net import free_port   # noqa: E402

pytestmark = pytest.mark.timeout(90)
WAIT = 5.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{PARENT}-01"
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def config(backend: str, *, listeners: dict[str, str], export: str = "", protocol: str = "http1") -> str:
    """http listeners (name -> extra TOML lines) to one cluster "web"; `export`: the [tracing] export table."""
    text = 'drain_timeout = "500ms"\n'
    for name, extra in listeners.items():
        text += (f'[[listeners]]\nname = "{name}"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\n'
                 f'cluster = "web"\n{extra}\n')
    text += f'[clusters.web]\nendpoints = ["{backend}"]\nprotocol = "{protocol}"\n'
    if export:
        text += f"[tracing]\nexport = {export}\n"
    return text


FAST_EXPORT = '{ endpoint = "http://127.0.0.1:4318/v1/traces", interval = "50ms" }'


def url(proxy: Proxy, listener: str) -> str:
    host, port = proxy.addresses[listener]
    return f"http://{host}:{port}"


def headers_of(answer: httpx.Response) -> dict[str, list[str]]:
    """The /echo backend's view of the request's fields: name (lowercase) -> values."""
    out: dict[str, list[str]] = {}
    for name, value in answer.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def forwarded_parent(answer: httpx.Response) -> tuple[str, str, str]:
    (value,) = headers_of(answer)["traceparent"]
    m = TRACEPARENT_RE.fullmatch(value)
    assert m, value
    return m[1], m[2], m[3]


def tries_of(spans: list[Any]) -> dict[str, tuple[Any, Any]]:
    """{a try's span id (the parent id it sent upstream): (its span, its request's span)}: each proxied request
    exports its own span (SERVER) and one span per upstream try (CLIENT), a child of the request's."""
    servers = {s.context.span_id: s for s in spans if s.kind == SpanKind.SERVER}
    out = {}
    for s in spans:
        if s.kind == SpanKind.CLIENT:
            assert s.parent is not None and not s.parent.is_remote and s.parent.span_id in servers
            out[f"{s.context.span_id:016x}"] = (s, servers[s.parent.span_id])
    return out


async def spans_of(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    """The exported spans once there are `count` (fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while len(exporter.get_finished_spans()) < count:
        assert time.monotonic() < deadline, f"{len(exporter.get_finished_spans())} of {count} spans exported"
        await asyncio.sleep(0.02)
    return list(exporter.get_finished_spans())


def test_a_caller_s_trace_is_continued_and_our_span_exported(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        exporter = InMemorySpanExporter()
        async with HttpBackend() as backend, Proxy.from_toml(config(backend.address, listeners={
                "web": f'access_log = {{ format = "json", path = "{log}" }}'}, export=FAST_EXPORT),
                span_exporter=exporter) as proxy:
            async with httpx.AsyncClient(base_url=url(proxy, "web"), timeout=WAIT, trust_env=False) as client:
                first = await client.get("/echo", headers={"traceparent": CALLER, "tracestate": "vendor=x,other=y"})
                # Next on the same keep-alive connection: no trace context, none sent.
                second = await client.get("/echo")
                unsampled = await client.get("/echo", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
            trace_id, ours, flags = forwarded_parent(first)
            assert (trace_id, flags) == (TRACE, "01") and ours != PARENT
            assert headers_of(first)["tracestate"] == ["vendor=x,other=y"]
            assert "traceparent" not in headers_of(second)
            assert forwarded_parent(unsampled)[0] == TRACE and forwarded_parent(unsampled)[2] == "00"
            spans = await spans_of(exporter, 2)
            await asyncio.sleep(0.2)
            assert len(exporter.get_finished_spans()) == 2      # the unsampled and the untraced request: no span
            ((attempt, span),) = [tries_of(spans)[ours]]
            assert len(tries_of(spans)) == 1
            assert f"{span.context.trace_id:032x}" == TRACE == f"{attempt.context.trace_id:032x}"
            assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT and span.parent.is_remote
            assert span.name == "GET web" and span.kind == SpanKind.SERVER
            assert dict(span.attributes) == {"http.request.method": "GET", "http.response.status_code": 200,
                                             "fastmesh.route": 0, "fastmesh.cluster": "web",
                                             "fastmesh.upstream": backend.address, "fastmesh.retries": 0}
            assert attempt.name == "GET web try 1" and attempt.kind == SpanKind.CLIENT
            assert dict(attempt.attributes) == {"http.request.method": "GET", "http.response.status_code": 200,
                                                "fastmesh.route": 0, "fastmesh.cluster": "web",
                                                "fastmesh.upstream": backend.address, "fastmesh.try": 1}
            times = [span.start_time, attempt.start_time, attempt.end_time, span.end_time]
            assert all(a <= b + 1000 for a, b in zip(times, times[1:])), times    # float rounding of ns
            assert span.resource.attributes["service.name"] == "fastmesh"
            assert 0 < span.end_time - span.start_time < 5e9 and abs(span.end_time - time.time_ns()) < 30e9
            assert proxy.stats()["tracing"]["exported"] == 2
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [line["trace_id"] for line in lines] == [TRACE, "", TRACE]
    asyncio.run(main())


def test_an_invalid_traceparent_passes_untouched_or_is_replaced_on_an_edge_listener() -> None:
    bad = f"00-{TRACE.upper()}-{PARENT}-01"

    async def main() -> None:
        exporter = InMemorySpanExporter()
        async with HttpBackend() as backend, Proxy.from_toml(config(backend.address, listeners={
                "inner": "", "edge": "tracing = { start = true }"}, export=FAST_EXPORT),
                span_exporter=exporter) as proxy:
            async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as client:
                sent = {"traceparent": bad, "tracestate": "vendor=x"}
                inner = await client.get(url(proxy, "inner") + "/echo", headers=sent)
                edge = await client.get(url(proxy, "edge") + "/echo", headers=sent)
                zero = await client.get(url(proxy, "edge") + "/echo",
                                        headers={"traceparent": f"00-{'0' * 32}-{PARENT}-01"})
            assert headers_of(inner)["traceparent"] == [bad] and headers_of(inner)["tracestate"] == ["vendor=x"]
            started, ours, flags = forwarded_parent(edge)
            assert started != TRACE.lower() and flags == "01" and "tracestate" not in headers_of(edge)
            assert forwarded_parent(zero)[0] not in (started, "0" * 32)
            spans = await spans_of(exporter, 4)
            assert ours in tries_of(spans)
            assert all(s.parent is None for s in spans if s.kind == SpanKind.SERVER)     # new traces: roots
    asyncio.run(main())


def test_edge_listeners_start_traces_at_their_sampling_rate() -> None:
    async def main() -> None:
        exporter = InMemorySpanExporter()
        async with HttpBackend() as backend, Proxy.from_toml(config(backend.address, listeners={
                "all": "tracing = { start = true, sample_rate = 1.0 }",
                "none": "tracing = { start = true, sample_rate = 0.0 }"}, export=FAST_EXPORT),
                span_exporter=exporter) as proxy:
            async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as client:
                sampled = [forwarded_parent(await client.get(url(proxy, "all") + "/echo")) for _ in range(5)]
                unsampled = [forwarded_parent(await client.get(url(proxy, "none") + "/echo")) for _ in range(5)]
            assert {flags for _, _, flags in sampled} == {"01"} and {flags for _, _, flags in unsampled} == {"00"}
            assert len({trace_id for trace_id, _, _ in sampled + unsampled}) == 10      # each its own trace
            spans = await spans_of(exporter, 10)
            await asyncio.sleep(0.2)
            tried = {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
                     for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT}
            assert tried == {(t, s) for t, s, _ in sampled}
            assert len(tries_of(spans)) == 5 and len(exporter.get_finished_spans()) == 10
            assert all(s.parent is None for s in spans if s.kind == SpanKind.SERVER)
    asyncio.run(main())


def test_http2_clients_and_grpc_calls_carry_the_trace_on() -> None:
    async def main() -> None:
        exporter = InMemorySpanExporter()
        grpc_backend = GrpcBackend("g0").start()
        try:
            async with HttpBackend() as backend:
                text = config(backend.address, listeners={"web": ""}, export=FAST_EXPORT)
                port = free_port()
                text += (f'[[listeners]]\nname = "rpc"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
                         f'cluster = "grpc"\n[clusters.grpc]\nendpoints = ["{grpc_backend.address}"]\n'
                         'protocol = "h2"\n')
                async with Proxy.from_toml(text, span_exporter=exporter) as proxy:
                    async with httpx.AsyncClient(base_url=url(proxy, "web"), http1=False, http2=True, timeout=WAIT,
                                                 trust_env=False) as client:
                        answer = await client.get("/echo", headers={"traceparent": CALLER, "tracestate": "v=1"})
                    assert answer.http_version == "HTTP/2"
                    trace_id, via_h2, _ = forwarded_parent(answer)
                    assert trace_id == TRACE and via_h2 != PARENT and headers_of(answer)["tracestate"] == ["v=1"]
                    with GrpcClient(f"127.0.0.1:{port}") as rpc:
                        seen = await asyncio.to_thread(rpc.who, WAIT, [("traceparent", CALLER)])
                    m = TRACEPARENT_RE.fullmatch(seen["metadata"]["traceparent"])
                    assert m and m[1] == TRACE and m[2] not in (PARENT, via_h2)
                    spans = tries_of(await spans_of(exporter, 4))
                    assert set(spans) == {via_h2, m[2]}
                    rpc_span = spans[m[2]][1]
                    assert rpc_span.name == "POST grpc" and f"{rpc_span.parent.span_id:016x}" == PARENT
                    assert rpc_span.attributes["http.response.status_code"] == 200
        finally:
            grpc_backend.stop()
    asyncio.run(main())


class FlakyBackend:
    """An HTTP/1.1 server on 127.0.0.1 that answers 503 to its first request and 200 to the next, closing each
    connection after its answer, and keeps the traceparent each request carried."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FlakyBackend:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1")
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            self.seen.append({k.lower(): v for k, v in fields.items()}.get("traceparent", ""))
            status = "503 Service Unavailable" if len(self.seen) == 1 else "200 OK"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        finally:
            writer.close()


@pytest.mark.parametrize("http2", [False, True])
def test_each_try_gets_a_span_of_its_own_and_sends_its_id(http2: bool) -> None:
    """A request retried after a 503: each try sends its own span id upstream as the parent id (same trace), and is
    exported as a CLIENT span with that id, child of the request's SERVER span (itself the caller's child). Over
    HTTP/1 the first try's head is kept and the second's span id written into it; over HTTP/2 each try is
    rendered anew."""
    async def main() -> None:
        exporter = InMemorySpanExporter()
        async with FlakyBackend() as backend:
            text = config(backend.address, listeners={"web": ""}, export=FAST_EXPORT)
            text = text.replace('protocol = "http1"\n', 'protocol = "http1"\n'
                                'retries = { attempts = 2, on = ["5xx"], backoff = "1ms", max_backoff = "1ms" }\n')
            async with Proxy.from_toml(text, span_exporter=exporter) as proxy:
                async with httpx.AsyncClient(base_url=url(proxy, "web"), http1=not http2, http2=http2,
                                             timeout=WAIT, trust_env=False) as client:
                    answer = await client.get("/", headers={"traceparent": CALLER})
                assert answer.status_code == 200 and answer.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                parents = [TRACEPARENT_RE.fullmatch(v) for v in backend.seen]
                assert len(parents) == 2 and all(m and m[1] == TRACE and m[3] == "01" for m in parents)
                first, second = (m[2] for m in parents if m)
                assert len({first, second, PARENT}) == 3
                spans = await spans_of(exporter, 3)
                await asyncio.sleep(0.2)
                assert len(exporter.get_finished_spans()) == 3
                tries = tries_of(spans)
                assert set(tries) == {first, second}
                (one, request), (two, same) = tries[first], tries[second]
                assert request is same and f"{request.parent.span_id:016x}" == PARENT
                assert one.attributes["fastmesh.try"] == 1 and one.attributes["http.response.status_code"] == 503
                assert two.attributes["fastmesh.try"] == 2 and two.attributes["http.request.resend_count"] == 1
                assert two.attributes["http.response.status_code"] == 200 and two.name == "GET web try 2"
                assert request.attributes["fastmesh.retries"] == 1
                # In order, within the float rounding of seconds to nanoseconds.
                times = [request.start_time, one.start_time, one.end_time, two.start_time, two.end_time,
                         request.end_time]
                assert all(a <= b + 1000 for a, b in zip(times, times[1:])), times

    asyncio.run(main())


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint on 127.0.0.1: decodes each ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) of everything received."""
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name", "")
                out.extend((service, span) for ss in rs.scope_spans for span in ss.spans)
        return out


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join(WAIT)


def test_spans_reach_an_otlp_http_collector_with_their_parent_links() -> None:
    async def main() -> None:
        with otlp_receiver() as receiver:
            export = f'{{ endpoint = "{receiver.url}", service_name = "edge-proxy", interval = "50ms" }}'
            async with HttpBackend() as backend, Proxy.from_toml(config(backend.address, listeners={
                    "edge": "tracing = { start = true }"}, export=export)) as proxy:
                async with httpx.AsyncClient(base_url=url(proxy, "edge"), timeout=WAIT, trust_env=False) as client:
                    child = forwarded_parent(await client.get("/echo", headers={"traceparent": CALLER}))
                    root = forwarded_parent(await client.get("/echo/none"))
                deadline = time.monotonic() + WAIT
                # The collector holds the spans before the exporter's thread has read its answer and counted them.
                while len(receiver.spans()) < 4 or proxy.stats()["tracing"]["exported"] < 4:
                    assert time.monotonic() < deadline, (receiver.spans(), proxy.stats()["tracing"])
                    await asyncio.sleep(0.05)
                assert proxy.stats()["tracing"]["exported"] == 4
            got = {span.span_id.hex(): (service, span) for service, span in receiver.spans()}
            assert len(got) == 4 and {child[1], root[1]} <= set(got) and {s for s, _ in got.values()} == {"edge-proxy"}
            assert all(t.startswith("application/x-protobuf") for t in receiver.content_types)
            service, attempt = got[child[1]]
            assert attempt.kind == attempt.SPAN_KIND_CLIENT and attempt.name == "GET web try 1"
            service, span = got[attempt.parent_span_id.hex()]
            assert span.trace_id.hex() == TRACE and span.parent_span_id.hex() == PARENT
            assert span.name == "GET web" and span.kind == span.SPAN_KIND_SERVER
            attrs = {a.key: a.value for a in span.attributes}
            assert attrs["http.response.status_code"].int_value == 200
            assert attrs["fastmesh.upstream"].string_value == backend.address
            _, attempt = got[root[1]]
            _, span = got[attempt.parent_span_id.hex()]
            assert span.trace_id.hex() == root[0] and span.parent_span_id == b""
            assert span.end_time_unix_nano > span.start_time_unix_nano
    asyncio.run(main())


def test_an_unreachable_collector_costs_the_requests_nothing_and_drops_are_counted() -> None:
    async def main() -> None:
        closed = free_port()               # nothing listens there
        export = (f'{{ endpoint = "http://127.0.0.1:{closed}/v1/traces", timeout = "500ms", interval = "50ms", '
                  'batch = 4, max_pending = 8 }')
        async with HttpBackend() as backend, Proxy.from_toml(config(backend.address, listeners={
                "edge": "tracing = { start = true }"}, export=export)) as proxy:
            async with httpx.AsyncClient(base_url=url(proxy, "edge"), timeout=WAIT, trust_env=False) as client:
                began = time.monotonic()
                for _ in range(40):
                    answer = await client.get("/echo")
                    assert answer.status_code == 200 and forwarded_parent(answer)[2] == "01"
                took = time.monotonic() - began
            assert took < 20, took             # forty requests on a busy machine (an export in the way: 0.5 s each)
            deadline = time.monotonic() + 10
            while True:
                s = proxy.stats()["tracing"]
                if s["failed_exports"] >= 1 and s["dropped"] >= 32:
                    break
                assert time.monotonic() < deadline, s
                await asyncio.sleep(0.1)
            assert s["exported"] == 0 and s["pending"] <= 8
    asyncio.run(main())


def test_a_reload_switches_tracing_on_for_open_connections() -> None:
    async def main() -> None:
        exporter = InMemorySpanExporter()
        async with HttpBackend() as backend:
            text = config(backend.address, listeners={"web": ""})
            async with Proxy.from_toml(text, span_exporter=exporter) as proxy:
                async with httpx.AsyncClient(base_url=url(proxy, "web"), timeout=WAIT, trust_env=False) as client:
                    assert "traceparent" not in headers_of(await client.get("/echo"))
                    host, port = proxy.addresses["web"]
                    edge = text.replace(f'listen = "127.0.0.1:{port}"\nprotocol = "http"\ncluster = "web"\n',
                                        f'listen = "127.0.0.1:{port}"\nprotocol = "http"\ncluster = "web"\n'
                                        'tracing = { start = true }\n')
                    assert edge != text
                    await proxy.reload(Proxy.from_toml(edge + f"[tracing]\nexport = {FAST_EXPORT}\n").config)
                    answer = await client.get("/echo")          # the same keep-alive connection
                    trace_id, ours, _ = forwarded_parent(answer)
                    ((_, span),) = tries_of(await spans_of(exporter, 2)).values()
                    assert f"{span.context.trace_id:032x}" == trace_id and span.parent is None
                    assert set(tries_of(exporter.get_finished_spans())) == {ours}
                    assert proxy.stats()["http"]["web"]["accepted"] == 1
    asyncio.run(main())
