"""Balancer base: what every algorithm shares (weights, up set, active counts, RNG, slow start) and Python wrappers.

Slow start (`slow_start` seconds, 0 = off): endpoint_up starts a ramp for the endpoint that comes back
(endpoints present at creation start at full weight). While any endpoint ramps, `weights` holds every
configured weight times RAMP_SCALE, the ramping ones also times ramp_share() (10% rising linearly to
100%), so integer weights keep 1% steps even when configured weights are 1. The owner's set_clock
recomputes them every window / RAMP_STEPS seconds (O(n), a few dozen times per window, never per pick);
when the last ramp ends, `weights` is the configured weights again. Slow start needs a clock: until the
first set_clock an endpoint_up restores full weight at once, so a missing clock cannot leave an
endpoint stuck at 10%.

Discovery updates (the owning Cluster's update()): endpoints are indexes that never move, so nothing a
connection or request holds goes stale. resize() appends endpoints (down until endpoint_up, which starts
their slow start like any recovery), remove() takes one down for good (`gone`: no weight, no table entry),
set_config_weight() changes a weight. Between begin_batch() and end_batch() the O(n) recomputation every
up/down event and weight change needs is done once, at the end, so 10,000 changes cost O(n), not O(n^2).
"""
from libc.math cimport isfinite
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
import os

# Weights are C ints; summed weights are 64-bit, so any count of endpoints at this bound fits.
MAX_WEIGHT = 0x7FFFFFFF

cdef enum:
    # Picks that stay in flight during bench_picks, so least_request sees real active counts.
    BENCH_INFLIGHT = 64
    # Slow start: factor on every weight while some endpoint ramps (1% steps for weight-1 endpoints).
    RAMP_SCALE = 100
    # Slow start: weight recomputations per window (every 0.6 s for a 30 s window).
    RAMP_STEPS = 50
    # The C bound behind MAX_WEIGHT, for the ramp scaling.
    C_MAX_WEIGHT = 0x7FFFFFFF


cdef bint _uniform(Balancer b) noexcept:
    # Every endpoint still present has the same weight in `weights`.
    cdef int i, first = -1
    for i in range(b.n):
        if b.gone[i]:
            continue
        if first < 0:
            first = b.weights[i]
        elif b.weights[i] != first:
            return False
    return True


cdef int _index(Balancer b, i) except -1:
    # Python-facing bounds check: the C events ignore bad indexes, the wrappers report them.
    if not 0 <= i < b.n:
        raise IndexError(f"endpoint {i} out of range 0..{b.n - 1}")
    return i


