"""Packaging as a new user meets it: `pip wheel .` carries the compiled core, and a plain (non-editable) install
into a fresh venv runs the README's first command from the root of a fresh checkout."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from fastmesh._testbase.net import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files git would check out (committed or not, nothing built): what a fresh clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("checkout") / "fastmesh"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    return root


@pytest.fixture(scope="module")
def wheel(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(checkout)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("fastmesh-*.whl")
    return built


@pytest.mark.timeout(900)
def test_wheel_contains_the_compiled_core(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [p.relative_to(REPO).as_posix() for p in (REPO / "fastmesh" / "_core").rglob("*.pyx")]
    assert sources, "no .pyx found"
    for pyx in sources:
        stem = pyx[:-len(".pyx")]
        assert any(n.startswith(stem + ".") and n.endswith(".so") for n in names), f"{stem} not compiled in wheel"
    assert "fastmesh/py.typed" in names
    assert "fastmesh/_core/http1/parser.pxd" in names
    stubs = [p.relative_to(REPO).as_posix() for p in (REPO / "fastmesh").rglob("*.pyi")]
    assert "fastmesh/_core/http1/conn.pyi" in stubs and not set(stubs) - names     # every stub ships
    assert not any(n.endswith(".pyx") or n.endswith(".c") for n in names)   # sources stay out of the wheel


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (a plain, non-editable install); its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_quickstart_runs_from_the_checkout_root_after_a_plain_install(
        checkout: Path, installed: Path, tmp_path: Path) -> None:
    # The checkout's uncompiled fastmesh/ sits in the current directory: workers must still import the installed one.
    bin_dir = installed
    # The example as shipped, moved to free ports so the test never collides with anything on the machine.
    example = checkout / "examples" / "quickstart.toml"
    text = example.read_text()
    ports = {old: free_port() for old in (4140, 4141, 9001, 9002, 9003, 9990)}
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    if "\n[admin]" not in text:      # the default admin address (a comment names it too, so look for the table)
        text += f'\n[admin]\nlisten = "127.0.0.1:{ports[9990]}"\n'
    example.write_text(text)
    log = tmp_path / "fastmesh.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    clean["PATH"] = f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}"
    with open(log, "wb") as err:
        run = subprocess.Popen(["fastmesh", "run", "examples/quickstart.toml"], cwd=checkout, env=clean,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"ready: 1 worker\(s\) serving", log.read_text(errors="replace")):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        seen = set()
        for _ in range(3):
            result = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{ports[4140]}/"],
                                    capture_output=True, text=True, timeout=15)
            assert result.returncode == 0, result.stderr
            match = re.match(r"hello from demo backend (\d) ", result.stdout)
            assert match, result.stdout
            seen.add(match[1])
        assert seen == {"1", "2", "3"}
        assert "compiled core is missing" not in log.read_text(errors="replace")
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)


# Run inside the fresh venv: a TLS listener terminating for an echo backend, and a real client (Python's ssl).
_TLS_CHECK = r"""
import asyncio, ssl, sys
from fastmesh import Proxy
from fastmesh._core.tls import openssl

cert, key, ca, port = sys.argv[1:5]
CONFIG = '''[[listeners]]
name = "tls-in"
listen = "127.0.0.1:PORT"
cluster = "b"
tls = { cert = "CERT", key = "KEY" }
[clusters.b]
endpoints = ["127.0.0.1:BACKEND"]
'''

async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()

async def main():
    assert openssl.available(), openssl.error
    backend = await asyncio.start_server(echo, "127.0.0.1", 0)
    text = CONFIG.replace("PORT", port).replace("CERT", cert).replace("KEY", key)
    proxy = Proxy.from_toml(text.replace("BACKEND", str(backend.sockets[0].getsockname()[1])))
    await proxy.start()
    ctx = ssl.create_default_context(cafile=ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port), ssl=ctx, server_hostname="web.test")
    writer.write(b"over tls")
    got = await asyncio.wait_for(reader.readexactly(8), 10)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    await proxy.stop()
    backend.close()
    print(got.decode(), version, openssl.library_path)

asyncio.run(main())
"""


@pytest.mark.timeout(900)
def test_tls_needs_no_openssl_headers_and_works_after_a_plain_install(
        checkout: Path, wheel: Path, installed: Path, tmp_path: Path) -> None:
    """The TLS core is built without OpenSSL's headers or libraries (it binds the libssl Python's ssl module loads,
    at import), so `pip install .` works where no OpenSSL development package is installed."""
    names = zipfile.ZipFile(wheel).namelist()
    tls_modules = [n for n in names if n.startswith("fastmesh/_core/tls/") and n.endswith(".so")]
    assert len(tls_modules) >= 4, names
    sources = list((checkout / "fastmesh" / "_core").rglob("*.c"))
    include = re.compile(r'^\s*#\s*include\s*[<"]openssl/', re.MULTILINE)
    assert not [c for c in sources if include.search(c.read_text(errors="replace"))]
    if shutil.which("readelf"):
        out = tmp_path / "so"
        with zipfile.ZipFile(wheel) as zf:
            for name in tls_modules + [n for n in names if n.startswith("fastmesh/_core/tcp/") and n.endswith(".so")]:
                zf.extract(name, out)
                needed = subprocess.run(["readelf", "-d", str(out / name)], capture_output=True, text=True).stdout
                assert "libssl" not in needed and "libcrypto" not in needed, (name, needed)
    from fastmesh._testbase.tls import Pki
    pki = Pki(tmp_path)
    server = pki.issue("web.test")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run([str(installed / "python"), "-c", _TLS_CHECK, server.cert, server.key, pki.ca_file,
                           str(free_port())], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("over tls TLSv1.3 "), proc.stdout
