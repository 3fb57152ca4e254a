# 64-bit hashing for consistent-hash balancers: inline so ring_hash, maglev and callers in other modules inline it.
# FNV-1a walks the bytes (simple, no alignment or length cases); the SplitMix64 finalizer then spreads every
# input bit over the whole word, which FNV alone does poorly for short keys (its top bits barely move).

cdef inline unsigned long long mix64(unsigned long long x) noexcept nogil:
    # SplitMix64's output function: a bijection on 64-bit words with full avalanche. The balancers run
    # every caller key and endpoint id through it, so raw integers (an IPv4 address, an index) are safe keys.
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline unsigned long long hash_bytes(const unsigned char *data, Py_ssize_t length) noexcept nogil:
    # FNV-1a (64-bit offset basis and prime), then mix64.
    cdef unsigned long long h = 0xCBF29CE484222325ULL
    cdef Py_ssize_t k
    for k in range(length):
        h ^= data[k]
        h *= 0x100000001B3ULL
    return mix64(h)


cdef inline double unit_interval(unsigned long long x) noexcept nogil:
    # The top 53 bits of x as a double in [0, 1): for comparing a hash against a fraction.
    return <double>(x >> 11) * (1.0 / 9007199254740992.0)
