"""A filter that reroutes: requests with a cookie `canary=1` go to another cluster, and say so in the answer.

    filters = [{ plugin = "mypkg.canary:CanaryCookie", config = { cluster = "web-canary" } }]
"""
from __future__ import annotations

from dataclasses import dataclass

from fastmesh.plugins import Request


class CanaryCookie:
    """Send requests carrying the cookie `NAME=1` to the canary cluster."""

    @dataclass
    class Config:
        cluster: str                  # where canary requests go
        cookie: str = "canary"

    def __init__(self, config: CanaryCookie.Config) -> None:
        self.cluster = config.cluster
        self.marker = f"{config.cookie}=1"

    def on_request(self, request: Request) -> None:
        cookies = request.header("cookie") or ""
        if any(part.strip() == self.marker for part in cookies.split(";")):
            request.route_to(self.cluster)
            request.add_response_header("x-canary", "1")
