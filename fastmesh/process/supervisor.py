"""`fastmesh run`: check listener addresses, start demo backends, keep N worker processes alive, reload them on
SIGHUP or POST /reload (process/reload.py), then stop them."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import site
import sys
import time
from typing import Any

from fastmesh._version import __version__
from fastmesh.config.schema import Config
from fastmesh.dataplane.sockets import bind_reason, probe_listeners
from fastmesh.process.demo import DemoError, DemoServers, start_demo
from fastmesh.logs import setup_logging
from fastmesh.process.worker import PARENT_ENV, READY_LINE
from fastmesh.process.link import LinkClosed, WorkerLink, memfd_with, socketpair
from fastmesh.process.inline import InlineLink
from fastmesh.process import pagemerge, pageout, zygote
from fastmesh.process.startup_only import forget
from fastmesh.process.zygote import ForkedWorker
from fastmesh.dataplane.tls import TicketSecret

Worker = asyncio.subprocess.Process | ForkedWorker      # a fresh interpreter, or forked from this process
Link = WorkerLink | InlineLink                          # a worker's control channel, or the in-process one

log = logging.getLogger("fastmesh.supervisor")

STOP_GRACE = 5.0            # seconds past drain_timeout a worker gets to exit before SIGKILL
REPEAT_GRACE = 0.5          # seconds within which a repeated stop signal is the same stop, not a second one
GROUP_STOP_GRACE = 0.2     # seconds a worker's clean exit waits for the supervisor's own stop signal (a group kill)
QUICK_EXIT = 10.0           # a worker that dies sooner than this after starting counts as crashing quickly
MAX_BACKOFF = 10.0          # seconds: the longest pause before restarting a worker that keeps crashing
MAX_START_FAILURES = 5      # at startup, a slot whose worker dies this many times in a row before serving ends the run
DESCRIBE_TIMEOUT = 2.0      # seconds a worker has to describe its endpoints for explain
FIRST_ANSWER_WAIT = 5.0     # seconds discovery gets to answer once before the workers start without its answer
DISCOVERY_COALESCE = 0.01   # seconds of discovery updates handed to the workers together

# Where this copy of fastmesh lives, so workers import the same code even when it is not installed.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(config_path: str, log_level: str) -> int:
    """Load and check the config, then supervise workers until SIGTERM/SIGINT; returns the exit code."""
    setup_logging(log_level, "main")
    from fastmesh.config.load import TOML_READER, load_config
    from fastmesh.errors import ConfigError
    before = set(sys.modules)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            log.error("%s", error)
        log.error("the config is not valid: not starting")
        return 1
    # Workers get the config from us, checked, and never read TOML: the reader goes until a reload reads the file
    # (0.3 MiB the instance would otherwise hold in every process).
    forget(TOML_READER, set(sys.modules) - before)
    try:
        import fastmesh._core  # noqa: F401  (workers need it; say so once here rather than in each crashing worker)
    except ImportError as exc:
        log.error("%s", exc)
        return 1
    problems = probe_listeners(cfg.listeners)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return 1
    from fastmesh.dataplane.fd_budget import raise_fd_limit
    raise_fd_limit()                    # the workers inherit it, and derive their connection limits from it
    pagemerge.enable_if_requested()     # before the workers are forked: they inherit it
    # The workers' loop (process/loop.py) runs here too: in single-process mode the data plane shares it, and with
    # workers a forked one finds its code warm and shared. uvloop (its module, libuv's threads: 2 MiB of the
    # instance) is loaded only where FASTMESH_LOOP asks for it.
    from fastmesh.process.loop import loop_factory
    try:
        factory = loop_factory()
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if cfg.worker_count() == 0:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(Supervisor(config_path, cfg, log_level).run())
    forking = zygote.preload(cfg.uses_tls())    # before any event loop exists: workers are forked from this one
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Supervisor(config_path, cfg, log_level, forking).run())


def restart_delay(quick_failures: int) -> float:
    """Pause before restarting a worker after `quick_failures` quick deaths in a row: the first restart is immediate."""
    if quick_failures <= 1:
        return 0.0
    return min(MAX_BACKOFF, 0.5 * 2.0 ** (quick_failures - 2))


def describe_exit(returncode: int) -> str:
    """asyncio's returncode (negative for a signal) in words."""
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """The parent process: demo backends on its own loop, one task per worker slot that restarts its worker."""

    def __init__(self, config_path: str, cfg: Config, log_level: str, forking: bool = False) -> None:
        self.config_path = os.path.abspath(config_path)   # workers may resolve it from another directory
        self.cfg = cfg
        self.log_level = log_level
        # workers = 0: the data plane runs here, in slot 0 (process/inline.py); one slot either way.
        self.inline = cfg.worker_count() == 0
        self.count = max(1, cfg.worker_count())
        self.inline_task: asyncio.Task[None] | None = None
        self.forking = forking                                    # workers are forked from us (else exec'd)
        self.procs: dict[int, Worker] = {}                        # slot number -> its running worker
        self.ready: set[int] = set()                              # slots whose current worker is serving
        self.announced = False                                    # "all workers ready" was logged once
        self.exit_code = 0
        self.stopping = asyncio.Event()
        from fastmesh.dataplane.stats import StatsLayout, WorkerStats
        self.stats = WorkerStats(StatsLayout(cfg))                 # one shared counter block per worker slot
        from fastmesh.dataplane.limits import SharedLimits
        self.limits = SharedLimits(cfg, self.count)                # the instance's limit counters, one region per slot
        from fastmesh.dataplane.ratelimits import SharedRates
        self.rates = SharedRates(cfg)                              # the routes' rate-limit buckets, for every worker
        self.links: dict[int, Link] = {}                           # slot -> control channel of its worker
        self.config_gen = 0                                        # bumped by each reload that changed cfg
        self.spawn_gen: dict[int, int] = {}                        # slot -> config_gen its worker started at
        self.admin: Any = None                                     # the AdminServer, once it listens
        self.background: set[asyncio.Task[Any]] = set()           # reloads started by SIGHUP, pushes
        self.replacing: set[int] = set()                           # slots whose worker we stopped to restart it
        from fastmesh.discovery.manager import DiscoveryManager
        self.discovery = DiscoveryManager()                        # endpoint sources, resolved here for every worker
        self.discovery.traffic = self._cluster_traffic             # a made cluster carrying traffic is not idle
        from fastmesh.process.reload import Reloader
        self.reloader = Reloader(self)
        from fastmesh.process.events import Events
        self.events = Events()                                     # events for the event_sinks plugins
        # Every worker derives the same TLS session-ticket keys from it; each gets it in a memfd (never the env).
        # It ratchets forward every ticket_secret_rotation (read here, at start; a reload leaves it).
        self.ticket_secret = TicketSecret(cfg.ticket_secret_rotation)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()        # bound to the running loop
        self.stop_signalled_at = 0.0           # when the first stop signal came (monotonic)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.inline:
            log.info("fastmesh %s starting in one process (workers = 0) for %s", __version__, self.config_path)
        else:
            log.info("fastmesh %s starting %d worker(s) for %s", __version__, self.count, self.config_path)
        demo: DemoServers | None = None
        self.events.configure(self.cfg)
        try:
            if self.cfg.demo is not None and self.cfg.demo.backends:
                try:
                    demo = await start_demo(self.cfg.demo.backends)
                except DemoError as exc:
                    log.error("%s", exc)
                    return 1
            from fastmesh.admin.server import AdminServer
            admin = AdminServer(self.cfg, self.stats, self)
            try:
                await admin.start()
            except OSError as exc:
                log.error("admin server: cannot listen on %s: %s", admin.address, bind_reason(exc))
                return 1
            self.admin = admin
            from fastmesh.discovery.manager import watches
            if watches(self.cfg):
                # Workers start with what discovery finds (or the listed endpoints, for a source not answering yet).
                self.discovery.configure(self.cfg)
                await self.discovery.first_answers(FIRST_ANSWER_WAIT)
                await self.reloader.discovered()
            self._in_background(self._hand_off_discovery())
            if self.inline:
                from fastmesh.process import inline
                self.inline_task = asyncio.create_task(self._serve_inline(inline.serve(self)))
                slots = [self.inline_task]
            else:
                slots = [asyncio.create_task(self._keep_worker(n)) for n in range(self.count)]
            await self.stopping.wait()
            await self._stop_workers(slots)
            await self.discovery.close()
            for task in list(self.background):
                task.cancel()
            await admin.close()
            await self.events.close()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if demo is not None:
                await demo.close()
            self.stats.close()
            self.limits.close()
            self.rates.close()
        log.info("stopped")
        return self.exit_code

    async def _serve_inline(self, serving: Any) -> None:
        """Run the in-process data plane; a failure in it ends the instance (there is no worker to restart)."""
        try:
            await serving
        except asyncio.CancelledError:
            log.warning("stopped without finishing the drain")
        except Exception:
            log.exception("the data plane failed: stopping (workers = 0 has no worker to restart)")
            self.exit_code = 1
            self.stopping.set()
        finally:
            self.ready.discard(0)

    def on_inline_ready(self) -> None:
        """The in-process data plane serves (process/inline.py)."""
        self.ready.add(0)
        if self.spawn_gen.get(0) != self.config_gen:    # a reload came while it started: may run the older file
            self._in_background(self.reloader.push(0))
        self.announced = True
        where = ", ".join(f"{lst.name!r} on {lst.address}" for lst in self.cfg.listeners)
        log.info("ready: serving %s in this process (pid %d)", where, os.getpid())

    def _on_sighup(self) -> None:
        log.info("received SIGHUP: reloading %s", self.config_path)
        self._in_background(self.reloader.reload("SIGHUP"))

    async def _hand_off_discovery(self) -> None:
        """Each change discovery finds goes to every worker; changes within DISCOVERY_COALESCE go together."""
        while True:
            await self.discovery.changed.wait()
            await asyncio.sleep(DISCOVERY_COALESCE)
            self.discovery.changed.clear()
            self.events.emit("discovery", endpoints={name: len(eps) for name, eps in self.discovery.sets.items()})
            await self.reloader.discovered()

    def _cluster_traffic(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """(work done, connections open) per named cluster, summed over every worker's counters."""
        snapshot = self.stats.collect()
        return {name: snapshot.traffic(name) for name in names}

    def _in_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def reload(self, trigger: str) -> tuple[int, dict[str, Any]]:
        """Reload the config file now; (HTTP status, JSON body) as POST /reload answers."""
        outcome = await self.reloader.reload(trigger)
        return outcome.status, outcome.body

    def adopt(self, cfg: Config, applied: list[int]) -> None:
        """A reload made cfg the running config (workers and admin address pinned to the running ones); the
        workers in `applied` run it."""
        self.cfg = cfg
        self.events.configure(cfg)
        self.config_gen += 1
        for n in applied:
            self.spawn_gen[n] = self.config_gen
        if self.admin is not None:
            self.admin.set_config(cfg)

    def restart(self, n: int, why: str) -> None:
        """Stop worker n gracefully; its slot starts a new one (with the running config)."""
        if self.inline:
            log.error("the data plane %s; with workers = 0 there is no worker to restart: it keeps running", why)
            return
        proc = self.procs.get(n)
        if proc is not None:
            log.warning("w%d (pid %d): restarting: %s", n, proc.pid, why)
            self.replacing.add(n)
            _send(proc, signal.SIGTERM)

    async def describe(self, clusters: list[str]) -> dict[int, dict[str, Any]]:
        """Each serving worker's endpoint details for these clusters (workers that do not answer are left out)."""
        return await self._ask_workers("describe", "clusters", clusters=clusters)

    async def tls_status(self) -> dict[int, list[dict[str, Any]]]:
        """Each serving worker's TLS contexts: certificates with their expiry, and how reloading their files went
        (workers that do not answer in time are left out)."""
        return await self._ask_workers("tls", "contexts")

    async def plugin_counters(self) -> dict[int, dict[str, Any]]:
        """Each serving worker's Python-side counters: filters, span export, access-log sinks (Proxy.plugin_counters;
        workers that do not answer in time are left out)."""
        return await self._ask_workers("counters", "counters")

    async def _ask_workers(self, op: str, key: str, **args: Any) -> dict[int, Any]:
        """Ask every serving worker `op` (with `args`) over its control link at once; worker -> its answer's `key`."""
        async def one(link: Link) -> Any:
            try:
                answer = await link.call(op, DESCRIBE_TIMEOUT, **args)
            except (TimeoutError, LinkClosed):
                return None
            return answer.get(key) if answer.get("ok") else None
        links = {n: link for n, link in self.links.items() if n in self.ready}
        answers = await asyncio.gather(*(one(link) for link in links.values()))
        return {n: a for n, a in zip(links, answers) if a is not None}

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if not self.stopping.is_set():
            log.info("received %s: stopping workers (open connections get up to %gs)", name, self.cfg.drain_timeout)
            self.stopping.set()
            self.stop_signalled_at = now
            return
        if now - self.stop_signalled_at < REPEAT_GRACE:
            # The same stop delivered twice at once (to the process and to its group, as timeout(1) does; or
            # Ctrl-C reaching every process): still a graceful stop. A second one later means "now".
            return
        log.warning("received %s again: killing workers now", name)
        if self.inline_task is not None:
            self.inline_task.cancel()       # ends the drain: open connections are closed as the process exits
        for proc in self.procs.values():
            _send(proc, signal.SIGKILL)

    def _stop(self, n: int, proc: Worker) -> None:
        """Send worker n its stop. A fresh interpreter still starting gets it from _on_ready instead: its stop signals
        are blocked only once its main() runs (a forked worker's from the fork on), so before its ready line the
        default action could still kill it."""
        if isinstance(proc, ForkedWorker) or n in self.ready:
            _send(proc, signal.SIGTERM)

    async def _stop_workers(self, slots: list[asyncio.Task[None]]) -> None:
        for n, proc in self.procs.items():
            self._stop(n, proc)
        limit = self.cfg.drain_timeout + STOP_GRACE
        _, pending = await asyncio.wait(slots, timeout=limit)
        if pending:
            for n, proc in self.procs.items():
                log.warning("w%d (pid %d) still running %gs after SIGTERM: killing it", n, proc.pid, limit)
                _send(proc, signal.SIGKILL)
            await asyncio.wait(pending)       # reaps the killed workers: no zombies left behind

    async def _keep_worker(self, n: int) -> None:
        """Run worker slot n: start it, and restart it whenever it dies while we are not stopping."""
        loop = asyncio.get_running_loop()
        quick_failures = 0
        start_failures = 0
        while not self.stopping.is_set():
            started = loop.time()
            try:
                proc = await self._spawn(n)
            except OSError as exc:
                log.error("cannot start w%d: %s", n, exc)
                was_ready = False
            else:
                self.procs[n] = proc
                log.info("w%d started (pid %d)", n, proc.pid)
                self.events.emit("worker_started", worker=n, pid=proc.pid)
                if self.stopping.is_set():      # the stop signal came while we were spawning
                    self._stop(n, proc)
                was_ready = await self._watch(n, proc)
                returncode = await proc.wait()
                del self.procs[n]
                self.ready.discard(n)
                link = self.links.pop(n, None)
                if link is not None:
                    link.close()
                self.stats.retire(n)            # its counters join the totals; the next worker starts at zero
                self.limits.clear(n)            # what it held of the limits (requests, connections) is free
                self.events.emit("worker_exited", worker=n, pid=proc.pid, how=describe_exit(returncode))
                if returncode == 0 and not self.stopping.is_set() and n not in self.replacing:
                    # A worker exits 0 only after a stop signal. From a group kill (systemd, timeout(1)) ours comes
                    # at the same moment and may be handled just after this exit: then it is the instance's stop.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), GROUP_STOP_GRACE)
                if self.stopping.is_set():
                    level = logging.INFO if returncode == 0 else logging.WARNING
                    log.log(level, "w%d (pid %d) stopped: %s", n, proc.pid, describe_exit(returncode))
                    return
                if n in self.replacing:
                    self.replacing.discard(n)
                    log.info("w%d (pid %d) stopped to be replaced: %s", n, proc.pid, describe_exit(returncode))
                    quick_failures = 0
                    continue
                log.warning("w%d (pid %d) exited unexpectedly: %s", n, proc.pid, describe_exit(returncode))
                self.stats.restarts += 1
            quick_failures = quick_failures + 1 if loop.time() - started < QUICK_EXIT else 0
            start_failures = 0 if was_ready else start_failures + 1
            # Failing to start at all ends the run (fix, then run again); once serving, keep trying with backoff
            # so the other workers go on serving.
            if start_failures >= MAX_START_FAILURES and not self.announced:
                log.error("w%d failed %d times in a row before serving: giving up (see the errors above)",
                          n, start_failures)
                self.exit_code = 1
                self.stopping.set()
                return
            delay = restart_delay(quick_failures)
            if delay:
                log.info("restarting w%d in %gs (it keeps exiting quickly)", n, delay)
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    pass

    async def _spawn(self, n: int) -> Worker:
        if self.forking:
            ours, theirs = socketpair()
            tickets = memfd_with(self.ticket_secret.handover(), "fastmesh-tickets")
            fds = [self.stats.fd_for(n), theirs.fileno(), self.limits.fd, self.rates.fd, tickets]
            # The running config as this process holds it (discovery's endpoints filled in, a reload's result):
            # the worker runs what its siblings run, whatever the file says now, and parses nothing.
            running = (self.cfg, self.reloader.holes)
            try:
                proc: Worker = await zygote.fork_worker(
                    {"config": self.config_path, "worker_id": n, "log_level": self.log_level, "running": running},
                    fds)
            except OSError as exc:
                ours.close()
                log.warning("could not fork w%d (%s): starting a fresh interpreter", n, exc)
            else:
                self.links[n] = WorkerLink(ours, f"w{n}")
                self.spawn_gen[n] = self.config_gen
                return proc
            finally:
                theirs.close()
                os.close(tickets)
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        if _PACKAGE_ROOT not in site.getsitepackages() + [site.getusersitepackages()]:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        stats_fd = self.stats.fd_for(n)
        limits_fd = self.limits.fd
        rates_fd = self.rates.fd
        # The running config as JSON (discovery's endpoints filled in, a reload's result), not the file as it is now.
        from fastmesh.process.reload import effective_text
        text = self.reloader.text if self.reloader.text is not None else effective_text(self.cfg)
        config_fd = memfd_with(text, "fastmesh-config")
        ours, theirs = socketpair()
        tickets = memfd_with(self.ticket_secret.handover(), "fastmesh-tickets")
        try:
            # A fresh interpreter (not a fork of this process and its running loop) for each worker. -P keeps the
            # current directory off sys.path: run from a checkout, `-m fastmesh` would otherwise import the
            # uncompiled source tree there instead of the fastmesh this supervisor runs (found via _PACKAGE_ROOT).
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "fastmesh", "_worker", self.config_path,
                "--worker-id", str(n), "--log-level", self.log_level, "--stats-fd", str(stats_fd),
                "--control-fd", str(theirs.fileno()), "--limits-fd", str(limits_fd), "--rates-fd", str(rates_fd),
                "--ticket-fd", str(tickets), "--config-fd", str(config_fd),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=env,
                pass_fds=(stats_fd, theirs.fileno(), limits_fd, rates_fd, tickets, config_fd))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(tickets)
            os.close(config_fd)
        self.links[n] = WorkerLink(ours, f"w{n}")
        self.spawn_gen[n] = self.config_gen
        return proc

    async def _watch(self, n: int, proc: Worker) -> bool:
        """Read the worker's stdout until it closes: note its ready line, pass anything else through."""
        ready = False
        assert proc.stdout is not None
        async for line in proc.stdout:
            if line == READY_LINE and not ready:
                ready = True
                self._on_ready(n, proc)
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
        return ready

    def _on_ready(self, n: int, proc: Worker) -> None:
        self.ready.add(n)
        log.info("w%d (pid %d) ready", n, proc.pid)
        if self.stopping.is_set() and not isinstance(proc, ForkedWorker):
            _send(proc, signal.SIGTERM)     # the stop _stop held back while it started
            return
        if self.spawn_gen.get(n) != self.config_gen:    # started before the latest reload: may run the older file
            self._in_background(self.reloader.push(n))
        if not self.announced and len(self.ready) == self.count:
            self.announced = True
            where = ", ".join(f"{lst.name!r} on {lst.address}" for lst in self.cfg.listeners)
            log.info("ready: %d worker(s) serving %s", self.count, where)
            if self.forking:            # the init code the supervisor alone ran (imports, OpenSSL) goes back
                log.debug("advised %d KiB of file pages out", pageout.release_file_pages())


def _send(proc: Worker, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:          # it exited and was reaped between our check and the signal
        pass
