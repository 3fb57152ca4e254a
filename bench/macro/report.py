"""Turn trial results into medians, fastmesh/HAProxy ratios and Markdown tables."""
from __future__ import annotations

import statistics

# per workload: (metric key, column header, format, scale); the headers are explained in bench/README.md
COLUMNS: dict[str, list[tuple[str, str, str, float]]] = {
    "iperf": [("gbps", "Gbit/s", ".2f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
              ("gbit_per_core", "Gbit/s per proxy core", ".2f", 1), ("retransmits", "retransmits", ".0f", 1)],
    "http-keepalive": [("rps", "req/s", ".0f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
                       ("us_per_req", "µs proxy CPU/req", ".2f", 1), ("latency_avg_us", "avg latency µs", ".0f", 1),
                       ("errors", "errors", ".0f", 1)],
    "http-close": [("rps", "conn/s", ".0f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
                   ("us_per_req", "µs proxy CPU/conn", ".2f", 1), ("latency_avg_us", "avg latency µs", ".0f", 1),
                   ("errors", "errors", ".0f", 1)],
    "http-l7": [("rps", "req/s", ".0f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
                ("us_per_req", "µs proxy CPU/req", ".2f", 1), ("latency_avg_us", "avg latency µs", ".0f", 1),
                ("non_2xx", "non-2xx", ".0f", 1), ("socket_errors", "socket errors", ".0f", 1)],
    "http-l7-c512": [("rps", "req/s", ".0f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
                     ("us_per_req", "µs proxy CPU/req", ".2f", 1), ("latency_avg_us", "avg latency µs", ".0f", 1),
                     ("non_2xx", "non-2xx", ".0f", 1), ("socket_errors", "socket errors", ".0f", 1)],
    "http-latency": [("rps", "req/s", ".0f", 1), ("p50_us", "p50 µs", ".0f", 1), ("p99_us", "p99 µs", ".0f", 1),
                     ("added_p50_us", "added p50 µs", ".0f", 1), ("added_p99_us", "added p99 µs", ".0f", 1),
                     ("us_per_req", "µs proxy CPU/req", ".2f", 1),
                     ("non_2xx", "non-2xx", ".0f", 1), ("socket_errors", "socket errors", ".0f", 1)],
    "idle": [("rss_idle_kb", "worker RSS idle MiB", ".1f", 1 / 1024),
             ("rss_held_kb", "worker RSS held MiB", ".1f", 1 / 1024),
             ("kb_per_conn", "KiB per idle conn", ".2f", 1),
             ("kb_per_further_conn", "KiB per further idle conn", ".2f", 1),
             ("sup_rss_idle_kb", "supervisor RSS MiB", ".1f", 1 / 1024)],
}
COLUMNS["idle-http"] = COLUMNS["idle-h2"] = COLUMNS["idle-https"] = COLUMNS["idle"]
COLUMNS["h2"] = [("rps", "req/s", ".0f", 1), ("cpu_pct", "proxy CPU %", ".0f", 1),
                 ("us_per_req", "µs proxy CPU/req", ".2f", 1), ("latency_avg_us", "avg latency µs", ".0f", 1),
                 ("non_2xx", "non-2xx", ".0f", 1), ("failed", "failed", ".0f", 1)]
COLUMNS["https"] = COLUMNS["http-l7"]
COLUMNS["tls-bulk"] = COLUMNS["iperf"][:3]
COLUMNS["h2tls"] = COLUMNS["h2"]
TITLES = {
    "https": "HTTPS: TLS terminated, HTTP/1.1 keep-alive both sides, cleartext upstream (wrk -t1 -c{ka})",
    "h2tls": "HTTP/2 over TLS (ALPN h2; h2load -t1 -c8 -m16), HTTP/1.1 to the backend",
    "iperf": "iperf3, one TCP stream",
    "tls-bulk": "one bulk TLS stream, TLS terminated and originated again (TLS 1.2 AES128-GCM both legs)",
    "http-keepalive": "HTTP keep-alive relayed as bytes (wrk -t1 -c{ka})",
    "http-close": "short connections (wrk -t1 -c{close} -H 'Connection: close')",
    "http-l7": "HTTP/1.1 proxied at L7, keep-alive both sides (wrk -t1 -c{ka})",
    "http-l7-c512": "HTTP/1.1 proxied at L7 with many clients (wrk -t1 -c512)",
    "http-latency": "L7 latency at light load (wrk -t1 -c{lat} --latency); added = proxy − direct, same repetition",
    "h2": "HTTP/2 clients (h2load -t1 -c8 -m16, prior knowledge), HTTP/1.1 to the backend",
    "idle": "memory: {conns} idle proxied connections held",
    "idle-http": "memory: {conns} idle keep-alive HTTP connections held at L7, each after one request",
    "idle-h2": "memory: {conns} idle HTTP/2 connections (prior knowledge) held, each after one request",
    "idle-https": "memory: {conns} idle TLS keep-alive connections (HTTP/1.1 by ALPN) held at L7, each after one "
                  "request, with the pooled upstream connection it left",
}
# the numbers the summary compares, with which direction is better
HEADLINE: dict[str, list[tuple[str, str]]] = {
    "iperf": [("gbps", "higher"), ("gbit_per_core", "higher")],
    "tls-bulk": [("gbps", "higher"), ("gbit_per_core", "higher")],
    "http-keepalive": [("rps", "higher"), ("us_per_req", "lower")],
    "http-close": [("rps", "higher"), ("us_per_req", "lower")],
    "http-l7": [("rps", "higher"), ("us_per_req", "lower")],
    "http-l7-c512": [("rps", "higher"), ("us_per_req", "lower")],
    "http-latency": [("added_p50_us", "lower"), ("added_p99_us", "lower")],
    "h2": [("rps", "higher"), ("us_per_req", "lower")],
    "https": [("rps", "higher"), ("us_per_req", "lower")],
    "h2tls": [("rps", "higher"), ("us_per_req", "lower")],
    "idle": [("kb_per_conn", "lower"), ("kb_per_further_conn", "lower"), ("rss_idle_kb", "lower")],
    "idle-http": [("kb_per_conn", "lower"), ("kb_per_further_conn", "lower"), ("rss_idle_kb", "lower")],
    "idle-h2": [("kb_per_conn", "lower"), ("kb_per_further_conn", "lower"), ("rss_idle_kb", "lower")],
    "idle-https": [("kb_per_conn", "lower"), ("kb_per_further_conn", "lower"), ("rss_idle_kb", "lower")],
}
BASELINE, SUBJECT = "haproxy", "fastmesh"
# per workload: metric -> the derived metric that holds (proxy's value − the direct run's value, same repetition)
ADDED = {"http-latency": {"p50_us": "added_p50_us", "p99_us": "added_p99_us"}}


def add_derived(trials: list[dict]) -> None:
    """Add to each proxy trial the latency it added over the direct run of the same repetition.

    Pairing by repetition (rather than subtracting medians) keeps a slow minute of the shared machine,
    which slows the direct run and the proxies next to it alike, out of the difference.
    """
    direct = {(t["workload"], t["rep"]): t["metrics"] for t in trials
              if t["proxy"] == "direct" and not t.get("error")}
    for t in trials:
        pairs = ADDED.get(t["workload"])
        base = direct.get((t["workload"], t["rep"]))
        if not pairs or base is None or t["proxy"] == "direct" or t.get("error"):
            continue
        for metric, added in pairs.items():
            if t["metrics"].get(metric) is not None and base.get(metric) is not None:
                t["metrics"][added] = t["metrics"][metric] - base[metric]


def medians(trials: list[dict]) -> dict[str, dict[str, dict]]:
    """{workload: {proxy: {metric: median, "trials_ok": count, "trials_failed": count}}}."""
    out: dict[str, dict[str, dict]] = {}
    for t in trials:
        cell = out.setdefault(t["workload"], {}).setdefault(t["proxy"], {"trials_ok": 0, "trials_failed": 0, "_v": {}})
        if t.get("error"):
            cell["trials_failed"] += 1
            continue
        cell["trials_ok"] += 1
        for k, v in t["metrics"].items():
            if isinstance(v, (int, float)) and v is not None:
                cell["_v"].setdefault(k, []).append(v)
    for per_proxy in out.values():
        for cell in per_proxy.values():
            for k, vs in cell.pop("_v").items():
                cell[k] = statistics.median(vs)
    return out


def ratio(med: dict, workload: str, metric: str, proxy: str = SUBJECT, base: str = BASELINE) -> float | None:
    """proxy's median divided by the baseline's, or None when either is missing or the baseline is not positive
    (an added latency can come out at zero or below on a noisy run, and a ratio to it means nothing)."""
    a = med.get(workload, {}).get(proxy, {}).get(metric)
    b = med.get(workload, {}).get(base, {}).get(metric)
    return a / b if a is not None and b is not None and b > 0 else None


def paired_ratios(trials: list[dict], workloads: list[str], proxy: str = SUBJECT,
                  base: str = BASELINE) -> dict[str, dict[str, dict]]:
    """Per repetition, proxy's headline numbers divided by the baseline's from the same repetition, and their median.

    The tables divide medians; on a busy machine a repetition where one proxy caught a quiet minute can decide a
    median, so the per-repetition ratios (each taken minutes apart at most) show how steady a ratio is.
    """
    by_rep: dict[tuple[str, str, int], dict] = {
        (t["workload"], t["proxy"], t["rep"]): t["metrics"] for t in trials if not t.get("error")}
    out: dict[str, dict[str, dict]] = {}
    for w in workloads:
        for metric, _ in HEADLINE.get(w, []):
            per_rep = []
            for (tw, tp, rep), m in sorted(by_rep.items(), key=lambda kv: kv[0][2]):
                if tw != w or tp != proxy:
                    continue
                b = by_rep.get((w, base, rep), {}).get(metric)
                a = m.get(metric)
                if a is not None and b is not None and b > 0:
                    per_rep.append(a / b)
            if per_rep:
                out.setdefault(w, {})[metric] = {"per_rep": per_rep, "median": statistics.median(per_rep)}
    return out


def _fmt(v, fmt: str, scale: float) -> str:
    return "–" if v is None else format(v * scale, fmt)


def _label(metric: str, workload: str) -> str:
    for key, header, _, _ in COLUMNS[workload]:
        if key == metric:
            return header
    return metric


def markdown(med: dict, proxies: list[str], workloads: list[str], fmt_args: dict,
             paired: dict | None = None) -> str:
    """One table per workload (medians), then the summary with every proxy's ratio to HAProxy.

    paired (from paired_ratios) adds a last summary column: fastmesh/HAProxy in each repetition.
    """
    parts = []
    for w in workloads:
        if w not in med:
            continue
        cols = COLUMNS[w]
        parts.append(f"### {TITLES[w].format(**fmt_args)}\n")
        parts.append("| proxy | " + " | ".join(h for _, h, _, _ in cols) + " | trials ok/failed |")
        parts.append("|---|" + "---:|" * (len(cols) + 1))
        for p in proxies:
            cell = med[w].get(p)
            if cell is None:
                continue
            vals = [_fmt(cell.get(k), f, s) for k, _, f, s in cols]
            parts.append(f"| {p} | " + " | ".join(vals) + f" | {cell['trials_ok']}/{cell['trials_failed']} |")
        parts.append("")
    shown = [p for p in proxies if any(p in med.get(w, {}) for w in workloads)]
    others = [p for p in shown if p not in ("direct", BASELINE)]
    parts.append("### summary (medians; ratio = proxy / HAProxy, same run)\n")
    head = "| workload | metric | better | " + " | ".join(shown)
    head += "".join(f" | {p}/{BASELINE}" for p in others)
    with_paired = paired is not None and SUBJECT in others
    head += f" | {SUBJECT}/{BASELINE} by repetition |" if with_paired else " |"
    parts.append(head)
    parts.append("|---|---|---|" + "---:|" * (len(shown) + len(others) + with_paired))
    for w in workloads:
        if w not in med:
            continue
        for metric, better in HEADLINE[w]:
            _, _, f, s = next(c for c in COLUMNS[w] if c[0] == metric)
            vals = [_fmt(med[w].get(p, {}).get(metric), f, s) for p in shown]
            rats = [ratio(med, w, metric, p) for p in others]
            row = f"| {w} | {_label(metric, w)} | {better} | " + " | ".join(vals)
            row += "".join(" | " + ("–" if r is None else f"{r:.2f}×") for r in rats)
            if with_paired:
                reps = (paired or {}).get(w, {}).get(metric, {}).get("per_rep", [])
                row += " | " + (" ".join(f"{r:.2f}" for r in reps) or "–")
            parts.append(row + " |")
    return "\n".join(parts) + "\n"
