"""TLS handshakes per second through a terminating tcp listener: fastmesh against HAProxy (`ssl crt` on bind),
one process each pinned to the same cpu, `openssl s_time` on another; full and resumed handshakes, ECDSA P-256 and
RSA 2048 certificates. Prints handshakes/s, the proxy's CPU µs per handshake, and fastmesh/HAProxy ratios.

    python -m bench.macro.tls_handshakes [--seconds 5] [--proxy-cpu 1] [--client-cpu 0]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import procs, procstat


def _pki(root: Path, key_type: str) -> tuple[str, str, str]:
    """(cert, key, cert+key) files for 127.0.0.1 / bench.test, signed by a throwaway CA."""
    from fastmesh._testbase.tls import Pki
    pki = Pki(root)
    pem = pki.issue("bench.test", "127.0.0.1", key_type=key_type)
    both = root / f"both-{key_type}.pem"
    both.write_text(Path(pem.cert).read_text() + Path(pem.key).read_text())
    return pem.cert, pem.key, str(both)


def _wait(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not procstat.listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


def _s_time(port: int, reuse: bool, seconds: int, cpu: int) -> float:
    out = subprocess.run(["taskset", "-c", str(cpu), "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                          "-reuse" if reuse else "-new", "-time", str(seconds)],
                         capture_output=True, text=True, timeout=seconds * 4 + 30).stdout
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out) or \
        re.search(r"(\d+) connections in ([\d.]+)s", out)
    if not m:
        raise RuntimeError(out[-2000:])
    return int(m[1]) / float(m[2])


def _measure(pid: int, port: int, reuse: bool, seconds: int, cpu: int) -> tuple[float, float]:
    """(handshakes/s, proxy CPU µs per handshake) over one s_time run."""
    pids = [pid, *procstat.descendants(pid)]
    before = sum(procstat.cpu_seconds(p) for p in pids)
    rate = _s_time(port, reuse, seconds, cpu)
    used = sum(procstat.cpu_seconds(p) for p in pids) - before
    return rate, used / (rate * seconds) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fastmesh-tls-bench-")
    p = procs.Procs(tmp)
    rows = []
    try:
        backend_port = procs.free_port()
        p.start("backend", [sys.executable, "-c", _ECHO, str(backend_port)], cpu=args.client_cpu)
        _wait(backend_port)
        for key_type in ("ecdsa", "rsa"):
            cert, key, both = _pki(Path(tmp) / key_type if (Path(tmp) / key_type).mkdir() is None else Path(tmp),
                                   key_type)
            fm_port, ha_port = procs.free_port(), procs.free_port()
            conf = Path(tmp) / f"fastmesh-{key_type}.toml"
            conf.write_text(f'workers = 1\n[admin]\nlisten = "127.0.0.1:{procs.free_port()}"\n[[listeners]]\n'
                            f'name = "tls"\nlisten = "127.0.0.1:{fm_port}"\ncluster = "b"\n'
                            f'tls = {{ cert = "{cert}", key = "{key}" }}\n'
                            f'[clusters.b]\nendpoints = ["127.0.0.1:{backend_port}"]\n')
            ha = Path(tmp) / f"haproxy-{key_type}.cfg"
            ha.write_text(f"global\n    nbthread 1\n    maxconn 4000\n    tune.ssl.default-dh-param 2048\n"
                          f"defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1m\n"
                          f"    timeout server 1m\nfrontend f\n    bind 127.0.0.1:{ha_port} ssl crt {both}\n"
                          f"    default_backend b\nbackend b\n    server s 127.0.0.1:{backend_port}\n")
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            fm = p.start(f"fastmesh-{key_type}", [sys.executable, "-m", "fastmesh", "run", str(conf)],
                         cpu=args.proxy_cpu, env=env)
            hp = p.start(f"haproxy-{key_type}", ["haproxy", "-db", "-f", str(ha)], cpu=args.proxy_cpu)
            _wait(fm_port)
            _wait(ha_port)
            for reuse in (False, True):
                fm_rate, fm_us = _measure(fm.pid, fm_port, reuse, args.seconds, args.client_cpu)
                ha_rate, ha_us = _measure(hp.pid, ha_port, reuse, args.seconds, args.client_cpu)
                rows.append((key_type, "resumed" if reuse else "full", fm_rate, fm_us, ha_rate, ha_us))
            p.stop(fm)
            p.stop(hp)
    finally:
        for _, proc in reversed(p.started):
            if proc.poll() is None:
                p.stop(proc)
    print(f"{'key':6} {'handshake':9} {'fastmesh/s':>11} {'µs cpu':>7} {'haproxy/s':>10} {'µs cpu':>7} {'ratio':>6}")
    for key_type, kind, fm_rate, fm_us, ha_rate, ha_us in rows:
        print(f"{key_type:6} {kind:9} {fm_rate:11.0f} {fm_us:7.0f} {ha_rate:10.0f} {ha_us:7.0f} "
              f"{fm_rate / ha_rate:6.2f}")


_ECHO = """
import asyncio, sys
async def echo(r, w):
    while data := await r.read(65536):
        w.write(data)
    w.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


if __name__ == "__main__":
    main()
