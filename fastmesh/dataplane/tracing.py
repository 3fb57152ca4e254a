"""Span export: the spans of sampled requests, gathered in each worker and sent to an OTLP/HTTP collector in batches.

The core (exchange.pyx) calls the recorder for each span of a sampled request (the request's own, and one per
upstream try) with a SpanFields tuple, and only while export is configured (_core/tracing.pyx's switch; otherwise a
request pays nothing for spans). The recorder turns the end time into wall-clock time and queues the tuple; a
SinkRunner (plugins/sinks.py: bounded queue, batches from a timer, drops counted) hands batches to SpanWriter, which
builds the OpenTelemetry SDK's ReadableSpan objects with our own ids and times and calls the SDK exporter in a
thread of its own, so neither building nor sending ever runs on the request path or blocks the loop. The SDK (`pip
install fastmesh[otel]`) is imported only when export is configured.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from fastmesh._version import __version__
from fastmesh.config.schema import TraceExport
from fastmesh.plugins.sinks import SinkRunner

# (trace id, span id, parent span id or None: 16 or 32 hex digits as bytes; method id (request.pxd), status, route
# index (-1: none), cluster ("" when none), upstream endpoint ("" when none), retries, fastmesh error cause (b""
# for an upstream's answer), duration in seconds, try: 0 for the request's own span (SERVER, child of the caller's),
# n >= 1 for the span of its n-th upstream try (CLIENT, child of the request's span; its id is the parent id that
# try sent upstream), and when it ended on the data path's clock (CLOCK_MONOTONIC seconds): a request's spans, recorded
# one after another, end on one clock reading, so a try never seems to outlast its request)
SpanFields = tuple[bytes, bytes, "bytes | None", int, int, int, str, str, int, bytes, float, int, float]
WHERE = "tracing.export"


def _method_names() -> dict[int, str]:
    from fastmesh._core.router import METHOD_IDS
    return {i: name for name, i in METHOD_IDS.items()}


class SpanWriter:
    """The sink SpanExport's runner writes to: SpanFields batches -> ReadableSpans -> the SDK exporter, in a thread."""

    def __init__(self, cfg: TraceExport, exporter: Any = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError as exc:          # checked when the config is loaded; here only for embedders
            raise RuntimeError("span export needs the OpenTelemetry SDK: pip install fastmesh[otel]") from exc
        self.owned = exporter is None              # an embedder's exporter stays theirs to shut down
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=dict(cfg.headers) or None,
                                        timeout=cfg.timeout)
        self.exporter = exporter
        self.resource = Resource.create({"service.name": cfg.service_name})
        self.scope = InstrumentationScope("fastmesh", __version__)
        self.methods = _method_names()
        from concurrent.futures import ThreadPoolExecutor     # (here, with the SDK: only where export is configured)
        self.threads = ThreadPoolExecutor(1, thread_name_prefix="fastmesh-spans")

    async def write(self, batch: list[tuple[int, SpanFields]]) -> None:
        """Export one batch; raises when the exporter did not take it (the runner counts it dropped)."""
        ok = await asyncio.get_running_loop().run_in_executor(self.threads, self.export, batch)
        if not ok:
            raise ConnectionError(f"the exporter refused or could not send {len(batch)} span(s)")

    def export(self, batch: Sequence[tuple[int, SpanFields]]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult
        return bool(self.exporter.export([self.span(end, f) for end, f in batch]) == SpanExportResult.SUCCESS)

    def span(self, end: int, f: SpanFields) -> Any:
        """One ReadableSpan with fastmesh's ids (the SDK's own way to export spans it did not start)."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        trace_id, span_id, parent_id, method, status, route, cluster, upstream, retries, error, duration, attempt, _ = f
        tid = int(trace_id, 16)
        flags = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(tid, int(span_id, 16), is_remote=False, trace_flags=flags)
        # A try's parent is our own request span; the request's is the caller's (remote).
        parent = (SpanContext(tid, int(parent_id, 16), is_remote=not attempt, trace_flags=flags) if parent_id
                  else None)
        name = self.methods.get(method, "_OTHER")
        attributes: dict[str, Any] = {"http.request.method": name, "fastmesh.route": route}
        if attempt:
            attributes["fastmesh.try"] = attempt
            if attempt > 1:
                attributes["http.request.resend_count"] = attempt - 1
        else:
            attributes["fastmesh.retries"] = retries
        if status:
            attributes["http.response.status_code"] = status
        if cluster:
            attributes["fastmesh.cluster"] = cluster
        if upstream:
            attributes["fastmesh.upstream"] = upstream
        cause = error.decode("ascii")
        if cause:
            attributes["fastmesh.error"] = cause
            attributes["error.type"] = cause
        failed = bool(cause) or status >= 500
        title = f"{name} {cluster}" if cluster else name
        return ReadableSpan(f"{title} try {attempt}" if attempt else title, context=context, parent=parent,
                            resource=self.resource, attributes=attributes,
                            kind=SpanKind.CLIENT if attempt else SpanKind.SERVER,
                            status=Status(StatusCode.ERROR if failed else StatusCode.UNSET),
                            start_time=end - int(duration * 1e9), end_time=end, instrumentation_scope=self.scope)

    def shutdown(self) -> None:
        """After the last batch: the thread ends, then the exporter (when it is ours)."""
        self.threads.shutdown(wait=True)
        if self.owned:
            self.exporter.shutdown()


class SpanExport:
    """A worker's span recorder and exporter: install() makes the core record sampled requests' spans."""

    def __init__(self, cfg: TraceExport, exporter: Any = None) -> None:
        self.cfg = cfg
        # Wall-clock ns minus monotonic ns: a span's end in wall time from the data path's monotonic clock.
        self.wall_offset = time.time_ns() - time.monotonic_ns()
        self.writer = SpanWriter(cfg, exporter)
        self.runner = SinkRunner(cfg, WHERE, plugin=self.writer)

    def record(self, f: SpanFields) -> None:
        """What the core calls per sampled request: stamp the end and queue it (no more on the request path)."""
        self.runner.add((self.wall_offset + int(f[12] * 1e9), f))

    def install(self) -> None:
        from fastmesh._core import tracing
        tracing.set_recorder(self.record)

    def stats(self) -> dict[str, Any]:
        """Spans exported, dropped (queue full, or their export failed), failed exports and spans waiting."""
        s = self.runner.stats()
        return {"exported": s["written"], "dropped": s["dropped"], "failed_exports": s["errors"],
                "pending": s["pending"]}

    async def aclose(self) -> None:
        """Stop recording, export what is left for up to the export timeout (a collector that is away must not hold
        a shutdown for a batch's timeout per batch queued), then close the exporter. What is left is dropped."""
        from fastmesh._core import tracing
        tracing.set_recorder(None)
        try:
            await asyncio.wait_for(self.runner.aclose(), self.cfg.timeout)
        except asyncio.TimeoutError:
            self.runner.dropped += len(self.runner.pending)
            self.runner.pending.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.writer.shutdown)


def build_span_export(cfg: TraceExport | None, exporter: Any = None) -> SpanExport | None:
    """The worker's span export for the config's [tracing] export table (or an embedder's SDK exporter), or None."""
    if exporter is not None and cfg is None:
        cfg = TraceExport(endpoint="")
    return SpanExport(cfg, exporter) if cfg is not None else None
