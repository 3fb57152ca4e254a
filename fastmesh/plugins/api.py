"""The plugin interfaces: what fastmesh calls on a plugin of each kind, and the values it passes and takes back.

A plugin is a class named in the config ("package.module:Name") or registered by an installed distribution under
the `fastmesh.plugins` entry-point group. fastmesh makes one instance per place the config names it (per worker,
rebuilt on every reload) as `Name(config)`: `config` is an instance of the class's `Config` dataclass when it has
one (the config table is checked against its fields: unknown keys, missing ones and wrong types are config
errors naming the file and key path), else the table as a dict. A `close()` method, when present, is called when
a reload or shutdown retires the instance.

The kinds, each a typing.Protocol below:
  Filter           on_request(request) -> None (go on), an Answer (answer the client), or an awaitable of either;
                   and/or on_response(request, response) -> None (go on, with its edits) or an Answer (sent
                   instead of the upstream's answer); synchronous only
  DiscoverySource  watch() -> an async iterator of endpoint sets (run in the supervisor, one per instance)
  Sink             write(records) -> None or an awaitable: access-log records or events, in batches, off the
                   data path
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Answer", "Request", "Response", "Filter", "ResponseFilter", "DiscoverySource", "Sink", "PluginConfigError",
           "EndpointItem"]


class Request(Protocol):
    """What a filter sees of a request (the compiled FilterRequest, _core/filters.pyx, implements it).

    Text is decoded as Latin-1, so every byte the client sent comes through unchanged."""

    method: str                        # "GET", "POST", ... as sent
    authority: str                     # the host routing saw: no userinfo, port or final dot ("" when none)
    path: str                          # the path before "?", as sent (never percent-decoded)
    query: str                         # from "?" on, or ""
    headers: list[tuple[str, str]]     # every field in wire order, names as sent
    peer: str                          # the client's address (the PROXY protocol's when the listener takes it)
    trace_id: str                      # the W3C trace id (32 hex digits) the request carries or started; "" if none
    identity: str                      # the client's verified identity (mTLS: its certificate's URI SAN); "" if none
    listener: str                      # the listener's name
    route: int                         # the index of the matched route in the listener's routes
    cluster: str                       # the cluster the request goes to (route_to() changes it)
    # The key the request counts under on a route with rate_limit = { key = "filter" }: a filter sets it (a str;
    # None, the default, leaves the request unlimited). Read after the chain, so the last filter to set it wins.
    rate_limit_key: str | None

    def header(self, name: str) -> str | None:
        """The first field called name (any case), or None."""

    def set_header(self, name: str, value: str) -> None:
        """Send the request upstream with `name: value` instead of the client's fields of that name."""

    def remove_header(self, name: str) -> None:
        """Send the request upstream without the fields called name."""

    def add_response_header(self, name: str, value: str) -> None:
        """Add `name: value` to the answer the client gets (the upstream's, or an Answer)."""

    def route_to(self, cluster: str) -> None:
        """Send the request to another cluster of the config (KeyError for an unknown name)."""


class Response(Protocol):
    """What a response filter sees of the upstream's final answer head (the compiled FilterResponse implements it),
    before it goes to the client. The body is not seen: it streams through compiled code."""

    status: int                        # the upstream's status code
    request: Request                   # the request it answers, as the request filters left it
    headers: list[tuple[str, str]]     # the upstream's fields in wire order, names as sent

    def header(self, name: str) -> str | None:
        """The first of the upstream's fields called name (any case), or None."""

    def set_header(self, name: str, value: str) -> None:
        """Send the client `name: value` instead of the upstream's fields of that name."""

    def add_header(self, name: str, value: str) -> None:
        """Add `name: value` to the answer (next to any the upstream sent)."""

    def remove_header(self, name: str) -> None:
        """Send the answer without the upstream's fields called name."""


@dataclass
class Answer:
    """A filter's own answer: the request goes no further. `headers` is a mapping or (name, value) pairs."""
    status: int
    body: bytes | str = b""
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = field(default_factory=dict)


@runtime_checkable
class Filter(Protocol):
    """A request filter on an http listener or route. A sync filter runs inline (keep it to microseconds: it
    cannot be interrupted; a call over its timeout is counted as slow and logged), or on a worker thread with
    `run = "thread"`; an `async def on_request` or a threaded one parks the request (other connections go on)
    until it returns or its timeout passes."""

    def on_request(self, request: Request) -> Answer | None | Awaitable[Answer | None]: ...


class ResponseFilter(Protocol):
    """A filter's response side (a filter may have on_request, on_response or both). It runs inline, synchronously,
    on the upstream's final answer head, the route's filters in reverse order; None sends the answer on with the
    edits made, an Answer replaces it (the upstream's body is not read: its connection is closed)."""

    def on_response(self, request: Request, response: Response) -> Answer | None: ...


# An endpoint as a discovery plugin yields it: "ip:port", ("ip", port) or {"address": "ip:port", "weight": N}.
EndpointItem = str | tuple[str, int] | Mapping[str, Any]


@runtime_checkable
class DiscoverySource(Protocol):
    """Endpoints from anywhere: each set the iterator yields replaces the cluster's endpoints in every worker. An
    exception ends the watch (logged and counted; the last good set stays) and it is started again after a pause."""

    def watch(self) -> AsyncIterator[Iterable[EndpointItem]]: ...


@runtime_checkable
class Sink(Protocol):
    """Receives records in batches (a list of dicts), from a timer on the worker's or supervisor's loop, never
    from the request path. An exception or a slow await costs that batch only (counted and logged)."""

    def write(self, records: list[dict[str, Any]]) -> None | Awaitable[None]: ...


class PluginConfigError(ValueError):
    """Raised by a plugin's Config (its __post_init__) for a value it cannot use: reported like any config error,
    as `file: <key path>.config.<key>: expected <expected>, got <got>`."""

    def __init__(self, key: str, expected: str, got: Any = None) -> None:
        super().__init__(f"{key}: expected {expected}")
        self.key = key
        self.expected = expected
        self.got = got
