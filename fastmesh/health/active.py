"""Active health checks: one asyncio task per endpoint probes it (HTTP GET, gRPC health or TCP connect) and reports
transitions.

Each worker checks every endpoint itself, on its own loop, and tells its own Cluster (Cluster.set_health): there
is no shared verdict to keep in sync, and a worker that cannot reach an endpoint stops using it even when
another worker can. An endpoint starts healthy: a restart must not empty a cluster before the first probes
have answered, and the connect-failure marks and outlier ejection already cover an endpoint that is down.
It is taken out after `unhealthy` failed checks in a row and comes back after `healthy` passed checks in a row.

Probes go to the address the data path connects to (resolved when the cluster was built), with the configured
endpoint address as the Host header. An HTTP probe sends `GET path` with `Connection: close`, reads only the
response head and closes: the status decides. A gRPC probe asks grpc.health.v1.Health/Check over HTTP/2 cleartext
(prior knowledge, one connection per check, closed after): it passes when the answer is SERVING.
Intervals are jittered so that workers and endpoints spread out;
the first check of each endpoint runs within one jitter span of start().

The gRPC probe is off the data path, so it speaks HTTP/2 with the maintained `h2` package. The two protobuf
messages it needs are encoded by hand (health_request, health_status): HealthCheckRequest is one string field and
HealthCheckResponse one enum field, a dozen lines against the protobuf runtime plus grpcio-health-checking (and
with it grpcio, a large compiled package) as dependencies of every installation. The tests check both against
the generated classes of grpcio-health-checking.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.config.schema import GRPC_STATUS_NAMES, HealthCheck
from fastmesh.httpwire import HeadError, parse_response_head

if TYPE_CHECKING:
    import random

log = logging.getLogger("fastmesh.health")

USER_AGENT = "fastmesh-health-check"
MAX_HEAD = 16384            # bytes of response head read before the answer counts as bad


@dataclass
class EndpointCheck:
    """The checker's view of one endpoint: where to probe it and its run of results."""
    cluster: Any                # the core Cluster to tell (set_health, count_check)
    cluster_name: str
    index: int                  # endpoint index in the cluster
    label: str                  # "host:port" as the data path connects (for logs)
    host: str                   # IP literal to connect to
    port: int
    host_header: str            # the endpoint as configured, for the Host header
    healthy: bool = True
    passes: int = 0             # passed checks in a row
    failures: int = 0           # failed checks in a row
    last: str = ""              # the last check's outcome: "ok" or why it failed


def split_label(label: str) -> tuple[str, int]:
    """"1.2.3.4:80" or "[::1]:80" (Cluster.endpoints() addresses) -> (host, port)."""
    host, _, port = label.rpartition(":")
    return host.strip("[]"), int(port)


def _format_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def probe_tcp(host: str, port: int) -> str | None:
    """None when a TCP connection opens; the caller bounds the time."""
    _, writer = await asyncio.open_connection(host, port)
    writer.transport.abort()     # nothing to say: skip the FIN handshake
    return None


async def probe_http(host: str, port: int, host_header: str, path: str,
                     statuses: Iterable[tuple[int, int]]) -> str | None:
    """None when GET path answers an expected status; else why not. The caller bounds the time."""
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
                     f"Accept: */*\r\nConnection: close\r\n\r\n".encode("ascii"))
        await writer.drain()
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return "closed before answering"
            except asyncio.LimitOverrunError:
                return "bad response (head too large)"
            try:
                status = parse_response_head(head).status
            except HeadError:
                return "bad response"
            if 100 <= status < 200 and status != 101:
                continue            # an interim answer: the final one follows
            if any(low <= status <= high for low, high in statuses):
                return None
            return f"status {status}"
    finally:
        writer.transport.abort()    # the head decided; the body is not wanted


# ---- gRPC health (grpc.health.v1) ----

