"""The README's two-instance mesh example (examples/mesh) run as written, on free ports: make-certs.sh, then both
instances under `fastmesh run`; curl reaches the application through both over mutual TLS, the application sees
the caller's identity, another certificate of the mesh CA gets 403, and no certificate at all a refused handshake.
The tcp service listener relays a connection through both the same way (resolved by the naming table, mTLS between
the instances), and the backend's tcp listener refuses any other identity in the handshake."""
from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import Run

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")), reason="needs openssl, curl")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mesh"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "20", *args], capture_output=True, text=True,
                          timeout=30)


def test_two_instance_mesh_example(tmp_path: Path) -> None:
    folder = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("certs"))
    subprocess.run(["sh", str(folder / "make-certs.sh")], check=True, capture_output=True, timeout=60)
    ports = {old: str(free_port()) for old in ("4150", "4151", "4443", "4444", "9991", "9992", "9201")}
    for name in ("frontend.toml", "backend.toml"):
        path = folder / name
        path.write_text(re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m[1]]}", path.read_text()))
    certs = folder / "certs"

    def text(name: str) -> str:
        """The config as written, its certs/ paths made absolute (Run writes the config in a folder of its own)."""
        return (folder / name).read_text().replace('"certs/', f'"{certs}/')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backend = Run(tmp_path / "b", text("backend.toml"))
    frontend = None
    try:
        backend.wait_log(r"ready: \d+ worker\(s\) serving")
        frontend = Run(tmp_path / "a", text("frontend.toml"))
        frontend.wait_log(r"ready: \d+ worker\(s\) serving")
        through = curl("-i", f"http://127.0.0.1:{ports['4150']}/")
        other_identity = curl("-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(certs / "ca.pem"),
                              "--resolve", f"backend.mesh.test:{ports['4443']}:127.0.0.1",
                              "--cert", str(certs / "backend.pem"), "--key", str(certs / "backend.key"),
                              f"https://backend.mesh.test:{ports['4443']}/")
        no_certificate = curl("-o", "/dev/null", "--cacert", str(certs / "ca.pem"), "--resolve",
                              f"backend.mesh.test:{ports['4443']}:127.0.0.1",
                              f"https://backend.mesh.test:{ports['4443']}/")
        echoed = tcp_echo(int(ports["4151"]))
        other_tcp = tls_refused(int(ports["4444"]), certs, "backend")
        bare_tcp = tls_refused(int(ports["4444"]), certs, None)
        own_tcp = tls_refused(int(ports["4444"]), certs, "frontend")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['9991']}/clusters", timeout=10) as reply:
            clusters = json.loads(reply.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['9991']}/stats", timeout=10) as reply:
            a_stats = json.loads(reply.read())
        b_log = backend.log()
    finally:
        if frontend is not None:
            frontend.stop()
        backend.stop()
    assert through.returncode == 0 and through.stdout.startswith("HTTP/1.1 200"), through.stdout + through.stderr
    assert "hello from demo backend" in through.stdout and through.stdout.count("Via: 1.1 fastmesh") == 2
    assert other_identity.stdout == "403"
    assert no_certificate.returncode != 0
    (cert,) = clusters["backend-mesh"]["tls"]["certificates"]
    assert cert["uris"] == ["spiffe://mesh.test/ns/demo/sa/frontend"] and not cert["expired"]
    assert "no_client_cert" in b_log or "certificate required" in b_log or "no client certificate" in b_log
    # The tcp service: the demo backend's echo, through both instances; mTLS between them, counted on A.
    greeting = f"hello from demo backend 1 (127.0.0.1:{ports['9201']}): not HTTP, echoing what you send\n"
    assert echoed == greeting + "ping\n", echoed
    assert a_stats["listeners"]["outbound-tcp"]["service"] == "echo"
    assert a_stats["listeners"]["outbound-tcp"]["clusters"] == {"backend-mesh": 0, "backend-mesh-tcp": 1}
    assert a_stats["clusters"]["backend-mesh-tcp"]["tls"]["handshakes"] == 1
    assert other_tcp and bare_tcp and not own_tcp   # B's tcp listener: only the frontend's identity gets through


def tcp_echo(port: int) -> str:
    """A line sent through the tcp service listener: the demo backend's greeting, then the line echoed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"ping\n")
        got = b""
        while got.count(b"\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return got.decode()


def tls_refused(port: int, certs: Path, who: str | None) -> bool:
    """Whether B's tcp listener refuses a client with this mesh certificate (None: no certificate) before relaying:
    the handshake fails, or the connection ends without a byte of the application's."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if who is not None:
        ctx.load_cert_chain(str(certs / f"{who}.pem"), str(certs / f"{who}.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="backend.mesh.test") as tls:
                tls.sendall(b"ping\n")
                return tls.recv(4096) == b""    # TLS 1.3: the refusal may come after the client's side finished
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
