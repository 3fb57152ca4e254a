"""`kind = "etcd"`: endpoints under a key prefix of etcd v3, kept current with a watch, through etcd's own JSON
gateway (`POST /v3/kv/range`, `POST /v3/watch` streamed over HTTP/1.1; keys and values in base64).

Why the gateway and not a gRPC client: `etcd3` is synchronous and unreleased since 2020; `aetcd` 1.0 is asyncio
with sane ranges (grpcio>1.66, protobuf 4-7) but would make grpcio, a large native wheel, a runtime dependency
for two calls. The gateway ships with every etcd since 3.4 (path /v3/...) and needs only HTTP/1.1, spoken here
by a small client on asyncio streams that reuses fastmesh's response-head parser (fastmesh/httpwire.py).

Each key under the prefix holds one endpoint: {"address": "ip:port", "weight": N}. A key whose value does not
parse is reported and keeps its last good value (or stays out). The watch resumes from the revision after the
last one seen when the connection breaks (on the next member, in turn); a watch refused because that revision
was compacted re-reads the prefix and watches from the new revision. Until then the last good set stays.
"""
from __future__ import annotations

import asyncio
import binascii          # (base64 is this and 50 KiB of other encodings)
import json
from collections.abc import AsyncIterator
from typing import Any

from fastmesh.config.values import format_address
from fastmesh.config.schema import Endpoint
from fastmesh.discovery.base import Source, SourceError, log, parse_endpoint
from fastmesh.httpwire import HeadError, head_end, parse_response_head