HEALTH_PATH = b"/grpc.health.v1.Health/Check"
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")   # HealthCheckResponse.ServingStatus
MAX_GRPC_ANSWER = 4096      # bytes of answer messages read before it counts as bad (the real one is 2 bytes)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def health_request(service: str) -> bytes:
    """A HealthCheckRequest message (field 1, `service`, a string; proto3 leaves an empty one out), framed as one
    gRPC message: flag byte 0 (not compressed), 4-byte big-endian length, the message."""
    name = service.encode()
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def health_status(body: bytes) -> int:
    """The ServingStatus of a framed HealthCheckResponse (field 1, an enum: a varint); 0 (UNKNOWN) when absent,
    as proto3 says. ValueError when the body is not one uncompressed gRPC message of that shape."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise ValueError("not one uncompressed gRPC message")
    message, i, status = body[5:], 0, 0
    while i < len(message):
        tag, i = _read_varint(message, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _read_varint(message, i)
            if field == 1:
                status = value
        elif wire == 2:
            size, i = _read_varint(message, i)
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(message):
            raise ValueError("truncated field")
    return status


def _grpc_failure(fields: dict[bytes, bytes]) -> str | None:
    """Why an answer whose head or trailers are `fields` failed, judged by its grpc-status; None for OK."""
    raw = fields.get(b"grpc-status")
    if raw is None:
        return None
    code = int(raw) if raw.isdigit() else -1
    if code == 0:
        return None
    name = GRPC_STATUS_NAMES[code].upper() if 0 <= code < len(GRPC_STATUS_NAMES) else raw.decode("latin-1")
    message = fields.get(b"grpc-message", b"").decode("latin-1")
    return f"grpc-status {name}" + (f" ({message})" if message else "")


async def probe_grpc(host: str, port: int, authority: str, service: str, timeout: float) -> str | None:
    """None when grpc.health.v1.Health/Check answers SERVING for `service`; else why not. The caller bounds the
    time (`timeout` also goes to the server as grpc-timeout)."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", HEALTH_PATH),
            (b":authority", authority.encode("ascii")), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), (b"user-agent", USER_AGENT.encode("ascii")),
            (b"grpc-timeout", b"%dm" % max(1, int(timeout * 1000))),
        ])
        conn.send_data(stream, health_request(service), end_stream=True)
        writer.write(conn.data_to_send())
        body = bytearray()
        head: dict[bytes, bytes] = {}
        trailers: dict[bytes, bytes] = {}
        while True:
            data = await reader.read(65536)
            if not data:
                return "closed before answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    head = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if len(body) > MAX_GRPC_ANSWER:
                        return "bad response (answer too large)"
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    return f"stream reset (error code {int(event.error_code)})"
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return f"connection closed (GOAWAY, error code {int(event.error_code or 0)})"
                elif isinstance(event, h2.events.StreamEnded):
                    return _health_verdict(head, trailers, bytes(body))
            writer.write(conn.data_to_send())
    finally:
        writer.transport.abort()    # one check, one connection: no GOAWAY dance needed


def _health_verdict(head: dict[bytes, bytes], trailers: dict[bytes, bytes], body: bytes) -> str | None:
    status = head.get(b":status", b"")
    if status != b"200":
        return f"status {status.decode('latin-1') or 'missing'}"
    failure = _grpc_failure(head) or _grpc_failure(trailers)    # a trailers-only answer has it in the head
    if failure is not None:
        return failure
    if b"grpc-status" not in head and b"grpc-status" not in trailers:
        return "bad response (no grpc-status)"
    try:
        serving = health_status(body)
    except ValueError as exc:
        return f"bad response ({exc})"
    if serving == 1:
        return None
    return SERVING_STATUSES[serving] if serving < len(SERVING_STATUSES) else f"serving status {serving}"


async def run_check(ep: EndpointCheck, hc: HealthCheck) -> str | None:
    """One probe of ep: None if it passed, else the reason it failed."""
    try:
        async with asyncio.timeout(hc.timeout):
            if hc.type == "http":
                assert hc.path is not None
                return await probe_http(ep.host, ep.port, ep.host_header, hc.path, hc.expected_statuses)
            if hc.type == "grpc":
                return await probe_grpc(ep.host, ep.port, ep.host_header, hc.service, hc.timeout)
            return await probe_tcp(ep.host, ep.port)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "connection refused"
    except ConnectionResetError:
        return "connection reset"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def record(ep: EndpointCheck, hc: HealthCheck, failure: str | None) -> None:
    """Count one result, and on a threshold crossing tell the cluster and log the transition once."""
    ep.cluster.count_check(failure is None)
    ep.last = failure or "ok"
    if failure is None:
        ep.passes += 1
        ep.failures = 0
        if not ep.healthy and ep.passes >= hc.healthy:
            ep.healthy = True
            ep.cluster.set_health(ep.index, True)
            log.info("cluster %s: endpoint %s healthy: %d passed checks", ep.cluster_name, ep.label, ep.passes)
    else:
        ep.failures += 1
        ep.passes = 0
        if ep.healthy and ep.failures >= hc.unhealthy:
            ep.healthy = False
            ep.cluster.set_health(ep.index, False)
            log.warning("cluster %s: endpoint %s unhealthy: %d failed checks (%s)", ep.cluster_name, ep.label,
                        ep.failures, failure)


