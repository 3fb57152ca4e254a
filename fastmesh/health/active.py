"""Active health checks: one asyncio task per endpoint probes it (HTTP GET or TCP connect) and reports transitions.

Each worker checks every endpoint itself, on its own loop, and tells its own Cluster (Cluster.set_health): there
is no shared verdict to keep in sync, and a worker that cannot reach an endpoint stops using it even when
another worker can. An endpoint starts healthy: a restart must not empty a cluster before the first probes
have answered, and the connect-failure marks and outlier ejection already cover an endpoint that is down.
It is taken out after `unhealthy` failed checks in a row and comes back after `healthy` passed checks in a row.

Probes go to the address the data path connects to (resolved when the cluster was built), with the configured
endpoint address as the Host header. An HTTP probe sends `GET path` with `Connection: close`, reads only the
response head and closes: the status decides. Intervals are jittered so that workers and endpoints spread out;
the first check of each endpoint runs within one jitter span of start().
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.config.schema import HealthCheck
from fastmesh.httpwire import HeadError, parse_response_head

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


async def run_check(ep: EndpointCheck, hc: HealthCheck) -> str | None:
    """One probe of ep: None if it passed, else the reason it failed."""
    try:
        async with asyncio.timeout(hc.timeout):
            if hc.type == "http":
                assert hc.path is not None
                return await probe_http(ep.host, ep.port, ep.host_header, hc.path, hc.expected_statuses)
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
        self.rng = rng or random.Random()
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

    def _delay(self, hc: HealthCheck) -> float:
        spread = hc.jitter / 100.0
        return hc.interval * (1.0 + self.rng.uniform(-spread, spread))

    async def _loop(self, ep: EndpointCheck, hc: HealthCheck) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, hc.interval * hc.jitter / 100.0))
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
