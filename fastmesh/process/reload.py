"""Hot reload in the supervisor: read and check the config file, have every worker apply it, report the outcome.

One reload at a time (SIGHUP and POST /reload queue behind each other). The supervisor reads the file once and
sends what it checked, as JSON, to the workers over their control channels (process/link.py), with the stats block
of the new counter layout (dataplane/stats.py); each worker answers once `Proxy.reload()` has swapped it in.

Outcomes, as POST /reload answers them:
  200  every serving worker applied it (the summary names what changed);
  400  the file does not load, or a new listener address cannot be used: nothing changed anywhere;
  500  a worker refused it (say, a bind failed there). When none applied it, the running config stays; when some
       did, the new config is kept and the refusing workers are restarted so that all run the same config;
  504  a worker did not answer in time: its state is unknown, so it is restarted (with the running config).
A worker (re)started later starts from the running config, never from the file as it is now: a forked worker has the
supervisor's, a fresh interpreter is handed its JSON; one that becomes ready with an older config than the
supervisor's is sent the current one at once. `workers`, `[admin]` and `[demo]` cannot change
while running: a change to them is reported and waits for a restart (/config shows the values in effect).

Discovery updates take a shorter path: only the changed clusters' endpoint sets (with their slot holes,
dataplane/slots.py) go to the workers, as an "endpoints" request, and each applies them in place (Proxy.
update_endpoints): no config validation, no rebuilt cluster, no other cluster touched. The effective config
text a worker started later needs is made only when one is started.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import time
from typing import Any, Protocol

from fastmesh.config.load import config_to_dict, load_config
from fastmesh.config.schema import Config
from fastmesh.dataplane.ratelimits import SharedRates
from fastmesh.dataplane.slots import Holes, encode_sets, with_holes
from fastmesh.discovery.manager import DiscoveryManager, watches
from fastmesh.process.events import Events
from fastmesh.dataplane.sockets import probe_listeners
from fastmesh.dataplane.stats import StatsLayout, WorkerStats
from fastmesh.errors import ConfigError
from fastmesh.gcpause import collector_paused
from fastmesh.process.inline import InlineLink
from fastmesh.process.link import LinkClosed, WorkerLink, memfd_with

Link = WorkerLink | InlineLink

log = logging.getLogger("fastmesh.reload")

RELOAD_TIMEOUT = 10.0       # seconds a worker has to apply a reload before it counts as not having done so
HISTORY = 50                # recent reloads kept for the admin server
RESTART_ONLY = (("workers", "workers"), ("admin", "[admin]"), ("demo", "[demo]"))   # (Config field, as written)


class Supervised(Protocol):
    """What a reload needs from the supervisor (supervisor.Supervisor has these)."""
    config_path: str
    cfg: Config
    config_gen: int                     # bumped by each reload that changed the running config
    spawn_gen: dict[int, int]           # slot -> config_gen when its current worker was started
    links: dict[int, Link]              # slot -> control channel of its current worker (or the inline data plane)
    ready: set[int]
    stats: WorkerStats
    stopping: asyncio.Event
    discovery: DiscoveryManager
    events: Events                      # the event_sinks plugins' queue
    rates: SharedRates                  # the rate-limit block the workers share (a reload may make a new one)

    def adopt(self, cfg: Config, applied: list[int]) -> None: ...
    def restart(self, n: int, why: str) -> None: ...


@dataclasses.dataclass
class Outcome:
    """A reload's answer: the HTTP status for POST /reload and its JSON body."""
    status: int
    body: dict[str, Any]


