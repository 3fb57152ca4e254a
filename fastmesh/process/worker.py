"""One worker process: run a Proxy with SO_REUSEPORT on its loop until SIGTERM/SIGINT, then drain and exit 0.

The loop is process/loop.py's (FASTMESH_LOOP: the reactor's epoll set waited in directly by default, or uvloop).

A worker starts from the supervisor's running config and never reads the file itself (nor imports a TOML reader).
Reloads come from the supervisor over the control channel (process/link.py), with the config it checked (as JSON)
and the stats block for the new config's shape: every worker then applies the same config, even when the file
changes again meanwhile. Discovery updates come the same way as
"endpoints" requests: the changed clusters' endpoint sets, applied in place (Proxy.update_endpoints).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from fastmesh.config.schema import Config
from fastmesh.logs import setup_logging
from fastmesh.process import pagemerge

log = logging.getLogger("fastmesh.worker")

READY_LINE = b"fastmesh-worker-ready\n"   # written once to stdout (a pipe to the supervisor) when serving
PARENT_ENV = "FASTMESH_SUPERVISOR_PID"     # the supervisor's pid, so a worker can tell when it is orphaned
EXIT_CONFIG = 78                           # sysexits.h EX_CONFIG: the config file no longer loads
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # a drain; blocked from fork until the loop handles them
PARENT_POLL = 1.0                          # seconds between parent checks where PR_SET_PDEATHSIG is missing


def main(config_path: str, worker_id: int, log_level: str, stats_fd: int | None = None,
         control_fd: int | None = None, limits_fd: int | None = None, config_fd: int | None = None,
         rates_fd: int | None = None, ticket_fd: int | None = None,
         running: tuple[Config, dict[str, tuple[int, ...]]] | None = None) -> int:
    """Entry point of `fastmesh _worker`; returns the process exit code. The config to run is `running` (config and
    endpoint slot holes: a forked worker's, from the supervisor's memory), else the JSON in config_fd (a fresh
    interpreter's), else the file at config_path (a worker started by hand)."""
    setup_logging(log_level, f"w{worker_id}")
    if pagemerge.requested():
        pagemerge.enable()              # a forked worker has it from the supervisor (which said what stands in the way)
    if ticket_fd is not None:
        # The instance's TLS session-ticket secret: from a memfd the supervisor passed (read, then closed), never
        # from the environment, which same-user processes can read and children inherit.
        from fastmesh.process.link import read_all
        from fastmesh.dataplane.tls import set_ticket_secret
        set_ticket_secret(read_all(ticket_fd))
    # A stop signal waits, blocked, until the loop's handlers are installed (_serve): one that came in the first
    # moments is then a drain like any other, where the default action would have killed the worker mid-start.
    # (A forked worker has them blocked already; a fresh interpreter blocks them here.) SIGINT's default action
    # also keeps asyncio.Runner from installing its KeyboardInterrupt handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    parent = _supervisor_pid()
    if parent is not None and not _die_with_parent(parent):
        log.warning("supervisor (pid %d) is already gone: not starting", parent)
        return 0
    from fastmesh.config.load import load_config
    from fastmesh.errors import ConfigError
    holes: dict[str, tuple[int, ...]] = {}
    try:
        if running is not None:
            cfg, holes = running
        elif config_fd is not None:
            cfg, holes = _read_config_fd(config_fd, config_path)
        else:
            cfg = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:        # one log line per problem
            log.error("config no longer loads: %s", error)
        return EXIT_CONFIG
    from fastmesh.dataplane.fd_budget import raise_fd_limit
    raise_fd_limit()                    # the supervisor raised it already, unless this worker was started otherwise
    from fastmesh.process.loop import loop_factory
    try:
        factory = loop_factory()
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(cfg, parent, stats_fd, control_fd, limits_fd, worker_id, holes, rates_fd))
    except Exception:                   # a bug: say so in the log's format, tagged with this worker's id
        log.exception("worker failed")
        return 1


