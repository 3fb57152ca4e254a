"""Run the load generators (iperf3 client, wrk) pinned to the load cpu and parse what they report."""
from __future__ import annotations

import json
import re
import subprocess

_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def iperf3(port: int, duration: float, cpu: int) -> dict:
    """One single-stream iperf3 test to 127.0.0.1:port; bytes received and Gbit/s as the receiver saw them."""
    argv = ["taskset", "-c", str(cpu), "iperf3", "-c", "127.0.0.1", "-p", str(port),
            "-t", str(max(1, round(duration))), "-J"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 printed no JSON: {out.stderr.strip() or out.stdout[:300]}") from None
    if data.get("error"):
        raise RuntimeError(f"iperf3: {data['error']}")
    recv = data["end"]["sum_received"]
    return {"bytes": int(recv["bytes"]), "seconds": float(recv["seconds"]),
            "gbps": float(recv["bits_per_second"]) / 1e9,
            "retransmits": int(data["end"].get("sum_sent", {}).get("retransmits", 0))}


def wrk(port: int, duration: float, cpu: int, connections: int, close: bool, latency: bool = False) -> dict:
    """wrk, one thread, to http://127.0.0.1:port/; close=True sends `Connection: close` (a new connection each time).

    latency=True adds --latency, which prints the 50/75/90/99th percentiles of the request latencies.
    """
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    if close:
        argv += ["-H", "Connection: close"]
    if latency:
        argv.append("--latency")
    argv.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(out.stdout + out.stderr)


_TIME_UNITS = {"us": 1, "ms": 1e3, "s": 1e6}


def parse_wrk(text: str) -> dict:
    """Requests, seconds, req/s, error counts and latencies (µs) from wrk's plain-text summary.

    socket_errors sums wrk's connect/read/write/timeout counts; non_2xx is its "Non-2xx or 3xx responses"
    line; errors is both together. Percentile keys (p50_us, ...) are present only with --latency.
    When anything went wrong the summary itself is kept under wrk_output, so the report can show it.
    """
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s|m|h)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m or not rps:
        raise RuntimeError(f"unexpected wrk output: {text.strip()[:400]}")
    seconds = float(m.group(2)) * {"s": 1, "ms": 1e-3, "m": 60, "h": 3600}[m.group(3)]
    socket_errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        socket_errors = sum(int(x) for x in sock.groups())
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non_2xx = int(found.group(1)) if found else 0
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text)
    out: dict = {"requests": int(m.group(1)), "seconds": seconds, "rps": float(rps.group(1)),
                 "errors": socket_errors + non_2xx, "socket_errors": socket_errors, "non_2xx": non_2xx,
                 "latency_avg_us": float(lat.group(1)) * _TIME_UNITS[lat.group(2)] if lat else None}
    for pct, value, unit in re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[f"p{pct}_us"] = float(value) * _TIME_UNITS[unit]
    if socket_errors or non_2xx:
        out["wrk_output"] = text.strip()
    return out
