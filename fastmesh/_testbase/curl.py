"""curl as a test client: one request to the proxy on 127.0.0.1, over HTTP/2 with prior knowledge or HTTP/1.1."""
from __future__ import annotations

import asyncio
import shutil

CURL = shutil.which("curl")     # None when curl is not installed (tests skip)


async def curl(port: int, path: str, *args: str, http2: bool = True) -> tuple[int, dict[str, str], bytes]:
    """(status, headers of the final response, body) of one curl request; `args` go to curl before the URL."""
    assert CURL is not None
    argv = [CURL, "-s", "-S", "-i", "--max-time", "20"]
    argv += ["--http2-prior-knowledge"] if http2 else ["--http1.1"]
    proc = await asyncio.create_subprocess_exec(*argv, *args, f"http://127.0.0.1:{port}{path}",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
