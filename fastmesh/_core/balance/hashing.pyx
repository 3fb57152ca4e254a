"""Python face of the 64-bit key hash (FNV-1a + SplitMix64 finalizer) and the hashing balancers' endpoint-id check."""
from fastmesh._core.balance.hashing cimport hash_bytes, mix64


def hash_key(const unsigned char[:] data) -> int:
    """64-bit hash of `data` (bytes-like): FNV-1a over the bytes, then SplitMix64's finalizer.

    Not cryptographic: a client that can choose its keys can choose its endpoint, as with any
    consistent hash. Use it for header values, cookies, source addresses and endpoint ids ("host:port").
    """
    if data.shape[0] == 0:
        return hash_bytes(NULL, 0)
    return hash_bytes(&data[0], data.shape[0])


def mix_key(unsigned long long x) -> int:
    """SplitMix64's finalizer of a 64-bit int: what the hashing balancers apply to every key they are given."""
    return mix64(x)


def check_endpoint_ids(ids, int n) -> list:
    """Validated 64-bit endpoint ids for the hashing balancers, as a list of n ints (0..n-1 when `ids` is None)."""
    if ids is None:
        return list(range(n))
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"expected {n} endpoint ids, got {len(ids)}")
    for x in ids:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 1 << 64:
            raise ValueError(f"endpoint ids must be ints in 0..2**64-1, got {x!r}")
    if len(set(ids)) != n:
        raise ValueError("endpoint ids must be distinct")
    return ids