def _read_config_fd(fd: int, source: str) -> tuple[Config, dict[str, tuple[int, ...]]]:
    """The config the supervisor passed in a memfd, as config_to_dict's JSON, and its endpoint slot holes."""
    from fastmesh.process.link import read_all
    return _effective_config(read_all(fd), source)


def _effective_config(text: bytes, source: str) -> tuple[Config, dict[str, tuple[int, ...]]]:
    """The supervisor's effective config (JSON, null entries at endpoint slot holes): the config and the holes."""
    import json
    from fastmesh.config.load import config_from_dict
    from fastmesh.dataplane.slots import split_holes
    data = json.loads(text)
    holes = split_holes(data)
    return config_from_dict(data, source=source), holes


def _supervisor_pid() -> int | None:
    value = os.environ.get(PARENT_ENV, "")
    return int(value) if value.isdigit() else None


def _die_with_parent(parent: int) -> bool:
    """Ask Linux to SIGTERM us (a graceful drain) when the supervisor dies; False if it already has."""
    if sys.platform.startswith("linux"):
        from fastmesh._core.syscalls import set_parent_death_signal
        try:
            set_parent_death_signal(signal.SIGTERM)
        except OSError:                 # pragma: no cover - refused; the poll in _watch_parent remains
            pass
    # The parent may have died before prctl took effect; then we have been re-parented already.
    return os.getppid() == parent


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Backstop for PR_SET_PDEATHSIG (not on every OS; tied to the spawning thread): poll who our parent is."""
    while not stop.is_set():
        await asyncio.sleep(PARENT_POLL)
        if os.getppid() != parent:
            log.warning("supervisor (pid %d) is gone: stopping", parent)
            stop.set()


def _announce_ready() -> None:
    try:
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.buffer.flush()
    except OSError:                     # the supervisor is gone; the parent watch will stop us
        pass


async def _serve(cfg: Config, parent: int | None, stats_fd: int | None = None, control_fd: int | None = None,
                 limits_fd: int | None = None, worker_id: int = 0, holes: dict[str, tuple[int, ...]] | None = None,
                 rates_fd: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop_signal(signum: int) -> None:
        # One Ctrl-C reaches us twice (from the terminal and forwarded by the supervisor): repeats change nothing.
        if not stop.is_set():
            log.info("received %s: no longer accepting; open connections get up to %gs to finish",
                     signal.Signals(signum).name, cfg.drain_timeout)
            stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal, signum)
    # A terminal hang-up reaches the whole process group: the supervisor reloads and tells us what to apply.
    loop.add_signal_handler(signal.SIGHUP, log.debug, "SIGHUP ignored: reloads come from the supervisor")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # handled from here: one that waited arrives now
    watcher = asyncio.create_task(_watch_parent(parent, stop)) if parent is not None else None

    from fastmesh.process import memtrace
    tracer = memtrace.start(worker_id)      # None unless FASTMESH_MEMTRACE is set (a debug switch for soaks)
    from fastmesh.proxy import Proxy
    # Counters in the supervisor's shared stats block; limits counted in its limits block, in our slot's region;
    # rate-limit buckets in its rates block.
    proxy = Proxy(cfg, reuse_port=True, stats_fd=stats_fd, limits_fd=limits_fd, worker=worker_id, holes=holes,
                  rates_fd=rates_fd)
    try:
        await proxy.start()
    except OSError as exc:              # start() has already closed whatever it had bound
        log.error("cannot start: %s", exc)
        return 1
    control = None
    busy = asyncio.Lock()               # held while a control request runs: stopping waits for a reload to finish
    if control_fd is not None:
        from fastmesh.process import link as workerlink
        channel = workerlink.Channel(socket.socket(fileno=control_fd))
        control = asyncio.create_task(workerlink.serve(channel, _handlers(proxy, busy, stop)))
    _announce_ready()
    await stop.wait()
    async with busy:
        if control is not None:         # the supervisor's pending call, if any, ends at once (LinkClosed)
            control.cancel()
            channel.close()
    await proxy.stop()              # stops accepting at once, then drains for up to the config's drain_timeout
    if watcher is not None:
        watcher.cancel()
    if tracer is not None:
        tracer.cancel()
    # Drained: a repeated SIGTERM/SIGINT (the supervisor forwards what the terminal also sent) must not kill us
    # while the loop closes. The loop's handlers are removed first: closing the loop would otherwise reset each of
    # them to the default action (death by SIGTERM) after we ignored it.
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    log.info("stopped")
    return 0


def _handlers(proxy: Any, busy: asyncio.Lock, stop: asyncio.Event) -> dict[str, Any]:
    """The control requests a worker answers: reload, endpoints (a discovery update), describe (endpoint
    details for explain) and tls (certificates, their expiry and reload state, for the admin server)."""

    async def reload(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        async with busy:
            if stop.is_set():
                for fd in fds:
                    os.close(fd)
                return {"ok": False, "errors": ["the worker is stopping"]}
            return await _reload(message, fds)

    async def endpoints(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        async with busy:
            if stop.is_set():
                for fd in fds:
                    os.close(fd)
                return {"ok": False, "errors": ["the worker is stopping"]}
            return await _endpoints(fds)

    async def _endpoints(fds: list[int]) -> dict[str, Any]:
        from fastmesh.process import link as workerlink
        from fastmesh.dataplane import stats
        from fastmesh.dataplane.slots import decode_sets
        from fastmesh.gcpause import collector_paused
        began = time.monotonic()
        payload_fd, stats_fd = (fds + [None, None])[:2]
        if payload_fd is None:
            return {"ok": False, "errors": ["the endpoints request carried no endpoint sets"]}
        with collector_paused(resume_soon=True):    # (fastmesh/gcpause.py: collections once it is answered)
            sets = decode_sets(workerlink.read_all(payload_fd))
            block = stats.map_block(stats_fd) if stats_fd is not None else None
            try:
                changes = await proxy.update_endpoints(sets, stats_block=block)
            except (ValueError, OSError) as exc:    # an address the core refuses, or a rebuild that could not bind
                log.error("endpoint update failed: %s", exc)
                return {"ok": False, "errors": [f"cannot apply the endpoint update: {exc}"]}
        return {"ok": True, "changes": changes, "seconds": time.monotonic() - began}

    async def _reload(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        from fastmesh.process import link as workerlink
        from fastmesh.dataplane import stats
        from fastmesh.errors import ConfigError
        began = time.monotonic()
        config_fd, stats_fd, rates_fd = (fds + [None, None, None])[:3]
        if config_fd is None:
            return {"ok": False, "errors": ["the reload request carried no config"]}
        text = workerlink.read_all(config_fd)
        block = stats.map_block(stats_fd) if stats_fd is not None else None
        source = str(message.get("source", "<config>"))
        try:
            cfg, holes = _effective_config(text, source)      # the config the supervisor checked, as JSON
            theirs, rates_fd = rates_fd, None         # reload() owns it from here
            changes = await proxy.reload(cfg, stats_block=block, holes=holes, rates_fd=theirs)
        except ConfigError as exc:
            errors = [str(e) for e in exc.errors]
        except OSError as exc:          # a new listener could not be bound: reload() changed nothing
            errors = [f"cannot apply {source}: {exc.strerror or exc}"]
        else:
            return {"ok": True, "changes": changes, "seconds": time.monotonic() - began}
        finally:
            if rates_fd is not None:    # not handed to the proxy (the config did not load)
                os.close(rates_fd)
        for error in errors:            # one log line per problem
            log.error("reload failed: %s", error)
        return {"ok": False, "errors": errors}

    async def describe(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"ok": True, "clusters": proxy.endpoint_details(list(message.get("clusters", [])))}

    async def tls(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"ok": True, "contexts": proxy.tls_status()}

    async def counters(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"ok": True, "counters": {**proxy.plugin_counters(), "pid": os.getpid()}}

    return {"reload": reload, "endpoints": endpoints, "describe": describe, "tls": tls, "counters": counters}
