"""Prometheus text and OpenMetrics rendering of a stats Snapshot plus the supervisor's own numbers."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastmesh._core.stats import PROXY_REFUSALS, TLS_FAIL_REASONS
from fastmesh.dataplane.stats import Snapshot

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# What the workers count in Python (filters, span export, sinks), asked over the control link and summed by
# AdminServer.plugin_view: {"filters": {(listener, plugin): {calls, ...}}, "tracing": {exported, ...},
# "sinks": {(sink, plugin): {written, ...}}}. The data path's own counters come through the stats block instead.
FILTER_COUNTS = ("calls", "answers", "errors", "timeouts", "slow")
SPAN_COUNTS = ("exported", "dropped", "failed_exports")
SINK_COUNTS = ("written", "dropped", "errors")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]       # (name suffix, labels, value)


@dataclass
class ProcessInfo:
    """What only the supervisor knows: identity, start time and its workers."""
    version: str
    started: float          # Unix seconds
    config_hash: str
    workers: int            # configured worker processes
    workers_ready: int      # serving now


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header prefers OpenMetrics to the Prometheus text format (q-values honoured)."""
    best_om, best_text = 0.0, 0.0
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text


def render(snap: Snapshot, info: ProcessInfo, openmetrics: bool = False,
           discovery: dict[str, dict[str, Any]] | None = None, rate_limits: list[dict[str, Any]] | None = None,
           tls: dict[str, dict[str, Any]] | None = None, naming: dict[str, Any] | None = None,
           plugins: dict[str, Any] | None = None) -> bytes:
    """The whole exposition, in OpenMetrics (ends with # EOF) or the Prometheus text format 0.0.4; `discovery`:
    per discovered cluster, its source's state (discovery/base.py SourceState.as_dict); `rate_limits`: per limited
    route, its counts over the instance (dataplane/ratelimits.py counts); `tls`: the workers' TLS contexts merged
    (AdminServer.tls_view); `naming`: the watched table's source state ("source", DiscoveryManager.naming_status)
    and the cluster templates' ("templates"); `plugins`: the workers' Python-side counts summed
    (AdminServer.plugin_view: filters, span export, sinks)."""
    out = _Writer(openmetrics)
    out.info("fastmesh_build", "fastmesh version", [(("version", info.version),)])
    out.info("fastmesh_config", "hash of the effective config (as /config shows it)", [(("hash", info.config_hash),)])
    out.gauge("fastmesh_start_time_seconds", "when the supervisor started, Unix time", [((), info.started)])
    out.gauge("fastmesh_workers", "worker processes configured", [((), info.workers)])
    out.gauge("fastmesh_workers_ready", "worker processes serving now", [((), info.workers_ready)])
    out.counter("fastmesh_worker_restarts", "workers restarted after an unexpected exit", [((), snap.restarts)])
    out.counter("fastmesh_config_reloads", "config reloads by result",
                [((("result", r),), snap.reloads.get(r, 0)) for r in ("ok", "failed")])
    workers = snap.worker_info()
    out.gauge("fastmesh_worker_start_time_seconds", "when each worker process started, Unix time",
              [((("worker", str(n)),), w["started"]) for n, w in workers.items()])
    out.gauge("fastmesh_event_loop_lag_seconds", "how late each worker's periodic timer fired (max over 1s)",
              [((("worker", str(n)),), w["lag"]) for n, w in workers.items()])
    out.gauge("fastmesh_worker_max_connections", "downstream connections each worker keeps open at most "
              "(max_connections, by default derived from its fd limit)",
              [((("worker", str(n)),), w["max_connections"]) for n, w in workers.items()])

    listeners = snap.listeners()
    per_listener = [
        ("counter", "fastmesh_downstream_connections", "downstream connections accepted", "accepted"),
        ("gauge", "fastmesh_downstream_connections_active", "downstream connections open now", "active"),
        ("counter", "fastmesh_downstream_connections_failed",
         "downstream connections closed because no upstream endpoint could be connected", "failed"),
        ("counter", "fastmesh_downstream_received_bytes", "bytes received from downstream clients", "bytes_in"),
        ("counter", "fastmesh_downstream_sent_bytes", "bytes sent to downstream clients", "bytes_out"),
        ("counter", "fastmesh_downstream_connections_limited",
         "connections accepted only after waiting in the backlog because a connection limit was reached", "limited"),
        ("counter", "fastmesh_downstream_accept_paused",
         "times accepting paused because the worker was out of file descriptors (or memory)", "paused"),
    ]
    for kind, name, help_text, key in per_listener:
        out.family(kind, name, help_text, [((("listener", ln),), row[key]) for ln, row in listeners.items()])
    out.counter("fastmesh_downstream_connections_routed",
                "connections a tcp listener sending to a service relayed, by the cluster the service resolved to",
                [((("listener", ln), ("service", row["service"]), ("cluster", cn)), n)
                 for ln, row in listeners.items() if "clusters" in row for cn, n in row["clusters"].items()])
    # TLS series only for listeners that have seen a TLS handshake (cleartext listeners add none).
    tls_view = tls
    tls = {ln: row for ln, row in listeners.items()
           if row["tls_handshakes"] or any(row[f"tls_failed_{r}"] for r in TLS_FAIL_REASONS)}
    out.counter("fastmesh_tls_handshakes", "TLS handshakes finished with downstream clients",
                [((("listener", ln),), row["tls_handshakes"]) for ln, row in tls.items()])
    out.counter("fastmesh_tls_resumed", "TLS handshakes that resumed a session (a ticket)",
                [((("listener", ln),), row["tls_resumed"]) for ln, row in tls.items()])
    out.counter("fastmesh_tls_handshake_failures", "TLS handshakes refused (or passthrough clients), by reason",
                [((("listener", ln), ("reason", r)), row[f"tls_failed_{r}"])
                 for ln, row in tls.items() for r in TLS_FAIL_REASONS])
    _certificates(out, tls_view or {})
    _proxy_protocol(out, listeners)

    clusters = snap.clusters()
    per_cluster = [
        ("counter", "fastmesh_upstream_connections", "upstream connections established", "upstream_connections"),
        ("gauge", "fastmesh_upstream_connections_active", "upstream connections open now (connecting included)",
         "upstream_active"),
        ("counter", "fastmesh_retries", "upstream connects tried again on another endpoint", "retries"),
        ("counter", "fastmesh_upstream_unavailable",
         "connections (tcp) and requests (http) given up: no endpoint of the cluster could be connected", "failed"),
        ("counter", "fastmesh_outlier_ejections", "endpoints ejected by outlier detection", "ejections"),
    ]
    for kind, name, help_text, key in per_cluster:
        out.family(kind, name, help_text, [((("cluster", cn),), c[key]) for cn, c in clusters.items()])
    out.counter("fastmesh_health_checks", "active health checks by result",
                [((("cluster", cn), ("result", result)), c[key]) for cn, c in clusters.items()
                 for result, key in (("ok", "checks_ok"), ("failed", "checks_failed"))])
    out.counter("fastmesh_upstream_connect_failures", "upstream connects that failed or timed out",
                [((("cluster", cn), ("endpoint", e["address"])), e["connect_failures"])
                 for cn, c in clusters.items() for e in c["endpoints"]])
    out.gauge("fastmesh_endpoint_healthy", "1 unless the endpoint's latest connect outcome was a failure",
              [((("cluster", cn), ("endpoint", e["address"])), int(e["healthy"]))
               for cn, c in clusters.items() for e in c["endpoints"]])

    # Upstream TLS series only for clusters that originate TLS.
    upstream_tls = {cn: c["tls"] for cn, c in clusters.items() if "tls" in c}
    out.counter("fastmesh_upstream_tls_handshakes", "TLS handshakes finished with a cluster's endpoints",
                [((("cluster", cn),), t["handshakes"]) for cn, t in upstream_tls.items()])
    out.counter("fastmesh_upstream_tls_resumed", "TLS handshakes with a cluster's endpoints that resumed a session",
                [((("cluster", cn),), t["resumed"]) for cn, t in upstream_tls.items()])
    out.counter("fastmesh_upstream_tls_handshake_failures", "TLS handshakes with a cluster's endpoints that failed",
                [((("cluster", cn),), t["failed"]) for cn, t in upstream_tls.items()])
    out.counter("fastmesh_grpc_responses", "gRPC answers from h2 clusters by grpc-status (OTHER: codes past 16)",
                [((("cluster", cn), ("grpc_status", name)), n) for cn, c in clusters.items()
                 for name, n in c.get("grpc", {}).items()])
    out.counter("fastmesh_requests", "HTTP responses by listener, cluster and status class",
                [((("listener", ln), ("cluster", cn), ("code_class", cls)), v)
                 for ln, cn, cls, v in snap.requests()])
    out.histogram("fastmesh_request_duration_seconds", "HTTP request duration, request head to response end",
                  snap.durations())
    limited = rate_limits or []
    out.counter("fastmesh_rate_limited", "requests a route's rate limit refused (429), by listener and route index",
                [((("listener", r["listener"]), ("route", str(r["route"]))), r["limited"]) for r in limited])
    out.counter("fastmesh_rate_limit_passed", "requests a route's rate limit let through",
                [((("listener", r["listener"]), ("route", str(r["route"]))), r["passed"]) for r in limited])
    _discovery(out, discovery or {})
    _naming(out, snap, naming or {})
    _plugins(out, plugins or {})
    return out.finish()


