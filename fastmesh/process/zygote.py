"""Workers forked from the supervisor itself, which imported the data path before its event loop started.

A worker started as a fresh interpreter pays for its own copy of everything Python builds at import (modules, code
objects, the compiled core's types): about 17 MiB of private memory each. So the supervisor imports, before its
event loop exists, what a worker imports and what it will import itself once it runs (PRELOAD), freezes those
objects out of the garbage collector's reach (gc.freeze, so a collection does not write to every page), and forks
each worker from itself: the pages both hold stay shared copy-on-write, and a worker costs what it changes.

The supervisor is its own fork server (there was a separate one, forked before the loop: it held a third copy of
every page that both the supervisor and a worker wrote to, 4 to 6 MiB of the instance). A worker forked from a
process with a running loop starts by dropping that loop's part of the state: signal handlers and the wakeup fd
(signals are blocked across the fork, so none reaches a handler of the parent's; the stop signals stay blocked
until the worker's loop handles them), every inherited fd but its own,
and the collector's interest in inherited objects (gc.freeze in the child: a collection there neither writes their
pages nor finalizes a parent's garbage, whose sockets would close fd numbers the worker reuses). Then it runs
`process/worker.main` as the `_worker` command would. The supervisor learns of each exit through a pidfd.

FASTMESH_ZYGOTE=0 (or a system without fork or pidfd_open) starts every worker as a fresh interpreter instead.
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from typing import Any

from fastmesh.process.worker import STOP_SIGNALS

log = logging.getLogger("fastmesh.supervisor")

ENV = "FASTMESH_ZYGOTE"        # "0": no forking, every worker is a fresh interpreter
# What a worker imports (the proxy imports the data path only when it starts), loaded before the first fork so the
# supervisor and every worker share the pages. A module left out still works: the worker imports it itself. (uvloop,
# where FASTMESH_LOOP asks for it, is already loaded: the supervisor picked its loop first.)
# The last line is what the supervisor itself imports once it runs (admin, discovery, reloads): imported after a
# fork, its new objects land in the holes of memory pages a worker shares, and each such page is then copied.
PRELOAD = (
    "fastmesh.proxy", "fastmesh.process.worker", "fastmesh.process.loop", "fastmesh.process.link",
    "fastmesh.process.memtrace",
    "fastmesh.config.load", "fastmesh.dataplane.listeners", "fastmesh.dataplane.clusters",
    "fastmesh.dataplane.routes", "fastmesh.dataplane.stats", "fastmesh.dataplane.limits",
    "fastmesh.dataplane.access_log", "fastmesh.health.active", "fastmesh.health.passive", "fastmesh.httpwire",
    "fastmesh._core.balance.factory", "fastmesh._core.http1.proxy",
    "fastmesh.dataplane.tracing", "fastmesh.filewatch", "fastmesh._core.syscalls",
    "fastmesh.admin.server", "fastmesh.discovery.manager", "fastmesh.process.reload", "fastmesh.process.events",
)
# The signals the supervisor's loop handles: blocked across a fork, reset to their defaults in the child.
_LOOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def preload(tls: bool = False) -> bool:
    """Before the supervisor's loop exists: import PRELOAD (and bind OpenSSL when the config has a tls table) and
    freeze it; False when workers are not forked."""
    if os.environ.get(ENV) == "0" or not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return False
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:      # a renamed module: the workers import what they need themselves
            log.debug("not preloading %s: %s", name, exc)
    if tls:     # else OpenSSL stays out (openssl.pyx): a reload that adds TLS has each worker bind it then
        from fastmesh._core.tls import openssl
        openssl.load()
    gc.collect()
    gc.freeze()                 # these objects stay put: no collection writes their pages, here or in a worker
    return True


class ForkedWorker:
    """The supervisor's handle on a worker it forked: what it uses of asyncio.subprocess.Process."""

    def __init__(self, pid: int, pidfd: int, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdout: asyncio.StreamReader | None = stdout
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(pidfd, self._reap)

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, signum)     # never a recycled pid: the fd names this process

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def _reap(self) -> None:
        """The pidfd is readable: the worker has exited; collect its status (asyncio's returncode convention)."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:       # reaped by someone else: its status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        if not self._exited.done():
            self._exited.set_result(self.returncode)


async def fork_worker(argv: dict[str, Any], fds: list[int]) -> ForkedWorker:
    """Fork a worker running worker.main(**argv) with these fds (they stay open here); OSError when that fails."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _LOOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:                    # the worker: never returns into the supervisor's loop
            code = 1
            try:
                code = _child(argv, [write_end, *fds], blocked)
            finally:
                os._exit(code)
    except OSError:
        os.close(read_end)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write_end)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:                     # cannot watch it: do not leave it running unwatched
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        raise
    stdout = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(read_end, "rb", 0))
    except BaseException:               # the same: a worker we cannot hear from is killed and reaped
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(pidfd)
        raise
    return ForkedWorker(pid, pidfd, stdout)


def _child(argv: dict[str, Any], fds: list[int], blocked: set[int | signal.Signals]) -> int:
    """In the new worker, signals still blocked: leave the supervisor's loop behind, then run the worker."""
    signal.set_wakeup_fd(-1)            # the parent's loop's socket: a signal here must not wake the supervisor
    for signum in _LOOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    gc.freeze()                         # what we inherited is the supervisor's: never scanned nor finalized here
    _close_all_but(fds)
    # The stop signals stay blocked until the worker's loop handles them (worker.STOP_SIGNALS): one that comes
    # meanwhile waits, then is a drain, not the default action's death.
    signal.pthread_sigmask(signal.SIG_SETMASK, {*blocked, *STOP_SIGNALS})
    return _worker(argv, fds)


def _close_all_but(keep: list[int]) -> None:
    """Close every fd above stderr except `keep`: the admin and demo listeners, the loop's epoll, other workers'
    pipes and links are the supervisor's."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _worker(argv: dict[str, Any], fds: list[int]) -> int:
    """In the forked worker: stdin from /dev/null, stdout to the supervisor's pipe, then the worker's main."""
    from fastmesh.process import worker
    code = 1
    try:
        stdout, stats_fd, control_fd, limits_fd, rates_fd, ticket_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(stdout, 1)
        os.close(stdout)
        os.environ[worker.PARENT_ENV] = str(os.getppid())     # the supervisor: we die with it
        from fastmesh._core.syscalls import set_process_name
        set_process_name(b"fastmesh-worker")
        code = worker.main(argv["config"], argv["worker_id"], argv["log_level"], stats_fd, control_fd, limits_fd,
                           None, rates_fd, ticket_fd, argv["running"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logging.getLogger("fastmesh.worker").exception("worker failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code
