"""Filter and sink plugins for tests and benchmarks: ones that tag, answer, fail, hang or wait, and a sink that keeps
records in memory. Named in configs as "fastmesh._testbase.plugins:Name"."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastmesh.plugins import Answer, Request, Response


class Noop:
    """Does nothing: what a filter costs by itself (bench/)."""

    def __init__(self, config: Any) -> None:
        pass

    def on_request(self, request: Request) -> None:
        return None


class Tag:
    """Adds `name: value` upstream and to the answer; answers `status` instead when the path is `answer_path`."""

    @dataclass
    class Config:
        value: str
        name: str = "x-tag"
        answer_path: str = ""
        status: int = 403

    def __init__(self, config: Tag.Config) -> None:
        self.config = config

    def on_request(self, request: Request) -> Answer | None:
        c = self.config
        if c.answer_path and request.path == c.answer_path:
            return Answer(c.status, f"{c.value}\n", {"x-answered-by": c.value})
        request.set_header(c.name, c.value)
        request.add_response_header(c.name, c.value)
        return None


class RateKey:
    """Sets the request's rate-limit key to the value of a field (`header`), prefixed; leaves it unset without one."""

    @dataclass
    class Config:
        header: str = "authorization"
        prefix: str = "tenant:"

    def __init__(self, config: RateKey.Config) -> None:
        self.config = config

    def on_request(self, request: Request) -> None:
        value = request.header(self.config.header)
        if value is not None:
            request.rate_limit_key = self.config.prefix + value


class Raise:
    """Raises on every request (or on every `every`-th)."""

    @dataclass
    class Config:
        every: int = 1

    def __init__(self, config: Raise.Config) -> None:
        self.every = config.every
        self.calls = 0

    def on_request(self, request: Request) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError(f"plugin failure {self.calls}")


class Wait:
    """An async filter: waits `ms` milliseconds (forever when ms < 0), then tags the request."""

    @dataclass
    class Config:
        ms: int = 50

    def __init__(self, config: Wait.Config) -> None:
        self.ms = config.ms

    async def on_request(self, request: Request) -> None:
        if self.ms < 0:
            await asyncio.Event().wait()
        await asyncio.sleep(self.ms / 1000)
        request.set_header("x-waited", str(self.ms))


class Reply:
    """Answers the requests for `path` (every request when empty) with the Answer its config spells out."""

    @dataclass
    class Config:
        path: str = ""
        status: int = 200
        body: str = ""
        headers: dict[str, str] = field(default_factory=dict)

    def __init__(self, config: Reply.Config) -> None:
        self.config = config
        self.answer = Answer(config.status, config.body.encode(), dict(config.headers))

    def on_request(self, request: Request) -> Answer | None:
        if self.config.path and request.path != self.config.path:
            return None
        return self.answer


class BadAnswer:
    """Answers with a field value no HTTP message may carry: the proxy must refuse to send it."""

    def __init__(self, config: Any) -> None:
        pass

    def on_request(self, request: Request) -> Answer:
        return Answer(200, b"x", {"x-bad": "a\r\nb"})


RECORDS: list[dict[str, Any]] = []        # what every Memory sink of this process was given


class Memory:
    """A sink keeping every record in RECORDS; an async write when `slow_ms` is set; raises when `fail` is set."""

    @dataclass
    class Config:
        slow_ms: int = 0
        fail: bool = False

    def __init__(self, config: Memory.Config) -> None:
        self.config = config
        self.batches: list[int] = []

    def write(self, records: list[dict[str, Any]]) -> Any:
        if self.config.fail:
            raise RuntimeError("sink failure")
        if self.config.slow_ms:
            return self._later(records)
        self.batches.append(len(records))
        RECORDS.extend(records)
        return None

    async def _later(self, records: list[dict[str, Any]]) -> None:
        await asyncio.sleep(self.config.slow_ms / 1000)
        self.batches.append(len(records))
        RECORDS.extend(records)


class ShowIdentity:
    """Passes the client's verified identity (`request.identity`) upstream in x-seen-identity, "-" without one."""

    def __init__(self, config: Any) -> None:
        pass

    def on_request(self, request: Request) -> None:
        request.set_header("x-seen-identity", request.identity or "-")


class RespTag:
    """A response filter: sets `name: value`, drops the fields in `remove`, adds x-seen-status (the upstream's status)
    and x-seen-path (the request's path); answers `status` with `body` instead when the upstream said `replace`.
    Raises on an upstream status of `raise_on`."""

    @dataclass
    class Config:
        value: str = "resp"
        name: str = "x-resp"
        remove: list[str] = field(default_factory=list)
        replace: int = 0
        status: int = 503
        body: str = "replaced\n"
        raise_on: int = 0

    def __init__(self, config: RespTag.Config) -> None:
        self.config = config

    def on_response(self, request: Request, response: Response) -> Answer | None:
        c = self.config
        if response.status == c.raise_on:
            raise RuntimeError(f"response filter failure on {response.status}")
        if response.status == c.replace:
            return Answer(c.status, c.body, {"x-replaced": str(response.status)})
        for name in c.remove:
            response.remove_header(name)
        response.set_header(c.name, c.value)
        response.add_header("x-seen-status", str(response.status))
        response.add_header("x-seen-path", request.path)
        return None


class NoopResponse:
    """A response filter that does nothing: what the response side costs by itself (bench/)."""

    def __init__(self, config: Any) -> None:
        pass

    def on_response(self, request: Request, response: Response) -> None:
        return None


class Block:
    """A synchronous filter that blocks its thread for `ms` milliseconds, then tags the request with x-blocked and
    the thread it ran on (x-thread: "main" or "other")."""

    @dataclass
    class Config:
        ms: int = 100

    def __init__(self, config: Block.Config) -> None:
        self.ms = config.ms

    def on_request(self, request: Request) -> None:
        time.sleep(self.ms / 1000)
        request.set_header("x-blocked", str(self.ms))
        request.set_header("x-thread", "main" if threading.current_thread() is threading.main_thread() else "other")
