"""Ring hash: endpoints own points on a 64-bit ring (more points for more weight); a key goes to the next point.

Each endpoint gets round(weight * vnodes) points (160 per unit of weight by default, ketama's count),
placed at mix64(id + j * golden ratio) for j = 0, 1, ...; a key, run through mix64, goes to the owner
of the first point at or after it. The lookup reads a bucket index first (the key's top bits -> the
range of points with those top bits, about 2 points per bucket), then binary-searches that range:
O(log n) in the worst case, two cache misses in practice. A plain binary search over a large ring
(880,000 points for 1,000 endpoints of weights 1..10) costs ~20 misses, over 500 ns; this, under 100 ns.

Points per unit of weight, not a fixed ring size: an endpoint's points depend only on its own id and
weight, so removing one of ten endpoints moves only its own keys. (Normalising to a fixed total, as
Envoy's minimum ring size does, gives every survivor more points and moves ~9% of their keys too.)
`max_ring` (2**20 points by default) caps memory; once it binds, points per unit of weight shrink to
fit and that stability is lost, so keep weights small integers. Every endpoint gets at least one point.
Ids: pass stable 64-bit ids (say hash_key(b"host:port")) so a balancer rebuilt over a changed endpoint
list keeps the mapping; by default the id is the endpoint index.

Failover: when the owner is down or is `avoid`, the key walks on round the ring to the next eligible
endpoint, so every key of a down endpoint fails over to the same place, and keys spread by weight.
Slow start: a ramping endpoint admits a key only when mix64(key ^ id) falls below its ramp share
(10% -> 100% over the window, computed from the clock at pick time); other keys walk on as if it were
down. The admitted set only grows as the share rises, so keys move back once and stay.
"""
from libc.stdlib cimport calloc, free, malloc, qsort

from fastmesh._core.balance.base cimport Balancer, grow_array, ramp_share, rng_next
from fastmesh._core.balance.hashing cimport mix64, unit_interval
from fastmesh._core.balance.hashing import check_endpoint_ids

# Spacing between an endpoint's successive point seeds (2**64 / golden ratio): consecutive seeds of
# one id never meet another small-offset id's.
cdef unsigned long long POINT_STEP = 0x9E3779B97F4A7C15ULL
MAX_RING = 1 << 26


cdef int _point_order(const void *x, const void *y) noexcept nogil:
    # qsort order: by position, then by owner, so equal positions sort the same on every build.
    cdef const RingPoint *a = <const RingPoint *>x
    cdef const RingPoint *b = <const RingPoint *>y
    if a.hash != b.hash:
        return -1 if a.hash < b.hash else 1
    return (a.owner > b.owner) - (a.owner < b.owner)


