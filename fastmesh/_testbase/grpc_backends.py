"""gRPC backends and clients for tests: grpcio servers on 127.0.0.1 with generic handlers (no generated code).

A GrpcBackend serves the service `fastmesh.test.Echo` with raw bytes as messages (no protobuf: the proxy must
not care what the messages hold) and the standard health service (grpcio-health-checking), so one process can
play every kind of backend a gRPC test needs:

    /fastmesh.test.Echo/Unary          one message back: the request's bytes (initial metadata x-backend: name)
    /fastmesh.test.Echo/Who            one message back: JSON {"backend", "metadata", "time_remaining"}
    /fastmesh.test.Echo/ServerStream   request b"N" (or b"N:size"): N messages b"name:i" (padded to size bytes)
    /fastmesh.test.Echo/ClientStream   a stream in; one message back: b"name:count:total bytes"
    /fastmesh.test.Echo/Bidi           each message echoed as it arrives, prefixed with b"name:"

`fail_with` (a grpc.StatusCode, or None) makes every Echo call fail with that status before any message, as a
trailers-only answer; `fail_next` fails only the next n calls; `delay` holds each call that long first. `calls`
counts calls per method name. The server runs on grpcio's own threads, so it answers whatever the test's event
loop is doing; tests call clients through asyncio.to_thread (GrpcClient does) so the proxy's loop keeps running.
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "fastmesh.test.Echo"
NO_PROXY = [("grpc.enable_http_proxy", 0)]     # tests talk to 127.0.0.1 directly, whatever http_proxy says


class GrpcBackend:
    """A grpcio server on 127.0.0.1 with the Echo and health services (see the module docstring)."""

    def __init__(self, name: str = "grpc-backend") -> None:
        self.name = name
        self.port = 0
        self.server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.fail_with: grpc.StatusCode | None = None
        self.fail_next = 0                 # calls that fail with fail_with (or UNAVAILABLE), then none
        self.delay = 0.0
        self.head_first = True             # send the response head when a call starts (False: with the answer)
        self.calls: collections.Counter[str] = collections.Counter()
        self.messages_in = 0               # request messages the streaming methods read
        self._lock = threading.Lock()

    def start(self, port: int = 0) -> GrpcBackend:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Who": grpc.unary_unary_rpc_method_handler(self._who),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
        }),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        if not self.port:
            raise OSError(f"grpc backend {self.name}: cannot bind 127.0.0.1:{port}")
        server.start()
        self.server = server
        self.set_serving(True)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_serving(self, serving: bool, service: str = "") -> None:
        """What grpc.health.v1.Health/Check answers for `service` ("" is the whole server)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(service, status)

    def stop(self) -> None:
        """Stop at once: calls in flight are cancelled, the port is closed."""
        if self.server is not None:
            self.server.stop(grace=None).wait(5.0)
            self.server = None

    # ---- the handlers (grpcio's threads) ----

    def _begin(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            failing = self.fail_with is not None or self.fail_next > 0
            if self.fail_next > 0:
                self.fail_next -= 1
        if self.delay:
            time.sleep(self.delay)
        if failing:
            code = self.fail_with or grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"{self.name} fails on purpose")
        if self.head_first:
            context.send_initial_metadata((("x-backend", self.name),))

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._begin("Unary", context)
        return request

    def _who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._begin("Who", context)
        metadata: dict[str, Any] = {}
        for key, value in context.invocation_metadata():
            metadata[key] = value if isinstance(value, str) else value.hex()
        return json.dumps({"backend": self.name, "metadata": metadata,
                           "time_remaining": context.time_remaining()}).encode()

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._begin("ServerStream", context)
        count, _, size = request.decode().partition(":")
        for i in range(int(count)):
            message = f"{self.name}:{i}".encode()
            yield message.ljust(int(size), b".") if size else message

    def _client_stream(self, requests: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        self._begin("ClientStream", context)
        count = total = 0
        for message in requests:
            count += 1
            total += len(message)
            with self._lock:
                self.messages_in += 1
        return f"{self.name}:{count}:{total}".encode()

    def _bidi(self, requests: Iterable[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._begin("Bidi", context)
        prefix = self.name.encode() + b":"
        for message in requests:
            with self._lock:
                self.messages_in += 1
            yield prefix + message


def start_grpc_backends(count: int, prefix: str = "g") -> list[GrpcBackend]:
    return [GrpcBackend(f"{prefix}{i}").start() for i in range(count)]


class GrpcClient:
    """A grpcio channel to `target` with the Echo methods as blocking calls (run them in a thread from async
    tests: `await asyncio.to_thread(client.unary, b"x")`, or use the a* coroutines)."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] = (),
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        # credentials: a TLS channel (grpc.ssl_channel_credentials), else cleartext h2 with prior knowledge
        self.channel = grpc.insecure_channel(target, options=[*NO_PROXY, *options]) if credentials is None else \
            grpc.secure_channel(target, credentials, options=[*NO_PROXY, *options])
        self._unary = self.channel.unary_unary(f"/{SERVICE}/Unary")
        self._who = self.channel.unary_unary(f"/{SERVICE}/Who")
        self._server_stream = self.channel.unary_stream(f"/{SERVICE}/ServerStream")
        self._client_stream = self.channel.stream_unary(f"/{SERVICE}/ClientStream")
        self._bidi = self.channel.stream_stream(f"/{SERVICE}/Bidi")

    def unary(self, payload: bytes, timeout: float | None = 10.0,
              metadata: Sequence[tuple[str, str]] | None = None) -> tuple[bytes, dict[str, str]]:
        """(response, initial metadata) of one Unary call; grpc.RpcError on a failed call."""
        response, call = self._unary.with_call(payload, timeout=timeout, metadata=metadata)
        return response, dict(call.initial_metadata() or ())

    def who(self, timeout: float | None = 10.0, metadata: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
        return dict(json.loads(self._who(b"", timeout=timeout, metadata=metadata)))

    def server_stream(self, count: int, size: int = 0, timeout: float | None = 10.0) -> list[bytes]:
        return list(self._server_stream(f"{count}:{size}".encode() if size else str(count).encode(),
                                        timeout=timeout))

    def client_stream(self, messages: Iterable[bytes], timeout: float | None = 10.0) -> bytes:
        return bytes(self._client_stream(iter(messages), timeout=timeout))

    def bidi(self, messages: Iterable[bytes], timeout: float | None = 10.0) -> list[bytes]:
        return list(self._bidi(iter(messages), timeout=timeout))

    def health(self, service: str = "", timeout: float = 5.0) -> int:
        """grpc.health.v1 Check through this channel: the ServingStatus number (1 SERVING, 2 NOT_SERVING)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)

    async def aunary(self, payload: bytes, timeout: float | None = 10.0,
                     metadata: Sequence[tuple[str, str]] | None = None) -> tuple[bytes, dict[str, str]]:
        return await asyncio.to_thread(self.unary, payload, timeout, metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m fastmesh._testbase.grpc_backends PORT...`: Echo + health servers on 127.0.0.1 until Ctrl-C
    (for examples/grpc.toml; needs the test extra's grpcio and grpcio-health-checking)."""
    import sys
    ports = [int(p) for p in (argv if argv is not None else sys.argv[1:])] or [9101, 9102]
    backends = [GrpcBackend(f"grpc-{i + 1}").start(port) for i, port in enumerate(ports)]
    print("serving fastmesh.test.Echo and grpc.health.v1 on " + ", ".join(b.address for b in backends), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for b in backends:
            b.stop()


if __name__ == "__main__":
    main()
