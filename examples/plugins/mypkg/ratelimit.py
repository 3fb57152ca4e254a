"""Rate limits with plugins: a key computed by a filter, and an async global rate-limit service.

A route limited by a key its filters compute (here the tenant a bearer token names):

    rate_limit = { rate = "100/m", burst = 20, key = "filter" }
    filters = [{ plugin = "mypkg.ratelimit:TenantKey", config = { tokens = { "s3cret" = "acme" } } }]

The local limit holds for one fastmesh instance. A limit that must hold over many instances asks a service that
keeps the counts (like Envoy's global rate limit service); an async filter does that without blocking the worker:

    filters = [{ plugin = "mypkg.ratelimit:AskRateLimitService", config = { url = "http://127.0.0.1:9200/check" },
                 timeout = "100ms", failure_mode = "open" }]

The service gets `GET <path>?key=<key>` (the key: the value of the configured field, by default the client's
address). 2xx lets the request through; 429 (or any other status) is the client's answer, its Retry-After passed
on. With failure_mode = "open" a service that is down or slow lets requests through: a rate limiter that fails
should not take the site down with it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from fastmesh.plugins import Answer, Request


class TenantKey:
    """Sets the request's rate-limit key to the tenant its bearer token names; a request without a known token
    gets no key (on a route with key = "filter" it is then not limited: pair it with an auth filter that refuses
    such requests, or limit them on a route of their own)."""

    @dataclass
    class Config:
        tokens: dict[str, str] = field(default_factory=dict)   # bearer token -> tenant

    def __init__(self, config: TenantKey.Config) -> None:
        self.tokens = config.tokens

    def on_request(self, request: Request) -> None:
        auth = request.header("authorization") or ""
        tenant = self.tokens.get(auth[7:]) if auth.lower().startswith("bearer ") else None
        if tenant is not None:
            request.rate_limit_key = tenant


class AskRateLimitService:
    """Ask a global rate-limit service (one HTTP/1.1 request per call) whether the request may pass."""

    @dataclass
    class Config:
        url: str                                   # "http://host:port/path" of the service
        header: str = ""                           # the field whose value is the key; "": the client's address

    def __init__(self, config: AskRateLimitService.Config) -> None:
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.header = config.header

    async def on_request(self, request: Request) -> Answer | None:
        key = (request.header(self.header) or "") if self.header else request.peer
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {self.path}?key={quote(key)} HTTP/1.1\r\nhost: {self.host}\r\n"
                         f"connection: close\r\n\r\n".encode("latin-1"))
            answer = await reader.read()
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 200 <= status < 300:
            return None
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        headers = {"content-type": fields.get("content-type", "text/plain")}
        if "retry-after" in fields:
            headers["retry-after"] = fields["retry-after"]
        return Answer(status, body, headers)
