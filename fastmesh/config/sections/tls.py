"""tls tables: a listener's (certificates, client CAs, identities) and a cluster's (CA, server name, client cert)."""
from __future__ import annotations

import os
from typing import Any

from fastmesh.config.schema import TLS_VERSIONS, Certificate, ClusterTls, ListenerTls
from fastmesh.config.values import _is_host, _is_ip_host
from fastmesh.config.walk import BAD, _all_good, _array, _Check, _choice, _duration, _flag, _key, Parser, _table
from fastmesh.errors import ConfigError

_PEM_MARKS = {"cert": b"-----BEGIN CERTIFICATE-----", "key": b"PRIVATE KEY-----", "ca": b"-----BEGIN CERTIFICATE-----"}


def _pem(kind: str) -> Parser:
    """A PEM file of `kind` ("cert", "key", "ca"), relative to the config file's folder; kept as an absolute path.
    Only that it is readable PEM of the right kind is checked here; OpenSSL judges the rest when the listener or
    cluster is built (and that error names the key too)."""
    what = {"cert": "a PEM certificate file", "key": "a PEM private key file", "ca": "a PEM CA bundle file"}[kind]

    def parse(check: _Check, key: str, value: Any) -> Any:
        if not isinstance(value, str) or not value or "\x00" in value:
            return check.bad(key, what, value)
        base = os.path.dirname(check.source) if not check.source.startswith("<") else ""
        path = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 22)
        except OSError as exc:
            check.errors.append(ConfigError(check.source, key, what,
                                            reason=f"expected {what}, but {path} cannot be read: {exc.strerror}"))
            return BAD
        if _PEM_MARKS[kind] not in data:
            check.errors.append(ConfigError(check.source, key, what,
                                            reason=f"expected {what}, but {path} holds no {_PEM_MARKS[kind].decode()}"))
            return BAD
        return path
    return parse


def _alpn(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and 0 < len(v.encode()) < 256
                                                       and v.isascii() for v in value):
        return check.bad(key, 'an array of ALPN protocol names like ["h2", "http/1.1"]', value)
    return list(value)


def identity_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be an allow_identities entry, or None: a URI with an authority ("spiffe://td/..."),
    ASCII without spaces, and a "*" only as the whole last path segment ("spiffe://td/ns/x/*")."""
    scheme, sep, rest = pattern.partition("://")
    if not sep or not scheme or not rest or not pattern.isascii() or any(c.isspace() for c in pattern):
        return "a URI like spiffe://trust-domain/ns/x/sa/y"
    star = pattern.find("*")
    if star >= 0 and (star != len(pattern) - 1 or not pattern.endswith("/*") or rest.startswith("/")
                      or rest.startswith("*")):
        return 'a "*" only as the whole last path segment, as in spiffe://trust-domain/ns/x/*'
    return None


def _identities(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        return check.bad(key, 'an array of identities like ["spiffe://td/ns/web/sa/api", "spiffe://td/ns/batch/*"]',
                         value)
    for i, pattern in enumerate(value):
        why = identity_problem(pattern) if isinstance(pattern, str) else "a string"
        if why is not None:
            return check.bad(f"{key}[{i}]", why, pattern)
    return list(value)


def _server_name(check: _Check, key: str, value: Any) -> Any:
    if isinstance(value, str) and _is_host(value) and not _is_ip_host(value):
        return value
    return check.bad(key, "a DNS name", value)


def _server_names(check: _Check, key: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not value:
        return check.bad(key, 'an array of server names like ["api.example.com", "*.example.com"]', value)
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _is_host(name[2:] if name.startswith("*.") else name):
            return check.bad(f"{key}[{i}]", 'a server name like "api.example.com" or "*.example.com"', name)
        out.append(name)
    return tuple(out)


def _openssl_list(what: str) -> Parser:
    def parse(check: _Check, key: str, value: Any) -> Any:
        if isinstance(value, str) and value and value.isascii() and "\x00" not in value:
            return value
        return check.bad(key, f"an OpenSSL {what} string", value)
    return parse


_CERT_FIELDS: dict[str, Parser] = {"cert": _pem("cert"), "key": _pem("key"), "names": _server_names}


def _certificates(check: _Check, key: str, value: Any) -> Any:
    def one(check: _Check, key: str, value: Any) -> Any:
        fields = _table(check, key, value, _CERT_FIELDS, {"cert": "a PEM certificate file", "key": "a PEM key file"})
        return BAD if fields is None else Certificate(**fields)
    if value == []:
        return []
    items = _array(check, key, value, one, "an array of { cert, key, names } tables", "at least one")
    return BAD if items is BAD else _all_good(items)


_TLS_COMMON: dict[str, Parser] = {
    "alpn": _alpn,
    "min_version": _choice("TLS versions", TLS_VERSIONS),
    "ciphers": _openssl_list("cipher list"),
    "ciphersuites": _openssl_list("TLS 1.3 ciphersuites"),
    "groups": _openssl_list("groups list"),
}
_LISTENER_TLS_FIELDS: dict[str, Parser] = {
    "cert": _pem("cert"),
    "key": _pem("key"),
    "certificates": _certificates,
    "client_ca": _pem("ca"),
    "require_client_cert": _flag,
    "session_tickets": _flag,
    "strict_sni": _flag,
    "handshake_timeout": _duration(allow_zero=False),
    "ticket_rotation": _duration(allow_zero=False),
    "allow_identities": _identities,
    **_TLS_COMMON,
}
_CLUSTER_TLS_FIELDS: dict[str, Parser] = {
    "ca": _pem("ca"),
    "server_name": _server_name,
    "cert": _pem("cert"),
    "key": _pem("key"),
    "verify": _flag,
    "session_reuse": _flag,
    **_TLS_COMMON,
}


def _listener_tls(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _LISTENER_TLS_FIELDS,
                    {"cert": "a PEM certificate file", "key": "a PEM private key file"})
    if fields is None:
        return BAD
    if fields.get("require_client_cert") and "client_ca" not in fields:
        return check.bad(_key(key, "require_client_cert"), "client_ca beside it (the CAs client certificates are "
                         "checked against)", True)
    if "allow_identities" in fields and ("client_ca" not in fields or fields.get("require_client_cert") is False):
        return check.bad(_key(key, "allow_identities"), "client_ca beside it, with require_client_cert left true "
                         "(an identity is a verified client certificate's URI SAN)", value["allow_identities"])
    return ListenerTls(**fields)


def _cluster_tls(check: _Check, key: str, value: Any) -> Any:
    fields = _table(check, key, value, _CLUSTER_TLS_FIELDS)
    if fields is None:
        return BAD
    if "key" in fields and "cert" not in fields:
        return check.bad(_key(key, "key"), "cert beside it (the client certificate the key belongs to)",
                         value.get("key"))
    return ClusterTls(**fields)