class ActiveChecks:
    """Every endpoint's checker for the clusters that configure health_check; start() on a running loop."""

    def __init__(self, configs: Mapping[str, ClusterConfig], clusters: Mapping[str, Any],
                 rng: random.Random | None = None) -> None:
        self.rng = rng             # made on first use: `random` is imported only where checks run
        self.checks: list[tuple[EndpointCheck, HealthCheck]] = []
        for name, cfg in configs.items():
            if name in clusters:
                self.checks.extend(self._checks_of(name, cfg, clusters[name], set()))
        self.tasks: dict[tuple[str, int], asyncio.Task[None]] = {}     # (cluster, endpoint index) -> its checker

    @staticmethod
    def _checks_of(name: str, cfg: ClusterConfig, cluster: Any, skip: set[int]
                   ) -> list[tuple[EndpointCheck, HealthCheck]]:
        """A check per live endpoint of the cluster (cfg.endpoints lists them in index order) not in skip."""
        hc = cfg.health_check
        if hc is None:
            return []
        out = []
        for endpoint, state in zip(cfg.endpoints, cluster.endpoints()):
            if state["index"] in skip:
                continue
            host, port = split_label(state["address"])
            out.append((EndpointCheck(cluster, name, state["index"], state["address"], host, port,
                                      _format_host(endpoint.host, endpoint.port)), hc))
        return out

    def start(self) -> None:
        """One task per endpoint on the running loop."""
        for ep, hc in self.checks:
            self._start(ep, hc)

    def _start(self, ep: EndpointCheck, hc: HealthCheck) -> None:
        self.tasks[ep.cluster_name, ep.index] = asyncio.create_task(
            self._loop(ep, hc), name=f"health {ep.cluster_name} {ep.label}")

    def update_cluster(self, name: str, cfg: ClusterConfig, cluster: Any) -> None:
        """The cluster's endpoint set changed in place (Cluster.update): stop checking removed endpoints, start on
        added ones (healthy until checked, like any endpoint at start); the others keep their run of results."""
        if cfg.health_check is None and not any(ep.cluster_name == name for ep, _ in self.checks):
            return                  # nothing checked before or after (and 10,000 endpoints cost nothing here)
        live = {state["index"] for state in cluster.endpoints()}
        kept = []
        for ep, hc in self.checks:
            if ep.cluster_name != name or (ep.index in live and hc == cfg.health_check):
                kept.append((ep, hc))
            else:
                task = self.tasks.pop((name, ep.index), None)
                if task is not None:
                    task.cancel()
        checked = {ep.index for ep, _ in kept if ep.cluster_name == name}
        added = self._checks_of(name, cfg, cluster, checked)
        self.checks = kept + added
        for ep, hc in added:
            self._start(ep, hc)

    async def stop(self) -> None:
        """Cancel every checker and wait for them (a probe in flight is dropped)."""
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Per cluster, each checked endpoint's verdict and run of results (for admin and tests)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for ep, _ in self.checks:
            out.setdefault(ep.cluster_name, []).append({
                "address": ep.label, "healthy": ep.healthy, "passes": ep.passes, "failures": ep.failures,
                "last": ep.last,
            })
        return out

    def _uniform(self, low: float, high: float) -> float:
        if self.rng is None:
            import random
            self.rng = random.Random()
        return self.rng.uniform(low, high)

    def _delay(self, hc: HealthCheck) -> float:
        spread = hc.jitter / 100.0
        return hc.interval * (1.0 + self._uniform(-spread, spread))

    async def _loop(self, ep: EndpointCheck, hc: HealthCheck) -> None:
        await asyncio.sleep(self._uniform(0.0, hc.interval * hc.jitter / 100.0))
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                failure = await run_check(ep, hc)
            except Exception as exc:      # a checker must outlive any surprise; the endpoint simply fails it
                failure = f"{type(exc).__name__}: {exc}"
            record(ep, hc, failure)
            # The interval runs from the start of a check, so a slow endpoint is not checked less often.
            await asyncio.sleep(max(0.0, started + self._delay(hc) - loop.time()))
