"""TLS wiring: a listener's or cluster's tls table -> the core's TlsServer / TlsClient, with config errors that
name the file and key when OpenSSL refuses a certificate, key or setting; the instance's session-ticket secret;
and TlsWatch, which reloads certificate, key and CA files when they change on disk.

Each worker watches the files itself (inotify on their folders, and a stat of each file every WATCH_POLL
seconds for what inotify cannot see): the contexts live in each worker's memory, so each must read the files
anyway, and a watch of a handful of files costs nothing measurable. No message between processes is needed, and
an embedded Proxy reloads its certificates too. A change is read once the files have been quiet for
WATCH_SETTLE seconds (a certificate and its key written one after the other arrive together)."""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union

from fastmesh.config.schema import ClusterTls, ListenerTls
from fastmesh.digests import hmac_sha256
from fastmesh.errors import ConfigError

if TYPE_CHECKING:
    from fastmesh._core.tls.context import TlsClient, TlsServer

    Tls = Union[TlsServer, TlsClient]

log = logging.getLogger("fastmesh.tls")
T = TypeVar("T", "TlsServer", "TlsClient")

SESSION_SLOTS = 256         # upstream endpoints per cluster whose last TLS session is kept for resumption
DEFAULT_ALPN = {"http": ["h2", "http/1.1"], "tcp": []}    # an http listener without HTTP/2 offers http/1.1 only
CLUSTER_ALPN = {"h2": ["h2"]}          # an h2 cluster's default: its endpoints must agree to speak h2
TICKET_SECRET_BYTES = 32
RATCHET_LABEL = b"fastmesh ticket secret"    # the ticket master secret's ratchet: HMAC(secret, label | generation)
WATCH_POLL = 1.0            # seconds between stats of the watched files (inotify wakes the watch sooner)
WATCH_SETTLE = 0.2          # seconds the files must be quiet before a change is read


