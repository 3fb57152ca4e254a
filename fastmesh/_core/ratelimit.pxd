# Rate limits: per-route token buckets in memory every worker of an instance maps, one 64-bit word per bucket.

from libc.stdint cimport uint64_t
from fastmesh._core.request cimport RequestView, Span

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    /* The buckets' words are shared between processes: every read and update is a GCC/Clang __atomic builtin. */
    static inline uint64_t fm_rl_load(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fm_rl_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint64_t fm_rl_add(uint64_t *p, uint64_t n) {
        return __atomic_add_fetch(p, n, __ATOMIC_RELAXED);
    }
    /* Replace *p by want if it still holds *seen; else *seen gets what it holds. */
    static inline int fm_rl_cas(uint64_t *p, uint64_t *seen, uint64_t want) {
        return __atomic_compare_exchange_n(p, seen, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    /* CLOCK_MONOTONIC in 1/16 ns: one clock for every process of the machine; 2^64 of them is 36 years. */
    static inline uint64_t fm_rl_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) << 4;
    }
    /* A key's 64-bit hash, seeded per instance (a client cannot aim its keys at one probe group of a table
       without knowing the seed); 0 is never returned (0 marks a free entry). */
    static inline uint64_t fm_rl_mix(uint64_t h) {
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 33;
        return h;
    }
    static inline uint64_t fm_rl_hash(const unsigned char *p, Py_ssize_t n, uint64_t seed) {
        uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ULL), w;
        while (n >= 8) {
            memcpy(&w, p, 8);
            h = fm_rl_mix(h ^ (w * 0x87c37b91114253d5ULL)) + 0x52dce729;
            p += 8; n -= 8;
        }
        w = 0;
        memcpy(&w, p, (size_t)n);
        h = fm_rl_mix(h ^ (w * 0x4cf5ad432745937fULL) ^ seed);
        return h ? h : 1;
    }
    """
    uint64_t fm_rl_load(const uint64_t *p) nogil
    void fm_rl_store(uint64_t *p, uint64_t v) nogil
    uint64_t fm_rl_add(uint64_t *p, uint64_t n) nogil
    bint fm_rl_cas(uint64_t *p, uint64_t *seen, uint64_t want) nogil
    uint64_t fm_rl_now() nogil
    uint64_t fm_rl_hash(const unsigned char *p, Py_ssize_t n, uint64_t seed) nogil

# Block header slots.
cdef enum:
    RH_MAGIC = 0               # RATES_MAGIC: this memory is a fastmesh rate-limit block
    RH_VERSION = 1             # RATES_VERSION: the meaning of the slots below
    RH_SEED = 2                # the key hash's seed, the same for every worker
    RH_TABLES = 3              # tables in the block
    RH_SLOTS = 8               # header slots; the tables follow, one after another

# Table header slots (one table per limited route), then its entries: ENTRY_SLOTS slots each.
cdef enum:
    RT_IDENT = 0               # 64 bits of BLAKE2b over the route's place and its whole limit: who owns the table
    RT_ENTRIES = 1             # entries (a power of two)
    RT_INTERVAL = 2            # 1/16 ns between two tokens (the emission interval)
    RT_TOLERANCE = 3           # burst x interval: how far a bucket's theoretical arrival time may run ahead
    RT_PASSED = 4              # requests let through, over every worker
    RT_LIMITED = 5             # requests refused (429), over every worker
    RT_EVICTED = 6             # keys forgotten while their bucket still owed tokens (the table was full)
    RT_SLOTS = 8               # header slots
    E_KEY = 0                  # entry slot: the key's hash, 0 when free
    E_TAT = 1                  # entry slot: the bucket's theoretical arrival time (1/16 ns, monotonic clock)
    ENTRY_SLOTS = 2
    PROBES = 8                 # entries a key may live in, from its hash's position on

cdef enum RateKey:
    RK_ROUTE = 0               # one bucket for the whole route
    RK_CLIENT = 1              # the client's address
    RK_HEADER = 2              # a request field's value (requests without it share the bucket of "")
    RK_FILTER = 3              # what the route's filters set with request.rate_limit_key (none: not limited)


cdef class RateLimit:
    # One limited route's view of its table: the data path's check, and the counters.
    cdef uint64_t *table           # the table's header slot 0
    cdef uint64_t *entries         # its first entry
    cdef uint64_t mask             # entries - 1
    cdef uint64_t interval         # RT_INTERVAL, copied
    cdef uint64_t tolerance        # RT_TOLERANCE, copied
    cdef uint64_t seed             # the block's RH_SEED, copied
    cdef readonly int kind         # RateKey
    cdef bytes name                # RK_HEADER: the field name, lower-case
    cdef const char *name_ptr      # name's bytes, for the check without the GIL
    cdef Py_ssize_t name_len
    cdef readonly str spec         # the limit as written ("10/s burst 10 by client_ip"): explain, logs
    cdef object block              # the RateBlock the table lives in, kept alive while this points into it

    # 0: the request may go (a token taken); else 1/16 ns until the bucket has a token again (nothing taken).
    cdef uint64_t take(self, const char *key, Py_ssize_t n) noexcept nogil
    # take() with the request's key: its client address (peer) or field; RK_FILTER routes are checked by
    # filters.pyx with the key the filters set.
    cdef uint64_t check(self, const RequestView *v, Span peer) noexcept nogil


# Seconds in a Retry-After for a wait of `wait` 1/16 ns: rounded up, at least 1.
cdef inline int retry_after_seconds(uint64_t wait) noexcept nogil:
    cdef uint64_t second = <uint64_t>16000000000ULL
    cdef uint64_t s = wait // second + (1 if wait % second else 0)
    return 1 if s == 0 else (<int>s if s < 86400 else 86400)


cdef class RateBlock:
    # The memory behind the tables: private heap (embedded use, tests) or an mmap of the supervisor's memfd.
    cdef uint64_t *base            # slot 0
    cdef Py_ssize_t size           # slots
    cdef size_t length             # bytes mapped; 0 for a heap block
    cdef readonly bint shared      # mapped from a memfd other processes map too

    cdef void _layout(self, list tables, uint64_t seed) except *
    cdef int _map(self, int fd, Py_ssize_t size) except -1
    # The table owned by ident, NULL when the block has none.
    cdef uint64_t *find(self, uint64_t ident) noexcept


# Slots of one table with this many entries.
cdef inline Py_ssize_t table_slots(int entries) noexcept nogil:
    return RT_SLOTS + <Py_ssize_t>entries * ENTRY_SLOTS
