# Balancer: the one interface every load-balancing algorithm implements (HAProxy's lb_ops idea).
# Endpoints are indexes 0..n-1 into the owning cluster's endpoint arrays; events keep the balancer's
# state current so that pick() is cheap and never scans Python objects.
from libc.limits cimport LLONG_MAX
from libc.stdlib cimport realloc
from libc.string cimport memset

cdef class Balancer:
    cdef int n                    # number of endpoints
    cdef int n_up                 # endpoints currently eligible for pick()
    cdef int *weights             # weight per endpoint the picks use (>= 1): the configured one, scaled in slow start
    cdef unsigned char *up        # 1 if the endpoint may be picked, 0 if marked down
    cdef int *active              # in-flight connections/requests per endpoint
    cdef unsigned long long rng   # xorshift64* state for algorithms that draw random numbers
    # Added for the algorithms: the up set kept compact so a pick never walks down endpoints.
    cdef int *up_list             # indexes of the up endpoints, ascending; the first n_up entries are valid
    cdef int *up_pos              # position of endpoint i in up_list, or -1 while it is down
    cdef long long *cum           # cum[k]: summed weight of up_list[0..k-1]; cum[n_up] == total_up (size n + 1)
    cdef long long total_up       # summed weight of the up endpoints
    cdef bint uniform             # every weight in `weights` is equal, so draws and rotation ignore weights
    # Added for slow start, latency and hashing (appended, so the offsets above stay where they were).
    cdef int *config_weights      # configured weight per endpoint; `weights` equals it except during slow start
    cdef double slow_start        # seconds an endpoint ramps after endpoint_up; 0 = off
    cdef double *ramp_from        # `now` at the endpoint_up that started endpoint i's ramp, or -1 when not ramping
    cdef int n_ramping            # endpoints with ramp_from >= 0
    cdef double ramp_due          # `now` at or after which set_clock recomputes the ramped weights
    cdef double now               # the owner's monotonic clock in seconds, as last given to set_clock
    cdef bint clock_set           # set_clock has been called; slow start stays off until then
    # Added for discovery updates (appended): endpoints added, removed and reweighted in place.
    cdef unsigned char *gone      # 1 for a removed endpoint: down for good, no weight, no table entry
    cdef bint batching            # between begin_batch and end_batch: up/down events defer their O(n) work
    cdef bint batch_dirty         # an event deferred its work (end_batch recomputes weights and the up set)
    cdef bint members_dirty       # endpoints were added or reweighted (end_batch rebuilds hashing tables)

    # Index of the endpoint to use, or -1 when none is up. `avoid` (-1 for none) is an endpoint the
    # caller just failed on: pick it only if it is the only one up.
    cdef int pick(self, int avoid) noexcept
    # Endpoint i became eligible (health/ejection ended) or ineligible.
    cdef void endpoint_up(self, int i) noexcept
    cdef void endpoint_down(self, int i) noexcept
    # A connection/request to endpoint i started or ended.
    cdef void request_start(self, int i) noexcept
    cdef void request_end(self, int i) noexcept
    # Next pseudo-random 64-bit number (xorshift64*).
    cdef unsigned long long next_random(self) noexcept
    # Added: recompute up_list, up_pos, cum and total_up from `up` (O(n); runs on up/down events only).
    cdef void rebuild_up(self) noexcept
    # Index of the endpoint for a request whose key hashes to `key` (a 64-bit hash the caller computed
    # from a header, cookie or source address). Hashing balancers map the same key to the same endpoint;
    # the others ignore the key and pick(avoid).
    cdef int pick_hash(self, unsigned long long key, int avoid) noexcept
    # A finished request to endpoint i took rtt_seconds and answered HTTP `status` (0 for TCP). Called
    # before request_end. Only latency-aware balancers keep anything.
    cdef void observe(self, int i, double rtt_seconds, int status) noexcept
    # The owner's monotonic clock moved to `now` (call once per reactor wakeup, or at least once per
    # tick): balancers never read the clock per pick. Times that go backwards are ignored.
    cdef void set_clock(self, double now) noexcept
    # The first set_clock moved time by `delta` from 0: shift every time recorded before it.
    cdef void shift_clock(self, double delta) noexcept
    # Recompute `weights` from config_weights and the ramps (ending finished ones), then the up set.
    cdef void reweight(self) noexcept
    # `weights` changed under the algorithm (slow start): drop state computed from the old ones.
    cdef void weights_changed(self) noexcept
    # Discovery updates: grow to n endpoints (the new ones down, weight 1, not gone), then `resized` lets the
    # algorithm grow its own arrays from old_n to the new self.n entries (each new one as for a new endpoint).
    cdef int resize(self, int n) except -1
    cdef int resized(self, int old_n) except -1
    # Endpoint i's configured weight (applied at end_batch, or at once outside a batch).
    cdef void set_config_weight(self, int i, int weight) noexcept
    # Endpoint i is gone for good: down, never up again, left out of hashing tables.
    cdef void remove(self, int i) noexcept
    # The stable 64-bit id of endpoint i (hashing balancers place it by this; the others ignore it).
    cdef void set_endpoint_id(self, int i, unsigned long long ident) noexcept
    # Defer the O(n) work of up/down events and weight changes until end_batch, which does it once.
    cdef void begin_batch(self) noexcept
    cdef int end_batch(self) except -1
    # Endpoints were added or reweighted: rebuild what is derived from the member set (hashing tables).
    cdef int members_changed(self) except -1
    # Endpoint i takes over what `old` (a balancer this one replaces) knew of its endpoint j (latency estimates).
    cdef void adopt_endpoint(self, Balancer old, int j, int i) noexcept
    # The up set or weights changed: the O(n) recomputation, deferred while batching.
    cdef void refresh(self, bint ramps) noexcept