RETRY_MIN = 0.2             # seconds before reconnecting after a failure, doubled per failure in a row...
RETRY_MAX = 5.0             # ...up to this


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix (etcd's range_end for a prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"                                  # the whole key space


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def unb64(text: str | bytes) -> bytes:
    return binascii.a2b_base64(text)


class Http:
    """HTTP/1.1 POSTs of JSON to one etcd member: the whole answer, or a stream of newline-separated objects."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    async def _open(self, path: str, body: dict[str, Any]) -> tuple[Any, asyncio.StreamWriter, bool, int]:
        """(reader, writer, chunked, content length) once the response head is in; SourceError otherwise."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise SourceError("connect", f"{format_address(self.host, self.port)}: cannot connect "
                                         f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        try:
            data = json.dumps(body).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {format_address(self.host, self.port)}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            buf = b""
            while head_end(buf) < 0:
                chunk = await asyncio.wait_for(reader.read(65536), self.timeout)
                if not chunk:
                    raise SourceError("protocol", f"{path}: connection closed before a response")
                buf += chunk
            end = head_end(buf)
            head = parse_response_head(buf[:end])
            rest = buf[end:]
            if head.status != 200:
                raise SourceError("http", f"{path}: HTTP {head.status}")
            chunked = "chunked" in head.tokens("transfer-encoding")
            length = int(head.header("content-length") or "-1")
            pushed = asyncio.StreamReader()
            pushed.feed_data(rest)
            return _Joined(pushed, reader), writer, chunked, length
        except HeadError as exc:
            writer.close()
            raise SourceError("protocol", f"{path}: {exc}") from None
        except (OSError, TimeoutError, ValueError) as exc:
            writer.close()
            raise SourceError("connect", f"{path}: {type(exc).__name__}: {exc}") from None
        except BaseException:
            writer.close()
            raise

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reader, writer, chunked, length = await self._open(path, body)
        try:
            if chunked:
                data = b"".join([piece async for piece in _chunks(reader, self.timeout)])
            else:
                data = await asyncio.wait_for(reader.readexactly(length), self.timeout)
            answer = json.loads(data)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise SourceError("protocol", f"{path}: bad answer ({type(exc).__name__})") from None
        finally:
            writer.close()
        if not isinstance(answer, dict):
            raise SourceError("protocol", f"{path}: the answer is not a JSON object")
        return answer

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object of a streamed answer, until the member closes it (no timeout: a watch may sit idle)."""
        reader, writer, chunked, _ = await self._open(path, body)
        try:
            buf = b""
            pieces = _chunks(reader, None) if chunked else _raw(reader)
            async for piece in pieces:
                buf += piece
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf = buf[:nl].strip(), buf[nl + 1:]
                    if line:
                        try:
                            yield json.loads(line)
                        except ValueError:
                            raise SourceError("protocol", f"{path}: a streamed message is not JSON") from None
        finally:
            writer.close()


class _Joined:
    """Reads what came with the response head first, then the connection."""

    def __init__(self, first: asyncio.StreamReader, then: asyncio.StreamReader) -> None:
        first.feed_eof()
        self.first, self.then = first, then

    async def read(self, n: int) -> bytes:
        return await self.first.read(n) or await self.then.read(n)

    async def readline(self) -> bytes:
        line = await self.first.readline()
        if line.endswith(b"\n"):
            return line
        return line + await self.then.readline()

    async def readexactly(self, n: int) -> bytes:
        data = await self.first.read(n)
        if len(data) < n:
            data += await self.then.readexactly(n - len(data))
        return data


async def _raw(reader: Any) -> AsyncIterator[bytes]:
    while chunk := await reader.read(65536):
        yield chunk


async def _chunks(reader: Any, timeout: float | None) -> AsyncIterator[bytes]:
    """The decoded data of a chunked body."""
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line.endswith(b"\n"):
            raise SourceError("protocol", "chunked body cut short")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            return
        data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
        yield data[:-2]


def parse_value(key: bytes, value_b64: str) -> Endpoint:
    """The endpoint in an etcd value (base64 of JSON); SourceError("parse", why) when it is not one."""
    where = key.decode(errors="replace")
    try:
        item = json.loads(unb64(value_b64))
    except ValueError:
        raise SourceError("parse", f"{where}: the value is not JSON") from None
    return parse_endpoint(item, where)


class Compacted(Exception):
    """The revision the watch asked for is compacted away: read the prefix again."""


class EtcdSource(Source):
    kind = "etcd"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.cfg.prefix is not None
        self.prefix = self.cfg.prefix.encode()
        self.members = [Http(host, port, self.cfg.timeout) for host, port in self.cfg.endpoints]
        self.member = 0                             # the member used now; the next one after a failure
        self.keys: dict[bytes, Endpoint] = {}       # key -> its endpoint (the last good value)
        self.revision = 0                           # the last revision seen (0: the prefix not read yet)

    def target(self) -> str:
        return str(self.cfg.prefix)

    def _http(self) -> Http:
        return self.members[self.member % len(self.members)]

    def _key_range(self) -> dict[str, str]:
        return {"key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix))}

    def _value(self, key: bytes, value_b64: str) -> Endpoint | None:
        """The endpoint a key holds; None (the failure counted and logged) when its value does not parse."""
        try:
            return parse_value(key, value_b64)
        except SourceError as exc:
            self.fail(exc.kind, str(exc))
            return None

    async def read_prefix(self) -> None:
        answer = await self._http().call("/v3/kv/range", self._key_range())
        keys: dict[bytes, Endpoint] = {}
        for kv in answer.get("kvs", []):
            key = unb64(kv["key"])
            endpoint = self._value(key, kv.get("value", ""))
            if endpoint is None and key in self.keys:
                endpoint = self.keys[key]
            if endpoint is not None:
                keys[key] = endpoint
        self.keys = keys
        self.revision = int(answer.get("header", {}).get("revision", 0))
        self.state.detail["revision"] = self.revision
        self.publish_keys()

    def publish_keys(self) -> None:
        by_address: dict[tuple[str, int], Endpoint] = {}
        for key in sorted(self.keys):
            e = self.keys[key]
            by_address.setdefault((e.host, e.port), e)      # two keys naming one address: the first key's weight
        self.publish(list(by_address.values()))

    async def watch(self) -> None:
        body = {"create_request": {**self._key_range(), "start_revision": str(self.revision + 1)}}
        async for message in self._http().stream("/v3/watch", body):
            result = message.get("result")
            if result is None:
                raise SourceError("protocol", f"watch: {message.get('error', message)}")
            if int(result.get("compact_revision", 0) or 0) > 0:
                raise Compacted()
            if result.get("canceled"):
                raise SourceError("watch", f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
            events = result.get("events") or []
            for event in events:
                kv = event.get("kv", {})
                key = unb64(kv.get("key", ""))
                if event.get("type") == "DELETE":
                    self.keys.pop(key, None)
                else:
                    endpoint = self._value(key, kv.get("value", ""))
                    if endpoint is not None:
                        self.keys[key] = endpoint
                self.revision = max(self.revision, int(kv.get("mod_revision", 0) or 0))
            if events:
                self.state.detail["revision"] = self.revision
                self.publish_keys()
        raise SourceError("watch", "the watch stream ended")

    async def resolve(self) -> list[Endpoint]:
        return [parse_value(key, value) for key, value in await self.read_once()]

    async def read_once(self) -> list[tuple[bytes, str]]:
        """The prefix's (key, base64 value) pairs, asked once of each member in turn until one answers."""
        last: SourceError | None = None
        for _ in self.members:
            try:
                answer = await self._http().call("/v3/kv/range", self._key_range())
            except SourceError as exc:
                last = exc
                self.member += 1
                continue
            return [(unb64(kv["key"]), kv.get("value", "")) for kv in answer.get("kvs", [])]
        assert last is not None
        raise last

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                if not self.revision:
                    await self.read_prefix()
                delay = RETRY_MIN
                await self.watch()
            except Compacted:
                log.info("cluster %s: etcd %s: revision %d compacted: reading the prefix again",
                         self.cluster, self.target(), self.revision + 1)
                self.state.errors["compacted"] += 1
                self.revision = 0
                self.state.watch_restarts += 1
                continue
            except SourceError as exc:
                self.fail(exc.kind, f"{format_address(self._http().host, self._http().port)}: {exc}")
            self.state.watch_restarts += 1
            self.member += 1
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