def _proxy_protocol(out: _Writer, listeners: dict[str, dict[str, Any]]) -> None:
    """Per listener that has seen a PROXY protocol header or refused a connection for want of one: connections
    handed on and refusals by reason (counted by the gate in the stats block)."""
    seen = {ln: row for ln, row in listeners.items()
            if row["proxy_protocol_passed"] or any(row[f"proxy_protocol_refused_{r}"] for r in PROXY_REFUSALS)}
    out.counter("fastmesh_proxy_protocol_passed", "connections handed on after a valid PROXY protocol header",
                [((("listener", ln),), row["proxy_protocol_passed"]) for ln, row in seen.items()])
    out.counter("fastmesh_proxy_protocol_refused", "connections closed for want of a valid PROXY protocol header, "
                "by reason (not_proxy, version, malformed, too_long, timeout, closed)",
                [((("listener", ln), ("reason", r)), row[f"proxy_protocol_refused_{r}"])
                 for ln, row in seen.items() for r in PROXY_REFUSALS])


def _plugins(out: _Writer, plugins: dict[str, Any]) -> None:
    """Filter plugins per (listener, plugin), span export and sinks: counted in each worker's Python layer, asked
    over the control link and summed (kept from going backwards when a worker restarts or reloads: KeptTotals)."""
    filters = plugins.get("filters") or {}
    labels = {key: (("listener", key[0]), ("plugin", key[1])) for key in filters}
    for name, key, help_text in (
            ("fastmesh_filter_calls", "calls", "requests a filter plugin was called for"),
            ("fastmesh_filter_answered", "answers", "requests a filter plugin answered itself (e.g. 401, 429)"),
            ("fastmesh_filter_errors", "errors", "filter calls that raised (the request got the failure mode's "
             "answer, by default 500 with fastmesh-error: plugin)"),
            ("fastmesh_filter_timeouts", "timeouts", "async filter calls that did not finish within the filter's "
             "timeout"),
            ("fastmesh_filter_slow", "slow", "inline (synchronous) filter calls that took longer than the filter's "
             "timeout (they cannot be interrupted: the worker waited)")):
        out.counter(name, help_text, [(labels[k], row[key]) for k, row in filters.items()])
    tracing = plugins.get("tracing") or {}
    if tracing:
        out.counter("fastmesh_tracing_spans_exported", "spans exported (the exporter reported success)",
                    [((), tracing["exported"])])
        out.counter("fastmesh_tracing_spans_dropped", "spans dropped: the export queue was full, or their export "
                    "failed", [((), tracing["dropped"])])
        out.counter("fastmesh_tracing_spans_export_failures", "span exports (batches) that failed",
                    [((), tracing["failed_exports"])])
    sinks = plugins.get("sinks") or {}
    labels = {key: (("sink", key[0]), ("plugin", key[1])) for key in sinks}
    out.counter("fastmesh_sink_records_written", "records an access-log or event sink's write() took",
                [(labels[k], row["written"]) for k, row in sinks.items()])
    out.counter("fastmesh_sink_records_dropped", "records a sink dropped: its queue was full, or write() raised",
                [(labels[k], row["dropped"]) for k, row in sinks.items()])
    out.counter("fastmesh_sink_write_errors", "sink write() calls that raised",
                [(labels[k], row["errors"]) for k, row in sinks.items()])


