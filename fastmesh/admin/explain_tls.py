"""The TLS part of an explanation: what a listener terminates and what its cluster originates, from the config,
the same for http and tcp listeners (the values the data plane builds its TLS contexts from)."""
from __future__ import annotations

from typing import Any

from fastmesh.config.schema import Cluster, Listener
from fastmesh.dataplane.tls import CLUSTER_ALPN, DEFAULT_ALPN


def listener_tls(lst: Listener) -> dict[str, Any] | None:
    """The TLS the listener terminates (None: plain connections)."""
    tls = lst.tls
    if tls is None:
        return None
    alpn = DEFAULT_ALPN.get(lst.protocol, []) if tls.alpn is None else list(tls.alpn)
    if lst.protocol == "http" and not lst.http2.enabled:
        alpn = [p for p in alpn if p != "h2"]       # as build_server_tls is told for this listener
    return {"terminates": True,
            "certificates": [{"cert": c.cert, "names": list(c.names) if c.names else None}
                             for c in tls.all_certificates()],
            "min_version": tls.min_version, "alpn": alpn, "strict_sni": tls.strict_sni,
            "client_ca": tls.client_ca, "require_client_cert": bool(tls.require_client_cert),
            "allow_identities": tls.allow_identities, "session_tickets": tls.session_tickets,
            "handshake_timeout": tls.handshake_timeout}


def cluster_tls(c: Cluster, listener_protocol: str) -> dict[str, Any] | None:
    """The TLS the cluster's connections originate (None: plain connections to the endpoints). A tcp listener's
    relay offers the configured ALPN only; an http listener's pool adds its protocol's default (h2)."""
    tls = c.tls
    if tls is None:
        return None
    default = CLUSTER_ALPN.get(c.protocol, []) if listener_protocol == "http" else []
    return {"originates": True, "ca": tls.ca, "verify": tls.verify, "server_name": tls.server_name,
            "client_cert": tls.cert, "min_version": tls.min_version, "alpn": list(tls.alpn) or default,
            "session_reuse": tls.session_reuse}
