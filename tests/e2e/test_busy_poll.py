"""busy_poll: a worker polls without blocking for a moment after events, and never while idle or when it is off."""
import asyncio
import socket
import subprocess
import sys

import pytest
import uvloop

from fastmesh import Proxy
from fastmesh._core.reactor import Reactor
from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh.process import loop as workerloop

# A child that echoes each byte it reads on stdin (a socket) back to the same socket, 50 ms later: long enough that
# the loop has nothing else to do meanwhile and must wait for it.
ECHO = ("import os, time\nwhile True:\n    b = os.read(0, 1)\n    if not b:\n        break\n    time.sleep(0.05)\n"
        "    os.write(0, b)\n")


@pytest.fixture(autouse=True)
def _stdlib_policy():
    """The reactor loop runs under asyncio's own policy, as a worker's does, whatever the suite's."""
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    yield
    asyncio.set_event_loop_policy(before)


def config(port: int, backend: str, busy_poll: str | None) -> str:
    line = f'busy_poll = "{busy_poll}"\n' if busy_poll is not None else ""
    return (f'{line}drain_timeout = "100ms"\n[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\n'
            f'protocol = "http"\ncluster = "b"\n[clusters.b]\nendpoints = ["{backend}"]\n')


def voluntary_switches() -> int:
    with open("/proc/thread-self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))


async def curl_requests(port: int, count: int) -> None:
    """count GETs over one keep-alive connection from a curl process (a client outside this loop)."""
    urls = [f"http://127.0.0.1:{port}/respond?status=200&body=ok" for _ in range(count)]
    child = await asyncio.create_subprocess_exec("curl", "-sS", "--fail", "-o", "/dev/null", *urls,
                                                 stdout=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(child.wait(), 30) == 0


def test_a_wait_right_after_events_spins_instead_of_blocking():
    """With events a moment ago, the next wait polls without blocking: the echo of a child process arrives during
    the spin (counted as a hit) and this thread never went to sleep for it (no voluntary context switch)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reactor: Reactor = loop.reactor
        reactor.busy_poll = 40.0          # a window far longer than the child can take to answer
        ours, theirs = socket.socketpair()
        child = subprocess.Popen([sys.executable, "-c", ECHO], stdin=theirs.fileno())
        theirs.close()
        got: asyncio.Queue[bytes] = asyncio.Queue()
        loop.add_reader(ours.fileno(), lambda: got.put_nowait(ours.recv(16)))
        try:
            ours.send(b"a")                         # the first events open no window (nothing came before them)
            assert await asyncio.wait_for(got.get(), 30) == b"a"
            ours.send(b"b")                         # events soon after others: the window opens
            assert await asyncio.wait_for(got.get(), 30) == b"b"
            assert reactor.spin_window > 0
            hits, before = reactor.spins_hit, voluntary_switches()
            ours.send(b"c")
            assert await asyncio.wait_for(got.get(), 30) == b"c"
            assert reactor.spins_hit > hits
            assert voluntary_switches() == before
        finally:
            loop.remove_reader(ours.fileno())
            ours.close()
            child.wait(timeout=10)
    with asyncio.Runner(loop_factory=workerloop.ReactorLoop) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_factory", [workerloop.ReactorLoop, uvloop.new_event_loop], ids=["reactor", "uvloop"])
def test_traffic_spins_an_idle_worker_does_not(loop_factory):
    """Under traffic a Proxy with busy_poll spins between events (with the reactor as the loop's selector, and nested
    in uvloop); once the traffic stops it spins no more, through many ticks of its timers."""
    async def main() -> None:
        port, = free_ports(1)
        async with HttpBackend("b") as backend:
            async with Proxy.from_toml(config(port, backend.address, "1ms")) as proxy:
                reactor = proxy._reactor
                assert reactor is not None and reactor.busy_poll == 0.001
                await curl_requests(port, 200)
                assert reactor.spins_hit + reactor.spins_missed > 0
                await asyncio.sleep(0.5)    # past the window: whatever spin the last events started has ended
                spins = reactor.spins_hit + reactor.spins_missed
                await asyncio.sleep(0.3)    # a dozen ticks of the reactor's timer, no events
                assert reactor.spins_hit + reactor.spins_missed == spins
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def test_off_by_config_no_spin():
    """busy_poll = "0s" waits as before: the reactor never spins, whatever the traffic."""
    async def main() -> None:
        port, = free_ports(1)
        async with HttpBackend("b") as backend:
            async with Proxy.from_toml(config(port, backend.address, "0s")) as proxy:
                reactor = proxy._reactor
                await curl_requests(port, 50)
                assert (reactor.busy_poll, reactor.spin_window, reactor.spins_hit, reactor.spins_missed) == (0, 0, 0, 0)
    with asyncio.Runner(loop_factory=workerloop.ReactorLoop) as runner:
        runner.run(main())


def test_reload_changes_busy_poll():
    """A reload applies a new busy_poll to the running reactor, and the supervisor's summary names the setting."""
    async def main() -> None:
        port, = free_ports(1)
        async with HttpBackend("b") as backend:
            async with Proxy.from_toml(config(port, backend.address, "1ms")) as proxy:
                from fastmesh.config.load import loads_config
                from fastmesh.process.reload import summarize
                new = loads_config(config(port, backend.address, "0s"))
                assert summarize(proxy.config, new)["settings_changed"] == ["busy_poll"]
                await proxy.reload(new)
                assert proxy._reactor.busy_poll == 0
    with asyncio.Runner(loop_factory=workerloop.ReactorLoop) as runner:
        runner.run(main())
