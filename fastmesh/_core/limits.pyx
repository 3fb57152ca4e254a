"""Limit counters that hold for the whole instance: circuit-breaker gauges and the retry-budget window, per cluster.

`fastmesh run`'s supervisor makes one block (a memfd) that every worker maps. A cluster's counters are a cell
found by the hash of the cluster's name, so a reload that rebuilds the cluster finds the same cell, and requests
started before the reload give back what they took to the cell the new ones take from. Each worker has a region
with a cell per cluster and writes only there; the limit is checked against the sum over the regions. When a
worker dies, the supervisor zeroes its region before its successor starts: whatever the dead worker held is
given back at once, and nothing a live worker holds is touched.

take() is add-then-check: a worker adds 1 to its own count (a sequentially consistent add), then sums every
worker's count and gives the slot back when the sum passes the limit. Of two workers racing for the last slot
at least one sees the other's add, so the instance never holds more than the limit; at worst both give up
(a request refused near the limit that a lock could have admitted). No lock, no syscall, one locked add and
one load per worker. The budget ring is a window of time slots per worker (CLOCK_MONOTONIC is the same clock
in every process); a withdrawal sums every worker's ring, so retries are a share of the instance's requests.
"""
from libc.string cimport memset
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from fastmesh._core.includes.shared_words cimport map_words, free_words

import os

from fastmesh.digests import key64

LIMITS_MAGIC = 0x66736d6c696d6974    # "fsmlimit"
LIMITS_VERSION = 1
FIELDS = {"requests": F_REQUESTS, "retries": F_RETRIES, "connections": F_CONNECTIONS, "pending": F_PENDING}


def blocks_slots(int capacity, int workers):
    """Slots of a block with this many cells per region and regions."""
    return LH_SLOTS + capacity + <Py_ssize_t>workers * capacity * CELL_SLOTS


cdef uint64_t name_key(str name):
    """A cluster name's key: 64 bits of BLAKE2b, never 0 (0 marks a free cell)."""
    cdef uint64_t key = key64(name.encode())
    return key if key else 1


cdef class LimitCell:
    """Built only by LimitBlock.cell(); the data path calls take/give/total, Python code reads counts()."""

    cdef bint take(self, int field, long limit) noexcept:
        """One more of `field` if the instance stays within limit; False (nothing taken) otherwise."""
        cdef long long total = 0
        cdef int w
        if limit <= 0:
            return False
        fm_add_seq(self.mine + field, 1)
        if self.workers == 1:
            total = <long long>fm_load(self.mine + field)
        else:
            for w in range(self.workers):
                total += <long long>fm_load_seq(self.first + w * self.stride + field)
        if total > limit:
            fm_add_seq(self.mine + field, -1)
            return False
        return True

    cdef void give(self, int field) noexcept:
        """Give back one that take() granted."""
        fm_add_seq(self.mine + field, -1)

    cdef long total(self, int field) noexcept:
        """The instance's count of `field` now (a moment's sum: other workers may be changing theirs)."""
        cdef long long total = 0
        cdef int w
        for w in range(self.workers):
            total += <long long>fm_load(self.first + w * self.stride + field)
        return <long>total

    cdef void ring_add(self, long long slot, int field) noexcept:
        """Count one deposit (F_RING_REQUESTS) or withdrawal (F_RING_RETRIES) in time slot `slot` of our ring."""
        cdef int i = <int>(slot % BUDGET_RING)
        cdef uint64_t stamp = <uint64_t>slot + 1
        if fm_load(self.mine + F_RING_STAMP + i) != stamp:
            # The entry held a slot that has left the window: clear it before readers see the new stamp.
            fm_store(self.mine + F_RING_REQUESTS + i, 0)
            fm_store(self.mine + F_RING_RETRIES + i, 0)
            fm_store(self.mine + F_RING_STAMP + i, stamp)
        fm_store(self.mine + field + i, fm_load(self.mine + field + i) + 1)

    cdef void ring_sums(self, long long slot, uint64_t *requests, uint64_t *retries) noexcept:
        """Requests and retries of the window ending at time slot `slot`, over every worker's ring."""
        cdef uint64_t *cell
        cdef uint64_t stamp
        cdef int w, i
        requests[0] = 0
        retries[0] = 0
        for w in range(self.workers):
            cell = self.first + w * self.stride
            for i in range(BUDGET_RING):
                stamp = fm_load(cell + F_RING_STAMP + i)
                if stamp and <long long>stamp + BUDGET_RING > slot + 1 and <long long>stamp <= slot + 1:
                    requests[0] += fm_load(cell + F_RING_REQUESTS + i)
                    retries[0] += fm_load(cell + F_RING_RETRIES + i)

    def counts(self):
        """The instance's gauges now, by name (for the control plane and tests)."""
        return {name: self.total(field) for name, field in FIELDS.items()}

    def take_py(self, str field, long limit):
        """take() for tests."""
        return self.take(FIELDS[field], limit)

    def give_py(self, str field):
        """give() for tests."""
        self.give(FIELDS[field])


