"""TLS wiring: a listener's or cluster's tls table -> the core's TlsServer / TlsClient, with config errors that
name the file and key when OpenSSL refuses a certificate, key or setting."""
from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

from fastmesh.config.schema import ClusterTls, ListenerTls
from fastmesh.errors import ConfigError

if TYPE_CHECKING:
    from fastmesh._core.tls.context import TlsClient, TlsServer

TICKET_SECRET_ENV = "FASTMESH_TLS_TICKET_SECRET"
SESSION_SLOTS = 256         # upstream endpoints per cluster whose last TLS session is kept for resumption
DEFAULT_ALPN = {"http": ["h2", "http/1.1"], "tcp": []}    # an http listener without HTTP/2 offers http/1.1 only
CLUSTER_ALPN = {"h2": ["h2"]}          # an h2 cluster's default: its endpoints must agree to speak h2


def share_ticket_secret() -> None:
    """Called by the supervisor before it starts workers: every worker (forked or spawned) inherits one secret,
    from which each derives the same rotating session-ticket keys (tls/context.pyx)."""
    if len(os.environ.get(TICKET_SECRET_ENV, "")) != 64:
        os.environ[TICKET_SECRET_ENV] = secrets.token_hex(32)


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
                         groups=tls.groups, tickets=tls.session_tickets, strict_sni=tls.strict_sni,
                         handshake_timeout=tls.handshake_timeout)
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