class TicketSecret:
    """The supervisor's copy of the instance's session-ticket master secret. It ratchets forward every `rotation`
    seconds like the workers' copies do (one derivation: the core's ratchet()), but stays two generations behind
    the clock: a worker started now may still need the previous period's key, whose period can start two
    generations back. What a worker gets: the secret, its generation and the rotation (HANDOVER bytes)."""

    HANDOVER = struct.Struct("<32sqd")

    def __init__(self, rotation: float, now: float | None = None) -> None:
        self.rotation = rotation
        self.generation = int((time.time() if now is None else now) // rotation) - 2
        self.secret = os.urandom(TICKET_SECRET_BYTES)

    def handover(self, now: float | None = None) -> bytes:
        """The bytes a worker started now reads (set_ticket_secret); the copy kept here ratchets forward first (the
        older secret is dropped: a bytes object cannot be wiped, so it lingers until its memory is reused)."""
        generation = int((time.time() if now is None else now) // self.rotation) - 2
        while self.generation < generation:
            self.generation += 1
            self.secret = ratchet(self.secret, self.generation)
        return self.HANDOVER.pack(self.secret, self.generation, self.rotation)


def ratchet(secret: bytes, generation: int) -> bytes:
    """secret(generation) from secret(generation - 1): the core's derivation (context.pyx _ratchet_once, which a
    test holds this to), in Python so that the supervisor never loads OpenSSL (fastmesh/digests.py)."""
    return hmac_sha256(secret, RATCHET_LABEL + generation.to_bytes(8, "little", signed=True))


def set_ticket_secret(handover: bytes) -> None:
    """The instance's session-ticket secret, which `fastmesh run`'s worker reads from the memfd the supervisor
    passed (process/worker.py, TicketSecret.handover): every worker derives the same rotating ticket keys from it."""
    from fastmesh._core.tls.context import set_ticket_secret as core_set
    secret, generation, rotation = TicketSecret.HANDOVER.unpack(handover)
    core_set(secret, generation, rotation)


def own_ticket_secret(rotation: float) -> None:
    """An embedded Proxy's tickets (no supervisor handed a secret over): a random secret of its own, ratcheting
    every `rotation` seconds (the config's ticket_secret_rotation). A handed-over secret is left alone."""
    from fastmesh._core.tls.context import set_ticket_secret as core_set, ticket_secret_state
    current, _, _, handed = ticket_secret_state()
    if not handed and current != rotation:
        core_set(os.urandom(TICKET_SECRET_BYTES), rotation=rotation, handed=False)


def _refused(source: str, key: str, exc: Exception) -> ConfigError:
    return ConfigError(source, key, "a certificate, key and settings OpenSSL accepts", reason=str(exc))


def build_server_tls(tls: ListenerTls, protocol: str, source: str, key: str, h2: bool = True) -> TlsServer:
    """A listener's TlsServer; `key` is the config key of the tls table (for errors); `h2`: the listener speaks
    HTTP/2 (so ALPN may offer it by default)."""
    from fastmesh._core.tls.context import TlsError, TlsServer
    certs = [(c.cert, c.key, list(c.names) if c.names else None) for c in tls.all_certificates()]
    alpn = DEFAULT_ALPN.get(protocol, []) if tls.alpn is None else tls.alpn
    if not h2:
        alpn = [p for p in alpn if p != "h2"]
    try:
        return TlsServer(certs, client_ca=tls.client_ca, require_client_cert=bool(tls.require_client_cert),
                         alpn=alpn,
                         min_version=tls.min_version, ciphers=tls.ciphers, ciphersuites=tls.ciphersuites,
                         groups=tls.groups, tickets=tls.session_tickets, ticket_rotation=tls.ticket_rotation,
                         strict_sni=tls.strict_sni, handshake_timeout=tls.handshake_timeout,
                         allow_identities=tls.allow_identities)
    except TlsError as exc:
        raise _refused(source, key, exc) from None


def build_client_tls(tls: ClusterTls, source: str, key: str, protocol: str = "") -> TlsClient:
    """A cluster's TlsClient; `key` is the config key of the tls table (for errors); `protocol`: what an HTTP
    pool speaks over it (an h2 cluster offers ALPN h2 unless its alpn says otherwise)."""
    from fastmesh._core.tls.context import TlsClient, TlsError
    try:
        return TlsClient(ca=tls.ca, server_name=tls.server_name, cert=tls.cert, key=tls.key,
                         alpn=tls.alpn or CLUSTER_ALPN.get(protocol, []),
                         min_version=tls.min_version, ciphers=tls.ciphers, ciphersuites=tls.ciphersuites,
                         groups=tls.groups, verify=tls.verify, endpoints=SESSION_SLOTS,
                         sessions=tls.session_reuse)
    except TlsError as exc:
        raise _refused(source, key, exc) from None


def unchanged_or(old: T | None, new: T | None) -> T | None:
    """`old` when `new` was built from the same settings and file contents (a config reload that left this TLS
    alone): a cluster's TlsClient then keeps its sessions, so upstream handshakes after a reload still resume."""
    if old is not None and new is not None and type(old) is type(new) and old.spec == new.spec:
        return old
    return new


def certificate_rows(kind: str, name: str, certificates: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """One row per loaded certificate, as /tls, /clusters and the expiry metric show it."""
    return [{kind: name, "cert": c["cert"], "names": list(c["names"]), "uris": list(c.get("uris", [])),
             "not_after": c["not_after"], "expires_in": c["not_after"] - now, "expired": c["not_after"] <= now,
             "not_after_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c["not_after"]))}
            for c in certificates]


Stamp = tuple[int, int, int, int] | None


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass
class _Watched:
    """One TlsServer or TlsClient in use, and how its last reload went."""
    kind: str                          # "listener" or "cluster"
    name: str                          # the listener's or cluster's name
    tls: Any                           # the TlsServer / TlsClient (adopt() keeps it the same object)
    stamps: dict[str, Stamp] = field(default_factory=dict)   # per file: what it was when last read
    reloads: int = 0                   # certificate reloads taken
    failures: int = 0                  # reloads refused (the old certificates stayed)
    error: str | None = None           # why the files on disk now are refused (None: they are in use)
    error_at: float = 0.0              # when that was found (Unix time)
    reloaded_at: float = 0.0           # when the files were last taken (Unix time; 0: since the start)
    warned: set[tuple[str, float]] = field(default_factory=set)   # expired certificates already logged


class TlsWatch:
    """A Proxy's TLS contexts and the files they were read from: when a file changes, the context is rebuilt from
    the same settings; a rebuild OpenSSL accepts (and whose certificates have not expired, unless those in use have)
    is adopted in place, one it refuses keeps the old certificates and is reported (log, status(), metrics) until
    the files are fixed. Certificates in use that have expired are served, and reported (expired())."""

    def __init__(self) -> None:
        self.watched: list[_Watched] = []
        self.changed: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.dirs: dict[str, Any] = {}

    def track(self, contexts: list[tuple[str, str, Any]]) -> None:
        """The contexts in use now, as (kind, name, TlsServer | TlsClient): at start and after each config reload
        (the history of one that stays the same object is kept)."""
        old = {id(w.tls): w for w in self.watched}
        self.watched = [old.get(id(tls)) or _Watched(kind, name, tls, {p: _stamp(p) for p in tls.files})
                        for kind, name, tls in contexts]
        if self.task is not None:
            self._watch_dirs()
        self.expired()

    def start(self) -> None:
        self.changed = asyncio.Event()
        self._watch_dirs()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        for watch in self.dirs.values():
            watch.close()
        self.dirs.clear()

    def _watch_dirs(self) -> None:
        from fastmesh.filewatch import DirWatch
        assert self.changed is not None
        wanted = {os.path.dirname(os.path.abspath(p)) for w in self.watched for p in w.stamps}
        for folder in list(self.dirs):
            if folder not in wanted:
                self.dirs.pop(folder).close()
        for folder in wanted - set(self.dirs):
            self.dirs[folder] = DirWatch(folder, self.changed)

    async def _run(self) -> None:
        assert self.changed is not None
        while True:
            try:
                await asyncio.wait_for(self.changed.wait(), WATCH_POLL)
            except TimeoutError:
                pass
            while self.changed.is_set():            # let a burst of writes finish first
                self.changed.clear()
                await asyncio.sleep(WATCH_SETTLE)
            self.check()

    def expired(self, now: float | None = None) -> None:
        """Say loudly (once per certificate) that one in use has expired: at start, after a reload, or when its
        notAfter passes while it is served. It stays in use: clients that check dates refuse it, but a failed
        renewal must not also stop the clients that do not (or that pin it) and every other listener; the
        expiry shows in /tls, /clusters (`expired`), fastmesh_tls_cert_expires_in_seconds and `fastmesh check`."""
        now = time.time() if now is None else now
        for w in self.watched:
            for c in w.tls.certificates:
                if c["not_after"] <= now and (c["cert"], c["not_after"]) not in w.warned:
                    w.warned.add((c["cert"], c["not_after"]))
                    log.error("%s %s: certificate %s expired at %s (%.1f days ago) and is still served: clients that "
                              "check its dates refuse it; replace the file (a change on disk is picked up)",
                              w.kind, w.name, c["cert"],
                              time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(c["not_after"])),
                              (now - c["not_after"]) / 86400)

    def check(self) -> list[str]:
        """Reload every context whose files changed since they were read; the names of those reloaded."""
        self.expired()
        reloaded = []
        for w in self.watched:
            stamps = {p: _stamp(p) for p in w.stamps}
            if stamps == w.stamps:
                continue
            w.stamps = stamps
            if self._reload(w):
                reloaded.append(f"{w.kind} {w.name}")
        return reloaded

    def _reload(self, w: _Watched) -> bool:
        from fastmesh._core.tls.context import TlsError
        try:
            new = w.tls.rebuild()
        except TlsError as exc:
            return self._refuse(w, str(exc))
        if new.spec == w.tls.spec:                  # touched, or written back as it was
            w.error = None
            return False
        now = time.time()
        # An expired replacement is refused while what is in use is still valid; once that has expired too, the
        # new files are no worse (and may fix something else): they are taken, and expired() says so.
        in_use_valid = all(c["not_after"] > now for c in w.tls.certificates)
        for cert in new.certificates:
            if cert["not_after"] <= now and in_use_valid:
                return self._refuse(w, f"certificate {cert['cert']} expired at "
                                       f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(cert['not_after']))}")
        w.tls.adopt(new)
        w.reloads += 1
        w.reloaded_at = now
        w.error = None
        w.stamps = {p: _stamp(p) for p in w.tls.files}
        log.info("%s %s: TLS files reloaded (%s); new handshakes use them", w.kind, w.name,
                 ", ".join(f"{c['cert']} until {time.strftime('%Y-%m-%d', time.gmtime(c['not_after']))}"
                           for c in w.tls.certificates) or ", ".join(w.tls.files))
        return True

    def _refuse(self, w: _Watched, why: str) -> bool:
        w.failures += 1
        if w.error != why:                          # once per distinct problem, not once per poll
            log.error("%s %s: TLS files changed but cannot be used, the previous certificates stay: %s",
                      w.kind, w.name, why)
        w.error = why
        w.error_at = time.time()
        return False

    def status(self) -> list[dict[str, Any]]:
        """Per context: its certificates (with expiry) and how reloading its files went."""
        now = time.time()
        return [{"kind": w.kind, "name": w.name, "files": list(w.tls.files), "reloads": w.reloads,
                 "reload_failures": w.failures, "error": w.error, "error_at": w.error_at or None,
                 "reloaded_at": w.reloaded_at or None,
                 "certificates": certificate_rows(w.kind, w.name, list(w.tls.certificates), now)}
                for w in self.watched]
