"""Running out of file descriptors: `fastmesh run` under a lowered fd limit (as `ulimit -n 256`) with more clients
than it has fds for. Connections past the worker's connection limit wait in the backlog and are served once others
leave; every request on an accepted connection is answered; each condition is logged once, not per event.

Each test prints an `fds:` line with what it measured (pytest -s shows it).
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from fastmesh._testbase.http_backend import HttpBackend, read_response
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun

pytestmark = pytest.mark.timeout(180)

WAIT = 15.0             # seconds any one expected event may take
SETTLE = 2.0            # seconds the clients' first requests get (the issue's measure)
LATER = 20              # requests on fresh connections once the crowd has left


def config(web: int, admin: int, backend: HttpBackend, top: str = "") -> str:
    return f"""
workers = 1
drain_timeout = "1s"
{top}
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "api"
[clusters.api]
endpoints = ["{backend.address}"]
"""


class Client:
    """One client of the crowd: connects, sends a request on the held connection, keeps it until told to leave."""

    def __init__(self) -> None:
        self.status = 0                 # the answer's status, 0 while none came
        self.error = ""                 # what went wrong instead, if anything

    async def run(self, port: int, leave: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.error = f"connect: {exc}"
            return
        try:
            writer.write(b"GET /echo HTTP/1.1\r\nHost: fds.test\r\n\r\n")
            self.status = (await read_response(reader)).status
            await leave.wait()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.error = repr(exc)
        finally:
            writer.close()


class Crowd:
    """`count` clients connecting at once."""

    def __init__(self, port: int, count: int) -> None:
        self.clients = [Client() for _ in range(count)]
        self.leave = asyncio.Event()
        self.tasks = [asyncio.create_task(c.run(port, self.leave)) for c in self.clients]

    @property
    def answered(self) -> int:
        return sum(c.status == 200 for c in self.clients)

    @property
    def failed(self) -> list[str]:
        return [c.error or f"status {c.status}" for c in self.clients if c.error or c.status not in (0, 200)]

    async def wait_answered(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def disperse(self, timeout: float) -> float:
        """Every client leaves once answered; the seconds until the last one was answered and left."""
        began = time.monotonic()
        self.leave.set()
        done, pending = await asyncio.wait(self.tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return time.monotonic() - began


async def later_requests(port: int) -> int:
    """LATER requests, each on a fresh connection: how many got a 200."""
    ok = 0
    for _ in range(LATER):
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                ok += (await http.get(f"http://127.0.0.1:{port}/echo")).status_code == 200
        except httpx.HTTPError:
            pass
    return ok


def metric(text: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$", text, re.MULTILINE)
    return float(m[1]) if m else None


def count(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log, re.MULTILINE))


def test_connections_past_the_fd_budget_wait_in_the_backlog_and_are_all_served(tmp_path: Path) -> None:
    """The issue's scenario: fd limit 256, 600 clients at once on an http listener, each sending a request on its
    held connection. Accepted connections are all answered; the others wait in the backlog (no error, no answer
    yet) until clients leave, then every one is served."""
    nofile, clients = 256, 600

    async def main() -> None:
        web, admin = free_ports(2)
        async with HttpBackend("api") as backend:
            run = AsyncRun(tmp_path, config(web, admin, backend), WAIT, nofile=nofile)
            try:
                await run.start()
                m = re.search(r"max_connections (\d+) per worker", run.log())
                limit = int(m[1]) if m else None
                crowd = Crowd(web, clients)
                await asyncio.sleep(SETTLE)
                answered_2s, failed_2s = crowd.answered, len(crowd.failed)
                # Let a slow machine catch up, then check that nothing beyond the limit was served meanwhile.
                await crowd.wait_answered(limit or clients, WAIT)
                await asyncio.sleep(0.5)
                answered_held, failed_held = crowd.answered, list(crowd.failed)
                seconds = await crowd.disperse(60)
                answered_all, failed_all = crowd.answered, crowd.failed
                later = await later_requests(web)
                summary = await run.wait_log(r"below the connection limit again after \S+; (\d+) connection")\
                    if limit else []
                async with httpx.AsyncClient(timeout=WAIT) as http:
                    metrics = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
                log = run.log()
            finally:
                await run.stop()
        limited = metric(metrics, "fastmesh_downstream_connections_limited_total", 'listener="web"')
        print(f"\nfds: fd limit {nofile}, {clients} clients at once, worker max_connections {limit}: "
              f"{answered_2s} answered within {SETTLE:g}s, {failed_2s} failed; {answered_held} answered while "
              f"every client held its connection, {len(failed_held)} failed; after the clients left "
              f"{answered_all}/{clients} answered in {seconds:.1f}s, {len(failed_all)} failed; {later}/{LATER} "
              f"later requests served; log lines: 'accept failed' {count(log, 'accept failed')}, "
              f"'out of file descriptors' {count(log, 'out of file descriptors')}, "
              f"'connection limit reached' {count(log, 'connection limit reached')}; limited_total {limited}")
        assert limit is not None and 0 < limit < clients, log
        assert failed_held == [], failed_held[:5]
        assert answered_held == limit          # every accepted connection answered, none past the limit
        assert answered_all == clients and failed_all == [], failed_all[:5]
        assert later == LATER
        assert count(log, "accept failed") == 0 and count(log, "out of file descriptors") == 0, log
        assert count(log, "connection limit reached") == 1, log
        assert int(summary[0][1]) >= clients - limit
        assert limited is not None and limited >= clients - limit
        assert metric(metrics, "fastmesh_downstream_accept_paused_total", 'listener="web"') == 0
        assert metric(metrics, "fastmesh_worker_max_connections", 'worker="0"') == limit

    asyncio.run(main())


def test_out_of_fds_anyway_pauses_accepting_and_logs_once_per_episode(tmp_path: Path) -> None:
    """A max_connections set beyond what the fd limit allows: fastmesh warns at start; when accept4 does run out
    of fds it pauses (counted) and logs the episode once when it begins and once when it ends, not every 100 ms;
    once the clients leave it serves again."""
    nofile, clients = 128, 300

    async def main() -> None:
        web, admin = free_ports(2)
        async with HttpBackend("api") as backend:
            run = AsyncRun(tmp_path, config(web, admin, backend, "max_connections = 1000"), WAIT, nofile=nofile)
            try:
                await run.start()
                crowd = Crowd(web, clients)
                await run.wait_log("out of file descriptors")
                await asyncio.sleep(1.5)        # about 15 pauses of 100 ms while the fds stay taken
                async with httpx.AsyncClient(timeout=WAIT) as http:
                    paused = metric((await http.get(f"http://127.0.0.1:{admin}/metrics")).text,
                                    "fastmesh_downstream_accept_paused_total", 'listener="web"')
                await crowd.disperse(60)
                summary = await run.wait_log(r"accepting again after \S+ out of file descriptors .*paused (\d+) time")
                later = await later_requests(web)
                log = run.log()
            finally:
                await run.stop()
        print(f"\nfds: fd limit {nofile}, max_connections 1000, {clients} clients: accepting paused {paused} times, "
              f"'out of file descriptors' logged {count(log, 'out of file descriptors')} times; "
              f"{later}/{LATER} later requests served")
        assert count(log, r"max_connections 1000 needs up to \d+ fds but the fd limit is 128") == 1, log
        assert count(log, "listener web: out of file descriptors") == 1, log
        assert count(log, "accept failed") == 0, log
        assert paused is not None and paused >= 5
        assert int(summary[0][1]) >= paused
        assert later == LATER

    asyncio.run(main())


def test_the_soft_fd_limit_is_raised_to_the_hard_one_and_the_connection_limit_follows(tmp_path: Path) -> None:
    """Started with soft 256 and hard 1024 (a common default is 1024 and 4096 or more): workers run with 1024 and
    derive their connection limit from that."""

    async def main() -> None:
        web, admin = free_ports(2)
        async with HttpBackend("api") as backend:
            run = AsyncRun(tmp_path, config(web, admin, backend), WAIT, nofile=(256, 1024))
            try:
                await run.start()
                line = (await run.wait_log(r"max_connections (\d+) per worker \(derived from the fd limit: "
                                           r"fd limit (\d+),"))[0]
                pid = int(re.findall(r"w0 started \(pid (\d+)\)", run.log())[-1])
                with open(f"/proc/{pid}/limits") as f:
                    soft = int(re.search(r"^Max open files\s+(\d+)\s+(\d+)", f.read(), re.MULTILINE)[1])
                async with httpx.AsyncClient(timeout=WAIT) as http:
                    metrics = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
            finally:
                await run.stop()
        assert int(line[2]) == soft == 1024
        assert 256 < int(line[1]) < 1024 // 2
        assert metric(metrics, "fastmesh_worker_max_connections", 'worker="0"') == int(line[1])

    asyncio.run(main())
