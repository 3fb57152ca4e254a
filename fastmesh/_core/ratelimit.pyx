"""Rate limits: a token bucket per key of a limited route, kept in memory every worker of the instance maps.

A bucket is one 64-bit word: its theoretical arrival time (TAT, the generic cell rate algorithm), in 1/16 ns of
CLOCK_MONOTONIC (the same clock in every process). With T the interval between two tokens (period / rate, in
fixed point: the 1/16 ns keep the rounding of e.g. 1 s / 3 below a nanosecond per token) and a burst of B, a
request at `now` may go when max(TAT, now) + T - now <= B x T, and then TAT becomes max(TAT, now) + T. That is a
token bucket of B tokens refilled at the rate: a bucket untouched long enough (TAT <= now) is full, and the wait
for the next token of an empty one is the excess over B x T. All integer arithmetic, and one compare-and-swap per
request: two workers taking the last token race on the word, one wins, the other reads the new TAT and is refused.

Keys live in a fixed hash table per route (`buckets` entries, a power of two, 16 bytes each: the key's hash and
its TAT), never in a growing map: the memory is shared and sized before the workers start, and a flood of
distinct keys must not grow it. A key may sit in any of the PROBES entries from its hash's position. A key not
found takes a free entry or one whose bucket is full again: a full bucket is exactly what a new key gets, so
forgetting it loses nothing. Only when all PROBES entries hold buckets still owing tokens is one of them evicted:
the one closest to full (lowest TAT), counted in RT_EVICTED. Under a flood of distinct keys that is the bucket
that forgets least; a client with a half-used bucket may get it back full early, which is the price of bounded
memory (the same trade as HAProxy's stick tables, which drop their oldest entries when full).

Claiming an entry writes its key, then its TAT: a worker reading the entry between the two sees the previous
bucket's TAT for the new key, at most one request's worth of error in a race that needs a table full of live keys.
The hash is seeded per instance (RH_SEED) so keys cannot be chosen to collide without knowing the seed.
"""
from libc.string cimport memcpy, memset
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from fastmesh._core.includes.shared_words cimport map_words, free_words
from fastmesh._core.request cimport RequestView, Span, find_field, field_value

import os

from fastmesh.digests import key64

RATES_MAGIC = 0x66736d7261746573    # "fsmrates"
RATES_VERSION = 1
KINDS = {"route": RK_ROUTE, "client_ip": RK_CLIENT, "header": RK_HEADER, "filter": RK_FILTER}
TICKS_PER_SECOND = 16_000_000_000     # the clock's units in a second (1/16 ns)
MAX_TOLERANCE = 1 << 62               # burst x interval must stay below this (the arithmetic stays in 64 bits)


def table_size(int entries):
    """Slots of one table with this many entries."""
    return table_slots(entries)


def interval_of(long long rate, double per):
    """1/16 ns between two tokens for `rate` tokens every `per` seconds (per is 1, 60 or 3600)."""
    return (<long long>per * TICKS_PER_SECOND) // rate


def ident_of(str text):
    """A table's owner key: 64 bits of BLAKE2b over text (the route's place and its limit), never 0."""
    cdef uint64_t key = key64(text.encode())
    return key if key else 1


