"""An asynchronous request filter: ask an HTTP auth service about every request (like Envoy's ext_authz).

    filters = [{ plugin = "mypkg.extauth:AskAuthService", config = { url = "http://127.0.0.1:9100/check" },
                 timeout = "500ms", failure_mode = "closed" }]

The service gets `GET <path>` with the request's method, path and authorization as x-original-* fields. A 2xx
lets the request through (with the service's `x-user`, when it sends one); any other status is the client's
answer. While the service thinks, the request waits and the worker serves everyone else.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastmesh.plugins import Answer, Request


class AskAuthService:
    """Ask an auth service (one HTTP/1.1 request per call) whether the request may pass."""

    @dataclass
    class Config:
        url: str                                   # "http://host:port/path" of the auth service

    def __init__(self, config: AskAuthService.Config) -> None:
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"

    async def on_request(self, request: Request) -> Answer | None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = (f"GET {self.path} HTTP/1.1\r\nhost: {self.host}\r\nconnection: close\r\n"
                    f"x-original-method: {request.method}\r\nx-original-path: {request.path}\r\n"
                    f"x-original-authorization: {request.header('authorization') or ''}\r\n\r\n")
            writer.write(head.encode("latin-1"))
            answer = await reader.read()
        finally:
            writer.close()
        head_bytes, _, body = answer.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        if 200 <= status < 300:
            if "x-user" in fields:
                request.set_header("x-user", fields["x-user"])
            return None
        return Answer(status, body, {"content-type": fields.get("content-type", "text/plain")})
