"""fastmesh/digests.py gives the same bytes as hashlib and hmac (the oracles), without loading OpenSSL."""
from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from fastmesh.digests import blake2b, hmac_sha256, key64, sha256


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_sha256_is_hmacs(key: bytes, message: bytes) -> None:
    # Keys shorter than, as long as and longer than SHA-256's 64-byte block (a long key is hashed first).
    assert hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).digest()


def test_hmac_sha256_at_the_block_size() -> None:
    for size in (63, 64, 65):
        key = bytes(range(size))
        assert hmac_sha256(key, b"m") == hmac.new(key, b"m", hashlib.sha256).digest()


@given(st.binary(max_size=300))
def test_sha256_blake2b_and_key64_are_hashlibs(data: bytes) -> None:
    assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert blake2b(data, digest_size=8).digest() == hashlib.blake2b(data, digest_size=8).digest()
    assert key64(data) == int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def test_no_openssl_is_loaded_for_them() -> None:
    code = ("import sys; from fastmesh.digests import hmac_sha256, key64, sha256; "
            "hmac_sha256(b'k', b'm'); key64(b'x'); sha256(b'x').digest(); "
            "print(*sorted({'_hashlib', '_ssl', 'hashlib', 'hmac'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    bare = subprocess.run([sys.executable, "-c", "import sys; print(*sys.modules)"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert set(out) - set(bare) == set()