cdef class Balancer:
    """Base of the algorithms: pick() here always answers -1; subclasses implement it."""

    def __cinit__(self, weights, seed=None, *args, slow_start=0.0, **options):
        # Subclasses' options arrive here too (Cython hands every __cinit__ the same arguments); their
        # __init__ checks them.
        cdef Py_ssize_t count = len(weights)
        cdef int i
        if count > 0x7FFFFFFF - 1:
            raise ValueError("too many endpoints")
        slow_start = float(slow_start)
        if not isfinite(slow_start) or slow_start < 0.0:
            raise ValueError(f"slow_start must be a finite number of seconds >= 0, got {slow_start}")
        self.slow_start = slow_start
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
        self.config_weights = <int *>calloc(count + 1, sizeof(int))
        self.ramp_from = <double *>calloc(count + 1, sizeof(double))
        self.gone = <unsigned char *>calloc(count + 1, sizeof(unsigned char))
        if (self.weights == NULL or self.up == NULL or self.active == NULL or self.up_list == NULL
                or self.up_pos == NULL or self.cum == NULL or self.config_weights == NULL or self.ramp_from == NULL
                or self.gone == NULL):
            raise MemoryError()
        self.uniform = True
        for i in range(self.n):
            self.weights[i] = weights[i]
            self.config_weights[i] = self.weights[i]
            self.ramp_from[i] = -1.0
            self.up[i] = 1
            if self.weights[i] != self.weights[0]:
                self.uniform = False
        self.n_up = self.n
        self.rebuild_up()
        self.reseed(seed)

    def __init__(self, weights, seed=None, *, slow_start=0.0):
        # The work is done in __cinit__; this signature only rejects options the algorithm does not take.
        pass

    def __dealloc__(self):
        free(self.config_weights)
        free(self.ramp_from)
        free(self.gone)
        free(self.weights)
        free(self.up)
        free(self.active)
        free(self.up_list)
        free(self.up_pos)
        free(self.cum)

    cdef int pick(self, int avoid) noexcept:
        return -1

    cdef void endpoint_up(self, int i) noexcept:
        if i < 0 or i >= self.n or self.up[i] or self.gone[i]:
            return
        self.up[i] = 1
        self.n_up += 1
        if self.slow_start > 0.0 and self.clock_set:
            if self.ramp_from[i] < 0.0:
                self.n_ramping += 1
            self.ramp_from[i] = self.now
            self.refresh(True)
        else:
            self.refresh(False)

    cdef void endpoint_down(self, int i) noexcept:
        if i < 0 or i >= self.n or not self.up[i]:
            return
        self.up[i] = 0
        self.n_up -= 1
        if self.ramp_from[i] >= 0.0:
            # A ramp ends when its endpoint goes down; the next endpoint_up starts a new one.
            self.ramp_from[i] = -1.0
            self.n_ramping -= 1
            self.refresh(True)
        else:
            self.refresh(False)

    cdef void refresh(self, bint ramps) noexcept:
        if self.batching:
            self.batch_dirty = True
        elif ramps:
            self.reweight()
        else:
            self.rebuild_up()

    cdef int resize(self, int n) except -1:
        cdef int i, old_n = self.n
        if n <= old_n:
            return 0
        self.weights = <int *>grow_array(self.weights, old_n, n, sizeof(int))
        self.up = <unsigned char *>grow_array(self.up, old_n, n, sizeof(unsigned char))
        self.active = <int *>grow_array(self.active, old_n, n, sizeof(int))
        self.up_list = <int *>grow_array(self.up_list, old_n, n, sizeof(int))
        self.up_pos = <int *>grow_array(self.up_pos, old_n, n, sizeof(int))
        self.cum = <long long *>grow_array(self.cum, old_n, n, sizeof(long long))
        self.config_weights = <int *>grow_array(self.config_weights, old_n, n, sizeof(int))
        self.ramp_from = <double *>grow_array(self.ramp_from, old_n, n, sizeof(double))
        self.gone = <unsigned char *>grow_array(self.gone, old_n, n, sizeof(unsigned char))
        for i in range(old_n, n):
            self.weights[i] = 1
            self.config_weights[i] = 1
            self.ramp_from[i] = -1.0
            self.up_pos[i] = -1
        self.n = n
        self.resized(old_n)
        self.members_dirty = True
        self.refresh(True)
        return 0

    cdef int resized(self, int old_n) except -1:
        return 0

    cdef void set_config_weight(self, int i, int weight) noexcept:
        if 0 <= i < self.n and weight >= 1 and self.config_weights[i] != weight:
            self.config_weights[i] = weight
            self.members_dirty = True
            self.batch_dirty = True

    cdef void remove(self, int i) noexcept:
        if i < 0 or i >= self.n or self.gone[i]:
            return
        self.endpoint_down(i)
        self.gone[i] = 1
        self.members_dirty = True

    cdef void set_endpoint_id(self, int i, unsigned long long ident) noexcept:
        pass

    cdef void adopt_endpoint(self, Balancer old, int j, int i) noexcept:
        pass

    cdef void begin_batch(self) noexcept:
        self.batching = True

    cdef int end_batch(self) except -1:
        self.batching = False
        if self.batch_dirty or self.members_dirty:
            self.batch_dirty = False
            self.reweight()
        if self.members_dirty:
            self.members_dirty = False
            self.members_changed()
        return 0

    cdef int members_changed(self) except -1:
        return 0

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

    cdef int pick_hash(self, unsigned long long key, int avoid) noexcept:
        return self.pick(avoid)

    cdef void observe(self, int i, double rtt_seconds, int status) noexcept:
        pass

    cdef void set_clock(self, double now) noexcept:
        if not self.clock_set:
            self.clock_set = True
            self.shift_clock(now - self.now)
            self.now = now
        elif now > self.now:
            self.now = now
        if self.n_ramping > 0 and self.now >= self.ramp_due and not self.batching:
            self.reweight()

    cdef void shift_clock(self, double delta) noexcept:
        cdef int i
        for i in range(self.n):
            if self.ramp_from[i] >= 0.0:
                self.ramp_from[i] += delta
        self.ramp_due += delta

    cdef void reweight(self) noexcept:
        cdef int i, max_w = 1
        cdef long long scale, w
        for i in range(self.n):
            if self.ramp_from[i] >= 0.0 and self.now - self.ramp_from[i] >= self.slow_start:
                self.ramp_from[i] = -1.0
                self.n_ramping -= 1
        if self.n_ramping == 0:
            memcpy(self.weights, self.config_weights, self.n * sizeof(int))
        else:
            for i in range(self.n):
                if self.config_weights[i] > max_w:
                    max_w = self.config_weights[i]
            scale = RAMP_SCALE
            if scale > C_MAX_WEIGHT // max_w:
                scale = C_MAX_WEIGHT // max_w
            for i in range(self.n):
                w = <long long>(<double>self.config_weights[i] * <double>scale * ramp_share(self, i) + 0.5)
                self.weights[i] = <int>w if w >= 1 else 1
        self.uniform = _uniform(self)
        self.rebuild_up()
        self.ramp_due = self.now + self.slow_start / RAMP_STEPS
        self.weights_changed()

    cdef void weights_changed(self) noexcept:
        pass

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

    def pick_hashed(self, key, int avoid=-1):
        """Endpoint for a request keyed by the 64-bit hash `key` (hashing balancers); others ignore the key."""
        return self.pick_hash(<unsigned long long>(key & 0xFFFFFFFFFFFFFFFF), avoid)

    def observe_py(self, i, double rtt, int status=0):
        """A request to endpoint i finished after `rtt` seconds with HTTP `status` (0 for TCP)."""
        self.observe(_index(self, i), rtt, status)

    def set_now(self, double now):
        """The owner's monotonic clock reads `now` seconds (drives slow start and latency decay)."""
        self.set_clock(now)

    @property
    def clock(self):
        """The clock as last given to set_now/set_clock (0.0 before the first)."""
        return self.now

    @property
    def slow_start_window(self):
        """Slow start window in seconds (0.0 = off)."""
        return self.slow_start

    @property
    def ramping_count(self):
        """Endpoints still in their slow start ramp."""
        return self.n_ramping

    def add_endpoints(self, weights, ids=None):
        """Append endpoints with these weights (and 64-bit ids, for the hashing balancers), up at once: with
        slow start on they ramp like a recovered endpoint. Returns the index of the first one."""
        cdef int first = self.n, k
        weights = list(weights)
        ids = list(ids) if ids is not None else [first + k for k in range(len(weights))]
        if len(ids) != len(weights):
            raise ValueError(f"expected {len(weights)} endpoint ids, got {len(ids)}")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WEIGHT:
                raise ValueError(f"endpoint weights must be ints in 1..{MAX_WEIGHT}, got {w!r}")
        self.begin_batch()
        try:
            self.resize(first + len(weights))
            for k in range(len(weights)):
                self.set_config_weight(first + k, weights[k])
                self.set_endpoint_id(first + k, <unsigned long long>(ids[k] & 0xFFFFFFFFFFFFFFFF))
                self.endpoint_up(first + k)
        finally:
            self.end_batch()
        return first

    def remove_endpoint(self, i):
        """Endpoint i is gone for good: never picked again (its index is not reused)."""
        self.remove(_index(self, i))
        self.end_batch()

    def set_weight(self, i, int weight):
        """Endpoint i's configured weight from now on."""
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"endpoint weights must be in 1..{MAX_WEIGHT}, got {weight}")
        self.set_config_weight(_index(self, i), weight)
        self.end_batch()

    @property
    def gone_count(self):
        """Endpoints removed for good (their indexes stay, never picked)."""
        return sum(self.gone[i] for i in range(self.n))

    def effective_weights(self):
        """The weights picks use now, per endpoint (the configured ones scaled while some endpoint ramps)."""
        return [self.weights[i] for i in range(self.n)]

    def configured_weights(self):
        """The weights given at construction, per endpoint."""
        return [self.config_weights[i] for i in range(self.n)]

    def ramp_shares(self):
        """Per endpoint, the share of its configured weight slow start gives it now (1.0 when not ramping), for
        the admin server's explain. Read-only."""
        return [ramp_share(self, i) for i in range(self.n)]

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

    def bench_hash_picks(self, int count, unsigned long long seed=1):
        """Run `count` pick_hash calls on pseudo-random keys in a C loop; return how many found no endpoint."""
        cdef unsigned long long state = seed if seed != 0 else 1
        cdef int _j
        cdef int misses = 0
        for _j in range(count):
            if self.pick_hash(rng_next(&state), -1) < 0:
                misses += 1
        return misses