# Inline helpers: defined here so that the algorithm modules inline them instead of calling through
# the vtable of a class compiled in another module (py-pgproto's frb_* pattern).

cdef inline unsigned long long rng_next(unsigned long long *state) noexcept nogil:
    # xorshift64* (Vigna): 3 shifts, 1 multiply; the state must never be 0.
    cdef unsigned long long x = state[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    state[0] = x
    return x * 0x2545F4914F6CDD1DULL


cdef inline unsigned long long rng_below(unsigned long long *state, unsigned long long bound) noexcept nogil:
    # Uniform draw in [0, bound), bound >= 1. Multiply-shift avoids a 64-bit division; for
    # bound < 2**32 its bias is below bound / 2**32, far under what a balancer can notice.
    cdef unsigned long long r = rng_next(state)
    if bound <= 0xFFFFFFFFULL:
        return ((r >> 32) * bound) >> 32
    return r % bound


cdef inline int up_draw(Balancer b, int ex1, int ex2) noexcept:
    # A weighted random up endpoint other than ex1 and ex2 (endpoint indexes; -1, down or out of
    # range means "nothing to exclude"; ex1 != ex2 unless neither excludes anything). -1 when
    # nothing is left. Excluded endpoints are cut out of the weight line: draw over what remains,
    # then shift the draw past each excluded span in ascending order, so there is no retry loop.
    # The shifts and the search are written to compile to conditional moves: their outcome is
    # random, so as branches they would be mispredicted about half the time.
    cdef int p1 = b.up_pos[ex1] if 0 <= ex1 < b.n else -1
    cdef int p2 = b.up_pos[ex2] if 0 <= ex2 < b.n else -1
    cdef int tmp, base, length, half
    cdef long long total, r, w1 = 0, w2 = 0, s1 = LLONG_MAX, s2 = LLONG_MAX
    if p1 > p2:
        tmp = p1
        p1 = p2
        p2 = tmp
    # Now p1 < p2, or p1 == -1 (at most one exclusion), or both -1. A missing exclusion keeps
    # s = LLONG_MAX and w = 0: an empty span past the end of the line that no draw reaches.
    if b.uniform:
        if p1 >= 0:
            s1 = p1
            w1 = 1
        if p2 >= 0:
            s2 = p2
            w2 = 1
        total = b.n_up - w1 - w2
        if total <= 0:
            return -1
        r = <long long>rng_below(&b.rng, <unsigned long long>total)
        r += w1 if r >= s1 else 0
        r += w2 if r >= s2 else 0
        return b.up_list[r]
    if p1 >= 0:
        s1 = b.cum[p1]
        w1 = b.cum[p1 + 1] - s1
    if p2 >= 0:
        s2 = b.cum[p2]
        w2 = b.cum[p2 + 1] - s2
    total = b.total_up - w1 - w2
    if total <= 0:
        return -1
    r = <long long>rng_below(&b.rng, <unsigned long long>total)
    r += w1 if r >= s1 else 0
    r += w2 if r >= s2 else 0
    # Largest k with cum[k] <= r (endpoint up_list[k] owns [cum[k], cum[k+1])); cum[0] == 0 <= r.
    # The answer stays in [base, base + length) while the range halves.
    base = 0
    length = b.n_up
    while length > 1:
        half = length >> 1
        base = base + half if b.cum[base + half] <= r else base
        length -= half
    return b.up_list[base]


cdef inline double ramp_share(Balancer b, int i) noexcept nogil:
    # Slow start: endpoint i's share of its configured weight. 1.0 when it is not ramping; else linear
    # from 10% at endpoint_up to 100% at the end of the window (a floor, as in Envoy's min weight
    # percent, so a just-recovered endpoint still gets enough traffic to show it is healthy).
    cdef double start = b.ramp_from[i]
    cdef double elapsed
    if start < 0.0:
        return 1.0
    elapsed = (b.now - start) / b.slow_start
    if elapsed >= 1.0:
        return 1.0
    if elapsed < 0.0:
        elapsed = 0.0
    return 0.1 + 0.9 * elapsed


cdef inline void *grow_array(void *p, Py_ssize_t old_n, Py_ssize_t n, size_t size) except NULL:
    # An endpoint array of old_n + 1 entries (one spare, as allocated) reallocated to n + 1, the new entries
    # zeroed; MemoryError leaves p as it was.
    cdef void *q = realloc(p, (n + 1) * size)
    if q == NULL:
        raise MemoryError()
    memset(<char *>q + (old_n + 1) * size, 0, (n - old_n) * size)
    return q
