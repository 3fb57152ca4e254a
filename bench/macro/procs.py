"""Start pinned child processes, remember their PIDs, and end exactly those PIDs (also on Ctrl-C or errors)."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import time

from . import procstat

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Runs in the child before exec: if the harness dies hard (SIGKILL), the kernel sends SIGTERM to the child.

    SIGTERM rather than SIGKILL so that nginx's master and fastmesh's supervisor still stop their own workers.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def raise_nofile() -> int:
    """Raise our open-file limit to the hard limit; children inherit it (5,000 held connections need ~10,000 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Every process the harness started; stop() ends them by PID, newest first."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], cpu: int | None, cwd: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start argv pinned to one cpu (taskset -c, inherited by its children); output goes to a log file."""
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=cwd, env=env, preexec_fn=_die_with_parent,
                                 # own session: a Ctrl-C at the terminal reaches only the harness, which
                                 # then stops every child in order instead of racing their own exits
                                 start_new_session=True)
        finally:
            log.close()
        self.started.append((name, p))
        return p

    def log_tail(self, name: str, lines: int = 15) -> str:
        """Last lines a process wrote, for error messages."""
        try:
            with open(os.path.join(self.logdir, f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> None:
        """SIGTERM p and the processes below it (collected first, so none is missed), then SIGKILL what is left."""
        below = procstat.descendants(p.pid) if p.poll() is None else []
        for pid in [p.pid, *below]:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None and not any(procstat.alive(pid) for pid in below):
                break
            time.sleep(0.05)
        for pid in [p.pid, *below]:
            if procstat.alive(pid):
                _signal(pid, signal.SIGKILL)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.started = [(n, q) for n, q in self.started if q is not p]

    def stop_all(self) -> None:
        """End everything still running, newest first (proxies before the backends they talk to)."""
        for _, p in reversed(list(self.started)):
            self.stop(p)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_listening(port: int, p: subprocess.Popen, timeout: float = 15.0) -> None:
    """Wait until port is in LISTEN; fail early if the process that should open it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procstat.listening(port):
            return
        if p.poll() is not None:
            raise RuntimeError(f"exited with status {p.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f}s")