cdef class RateLimit:
    """Built only by RateBlock.limit(); the data path calls take/check, Python code reads counts()."""

    cdef uint64_t take(self, const char *key, Py_ssize_t n) noexcept nogil:
        cdef uint64_t h = fm_rl_hash(<const unsigned char *>key, n, self.seed)
        cdef uint64_t now = fm_rl_now()
        cdef uint64_t *e
        cdef uint64_t *spare = NULL
        cdef uint64_t *victim = NULL
        cdef uint64_t k, tat, base, want, seen_key = 0
        cdef int i, _attempt
        for _attempt in range(2):
            spare = NULL
            victim = NULL
            for i in range(PROBES):
                e = self.entries + ((h + <uint64_t>i) & self.mask) * ENTRY_SLOTS
                k = fm_rl_load(e + E_KEY)
                if k == h:
                    tat = fm_rl_load(e + E_TAT)
                    while True:
                        base = tat if tat > now else now
                        want = base + self.interval
                        if want - now > self.tolerance:
                            fm_rl_add(self.table + RT_LIMITED, 1)
                            return want - now - self.tolerance
                        if fm_rl_cas(e + E_TAT, &tat, want):
                            fm_rl_add(self.table + RT_PASSED, 1)
                            return 0
                tat = fm_rl_load(e + E_TAT)
                if spare == NULL and (k == 0 or tat <= now):
                    spare = e
                    seen_key = k                      # the key we saw there: the claim must find it unchanged
                elif spare == NULL and (victim == NULL or tat < fm_rl_load(victim + E_TAT)):
                    victim = e
            if spare == NULL:
                spare = victim
                seen_key = fm_rl_load(victim + E_KEY)
                if fm_rl_load(victim + E_TAT) > now:
                    fm_rl_add(self.table + RT_EVICTED, 1)
            k = seen_key
            if fm_rl_cas(spare + E_KEY, &k, h):
                # A new bucket, full: this request takes its first token.
                fm_rl_store(spare + E_TAT, now + self.interval)
                fm_rl_add(self.table + RT_PASSED, 1)
                return 0
            # Another worker claimed that entry meanwhile (for this key, perhaps): look again, once.
        fm_rl_add(self.table + RT_PASSED, 1)
        return 0                                      # two lost races in a row: let it go rather than spin

    cdef uint64_t check(self, const RequestView *v, Span peer) noexcept nogil:
        cdef int i
        cdef Span value
        if self.kind == RK_CLIENT:
            return self.take(peer.ptr, peer.len)
        if self.kind == RK_HEADER:
            i = find_field(v.base, v.fields, v.num_fields, self.name_ptr, self.name_len, 0)
            if i >= 0:
                value = field_value(v.base, &v.fields[i])
                return self.take(value.ptr, value.len)
        return self.take(b"", 0)

    def take_key(self, key) -> int:
        """take() for tests and the micro-benchmark: 0, or 1/16 ns until a token."""
        cdef bytes b = key.encode() if isinstance(key, str) else bytes(key)
        return self.take(b, len(b))

    def take_many(self, list keys not None, Py_ssize_t rounds) -> int:
        """take() `rounds` times over `keys` (bytes) in a C loop; how many were let through (bench/micro)."""
        cdef Py_ssize_t r, n = len(keys), passed = 0
        cdef bytes k
        for r in range(rounds):
            k = <bytes>keys[r % n]
            if self.take(k, len(k)) == 0:
                passed += 1
        return passed

    def counts(self) -> dict:
        """passed, limited and evicted so far, over every worker of the instance."""
        return {"passed": fm_rl_load(self.table + RT_PASSED), "limited": fm_rl_load(self.table + RT_LIMITED),
                "evicted": fm_rl_load(self.table + RT_EVICTED)}

    def keys_held(self) -> int:
        """Entries that hold a key now (tests: a flood of keys stays within the table)."""
        cdef uint64_t i, n = 0
        for i in range(self.mask + 1):
            if fm_rl_load(self.entries + i * ENTRY_SLOTS + E_KEY):
                n += 1
        return n

    @property
    def buckets(self) -> int:
        return self.mask + 1

    @property
    def interval(self) -> int:
        return self.interval

    @property
    def tolerance(self) -> int:
        return self.tolerance


