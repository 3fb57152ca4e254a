"""A response filter: security headers on every answer, the backend's self-description removed, and the backend's
own 5xx pages (which may leak stack traces) replaced by a plain one.

    filters = [{ plugin = "mypkg.headers:SecureHeaders", config = { hide = ["server", "x-powered-by"] } }]

It has no on_request: it sees only the upstream's answer head (status and fields), before it goes to the client.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastmesh.plugins import Answer, Request, Response


class SecureHeaders:
    """Adds HSTS and nosniff, drops the fields in `hide`, and answers 5xx with `error_page` instead of the
    backend's body (the backend's status is kept; its request id field too, for the logs)."""

    @dataclass
    class Config:
        hide: list[str] = field(default_factory=lambda: ["server", "x-powered-by"])
        hsts: str = "max-age=31536000"                      # "" leaves Strict-Transport-Security alone
        error_page: str = "Something went wrong on our side.\n"   # "" passes the backend's 5xx bodies on

    def __init__(self, config: SecureHeaders.Config) -> None:
        self.config = config

    def on_response(self, request: Request, response: Response) -> Answer | None:
        c = self.config
        if c.error_page and response.status >= 500 and response.header("fastmesh-error") is None:
            rid = response.header("x-request-id")
            return Answer(response.status, c.error_page,
                          {"content-type": "text/plain", **({"x-request-id": rid} if rid else {})})
        for name in c.hide:
            response.remove_header(name)
        if c.hsts:
            response.set_header("strict-transport-security", c.hsts)
        response.set_header("x-content-type-options", "nosniff")
        return None
