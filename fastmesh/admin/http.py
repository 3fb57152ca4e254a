"""The admin server's request and reply: what its handlers (and the dashboard's) take and return."""
from __future__ import annotations

import json
from typing import Any

from fastmesh.httpwire import HeadError, RequestHead, body_framing, parse_request_head

JSON_TYPE = "application/json"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


class Reply:
    """One answer: status, content type and body (bytes)."""

    def __init__(self, status: int, body: bytes, content_type: str = JSON_TYPE,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers

    @classmethod
    def json(cls, status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, (json.dumps(data, indent=2) + "\n").encode(), JSON_TYPE, headers)

    @classmethod
    def error(cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls.json(status, {"error": REASONS[status], "status": status, "message": message}, headers)


class Request:
    """One request as the handlers see it: its head, the path (the target before "?") and the query (after it,
    still percent-encoded)."""

    def __init__(self, head: RequestHead, has_body: bool) -> None:
        self.head = head
        self.method = head.method
        self.path, _, self.query = head.target.partition("?")
        self.has_body = has_body        # the server reads no bodies: a request with one ends its connection

    def header(self, name: str) -> str:
        """Every value of field `name`, joined with ", " ("" when absent)."""
        return ", ".join(self.head.header_all(name))

    @property
    def keep_alive(self) -> bool:
        return self.head.keep_alive and not self.has_body


def parse_request(data: bytes) -> Request:
    """The request of one head (ending in CRLF CRLF); HeadError, with the status to answer, for anything the
    admin server does not take (a target that is not a path included)."""
    head = parse_request_head(data)
    if not head.target.startswith("/"):
        raise HeadError(400, "the request target must be a path starting with /")
    chunked, length = body_framing(head)
    return Request(head, chunked or length > 0)