cdef class RateBlock:
    """`RateBlock(tables, seed)` is private heap memory; `create(fd, tables, seed)` and `attach(fd)` map a memfd.

    `tables` is a list of (ident, entries, interval, tolerance): one table per limited route, in that order."""

    def __cinit__(self, list tables=None, uint64_t seed=0):
        self.size = self._size(tables or [])
        self.base = <uint64_t *>PyMem_Calloc(self.size, sizeof(uint64_t))
        if self.base == NULL:
            raise MemoryError()
        self.length = 0
        self.shared = False
        self._layout(tables or [], seed)

    @staticmethod
    def _size(list tables):
        cdef Py_ssize_t size = RH_SLOTS
        for _ident, entries, interval, tolerance in tables:
            if entries < PROBES or entries & (entries - 1):
                raise ValueError(f"a rate-limit table has a power of two entries, at least {PROBES}")
            if not 0 < interval or not interval <= tolerance < MAX_TOLERANCE:
                raise ValueError("a rate limit needs 0 < interval <= burst x interval < 2^62")
            size += table_slots(<int>entries)
        return size

    cdef void _layout(self, list tables, uint64_t seed) except *:
        cdef uint64_t *t = self.base + RH_SLOTS
        self.base[RH_MAGIC] = RATES_MAGIC
        self.base[RH_VERSION] = RATES_VERSION
        self.base[RH_SEED] = seed
        self.base[RH_TABLES] = len(tables)
        for ident, entries, interval, tolerance in tables:
            t[RT_IDENT] = ident
            t[RT_ENTRIES] = entries
            t[RT_INTERVAL] = interval
            t[RT_TOLERANCE] = tolerance
            t += table_slots(<int>entries)

    cdef int _map(self, int fd, Py_ssize_t size) except -1:
        cdef size_t length = <size_t>size * sizeof(uint64_t)
        cdef uint64_t *p = map_words(fd, length, True, "the rate-limit block")
        PyMem_Free(self.base)
        self.base = p
        self.size = size
        self.length = length
        self.shared = True
        return 0

    @staticmethod
    def create(int fd, list tables not None, uint64_t seed):
        """The supervisor's side: size fd for the tables, map it, write the header and the tables' headers."""
        cdef RateBlock block = RateBlock()
        cdef Py_ssize_t size = RateBlock._size(tables)
        os.ftruncate(fd, size * sizeof(uint64_t))
        block._map(fd, size)
        block._layout(tables, seed)
        return block

    @staticmethod
    def attach(int fd):
        """A worker's side: map the supervisor's block; ValueError when it is not a rate-limit block of this
        version or its tables run past its end."""
        cdef RateBlock block = RateBlock()
        cdef Py_ssize_t size = os.fstat(fd).st_size // sizeof(uint64_t)
        cdef Py_ssize_t at = RH_SLOTS
        cdef uint64_t _i
        if size < RH_SLOTS:
            raise ValueError("the rate-limit block is too short")
        block._map(fd, size)
        if block.base[RH_MAGIC] != RATES_MAGIC or block.base[RH_VERSION] != RATES_VERSION:
            raise ValueError("not a rate-limit block of this fastmesh version")
        for _i in range(block.base[RH_TABLES]):
            if at + RT_SLOTS > size:
                raise ValueError("the rate-limit block's tables run past its end")
            at += table_slots(<int>block.base[at + RT_ENTRIES])
        if at > size:
            raise ValueError("the rate-limit block's tables run past its end")
        return block

    def __dealloc__(self):
        free_words(self.base, self.length)
        self.base = NULL

    cdef uint64_t *find(self, uint64_t ident) noexcept:
        cdef uint64_t *t = self.base + RH_SLOTS
        cdef uint64_t _i
        for _i in range(self.base[RH_TABLES]):
            if t[RT_IDENT] == ident:
                return t
            t += table_slots(<int>t[RT_ENTRIES])
        return NULL

    @property
    def seed(self) -> int:
        return self.base[RH_SEED]

    @property
    def idents(self) -> list:
        """The tables' owner keys, in block order."""
        cdef uint64_t *t = self.base + RH_SLOTS
        cdef uint64_t _i
        out = []
        for _i in range(self.base[RH_TABLES]):
            out.append(t[RT_IDENT])
            t += table_slots(<int>t[RT_ENTRIES])
        return out

    def limit(self, uint64_t ident, str kind not None, str name not None, str spec not None):
        """The RateLimit over table `ident` keyed by `kind` (KINDS; `name`: the field of a "header" key), or None
        when the block has no such table."""
        cdef uint64_t *t = self.find(ident)
        cdef RateLimit r
        if t == NULL:
            return None
        r = RateLimit.__new__(RateLimit)
        r.table = t
        r.entries = t + RT_SLOTS
        r.mask = t[RT_ENTRIES] - 1
        r.interval = t[RT_INTERVAL]
        r.tolerance = t[RT_TOLERANCE]
        r.seed = self.base[RH_SEED]
        r.kind = KINDS[kind]
        r.name = name.lower().encode("latin-1")
        r.name_ptr = r.name
        r.name_len = len(r.name)
        r.spec = spec
        r.block = self
        return r

    def carry_over(self, RateBlock old not None):
        """Copy every table `old` has under the same ident (the same route and limit) into this block, buckets and
        counters: a reload that keeps a limit keeps its buckets. Both blocks must share their seed. Returns the
        idents copied."""
        cdef uint64_t *t = self.base + RH_SLOTS
        cdef uint64_t *src
        cdef uint64_t _i
        copied = []
        if old.base[RH_SEED] != self.base[RH_SEED]:
            raise ValueError("blocks with different seeds hash keys differently")
        for _i in range(self.base[RH_TABLES]):
            src = old.find(t[RT_IDENT])
            if src != NULL and src[RT_ENTRIES] == t[RT_ENTRIES]:
                memcpy(t, src, table_slots(<int>t[RT_ENTRIES]) * sizeof(uint64_t))
                copied.append(t[RT_IDENT])
            t += table_slots(<int>t[RT_ENTRIES])
        return copied

    def clear(self):
        """Forget every bucket and count (tests)."""
        cdef uint64_t *t = self.base + RH_SLOTS
        cdef uint64_t _i
        for _i in range(self.base[RH_TABLES]):
            memset(t + RT_PASSED, 0, 3 * sizeof(uint64_t))
            memset(t + RT_SLOTS, 0, <size_t>t[RT_ENTRIES] * ENTRY_SLOTS * sizeof(uint64_t))
            t += table_slots(<int>t[RT_ENTRIES])


def retry_after(uint64_t wait) -> int:
    """retry_after_seconds(): the Retry-After seconds for a wait in 1/16 ns."""
    return retry_after_seconds(wait)
