"""Maglev: a prime-sized table of slots filled from each endpoint's own slot preference order; a key reads one slot.

Each endpoint's preference order is the full cycle offset, offset + skip, offset + 2 skip, ... (mod the
prime table size), offset and skip derived from its 64-bit id. Filling goes in rounds, each endpoint
taking its next free preferred slot; weights enter as credit: each round an endpoint earns its weight
and takes a slot per max-weight of credit, so slot counts follow the weights. A key, run through
mix64, reads the slot ((h >> 32) * size) >> 32: one multiply and one load, O(1) (no 64-bit modulo).

The table is built once, at construction (O(size log size)); up/down events never rebuild it. When a
key's owner is down or is `avoid`, the key probes slot + k * step (step from the key's low bits; all
slots are visited since the size is prime) until an eligible endpoint turns up: failover is as
consistent as the first choice, and the down endpoint's keys spread over the others by weight, while
no other key moves. A balancer rebuilt without an endpoint (ids keep identities across rebuilds, as
in ring_hash) also moves some of the other keys, 0.2-0.3% with 10 endpoints and 65537 slots in the
tests: Maglev trades exact minimal movement for its even spread. Probes cost about (total weight /
weight up) on average, so with most weight down a rebuild without the down endpoints is cheaper.

The default size 65537 suits up to a few hundred endpoints; the table should have ~100 slots per
endpoint for the spread to follow the weights within about 10%.
Slow start: a ramping endpoint admits a key only when mix64(key ^ id) falls below its ramp share, as
in ring_hash; other keys probe on as if it were down.
"""
from libc.stdlib cimport calloc, free, malloc

from fastmesh._core.balance.base cimport Balancer, grow_array, ramp_share, rng_next
from fastmesh._core.balance.hashing cimport mix64, unit_interval
from fastmesh._core.balance.hashing import check_endpoint_ids

# Seeds that split one id into independent offset and skip values.
cdef unsigned long long OFFSET_SEED = 0x6A09E667F3BCC908ULL
cdef unsigned long long SKIP_SEED = 0xBB67AE8584CAA73BULL
MAX_TABLE_SIZE = 5_000_011


def is_prime(long long m) -> bool:
    """Trial division: table sizes are at most a few million, so this takes under a millisecond."""
    cdef long long d = 3
    if m < 2 or m % 2 == 0:
        return m == 2
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


cdef class MaglevBalancer(Balancer):
    """Weighted Maglev lookup table with consistent probing for failover."""

    def __cinit__(self, *args, **kwargs):
        self.ids = <unsigned long long *>calloc(self.n + 1, sizeof(unsigned long long))
        if self.ids == NULL:
            raise MemoryError()

    def __init__(self, weights, seed=None, *, slow_start=0.0, ids=None, long long table_size=65537):
        cdef int i
        if not is_prime(table_size) or not self.n <= table_size <= MAX_TABLE_SIZE:
            raise ValueError(f"table_size must be a prime in {max(self.n, 2)}..{MAX_TABLE_SIZE}, got {table_size}")
        for i, x in enumerate(check_endpoint_ids(ids, self.n)):
            self.ids[i] = x
        self.table_size = <unsigned int>table_size
        self.table = <int *>malloc(table_size * sizeof(int))
        if self.table == NULL:
            raise MemoryError()
        self.populate()

    def __dealloc__(self):
        free(self.ids)
        free(self.table)

    cdef int populate(self) except -1:
        cdef unsigned int m = self.table_size
        cdef unsigned int *slot = <unsigned int *>malloc((self.n + 1) * sizeof(unsigned int))
        cdef unsigned int *skip = <unsigned int *>malloc((self.n + 1) * sizeof(unsigned int))
        cdef long long *credit = <long long *>calloc(self.n + 1, sizeof(long long))
        cdef long long max_weight = 1
        cdef unsigned int filled = 0, s
        cdef int i, present = 0
        if slot == NULL or skip == NULL or credit == NULL:
            free(slot)
            free(skip)
            free(credit)
            raise MemoryError()
        for s in range(m):
            self.table[s] = -1
        for i in range(self.n):
            slot[i] = <unsigned int>(mix64(self.ids[i] ^ OFFSET_SEED) % m)
            skip[i] = <unsigned int>(mix64(self.ids[i] ^ SKIP_SEED) % (m - 1)) + 1   # m >= 2: in 1..m-1
            if self.gone[i]:
                continue
            present += 1
            if self.config_weights[i] > max_weight:
                max_weight = self.config_weights[i]
        while filled < m and present > 0:
            for i in range(self.n):
                if self.gone[i]:
                    continue
                credit[i] += self.config_weights[i]
                if credit[i] < max_weight:
                    continue
                credit[i] -= max_weight
                # The next free slot in i's preference order; its cycle covers every slot, so one is free.
                s = slot[i]
                while self.table[s] >= 0:
                    s += skip[i]
                    if s >= m:
                        s -= m
                self.table[s] = i
                slot[i] = s
                filled += 1
                if filled == m:
                    break
        free(slot)
        free(skip)
        free(credit)
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
        # Endpoints added, removed or reweighted: fill the table again (Maglev moves few keys between fills).
        return self.populate()

    cdef int pick(self, int avoid) noexcept:
        # No key: a random one, which spreads picks by weight.
        return self.pick_hash(rng_next(&self.rng), avoid)

    cdef int pick_hash(self, unsigned long long key, int avoid) noexcept:
        cdef unsigned long long h
        cdef unsigned int slot
        cdef int i
        if self.n_up == 0:
            return -1
        h = mix64(key)
        slot = <unsigned int>(((h >> 32) * self.table_size) >> 32)
        i = self.table[slot]
        if self.up[i] and i != avoid and (self.ramp_from[i] < 0.0
                                          or unit_interval(mix64(h ^ self.ids[i])) < ramp_share(self, i)):
            return i
        return self.walk(slot, h, avoid)

    cdef int walk(self, unsigned int slot, unsigned long long h, int avoid) noexcept:
        cdef unsigned int m = self.table_size
        cdef unsigned int step, k, _probe
        cdef int i
        cdef int fallback = -1
        if self.n_up == 1:
            return self.up_list[0]
        step = <unsigned int>((h & 0xFFFFFFFFULL) % (m - 1)) + 1
        for _probe in range(m):
            i = self.table[slot]
            if self.up[i] and i != avoid:
                if self.ramp_from[i] < 0.0 or unit_interval(mix64(h ^ self.ids[i])) < ramp_share(self, i):
                    return i
                if fallback < 0:
                    # Every endpoint left is ramping and turns this key away: the first one takes it.
                    fallback = i
            slot += step
            if slot >= m:
                slot -= m
        if fallback >= 0:
            return fallback
        # No slot belongs to an eligible endpoint (one with a tiny weight may own none): any up one.
        for k in range(<unsigned int>self.n_up):
            if self.up_list[k] != avoid:
                return self.up_list[k]
        return avoid

    # ---- Python API: tests and the admin view ----

    @property
    def table_slots(self):
        """Number of slots (a prime)."""
        return self.table_size

    def slot_counts(self):
        """Slots owned per endpoint."""
        counts = [0] * self.n
        for s in range(self.table_size):
            if self.table[s] >= 0:
                counts[self.table[s]] += 1
        return counts

    def endpoint_ids(self):
        """The 64-bit id of each endpoint."""
        return [self.ids[i] for i in range(self.n)]
