"""Balancer base: state every algorithm shares (weights, up set, active counts, RNG) and its Python wrappers."""
from libc.stdlib cimport calloc, free
import os

# Weights are C ints; summed weights are 64-bit, so any count of endpoints at this bound fits.
MAX_WEIGHT = 0x7FFFFFFF

cdef enum:
    # Picks that stay in flight during bench_picks, so least_request sees real active counts.
    BENCH_INFLIGHT = 64


cdef int _index(Balancer b, i) except -1:
    # Python-facing bounds check: the C events ignore bad indexes, the wrappers report them.
    if not 0 <= i < b.n:
        raise IndexError(f"endpoint {i} out of range 0..{b.n - 1}")
    return i


cdef class Balancer:
    """Base of the algorithms: pick() here always answers -1; subclasses implement it."""

    def __cinit__(self, weights, seed=None):
        cdef Py_ssize_t count = len(weights)
        cdef int i
        if count > 0x7FFFFFFF - 1:
            raise ValueError("too many endpoints")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, int):
                raise TypeError(f"endpoint weights must be ints, got {w!r}")
            if w < 1 or w > MAX_WEIGHT:
                raise ValueError(f"endpoint weights must be in 1..{MAX_WEIGHT}, got {w}")
        self.n = <int>count
        # One spare slot keeps calloc(0) from handing back NULL for an empty cluster.
        self.weights = <int *>calloc(count + 1, sizeof(int))
        self.up = <unsigned char *>calloc(count + 1, sizeof(unsigned char))
        self.active = <int *>calloc(count + 1, sizeof(int))
        self.up_list = <int *>calloc(count + 1, sizeof(int))
        self.up_pos = <int *>calloc(count + 1, sizeof(int))
        self.cum = <long long *>calloc(count + 1, sizeof(long long))
        if (self.weights == NULL or self.up == NULL or self.active == NULL or self.up_list == NULL
                or self.up_pos == NULL or self.cum == NULL):
            raise MemoryError()
        self.uniform = True
        for i in range(self.n):
            self.weights[i] = weights[i]
            self.up[i] = 1
            if self.weights[i] != self.weights[0]:
                self.uniform = False
        self.n_up = self.n
        self.rebuild_up()
        self.reseed(seed)

    def __dealloc__(self):
        free(self.weights)
        free(self.up)
        free(self.active)
        free(self.up_list)
        free(self.up_pos)
        free(self.cum)

    cdef int pick(self, int avoid) noexcept:
        return -1

    cdef void endpoint_up(self, int i) noexcept:
        if i < 0 or i >= self.n or self.up[i]:
            return
        self.up[i] = 1
        self.n_up += 1
        self.rebuild_up()

    cdef void endpoint_down(self, int i) noexcept:
        if i < 0 or i >= self.n or not self.up[i]:
            return
        self.up[i] = 0
        self.n_up -= 1
        self.rebuild_up()

    cdef void request_start(self, int i) noexcept:
        if 0 <= i < self.n:
            self.active[i] += 1

    cdef void request_end(self, int i) noexcept:
        # Clamped: a stray end (say, after a reload) must not make an endpoint look better than idle.
        if 0 <= i < self.n and self.active[i] > 0:
            self.active[i] -= 1

    cdef unsigned long long next_random(self) noexcept:
        return rng_next(&self.rng)

    cdef void rebuild_up(self) noexcept:
        cdef int i
        cdef int k = 0
        cdef long long total = 0
        for i in range(self.n):
            if self.up[i]:
                self.up_list[k] = i
                self.up_pos[i] = k
                self.cum[k] = total
                total += self.weights[i]
                k += 1
            else:
                self.up_pos[i] = -1
        self.cum[k] = total
        self.total_up = total

    # ---- Python API: tests, benchmarks and the control plane (via dataplane/) ----

    def reseed(self, seed=None):
        """Restart the RNG from `seed` (an int, for repeatable tests) or from os.urandom when None."""
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.rng = <unsigned long long>(seed & 0xFFFFFFFFFFFFFFFF)
        if self.rng == 0:
            # xorshift has the all-zero state as a fixed point; any non-zero constant will do.
            self.rng = 0x9E3779B97F4A7C15ULL

    def pick_endpoint(self, int avoid=-1):
        """Index of the endpoint to use (avoiding `avoid` unless it is the only one up), or -1."""
        return self.pick(avoid)

    def mark_up(self, i):
        """Endpoint i may be picked again."""
        self.endpoint_up(_index(self, i))

    def mark_down(self, i):
        """Endpoint i must not be picked."""
        self.endpoint_down(_index(self, i))

    def start(self, i):
        """A request/connection to endpoint i started."""
        self.request_start(_index(self, i))

    def end(self, i):
        """A request/connection to endpoint i ended."""
        self.request_end(_index(self, i))

    @property
    def size(self):
        """Number of endpoints."""
        return self.n

    @property
    def up_count(self):
        """Number of endpoints that may be picked."""
        return self.n_up

    def active_counts(self):
        """In-flight requests per endpoint, as a list."""
        return [self.active[i] for i in range(self.n)]

    def bench_picks(self, int count):
        """Run `count` picks in a C loop; return how many found no endpoint. For benchmarks only.

        Each pick is followed by request_start, and the request started BENCH_INFLIGHT picks earlier
        ends, as a proxy's connection lifecycle would: least_request then compares real counts.
        """
        cdef int ring[BENCH_INFLIGHT]
        cdef int j, i, slot
        cdef int misses = 0
        for j in range(BENCH_INFLIGHT):
            ring[j] = -1
        for j in range(count):
            i = self.pick(-1)
            if i < 0:
                misses += 1
            slot = j % BENCH_INFLIGHT
            if ring[slot] >= 0:
                self.request_end(ring[slot])
            self.request_start(i)
            ring[slot] = i
        for j in range(BENCH_INFLIGHT):
            if ring[j] >= 0:
                self.request_end(ring[j])
        return misses
