"""gRPC active health checks: grpc.health.v1 probes against real grpcio servers, and a running Proxy acting on them."""
from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from fastmesh import Proxy
from fastmesh._testbase.grpc_backends import GrpcBackend
from fastmesh._testbase.inproc import until
from fastmesh._testbase.net import free_port
from fastmesh.health.active import health_request, health_status, probe_grpc

pytestmark = pytest.mark.timeout(60)


@given(st.text(max_size=300))
def test_health_request_is_what_protobuf_encodes(service: str) -> None:
    message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert health_request(service) == b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_health_status_reads_what_protobuf_encodes(status: int) -> None:
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert health_status(b"\x00" + len(message).to_bytes(4, "big") + message) == status
    # Fields a newer server may add are skipped.
    extra = message + b"\x12\x03abc" + b"\x18\x05"
    assert health_status(b"\x00" + len(extra).to_bytes(4, "big") + extra) == status


@pytest.mark.parametrize("body", [b"", b"\x01\x00\x00\x00\x00", b"\x00\x00\x00\x00\x05\x08",
                                  b"\x00\x00\x00\x00\x01\x08", b"\x00\x00\x00\x00\x02\x0f\x00"])
def test_health_status_refuses_what_is_not_one_response(body: bytes) -> None:
    with pytest.raises(ValueError):
        health_status(body)


def test_probe_answers() -> None:
    async def main() -> None:
        backend = GrpcBackend("h").start()
        try:
            assert await probe_grpc("127.0.0.1", backend.port, backend.address, "", 2.0) is None
            backend.set_serving(False)
            assert await probe_grpc("127.0.0.1", backend.port, backend.address, "", 2.0) == "NOT_SERVING"
            backend.set_serving(True, "echo.Echo")
            assert await probe_grpc("127.0.0.1", backend.port, backend.address, "echo.Echo", 2.0) is None
            # grpcio's servicer answers NOT_FOUND for a service it was never told about.
            failure = await probe_grpc("127.0.0.1", backend.port, backend.address, "nope.Nope", 2.0)
            assert failure is not None and failure.startswith("grpc-status NOT_FOUND"), failure
        finally:
            backend.stop()
        with pytest.raises(ConnectionRefusedError):
            await probe_grpc("127.0.0.1", backend.port, backend.address, "", 2.0)

    asyncio.run(main())


def test_not_serving_backend_is_taken_out_and_comes_back() -> None:
    async def main() -> None:
        a, b = GrpcBackend("a").start(), GrpcBackend("b").start()
        try:
            cfg = (f'[[listeners]]\nname = "in"\nlisten = "127.0.0.1:{free_port()}"\nprotocol = "http"\n'
                   f'cluster = "grpc"\n'
                   f'[clusters.grpc]\nendpoints = ["{a.address}", "{b.address}"]\nprotocol = "h2"\noutlier = false\n'
                   'health_check = { type = "grpc", interval = "100ms", timeout = "100ms", healthy = 2, '
                   'unhealthy = 2 }\n')
            async with Proxy.from_toml(cfg) as proxy:
                def endpoint(i: int) -> dict:
                    return dict(proxy.stats()["clusters"]["grpc"][i])

                def check(i: int) -> dict:
                    return dict(proxy.stats()["health"]["grpc"][i])

                await until(lambda: check(0)["passes"] >= 2 and check(1)["passes"] >= 2)
                b.set_serving(False)
                await until(lambda: not endpoint(1)["healthy"])
                assert check(1)["last"] == "NOT_SERVING"
                assert endpoint(1)["state"] == "unhealthy" and endpoint(0)["healthy"]
                b.set_serving(True)
                await until(lambda: endpoint(1)["healthy"])
                assert check(1)["last"] == "ok"
        finally:
            a.stop()
            b.stop()

    asyncio.run(main())