cdef class RingHashBalancer(Balancer):
    """Consistent hashing on a ring of weighted virtual nodes."""

    def __cinit__(self, *args, **kwargs):
        self.ids = <unsigned long long *>calloc(self.n + 1, sizeof(unsigned long long))
        if self.ids == NULL:
            raise MemoryError()

    def __init__(self, weights, seed=None, *, slow_start=0.0, ids=None, int vnodes=160, long long max_ring=1 << 20):
        cdef int i
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        if not self.n <= max_ring <= MAX_RING:
            raise ValueError(f"max_ring must be in {self.n}..{MAX_RING} (one point per endpoint at least), "
                             f"got {max_ring}")
        for i, x in enumerate(check_endpoint_ids(ids, self.n)):
            self.ids[i] = x
        self.vnodes = vnodes
        self.max_ring = max_ring
        self.build_ring()

    cdef int build_ring(self) except -1:
        # The points of every endpoint still present (not gone), sorted, and their bucket index.
        cdef int i, j, count
        cdef long long total_weight = 0, length = 0, k = 0
        cdef long long max_ring = self.max_ring if self.max_ring >= self.n else self.n
        cdef double per_weight
        cdef RingPoint *ring
        for i in range(self.n):
            if not self.gone[i]:
                total_weight += self.config_weights[i]
        per_weight = self.vnodes
        if total_weight * per_weight > max_ring:
            per_weight = <double>max_ring / <double>total_weight
        for i in range(self.n):
            if not self.gone[i]:
                count = <int>(self.config_weights[i] * per_weight + 0.5)
                length += count if count >= 1 else 1
        ring = <RingPoint *>malloc((length + 1) * sizeof(RingPoint))
        if ring == NULL:
            raise MemoryError()
        for i in range(self.n):
            if self.gone[i]:
                continue
            count = <int>(self.config_weights[i] * per_weight + 0.5)
            if count < 1:
                count = 1
            for j in range(count):
                ring[k].hash = mix64(self.ids[i] + <unsigned long long>j * POINT_STEP)
                ring[k].owner = i
                k += 1
        qsort(ring, length, sizeof(RingPoint), _point_order)
        free(self.ring)
        self.ring = ring
        self.ring_len = <int>length
        self.build_buckets()
        return 0

    cdef int resized(self, int old_n) except -1:
        cdef int i
        self.ids = <unsigned long long *>grow_array(self.ids, old_n, self.n, sizeof(unsigned long long))
        for i in range(old_n, self.n):
            self.ids[i] = <unsigned long long>i
        return 0

    cdef void set_endpoint_id(self, int i, unsigned long long ident) noexcept:
        if 0 <= i < self.n:
            self.ids[i] = ident

    cdef int members_changed(self) except -1:
        # Endpoints added, removed or reweighted: place the points again (each endpoint's depend only on its
        # own id and weight, so the others' keys stay put unless max_ring binds).
        return self.build_ring()

    cdef int build_buckets(self) except -1:
        # About one bucket per two points (at least 2 buckets, so the shift stays below 64).
        cdef int bits = 1, b, k = 0
        cdef int count
        while bits < 30 and (1 << (bits + 1)) <= self.ring_len:
            bits += 1
        count = 1 << bits
        self.bucket_shift = 64 - bits
        free(self.bucket_start)
        self.bucket_start = <int *>malloc((count + 1) * sizeof(int))
        if self.bucket_start == NULL:
            raise MemoryError()
        for b in range(count):
            # First point whose bucket is b or later.
            while k < self.ring_len and <int>(self.ring[k].hash >> self.bucket_shift) < b:
                k += 1
            self.bucket_start[b] = k
        self.bucket_start[count] = self.ring_len
        return 0

    def __dealloc__(self):
        free(self.ids)
        free(self.ring)
        free(self.bucket_start)

    cdef int pick(self, int avoid) noexcept:
        # No key: a random one, which spreads picks by weight.
        return self.pick_hash(rng_next(&self.rng), avoid)

    cdef int pick_hash(self, unsigned long long key, int avoid) noexcept:
        cdef unsigned long long h
        cdef const RingPoint *base
        cdef int b, length, half, p, i
        if self.n_up == 0:
            return -1
        h = mix64(key)
        # The first point >= h lies in h's bucket's range [start, next start], both ends included.
        b = <int>(h >> self.bucket_shift)
        base = self.ring + self.bucket_start[b]
        length = self.bucket_start[b + 1] - self.bucket_start[b]
        if length > 0:
            # Lower bound in the range: [base, base + length) keeps the answer while it halves, written
            # for conditional moves since the path depends on a random key.
            while length > 1:
                half = length >> 1
                base = base + half if base[half].hash < h else base
                length -= half
            base += base[0].hash < h
        p = <int>(base - self.ring)
        if p == self.ring_len:
            p = 0
        i = self.ring[p].owner
        if self.up[i] and i != avoid and (self.ramp_from[i] < 0.0
                                          or unit_interval(mix64(h ^ self.ids[i])) < ramp_share(self, i)):
            return i
        return self.walk(p, h, avoid)

    cdef int walk(self, int p, unsigned long long h, int avoid) noexcept:
        cdef int _step, i
        cdef int fallback = -1
        if self.n_up == 1:
            return self.up_list[0]
        for _step in range(self.ring_len):
            i = self.ring[p].owner
            if self.up[i] and i != avoid:
                if self.ramp_from[i] < 0.0 or unit_interval(mix64(h ^ self.ids[i])) < ramp_share(self, i):
                    return i
                if fallback < 0:
                    # Every endpoint left is ramping and turns this key away: the first one takes it.
                    fallback = i
            p += 1
            if p == self.ring_len:
                p = 0
        if fallback >= 0:
            return fallback
        # Only avoid is up (n_up >= 2 and every endpoint has a point make this unreachable otherwise).
        return avoid if 0 <= avoid < self.n and self.up[avoid] else -1

    # ---- Python API: tests and the admin view ----

    @property
    def ring_size(self):
        """Number of points on the ring."""
        return self.ring_len

    def point_counts(self):
        """Ring points per endpoint."""
        counts = [0] * self.n
        for k in range(self.ring_len):
            counts[self.ring[k].owner] += 1
        return counts

    def endpoint_ids(self):
        """The 64-bit id of each endpoint."""
        return [self.ids[i] for i in range(self.n)]
