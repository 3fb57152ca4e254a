"""Digests the control plane and the data path's tables need, without OpenSSL.

`hashlib` and `hmac` import `_hashlib`, which maps libcrypto and runs OpenSSL's start-up: about 1 MiB of private
memory in the supervisor and in every worker, for an instance that may never speak TLS. BLAKE2b and SHA-256 are
also CPython's own modules (hashlib's `blake2b` is the very same one), so they are taken from there, and HMAC is
the few lines of RFC 2104. OpenSSL is then loaded only where TLS is configured (fastmesh/_core/tls/openssl.pyx).
"""
from __future__ import annotations

try:
    from _blake2 import blake2b
except ImportError:             # an interpreter built without it: hashlib's is as good
    from hashlib import blake2b
try:
    from _sha2 import sha256    # type: ignore[import-not-found,unused-ignore]  # Python 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256

__all__ = ["blake2b", "sha256", "key64", "hmac_sha256"]

_BLOCK = 64                     # SHA-256's block size in bytes
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))


def key64(data: bytes) -> int:
    """64 bits of BLAKE2b over data, little-endian: a stable key in every process (hash() is seeded per process)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 of message under key (RFC 2104); the same bytes as hmac.new(key, message, "sha256").digest()."""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = sha256(key.translate(_INNER) + message).digest()
    return sha256(key.translate(_OUTER) + inner).digest()