cdef class LimitBlock:
    """`LimitBlock(capacity)` is private heap memory; `create(fd, ...)` and `attach(fd, worker)` map a memfd."""

    def __cinit__(self, int capacity=64, int workers=1, int worker=0):
        if capacity < 1 or workers < 1 or not 0 <= worker < workers:
            raise ValueError("a limits block needs capacity >= 1 and a worker slot within its workers")
        self.size = blocks_slots(capacity, workers)
        self.base = <uint64_t *>PyMem_Calloc(self.size, sizeof(uint64_t))
        if self.base == NULL:
            raise MemoryError()
        self.length = 0
        self.shared = False
        self._header(capacity, workers, worker)

    cdef void _header(self, int capacity, int workers, int worker) noexcept:
        self.base[LH_MAGIC] = LIMITS_MAGIC
        self.base[LH_VERSION] = LIMITS_VERSION
        self.base[LH_CAPACITY] = capacity
        self.base[LH_WORKERS] = workers
        self.capacity, self.workers, self.worker = capacity, workers, worker

    cdef int _map(self, int fd, Py_ssize_t size) except -1:
        cdef size_t length = <size_t>size * sizeof(uint64_t)
        cdef uint64_t *p = map_words(fd, length, True, "the limits block")
        PyMem_Free(self.base)
        self.base = p
        self.size = size
        self.length = length
        self.shared = True
        return 0

    @staticmethod
    def create(int fd, int capacity, int workers):
        """The supervisor's side: size fd for `workers` regions of `capacity` cells, map it, write the header."""
        cdef LimitBlock block = LimitBlock(1, 1, 0)
        cdef Py_ssize_t size = blocks_slots(capacity, workers)
        os.ftruncate(fd, size * sizeof(uint64_t))
        block._map(fd, size)
        block._header(capacity, workers, 0)
        return block

    @staticmethod
    def attach(int fd, int worker):
        """A worker's side: map the supervisor's block and write into region `worker`; ValueError when the
        memory is not a limits block of this version or has no such region."""
        cdef LimitBlock block = LimitBlock(1, 1, 0)
        cdef Py_ssize_t size = os.fstat(fd).st_size // sizeof(uint64_t)
        if size < LH_SLOTS:
            raise ValueError("the limits block is too short")
        block._map(fd, size)
        if block.base[LH_MAGIC] != LIMITS_MAGIC or block.base[LH_VERSION] != LIMITS_VERSION:
            raise ValueError("not a limits block of this fastmesh version")
        capacity, workers = <long long>block.base[LH_CAPACITY], <long long>block.base[LH_WORKERS]
        if not 0 <= worker < workers or size < blocks_slots(capacity, workers):
            raise ValueError(f"the limits block has no region for worker {worker}")
        block.capacity, block.workers, block.worker = capacity, workers, worker
        return block

    def __dealloc__(self):
        free_words(self.base, self.length)
        self.base = NULL

    def cell(self, str name):
        """The counters of cluster `name`: the cell its key already has, or a free one claimed for it; None when
        every cell belongs to another name (the caller then counts privately)."""
        cdef uint64_t key = name_key(name)
        cdef uint64_t *keys = self.base + LH_SLOTS
        cdef uint64_t seen
        cdef int start = <int>(key % <uint64_t>self.capacity)
        cdef int i, k
        cdef LimitCell cell
        for k in range(self.capacity):
            i = (start + k) % self.capacity
            seen = fm_load_seq(keys + i)
            if seen == 0 and fm_claim(keys + i, key):
                seen = key
            elif seen == 0:
                seen = fm_load_seq(keys + i)       # another worker claimed it just now: for us, perhaps
            if seen == key:
                cell = LimitCell.__new__(LimitCell)
                cell.first = self.base + LH_SLOTS + self.capacity + i * CELL_SLOTS
                cell.stride = <Py_ssize_t>self.capacity * CELL_SLOTS
                cell.mine = cell.first + self.worker * cell.stride
                cell.workers = self.workers
                cell.shared = self.shared
                cell.block = self
                return cell
        return None

    def clear_worker(self, int worker):
        """Zero region `worker` (its process is gone): every slot it held is free again."""
        if not 0 <= worker < self.workers:
            raise IndexError(worker)
        memset(self.base + LH_SLOTS + self.capacity + <Py_ssize_t>worker * self.capacity * CELL_SLOTS, 0,
               <size_t>self.capacity * CELL_SLOTS * sizeof(uint64_t))


def private_cell(str name=""):
    """A cell over a block of its own: limits of this object alone (tests, a policy built without a block)."""
    return LimitBlock(1, 1, 0).cell(name)