def _certificates(out: _Writer, view: dict[str, dict[str, Any]]) -> None:
    """Every loaded certificate's expiry, as a timestamp (Prometheus' advice for "when": alert on
    `fastmesh_tls_cert_expiry_seconds - time() < 14 * 86400`), and the state of reloading the files."""
    contexts = [(kind[:-1], name, v) for kind in ("listeners", "clusters") for name, v in view.get(kind, {}).items()]
    out.gauge("fastmesh_tls_cert_expiry_seconds", "when each loaded TLS certificate expires (its notAfter), Unix time",
              [(((kind, name), ("cert", c["cert"]), ("names", ",".join(c["names"] or c["uris"]))), c["not_after"])
               for kind, name, v in contexts for c in v["certificates"]])
    now = time.time()
    out.gauge("fastmesh_tls_cert_expires_in_seconds", "seconds each loaded TLS certificate has left (negative: it "
              "has expired and is still served)",
              [(((kind, name), ("cert", c["cert"]), ("names", ",".join(c["names"] or c["uris"]))), c["not_after"] - now)
               for kind, name, v in contexts for c in v["certificates"]])
    out.gauge("fastmesh_tls_cert_reload_error", "1 while changed TLS files are refused (the previous certificates "
              "stay in use) in some worker", [(((kind, name),), int(bool(v["errors"]))) for kind, name, v in contexts])
    out.counter("fastmesh_tls_cert_reloads", "TLS file changes taken (ok) or refused (failed), over the workers",
                [(((kind, name), ("result", r)), v[key]) for kind, name, v in contexts
                 for r, key in (("ok", "reloads"), ("failed", "reload_failures"))])


