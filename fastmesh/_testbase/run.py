"""`fastmesh run` as a subprocess for tests: its config and log files, waiting for log lines, ending it by pid;
the files it watches replaced the way an operator's tools do."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY = r"ready: \d+ worker\(s\) serving"     # the supervisor's line once every worker serves
WAIT = 15.0         # seconds any one expected event may take unless the test says otherwise


OPENSSL_LIBRARY = re.compile(r"lib(?:ssl|crypto)\.so")


def openssl_libraries(maps: str) -> set[str]:
    """The OpenSSL library files (libssl, libcrypto) a /proc/PID/maps text names."""
    names = {os.path.basename(line.split()[-1]) for line in maps.splitlines() if line.strip()}
    return {name for name in names if OPENSSL_LIBRARY.match(name)}


def openssl_mapped(pid: int) -> set[str]:
    """The OpenSSL library files process pid maps."""
    with open(f"/proc/{pid}/maps") as f:
        return openssl_libraries(f.read())


def openssl_at_start() -> set[str]:
    """The OpenSSL library files a bare interpreter of this Python maps (its site hooks may load OpenSSL): what no
    test can hold against fastmesh."""
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], capture_output=True,
                          text=True, check=True).stdout
    return openssl_libraries(maps)


def env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so the child imports the fastmesh under test."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def fastmesh_argv(*args: str) -> list[str]:
    """The command line of `fastmesh <args>` run with this interpreter."""
    return [sys.executable, "-m", "fastmesh", *args]


def fd_limit(nofile: int | tuple[int, int] | None) -> Callable[[], None] | None:
    """A preexec_fn that sets the child's RLIMIT_NOFILE: nofile for both limits, or (soft, hard); None: none."""
    if nofile is None:
        return None
    limits = nofile if isinstance(nofile, tuple) else (nofile, nofile)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    return lower


def started_pids(log: str) -> list[int]:
    """Every worker pid the supervisor logged, oldest first."""
    return [int(pid) for pid in re.findall(r"w\d+ started \(pid (\d+)\)", log)]


def kill_workers(pids: list[int], config: Path) -> None:
    """SIGKILL each of pids still running with our config on its command line (a reused pid is left alone)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = str(config).encode() in f.read()
        except FileNotFoundError:
            continue
        if ours:
            os.kill(pid, signal.SIGKILL)


class _Files:
    """The config file written for one run and the file its stderr (the log) goes to."""

    def __init__(self, tmp: Path, text: str, wait: float) -> None:
        self.config = tmp / "fastmesh.toml"
        self.config.write_text(text)
        self.log_path = tmp / "fastmesh.log"
        self.wait = wait

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Run(_Files):
    """A `fastmesh run` of `text`, started at once (cwd tmp); stop() ends it and any worker of ours left."""

    def __init__(self, tmp: Path, text: str, wait: float = WAIT) -> None:
        super().__init__(tmp, text, wait)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(fastmesh_argv("run", str(self.config)), cwd=tmp, env=env(),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    def wait_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """Wait until pattern has matched count log lines; return the matches."""
        deadline = time.monotonic() + self.wait
        while True:
            found = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None and len(found) < count:
                time.sleep(0.1)     # the last lines may still be on their way to the file
                found = list(re.finditer(pattern, self.log(), re.MULTILINE))
                assert len(found) >= count, f"no {count} x {pattern!r} in the log:\n{self.log()}"
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        """End the supervisor (SIGTERM, SIGKILL if it lingers), then any worker of ours still running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(self.wait)
        kill_workers(started_pids(self.log()), self.config)


class AsyncRun(_Files):
    """A `fastmesh run` of `text` for asyncio tests: start() waits for `ready`; stop() as Run.stop. With `nofile`
    it runs with that fd limit (soft and hard, or a (soft, hard) pair), as under `ulimit -n`."""

    def __init__(self, tmp: Path, text: str, wait: float = WAIT, nofile: int | tuple[int, int] | None = None) -> None:
        super().__init__(tmp, text, wait)
        self.proc: asyncio.subprocess.Process | None = None
        self.nofile = nofile

    async def start(self, ready: str = READY) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *fastmesh_argv("run", str(self.config)), env=env(), preexec_fn=fd_limit(self.nofile),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log)
        await self.wait_log(ready)

    async def wait_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """Wait until pattern has matched count log lines (the process still running); return the matches."""
        deadline = time.monotonic() + self.wait
        while True:
            found = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(found) >= count:
                return found
            assert self.proc is not None and self.proc.returncode is None, self.log()
            assert time.monotonic() < deadline, f"no {count} x {pattern!r} in the log:\n{self.log()}"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), self.wait)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        kill_workers(started_pids(self.log()), self.config)


@contextlib.asynccontextmanager
async def running(tmp: Path, text: str, ready: str = READY, wait: float = WAIT,
                  nofile: int | tuple[int, int] | None = None) -> AsyncIterator[AsyncRun]:
    """An AsyncRun of `text` (cwd tmp) that has logged `ready`, for the block; stopped however the block ends (a
    start that fails included)."""
    run = AsyncRun(tmp, text, wait, nofile)
    try:
        await run.start(ready)
        yield run
    finally:
        await run.stop()


def replace_file(path: Path, text: str) -> None:
    """Write `text` beside path and rename it over path: the one change a watcher sees, as deploy tools make it."""
    beside = path.with_suffix(".new")
    beside.write_text(text)
    beside.rename(path)
