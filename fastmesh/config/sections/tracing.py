"""Tracing: a listener's propagate/start/sample_rate and the top-level [tracing.export] OTLP exporter."""
from __future__ import annotations

import importlib.util
import re
from typing import Any

from fastmesh.config.schema import ListenerTracing, TraceExport, Tracing
from fastmesh.config.sections.headers import _headers
from fastmesh.config.walk import BAD, _Check, _duration, _flag, _key, _matching, _table, _text, _whole
from fastmesh.errors import ConfigError


def _sample_rate(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return check.bad(key, "a number from 0 to 1 (0.01 samples 1% of the traces started here)", value)


def _listener_tracing(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"propagate": _flag, "start": _flag, "sample_rate": _sample_rate})
    if fields is None:
        return BAD
    if fields.get("start") and fields.get("propagate") is False:
        return check.bad(_key(key, "start"), "false when propagate = false (a trace started here would go nowhere)",
                         True)
    return ListenerTracing(**fields)


_OTLP_URL_RE = re.compile(r"https?://[^\s/?#]+(?:/[^\s]*)?")
_otlp_url = _matching(_OTLP_URL_RE, 'an http:// or https:// URL like "http://127.0.0.1:4318/v1/traces"')


def _trace_export(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {
        "endpoint": _otlp_url,
        "service_name": _text("a service name"),
        "headers": _headers(protected=False),
        "timeout": _duration(allow_zero=False),
        "batch": _whole(1, 1 << 16),
        "interval": _duration(allow_zero=False),
        "max_pending": _whole(1, 1 << 24),
    }, {"endpoint": 'the collector\'s traces URL, like "http://127.0.0.1:4318/v1/traces"'})
    if fields is None:
        return BAD
    if importlib.util.find_spec("opentelemetry") is None or \
            importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        check.errors.append(ConfigError(check.source, key, "the OpenTelemetry SDK and its OTLP/HTTP exporter",
                                        reason="span export needs them installed: pip install fastmesh[otel]"))
        return BAD
    return TraceExport(**fields)


def _tracing(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, {"export": _trace_export})
    return BAD if fields is None else Tracing(**fields)
