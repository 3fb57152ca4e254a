# Instance-wide limit counters: one cell per cluster in memory every worker maps, one region of cells per worker.

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    /* GCC/Clang __atomic builtins on the uint64 slots of a limits block. Each worker writes only its own region
       (the supervisor clears a region once its worker is dead), so counts need no read-modify-write between
       processes; the sequentially consistent add before the sum is what keeps two workers from both taking the
       last slot (each sees the other's add, see limits.pyx). */
    static inline uint64_t fm_add_seq(uint64_t *p, long long n) {
        return __atomic_add_fetch(p, (uint64_t)n, __ATOMIC_SEQ_CST);
    }
    static inline uint64_t fm_load_seq(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);
    }
    static inline uint64_t fm_load(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fm_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline int fm_claim(uint64_t *p, uint64_t want) {
        uint64_t free_ = 0;
        return __atomic_compare_exchange_n(p, &free_, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    """
    uint64_t fm_add_seq(uint64_t *p, long long n) nogil
    uint64_t fm_load_seq(const uint64_t *p) nogil
    uint64_t fm_load(const uint64_t *p) nogil
    void fm_store(uint64_t *p, uint64_t v) nogil
    bint fm_claim(uint64_t *p, uint64_t want) nogil

# Block header slots (the supervisor writes them when it creates the block).
cdef enum:
    LH_MAGIC = 0               # LIMITS_MAGIC: this memory is a fastmesh limits block
    LH_VERSION = 1             # LIMITS_VERSION: the meaning of the slots below
    LH_CAPACITY = 2            # cells per region (clusters the block can hold)
    LH_WORKERS = 3             # regions: one per worker slot
    LH_SLOTS = 8               # header slots; the cluster keys follow, then the regions

# Slots of one cell (one cluster, one worker). Gauges go up and down; the budget ring holds, per time slot of
# the retry-budget window, the slot's number + 1 (0: never used), the requests deposited and retries withdrawn.
cdef enum:
    F_REQUESTS = 0             # requests in flight (max_requests, the adaptive limit)
    F_RETRIES = 1              # requests being retried (max_retries)
    F_CONNECTIONS = 2          # upstream connections open, idle included (max_connections)
    F_PENDING = 3              # requests waiting for a connection slot (max_pending)
    F_RING_STAMP = 4           # BUDGET_RING slots: time slot number + 1 of each ring entry
    F_RING_REQUESTS = 14       # BUDGET_RING slots: requests deposited in that time slot
    F_RING_RETRIES = 24        # BUDGET_RING slots: retries withdrawn in that time slot
    BUDGET_RING = 10           # time slots in the retry-budget window
    CELL_SLOTS = 40            # slots per cell: 34 used, padded to five 64-byte lines


cdef class LimitCell:
    # One cluster's counters as this process sees them: its own cell and, `stride` slots apart, every worker's.
    cdef uint64_t *mine            # this worker's cell
    cdef uint64_t *first           # worker 0's cell
    cdef Py_ssize_t stride         # slots between one worker's cell and the next's
    cdef readonly int workers      # cells summed (1: a private cell)
    cdef readonly bint shared      # the block is shared with other workers
    cdef object block              # the LimitBlock mapping, kept alive while any cell points into it

    cdef bint take(self, int field, long limit) noexcept
    cdef void give(self, int field) noexcept
    cdef long total(self, int field) noexcept
    cdef void ring_add(self, long long slot, int field) noexcept
    cdef void ring_sums(self, long long slot, uint64_t *requests, uint64_t *retries) noexcept


cdef class LimitBlock:
    # The memory behind the cells: private heap (embedded use, tests) or an mmap of the supervisor's memfd.
    cdef uint64_t *base            # slot 0
    cdef Py_ssize_t size           # slots
    cdef size_t length             # bytes mapped; 0 for a heap block
    cdef readonly int capacity     # cells per region
    cdef readonly int workers      # regions
    cdef readonly int worker       # the region this process writes (its worker slot)
    cdef readonly bint shared      # mapped from a memfd other processes map too

    cdef void _header(self, int capacity, int workers, int worker) noexcept
    cdef int _map(self, int fd, Py_ssize_t size) except -1
