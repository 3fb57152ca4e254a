"""One bulk TLS stream for the tls-bulk workload: a TLS sink (the backend: reads and discards) and a sender.

Both sides speak TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256 only, so every proxy decrypts and re-encrypts with
the same cipher on both legs whatever its own defaults (Python 3.11's ssl cannot narrow TLS 1.3 suites). The
sender writes 256 KiB chunks for the given seconds and prints one JSON line: bytes the sink acknowledged and the
cipher each side negotiated. Run as `python bench/macro/tls_stream.py sink PORT CERT KEY` or
`... send PORT SECONDS`; the harness pins both to the load cpu."""
from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"
CHUNK = 256 * 1024


def _context(server: bool, cert: str = "", key: str = "") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHER)
    if server:
        ctx.load_cert_chain(cert, key)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE           # the benchmark's self-made certificate
    return ctx


def sink(port: int, cert: str, key: str) -> None:
    """Accept TLS connections; read and count each stream until the sender's "FIN!" marker (a relayed TLS stream
    has no half-close to end it), then answer the count and the cipher as one JSON line."""
    ctx = _context(True, cert, key)
    lsock = socket.create_server(("127.0.0.1", port), backlog=64)

    def serve(raw: socket.socket) -> None:
        try:
            with ctx.wrap_socket(raw, server_side=True) as s:
                total, tail = 0, b""
                while True:
                    data = s.recv(CHUNK)
                    if not data:
                        return
                    total += len(data)
                    tail = (tail + data)[-4:]
                    if tail == b"FIN!":
                        s.sendall(json.dumps({"bytes": total - 4, "cipher": s.cipher()[0]}).encode() + b"\n")
                        return
        except (OSError, ssl.SSLError):
            pass

    while True:
        raw, _ = lsock.accept()
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


def send(port: int, seconds: float) -> dict:
    """Write for `seconds` through 127.0.0.1:port; what the sink counted, and the rate."""
    ctx = _context(False)
    chunk = b"\xa5" * CHUNK
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="bench.test") as s:
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            s.sendall(chunk)
            sent += CHUNK
        cipher = s.cipher()[0]
        s.sendall(b"FIN!")
        answer = b""
        while not answer.endswith(b"\n"):
            got = s.recv(256)
            if not got:
                break
            answer += got
        elapsed = time.monotonic() - start
    far = json.loads(answer) if answer else {}
    return {"bytes": far.get("bytes", 0), "sent": sent, "seconds": elapsed,
            "gbps": far.get("bytes", 0) * 8 / 1e9 / elapsed, "cipher_client": cipher,
            "cipher_backend": far.get("cipher")}


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        print(json.dumps(send(int(sys.argv[2]), float(sys.argv[3]))))