class Reloader:
    """Runs reloads for one supervisor, one at a time."""

    def __init__(self, sup: Supervised) -> None:
        self.sup = sup
        self.lock = asyncio.Lock()
        # The running config as workers are sent it (effective_text's JSON) once a reload or discovery changed it.
        self._text: bytes | None = None
        self._effective: tuple[Config, Holes] | None = None    # what `text` is made from when an update left it out
        self.holes: Holes = {}          # the endpoint slot holes the workers run with (discovered clusters)
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)

    @property
    def text(self) -> bytes | None:
        """The running config as workers are started with it (None: the file, as the supervisor read it)."""
        if self._text is None and self._effective is not None:
            self._text = effective_text(*self._effective)
        return self._text

    @property
    def from_file(self) -> bool:
        """Workers run the config file as read (no effective config sent yet): `text` is None, known without
        making the text (a discovery update must not format 10,000 endpoints as JSON just to ask)."""
        return self._text is None and self._effective is None

    def _running(self, text: bytes | None, effective: Config, holes: Holes) -> None:
        """Workers now run `effective` (sent as text, or made from it when first needed)."""
        self._text, self.holes = text, holes
        self._effective = (effective, holes) if text is None else None

    async def reload(self, trigger: str) -> Outcome:
        """Reload the config file now (trigger names the cause for the log: "SIGHUP", "POST /reload")."""
        async with self.lock:
            began = time.monotonic()
            if self.sup.stopping.is_set():
                outcome = Outcome(503, {"error": "Service Unavailable", "status": 503, "result": "failed",
                                        "message": "shutting down: no reload"})
            else:
                outcome = await self._reload(trigger)
            took = round((time.monotonic() - began) * 1000, 1)
            outcome.body["took_ms"] = took
            result = "ok" if outcome.status == 200 else "failed"
            self.sup.stats.reloads[result] += 1
            self.history.append({"time": time.time(), "trigger": trigger, "result": result,
                                 "status": outcome.status, "took_ms": took,
                                 "message": outcome.body.get("message", "")})
            self.sup.events.emit("reload", trigger=trigger, result=result, status=outcome.status, took_ms=took,
                                 message=outcome.body.get("message", ""))
            return outcome

    async def _reload(self, trigger: str) -> Outcome:
        sup = self.sup
        began = time.monotonic()
        try:
            new = load_config(sup.config_path)
        except ConfigError as exc:
            return self._refused(trigger, [str(e) for e in exc.errors], "the config is not valid")
        old = sup.cfg
        effective, later = pin_restart_only(old, new)
        problems = probe_new_listeners(old, effective)
        if problems:
            return self._refused(trigger, problems, "the new config cannot be applied")
        holes: Holes = {}
        if sup.discovery.active or watches(effective):
            sup.discovery.configure(effective)
            effective = sup.discovery.fill(effective)
            holes = sup.discovery.holes(effective)
            sup.discovery.dirty = set()         # every set goes with the whole config
        # As JSON, whatever the file's format: workers never parse TOML (nor import its reader), and each applies
        # exactly what the supervisor checked.
        return await self._distribute(trigger, effective_text(effective, holes), "json", effective, later, began,
                                      holes)

    async def discovered(self) -> None:
        """Discovery found new endpoint sets: every worker applies the changed clusters' sets in place. The whole
        effective config goes instead before the first workers start (they start from it) and when something
        besides endpoints changed (a watched naming table). No garbage collection until the workers have answered
        (fastmesh/gcpause.py): the update's collections would otherwise run before the payload leaves."""
        async with self.lock:
            with collector_paused():
                await self._discovered()

    async def _discovered(self) -> None:
        sup = self.sup
        if sup.stopping.is_set():
            return
        effective = sup.discovery.fill(sup.cfg)
        holes = sup.discovery.holes(effective)
        began = time.monotonic()
        # (Clusters compared by identity: the other settings decide; no comparison of 10,000 endpoints.)
        if self.from_file or dataclasses.replace(effective, clusters=sup.cfg.clusters) != sup.cfg \
                or effective.clusters.keys() != sup.cfg.clusters.keys():       # made from a template or removed
            sup.discovery.dirty = set()
            outcome = await self._distribute("discovery", effective_text(effective, holes), "json", effective,
                                             [], began, holes)
        else:
            # The clusters whose sources published since the last hand-off (no comparison of 10,000 endpoints).
            dirty, sup.discovery.dirty = sup.discovery.dirty, set()
            changed = {name: effective.clusters[name] for name in dirty if name in effective.clusters}
            if not changed:
                return
            payload = encode_sets({name: (c.endpoints, holes.get(name, ())) for name, c in changed.items()})
            outcome = await self._distribute("discovery", payload, "endpoints", effective, [], began, holes)
            if outcome.status != 200 and "generation" not in outcome.body:
                sup.discovery.dirty |= set(changed)     # no worker took them: they go again with the next update
        if outcome.status != 200:
            log.error("discovery update: %s", outcome.body.get("message"))

    async def _distribute(self, trigger: str, text: bytes, fmt: str, effective: Config, later: list[str],
                          began: float, holes: Holes | None = None) -> Outcome:
        """Have every serving worker apply `effective` (sent as `text` in `fmt`: "json" for a whole config,
        "endpoints" for changed endpoint sets), then adopt it."""
        sup = self.sup
        old = sup.cfg
        holes = holes or {}
        changes = summarize(old, effective)
        old_layout = sup.stats.layout
        sup.stats.relayout(StatsLayout(effective, holes))
        if fmt != "endpoints":
            sup.rates.update(effective)             # a new block when the limits changed (the kept ones carried over)
        targets = {n: link for n, link in sup.links.items() if n in sup.ready}
        answers = await asyncio.gather(*(self._apply(n, link, text, fmt) for n, link in targets.items()))
        took = (time.monotonic() - began) * 1000        # until the last worker answered
        results = dict(zip(targets, answers))
        applied = [n for n, (state, _) in results.items() if state == "applied"]
        refused = {n: info for n, (state, info) in results.items() if state == "refused"}
        late = [n for n, (state, _) in results.items() if state == "timeout"]
        workers = {f"w{n}": _worker_word(state, info) for n, (state, info) in sorted(results.items())}
        if refused and not applied and not late:
            sup.stats.relayout(old_layout)          # every worker kept the running config, and so do we
            if fmt != "endpoints":
                sup.rates.update(old)
            for n, errors in sorted(refused.items()):
                for error in errors:
                    log.error("reload (%s): w%d: %s", trigger, n, error)
            log.error("reload (%s) failed: no worker could apply it; the running config is unchanged", trigger)
            return Outcome(500, {"error": "Internal Server Error", "status": 500, "result": "failed",
                                 "message": "no worker could apply the new config; the running config is unchanged",
                                 "failed_workers": [f"w{n}" for n in sorted(refused)], "workers": workers})
        # Adopt: from here the new config is the supervisor's, and every worker will end up running it.
        if fmt == "endpoints":
            self._running(None, effective, holes)
        else:
            self._running(text, effective, holes)
        sup.adopt(effective, applied)
        for n in sorted(sup.ready - set(targets)):    # became ready while we read: may run the older file
            asyncio.get_running_loop().create_task(self.push(n))
        for line in later:
            log.warning("reload (%s): %s", trigger, line)
        for n in sorted(refused) + late:
            why = f"it did not apply the reload ({workers[f'w{n}']})"
            log.error("reload (%s): w%d: %s: restarting it", trigger, n, why)
            sup.restart(n, why)
        body: dict[str, Any] = {"result": "ok", "trigger": trigger, "generation": sup.config_gen,
                                "changes": changes, "restart_required": later, "workers": workers}
        if refused or late:
            status = 500 if refused else 504
            failed = [f"w{n}" for n in sorted(refused) + sorted(late)]
            message = (f"{', '.join(failed)} did not apply the new config "
                       f"({'refused' if refused else 'no answer in time'}): restarting them with it")
            log.error("reload (%s): %s", trigger, message)
            body.update({"result": "failed", "error": "Internal Server Error" if refused else "Gateway Timeout",
                         "status": status, "message": message, "failed_workers": failed})
            return Outcome(status, body)
        body["message"] = f"applied by {len(applied)} worker(s): {describe_changes(changes)}"
        if trigger == "discovery":
            own = max((float(results[n][1].get("seconds", 0.0)) for n in applied), default=0.0) * 1000
            log.info("discovery update applied by %d worker(s) in %.1f ms (the slowest worker's own part %.1f ms): "
                     "clusters %s%s", len(applied), took, own, ", ".join(changes["clusters_changed"]) or "unchanged",
                     "; naming table changed" if "naming" in changes["settings_changed"] else "")
            return Outcome(200, body)
        log.info("config reloaded (%s) in %.1f ms: %s", trigger, took, body["message"])
        return Outcome(200, body)

    def _refused(self, trigger: str, errors: list[str], what: str) -> Outcome:
        for error in errors:                # one line per problem: file, key, reason
            log.error("reload (%s): %s", trigger, error)
        log.error("reload (%s) failed: %s; the running config is unchanged", trigger, what)
        return Outcome(400, {"error": "Bad Request", "status": 400, "result": "failed",
                             "message": f"{what}; the running config is unchanged", "errors": errors})

    async def _apply(self, n: int, link: Link, text: bytes, fmt: str) -> tuple[str, Any]:
        """Send worker n the config text and its stats block; ("applied", answer), ("refused", errors),
        ("timeout", None) or ("gone", None) when it exited meanwhile (it restarts from the file)."""
        stats = self.sup.stats
        config_fd = memfd_with(text, "fastmesh-config")
        try:
            stats_fd = stats.fd_for(n)
            stats.freeze(n)             # it moves counters between blocks now: read them as they were
            try:
                # A whole config goes with the rate-limit block of its limits (the worker keeps its own when it
                # is the same block).
                fds = (config_fd, stats_fd) if fmt == "endpoints" else (config_fd, stats_fd, self.sup.rates.fd)
                answer = await link.call("endpoints" if fmt == "endpoints" else "reload", RELOAD_TIMEOUT,
                                         fds=fds, source=self.sup.config_path)
            finally:
                stats.thaw(n)
        except TimeoutError:
            return "timeout", None
        except LinkClosed:
            return "gone", None
        finally:
            os.close(config_fd)
        if answer.get("ok"):
            return "applied", answer
        return "refused", answer.get("errors") or [str(answer.get("error", "unknown error"))]

    async def push(self, n: int) -> None:
        """Worker n has just become ready: send it the running config unless it started from it."""
        async with self.lock:
            sup = self.sup
            link = sup.links.get(n)
            if self.from_file or link is None or n not in sup.ready or sup.spawn_gen.get(n) == sup.config_gen:
                return
            assert self.text is not None
            state, info = await self._apply(n, link, self.text, "json")
            if state == "applied":
                sup.spawn_gen[n] = sup.config_gen
                log.info("w%d: brought up to the running config", n)
            elif state != "gone":
                why = f"it could not apply the running config ({_worker_word(state, info)})"
                log.error("w%d: %s: restarting it", n, why)
                sup.restart(n, why)


