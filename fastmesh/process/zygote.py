"""The fork server: workers forked from a process that has imported the data path but never ran an event loop.

A worker started as a fresh interpreter pays for its own copy of everything Python builds at import (modules, code
objects, the compiled core's types): about 17 MiB of private memory each. The supervisor forks the zygote once,
before its own event loop exists, after importing what a worker imports (and what it will import itself once it
runs) and freezing those objects out of the garbage collector's reach (gc.freeze, so a collection does not write
to every page). The zygote then waits, with no loop and no thread, for spawn requests on a SOCK_SEQPACKET pair;
each request carries the worker's stdout pipe and its shared-memory and control fds, and the zygote forks the
worker, which runs `process/worker.main` as the `_worker` command would. The pages both hold stay shared
copy-on-write, so a worker costs what it changes. The zygote reaps its workers and reports each exit (its status
as asyncio's returncode) back over the pair.

When the zygote cannot be started (no fork, the pair fails) or dies, the supervisor starts workers as fresh
interpreters, as before; FASTMESH_ZYGOTE=0 asks for that.
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

log = logging.getLogger("fastmesh.supervisor")

ENV = "FASTMESH_ZYGOTE"        # "0": no fork server, every worker is a fresh interpreter
MAX_MESSAGE = 65536
CLOSE_WAIT = 2.0               # seconds the zygote gets to exit once the supervisor is done with it
# What a worker imports (the proxy imports the data path only when it starts), loaded once before the fork so the
# zygote and through it every worker share the pages. A module left out still works: the worker imports it itself.
# The last line is what the supervisor itself imports once it runs (admin, discovery, reloads): imported after the
# fork, its new objects land in the holes of memory pages the zygote shares, and each such page is then copied, in
# the supervisor and the zygote both (4 to 6 MiB of the instance's PSS, measured with bench/footprint.py).
PRELOAD = (
    "uvloop", "fastmesh.proxy", "fastmesh.process.worker", "fastmesh.process.loop", "fastmesh.process.link",
    "fastmesh.process.memtrace",
    "fastmesh.config.load", "fastmesh.dataplane.listeners", "fastmesh.dataplane.clusters",
    "fastmesh.dataplane.routes", "fastmesh.dataplane.stats", "fastmesh.dataplane.limits",
    "fastmesh.dataplane.access_log", "fastmesh.health.active", "fastmesh.health.passive", "fastmesh.httpwire",
    "fastmesh._core.balance.factory", "fastmesh._core.http1.proxy",
    "fastmesh.dataplane.tracing", "fastmesh.filewatch", "ctypes.util",
    "fastmesh.admin.server", "fastmesh.discovery.manager", "fastmesh.process.reload", "fastmesh.process.events",
)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _prctl(option: int, arg: Any) -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class ForkedWorker:
    """The supervisor's handle on a worker the zygote forked: what it uses of asyncio.subprocess.Process."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdout: asyncio.StreamReader | None = stdout
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, signum)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def _exit(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self._exited.set_result(returncode)


class Zygote:
    """Supervisor side: start() before the event loop, spawn() from it, close() when the workers are gone."""

    def __init__(self) -> None:
        self.pid = 0
        self.sock: socket.socket | None = None
        self.workers: dict[int, ForkedWorker] = {}
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.next_id = 0
        self.reading = False

    @classmethod
    def start(cls) -> Zygote | None:
        """Fork the zygote; None (workers are then exec'd) when that is off or impossible."""
        if os.environ.get(ENV) == "0" or not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            return None
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError as exc:      # a renamed module: the workers import what they need themselves
                log.debug("fork server: not preloading %s: %s", name, exc)
        self = cls()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            log.warning("no fork server (%s): workers start as fresh interpreters", exc)
            return None
        gc.collect()
        gc.freeze()                 # these objects stay put: no collection writes their pages, here or in a child
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:                # the zygote
            ours.close()
            code = 1
            try:
                code = _serve(theirs, parent)
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = ours
        return self

    def _start_reading(self) -> None:
        if not self.reading and self.sock is not None:
            self.sock.setblocking(False)
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_message)
            self.reading = True

    async def spawn(self, argv: dict[str, Any], fds: list[int]) -> ForkedWorker:
        """Ask the zygote for a worker running worker.main(**argv) with these fds; OSError when it is gone."""
        if self.sock is None:
            raise OSError("the fork server is gone")
        self._start_reading()
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        self.next_id += 1
        ident = self.next_id
        answer: asyncio.Future[int] = loop.create_future()
        self.pending[ident] = answer
        try:
            socket.send_fds(self.sock, [json.dumps({"id": ident, "argv": argv}).encode()], [write_end, *fds])
        except OSError:
            self.pending.pop(ident, None)
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            pid = await answer
        except BaseException:
            os.close(read_end)
            raise
        stdout = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(read_end, "rb", 0))
        worker = ForkedWorker(pid, stdout)
        self.workers[pid] = worker
        return worker

    def _on_message(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._gone()
                return
            message = json.loads(data)
            if "spawned" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    if message["spawned"] > 0:
                        future.set_result(message["spawned"])
                    else:
                        future.set_exception(OSError(message.get("error", "fork failed")))
            elif "exited" in message:
                worker = self.workers.pop(message["exited"], None)
                if worker is not None:
                    worker._exit(message["returncode"])

    def _gone(self) -> None:
        """The zygote died: its workers die with it (PDEATHSIG); report them dead, start the next ones by exec."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        log.warning("the fork server (pid %d) is gone: workers now start as fresh interpreters", self.pid)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(OSError("the fork server is gone"))
        self.pending.clear()
        for pid, worker in list(self.workers.items()):
            asyncio.get_running_loop().create_task(_await_exit(pid, worker))
        self.workers.clear()
        self._reap()

    def _reap(self) -> None:
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def close(self) -> None:
        """No more spawns: the zygote exits once its workers have (call after they are stopped)."""
        if self.sock is not None:
            if self.reading:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        # Its workers have exited (the supervisor waited for each), so it ends at once; if it does not, kill it.
        deadline = time.monotonic() + CLOSE_WAIT
        try:
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.01)
        except ChildProcessError:
            pass


async def _await_exit(pid: int, worker: ForkedWorker) -> None:
    """A worker we can no longer hear about: poll until its pid is gone, then call it terminated."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    worker._exit(-signal.SIGTERM)


def _serve(sock: socket.socket, parent: int) -> int:
    """The zygote's loop: fork a worker per request, report each exit; end when the supervisor closes the pair."""
    # SIGTERM is ignored below, so the supervisor's death ends us with SIGKILL: nothing of ours needs a cleanup.
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    _prctl(_PR_SET_NAME, b"fastmesh-zygote")
    if os.getppid() != parent:
        return 0
    # Ctrl-C, a hang-up and a stop sent to the whole group (systemd's control-group kill, timeout(1)) are the
    # supervisor's to handle: it drains the workers, then closes the pair, and we leave once they are reaped.
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    children: set[int] = set()
    closed = False

    def reap(*_: Any) -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                return
            if pid == 0:
                return
            children.discard(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            if not closed:
                try:
                    sock.send(json.dumps({"exited": pid, "returncode": code}).encode())
                except OSError:
                    pass

    signal.signal(signal.SIGCHLD, reap)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 16)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        message = json.loads(data)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"id": message["id"], "spawned": -1, "error": str(exc)}).encode())
            continue
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            os._exit(_worker(message["argv"], fds))
        for fd in fds:
            os.close(fd)
        children.add(pid)
        sock.send(json.dumps({"id": message["id"], "spawned": pid}).encode())
        reap()
    closed = True
    # The supervisor is done with us: stay until the workers have gone (they are draining), so they are reaped.
    while children:
        time.sleep(0.5)             # a SIGCHLD cuts this short; the timeout covers one that came just before it
        reap()
    return 0


def _worker(argv: dict[str, Any], fds: list[int]) -> int:
    """In the forked worker: stdin from /dev/null, stdout to the supervisor's pipe, then the worker's main."""
    from fastmesh.process import worker
    code = 1
    try:
        stdout, stats_fd, control_fd, limits_fd, rates_fd, ticket_fd, *rest = fds
        config_fd = rest[0] if rest else None                   # the running config, when discovery fills it in
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(stdout, 1)
        os.close(stdout)
        os.environ[worker.PARENT_ENV] = str(os.getppid())     # the zygote: we die with it, and it with the supervisor
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        _prctl(_PR_SET_NAME, b"fastmesh-worker")
        code = worker.main(argv["config"], argv["worker_id"], argv["log_level"], stats_fd, control_fd, limits_fd,
                           config_fd, rates_fd, ticket_fd)
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
