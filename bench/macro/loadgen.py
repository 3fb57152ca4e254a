"""Run the load generators (iperf3 client, wrk) pinned to the load cpu and parse what they report."""
from __future__ import annotations

import json
import re
import subprocess
import time

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


def wrk(port: int, duration: float, cpu: int, connections: int, close: bool, latency: bool = False,
        scheme: str = "http") -> dict:
    """wrk, one thread, to http://127.0.0.1:port/; close=True sends `Connection: close` (a new connection each time).

    latency=True adds --latency, which prints the 50/75/90/99th percentiles of the request latencies.
    """
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    if close:
        argv += ["-H", "Connection: close"]
    if latency:
        argv.append("--latency")
    argv.append(f"{scheme}://127.0.0.1:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(out.stdout + out.stderr)


def h2load(port: int, duration: float, cpu: int, clients: int, streams: int, scheme: str = "http") -> dict:
    """h2load (nghttp2), one thread, HTTP/2 with prior knowledge to http://127.0.0.1:port/ for `duration` seconds
    after a one-second warm-up; `clients` connections with `streams` concurrent streams each."""
    argv = ["taskset", "-c", str(cpu), "h2load", "-t1", f"-c{clients}", f"-m{streams}",
            f"-D{max(1, round(duration))}", "--warm-up-time=1", f"{scheme}://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40)
    return parse_h2load(out.stdout + out.stderr)


def h2_ready(port: int, timeout: float = 10.0, scheme: str = "http") -> None:
    """Wait until one HTTP/2 request through the proxy is answered (some listeners speak nothing but HTTP/2)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        out = subprocess.run(["h2load", "-n1", "-c1", f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=timeout)
        text = out.stdout + out.stderr
        if "1 succeeded" in text:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no HTTP/2 answer through port {port} in {timeout:.0f}s: {text.strip()[-300:]}")


def parse_h2load(text: str) -> dict:
    """Requests answered, seconds, req/s and failures from h2load's summary; its text under h2load_output when
    anything failed."""
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", text)
    if not fin or not req:
        raise RuntimeError(f"unexpected h2load output: {text.strip()[:400]}")
    seconds = float(fin.group(1)) * (1e-3 if fin.group(2) == "ms" else 1)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    non_2xx = sum(int(x) for x in codes.groups()[1:]) if codes else 0
    failed = int(req.group(5)) + int(req.group(6)) + int(req.group(7))
    out: dict = {"requests": int(req.group(4)), "seconds": seconds, "rps": float(fin.group(3)),
                 "errors": failed + non_2xx, "failed": failed, "non_2xx": non_2xx}
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    if mean:
        out["latency_avg_us"] = float(mean.group(1)) * _TIME_UNITS[mean.group(2)]
    if failed or non_2xx:
        out["h2load_output"] = text.strip()
    return out


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