def _naming(out: _Writer, snap: Snapshot, naming: dict[str, Any]) -> None:
    """Resolutions per service by outcome, overrides by result (counted in the workers' core), the watched table's
    source and the cluster templates (the supervisor's)."""
    counted = snap.naming()
    out.counter("fastmesh_naming_resolutions", "requests to a logical name by how it resolved: chosen (a live "
                "cluster, no fallback), fallback (a live cluster after a branch or rule resolved to nothing), first "
                "(nothing live: the first cluster the name prefers), none (no cluster: a `!`, or none named)",
                [((("service", svc), ("outcome", o)), n) for svc, row in counted["resolutions"].items()
                 for o, n in row.items()])
    if counted["resolutions"]:
        out.counter("fastmesh_naming_overrides", "requests carrying a fastmesh-naming override on a trusted "
                    "listener, by result (refused: it did not compile and the table was used)",
                    [((("result", r),), n) for r, n in counted["overrides"].items()])
    source = naming.get("source")
    if source:
        kind = (("kind", source["kind"]),)
        out.gauge("fastmesh_naming_source_last_update_time_seconds", "when the watched naming table last answered "
                  "with a table, Unix time (0: not yet)", [(kind, source["last_update"] or 0)])
        out.gauge("fastmesh_naming_rules", "rules in the naming table in use (its last good version)",
                  [(kind, source["rules"] or 0)])
        out.counter("fastmesh_naming_source_errors", "watched naming table failures by kind (the last good table "
                    "stayed)", [((*kind, ("error", e)), n) for e, n in sorted(source["errors"].items())])
        out.counter("fastmesh_naming_source_watch_restarts", "naming table watches re-established after they broke",
                    [(kind, source["watch_restarts"])])
    templates = naming.get("templates") or {}
    out.gauge("fastmesh_cluster_template_clusters", "clusters made from each cluster template now",
              [((("template", p),), len(t["clusters"])) for p, t in templates.items()])
    out.counter("fastmesh_cluster_template_refused", "names a template did not make a cluster for (max_clusters)",
                [((("template", p),), t["refused"]) for p, t in templates.items()])
    out.counter("fastmesh_cluster_template_removed", "clusters made from a template removed after idle_timeout",
                [((("template", p),), t["removed"]) for p, t in templates.items()])