def effective_text(cfg: Config, holes: Holes | None = None) -> bytes:
    """The config as workers are sent it when discovery fills in endpoints: config_to_dict's JSON, with a null at
    each endpoint slot hole (dataplane/slots.py)."""
    return json.dumps(with_holes(config_to_dict(cfg), holes or {}), separators=(",", ":")).encode()


def pin_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the settings that cannot change while running kept as in `old`, and a line per such change."""
    later = []
    kept: dict[str, Any] = {}
    old_dict, new_dict = config_to_dict(old), config_to_dict(new)
    for name, written in RESTART_ONLY:
        if old_dict.get(name) != new_dict.get(name):
            later.append(f"{written} changed ({_short(old_dict.get(name))} -> {_short(new_dict.get(name))}): "
                         f"takes effect when fastmesh restarts")
            kept[name] = getattr(old, name)
    return dataclasses.replace(new, **kept), later


def probe_new_listeners(old: Config, new: Config) -> list[str]:
    """Problems binding the addresses the new config listens on and the running one does not."""
    running = {(lst.host, lst.port) for lst in old.listeners}
    return probe_listeners([lst for lst in new.listeners if (lst.host, lst.port) not in running])


def summarize(old: Config, new: Config) -> dict[str, list[str]]:
    """Names of the listeners and clusters added, removed and changed, and the other top-level keys changed."""
    out: dict[str, list[str]] = {}
    for kind, before, after in (("listeners", {lst.name: lst for lst in old.listeners},
                                 {lst.name: lst for lst in new.listeners}),
                                ("clusters", old.clusters, new.clusters)):
        out[f"{kind}_added"] = [name for name in after if name not in before]
        out[f"{kind}_removed"] = [name for name in before if name not in after]
        out[f"{kind}_changed"] = [name for name in after if name in before and before[name] != after[name]]
    out["settings_changed"] = ["drain_timeout"] if old.drain_timeout != new.drain_timeout else []
    out["settings_changed"] += ["naming"] if old.naming != new.naming else []
    out["settings_changed"] += ["busy_poll"] if old.busy_poll != new.busy_poll else []
    return out


def describe_changes(changes: dict[str, list[str]]) -> str:
    parts = [f"{key.replace('_', ' ')} {', '.join(names)}" for key, names in changes.items() if names]
    return "; ".join(parts) if parts else "no changes"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _worker_word(state: str, info: Any) -> str:
    if state == "applied":
        return "applied"
    if state == "refused":
        return "refused: " + "; ".join(info)
    if state == "timeout":
        return f"no answer within {RELOAD_TIMEOUT:g}s"
    return "exited meanwhile (restarts from the file)"
