"""Listening sockets: made with the options every listener has, bound by workers, probed by the supervisor.

Before it starts workers (and before a reload binds new addresses) the supervisor binds each listener address
once with a socket made by the same function the workers use, so the probe fails exactly when their binds would.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

from fastmesh.config.values import format_address, ip_literal
from fastmesh.config.schema import Listener as ListenerConfig

PROBE_CONNECT_TIMEOUT = 0.5  # seconds to see whether someone already accepts on a listener address


def listener_socket(host: str, reuse_port: bool) -> socket.socket:
    """An unbound stream socket for a listener on host (IPv6 when host is an IPv6 literal), options set."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt here instead of one per accept.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def serving_socket(host: str, port: int, backlog: int = 128) -> socket.socket | None:
    """A listening, non-blocking socket on an IP literal for a server the supervisor runs on its own loop (admin,
    demo backends); None when host is a name (the loop resolves it). Bound here because uvloop's create_server
    resolves even a literal on libuv's thread pool: four threads, with their stacks and malloc arenas, kept for
    the life of the process."""
    if ip_literal(host) is None:
        return None
    return _listening(host, port, backlog, reuse_port=False)


def bind_socket(cfg: ListenerConfig, reuse_port: bool) -> socket.socket:
    """A listening, non-blocking socket. With reuse_port every worker binds its own and the kernel spreads
    connections across them."""
    return _listening(cfg.host, cfg.port, cfg.backlog, reuse_port)


def _listening(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """listener_socket(host, reuse_port) bound to (host, port), listening and non-blocking; closed if any step fails."""
    sock = listener_socket(host, reuse_port)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def resolver_name(host: str) -> str | bytes:
    """`host` as getaddrinfo() should get it. Given a str, getaddrinfo runs it through the idna codec, and importing
    that codec loads stringprep and unicodedata (0.3 MiB in each process), even for an address; an ASCII name is
    the same name as bytes. (A name that is not ASCII still needs the codec.)"""
    return host.encode("ascii") if host.isascii() else host


def probe_listeners(listeners: Iterable[ListenerConfig]) -> list[str]:
    """Bind each listener address as a worker would (SO_REUSEPORT, no listen) and close it: report what workers
    would hit, once."""
    problems = []
    for lst in listeners:
        family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
        try:
            # The address bind() itself would take for this host: the first the resolver gives for the family.
            addr = socket.getaddrinfo(resolver_name(lst.host), lst.port, family, socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0][4]
        except socket.gaierror as exc:
            problems.append(f"listener {lst.name!r}: cannot resolve {lst.host!r}: {exc.strerror}")
            continue
        problem = _probe_one(lst.host, addr)
        if problem:
            problems.append(f"listener {lst.name!r} cannot use {format_address(str(addr[0]), lst.port)}: {problem}")
    return problems


def _probe_one(host: str, addr: tuple[Any, ...]) -> str | None:
    with listener_socket(host, reuse_port=True) as sock:
        try:
            sock.bind(addr)
        except OSError as exc:
            return bind_reason(exc)
        family = sock.family
    # A process that listens with SO_REUSEPORT too (say, a second `fastmesh run` of the same config) lets the bind
    # pass, and the kernel would then split connections between the two: refuse to start in that case as well.
    target = ("::1" if family == socket.AF_INET6 else "127.0.0.1") if addr[0] in ("0.0.0.0", "::") else addr[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_CONNECT_TIMEOUT)
        try:
            sock.connect((target, *addr[1:]))
        except OSError:
            return None
    return "another process is already listening there (a second fastmesh?)"


def bind_reason(exc: OSError) -> str:
    """Why a bind failed, in words a user can act on (listeners, the admin server and demo backends alike)."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another program is listening there)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available (no network interface on this machine has it)"
    return exc.strerror or str(exc)