def _discovery(out: _Writer, sources: dict[str, dict[str, Any]]) -> None:
    """Per discovered cluster (labels cluster and kind): when it last changed, its size, its failures."""
    if not sources:
        return
    labels = {cn: (("cluster", cn), ("kind", s["kind"])) for cn, s in sources.items()}
    out.gauge("fastmesh_discovery_last_update_time_seconds", "when the source last answered with endpoints, Unix "
              "time (0: not yet)", [(labels[cn], s["last_update"] or 0) for cn, s in sources.items()])
    out.gauge("fastmesh_discovery_endpoints", "endpoints in the source's last answer",
              [(labels[cn], s["endpoints"]) for cn, s in sources.items()])
    out.counter("fastmesh_discovery_updates", "answers with endpoints the source gave",
                [(labels[cn], s["updates"]) for cn, s in sources.items()])
    out.counter("fastmesh_discovery_errors", "failed lookups, reads and watches by kind of failure (the last good "
                "set stayed)", [((*labels[cn], ("error", kind)), n) for cn, s in sources.items()
                                for kind, n in sorted(s["errors"].items())])
    out.counter("fastmesh_discovery_watch_restarts", "watches re-established after they broke",
                [(labels[cn], s["watch_restarts"]) for cn, s in sources.items()])


class _Writer:
    def __init__(self, openmetrics: bool) -> None:
        self.om = openmetrics
        self.lines: list[str] = []

    def family(self, kind: str, name: str, help_text: str, series: Iterable[tuple[Labels, float]]) -> None:
        if kind == "counter":
            self.counter(name, help_text, series)
        else:
            self.gauge(name, help_text, series)

    def counter(self, name: str, help_text: str, series: Iterable[tuple[Labels, float]]) -> None:
        # OpenMetrics names the family without _total; the classic format names it as the sample is named.
        self._emit(name if self.om else name + "_total", "counter", help_text,
                   [("_total" if self.om else "", labels, v) for labels, v in series])

    def gauge(self, name: str, help_text: str, series: Iterable[tuple[Labels, float]]) -> None:
        self._emit(name, "gauge", help_text, [("", labels, v) for labels, v in series])

    def info(self, name: str, help_text: str, label_sets: list[Labels]) -> None:
        if self.om:
            self._emit(name, "info", help_text, [("_info", labels, 1) for labels in label_sets])
        else:
            self._emit(name + "_info", "gauge", help_text, [("", labels, 1) for labels in label_sets])

    def histogram(self, name: str, help_text: str,
                  per_cluster: dict[str, tuple[list[tuple[float, int]], float, int]]) -> None:
        samples: list[Sample] = []
        for cluster, (buckets, total, count) in per_cluster.items():
            for bound, running in buckets:
                samples.append(("_bucket", (("cluster", cluster), ("le", _float(bound))), running))
            samples.append(("_count", (("cluster", cluster),), count))
            samples.append(("_sum", (("cluster", cluster),), total))
        self._emit(name, "histogram", help_text, samples)

    def _emit(self, family: str, kind: str, help_text: str, samples: list[Sample]) -> None:
        if not samples:
            return          # a family with no series yet (say, HTTP counters with only tcp listeners)
        self.lines.append(f"# HELP {family} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {family} {kind}")
        base = family
        for suffix, labels, value in samples:
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            self.lines.append(f"{base}{suffix}{{{label_text}}} {_value(value)}" if labels
                              else f"{base}{suffix} {_value(value)}")

    def finish(self) -> bytes:
        if self.om:
            self.lines.append("# EOF")
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _float(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    return _float(value)
