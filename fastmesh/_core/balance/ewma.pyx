"""Peak EWMA with power of two choices: of two endpoints drawn by weight, keep the lower latency-based score.

Cost is a peak-sensitive, time-decayed latency estimate (Finagle's PeakEwma, linkerd2's balancer):
a sample above the current cost replaces it at once (a slow endpoint is noticed after one request);
a lower one moves it by 1 - exp(-dt / decay), dt being the time since the endpoint's previous sample;
between samples the cost decays toward zero with time constant `decay` (10 s by default), so an endpoint
that lost every comparison is eventually tried again and its cost re-measured. Endpoints present at
creation cost `default_rtt` (30 ms by default) until their first sample. One that comes back (endpoint_up)
starts at the mean cost of the other up endpoints: its old cost is stale, and a fixed default would
make it lose every comparison against peers measured faster than 30 ms, for tens of seconds, so
slow start could not ramp it. Either placeholder is replaced outright by the first sample.

429 and 503 answers: counted as a sample of at least `penalty` seconds (1 s by default). The answer
came back fast precisely because the endpoint refused the work, so its own latency would reward it.
Retry-After is not used: observe() gets a status, not headers, and the penalty's decay (below the 30 ms
of its peers after about 3.5 windows with no new sample, sooner as good samples arrive) already keeps
an overloaded endpoint nearly idle for tens of seconds, which is what a Retry-After usually asks.

Weights are capacities: the score is the expected latency of one more request when each unit of
weight serves requests side by side, cost * (1 + active * mean weight / weight), mean taken over the
up endpoints. With equal weights it is Finagle's and linkerd2's cost * (active + 1). Under load the
active term makes in-flight requests follow the weights; idle, equal costs tie and the weighted draw
sets the split (cost * (active + 1) / weight would instead send every idle request to the heavier
of two equally fast endpoints). Slow start: the base scales `weights` while an endpoint ramps, so it
is drawn less and counts as smaller in the load term.

Decay without a clock read or exp() per pick: every stored cost is scaled to one shared `epoch`, so
the cost now is cost[i] * decay_now for every endpoint with the same factor, which set_clock computes
once per clock change (one exp per reactor wakeup). Picks multiply; observe() pays one exp.

The owner calls set_clock once per wakeup. Until it first does, observe() reads CLOCK_MONOTONIC
itself (once per finished request, never per pick), so an unwired clock cannot freeze the costs.
"""
from libc.math cimport exp, isfinite
from libc.stdlib cimport calloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastmesh._core.balance.base cimport Balancer, rng_next, up_draw

# Stored costs are rescaled when exp((now - epoch) / decay) passes e**REBASE, well inside a double's
# range whatever the costs are.
cdef double REBASE = 30.0
# Added to every cost in the score: with zero costs (samples of 0 s, or costs decayed to nothing) the
# (active + 1) factor must still tell a busy endpoint from an idle one.
cdef double COST_FLOOR = 1e-6
# Samples are clamped to an hour: a NaN, infinite or absurd rtt must not poison the estimate.
cdef double MAX_SAMPLE = 3600.0


cdef double _seconds(value, str name, bint positive) except -1.0:
    # Option check shared by the constructor: a finite number of seconds, > 0 or >= 0.
    cdef double v = float(value)
    if not isfinite(v) or v < 0.0 or (positive and v == 0.0):
        raise ValueError(f"{name} must be a finite number of seconds {'>' if positive else '>='} 0, got {value!r}")
    return v


cdef class EwmaBalancer(Balancer):
    """Peak EWMA of latency, power of two choices, weights and slow start."""

    def __cinit__(self, *args, **kwargs):
        # Balancer.__cinit__ has already validated the weights and set self.n.
        self.cost = <double *>calloc(self.n + 1, sizeof(double))
        self.stamp = <double *>calloc(self.n + 1, sizeof(double))
        self.unsampled = <unsigned char *>calloc(self.n + 1, sizeof(unsigned char))
        self.load_unit = <double *>calloc(self.n + 1, sizeof(double))
        self.since = <double *>calloc(self.n + 1, sizeof(double))
        if (self.cost == NULL or self.stamp == NULL or self.unsampled == NULL or self.load_unit == NULL
                or self.since == NULL):
            raise MemoryError()
        self.decay_now = 1.0
        self.self_clocked = True

    def __init__(self, weights, seed=None, *, slow_start=0.0, decay=10.0, default_rtt=0.030, penalty=1.0):
        cdef int i
        self.decay = _seconds(decay, "decay", True)
        self.default_rtt = _seconds(default_rtt, "default_rtt", False)
        self.penalty = _seconds(penalty, "penalty", False)
        for i in range(self.n):
            self.cost[i] = self.default_rtt
            self.unsampled[i] = 1
        self.rebuild_up()

    def __dealloc__(self):
        free(self.cost)
        free(self.stamp)
        free(self.unsampled)
        free(self.load_unit)
        free(self.since)

    cdef int pick(self, int avoid) noexcept:
        cdef int n_up = self.n_up
        cdef int a, b, coin, take_a
        cdef double score_a, score_b
        if n_up <= 1:
            # -1 when nothing is up; the single up endpoint otherwise, even if it is `avoid`.
            return self.up_list[0] if n_up == 1 else -1
        if n_up == 2 and 0 <= avoid < self.n and self.up[avoid]:
            # Only one candidate besides avoid: no choice to make.
            return self.up_list[1] if self.up_list[0] == avoid else self.up_list[0]
        a = up_draw(self, avoid, -1)
        b = up_draw(self, avoid, a)
        # A candidate carrying the failure penalty would hand its rival a free win however loaded the rival
        # is (and park every client on an endpoint that just turned slow): draw a fresh rival instead.
        if n_up > 2 and avoid < 0:
            if self.cost[a] * self.decay_now >= self.penalty > self.cost[b] * self.decay_now:
                a = up_draw(self, a, b)
            elif self.cost[b] * self.decay_now >= self.penalty > self.cost[a] * self.decay_now:
                b = up_draw(self, a, b)
        # cost * (1 + active * mean weight / weight). With nothing in flight this is the cost itself, so
        # equal costs tie exactly (a cross-multiplied form can round differently on each side and
        # hand every tie to one of them).
        score_a = (self.live_cost(a) + COST_FLOOR) * (1.0 + <double>self.active[a] * self.load_unit[a])
        score_b = (self.live_cost(b) + COST_FLOOR) * (1.0 + <double>self.active[b] * self.load_unit[b])
        # Branch-free, as in least_request: the winner is unpredictable. Exact ties (equal default
        # costs, equal counts) go to the coin, the top bit of the next draw.
        coin = <int>(rng_next(&self.rng) >> 63)
        take_a = (score_a < score_b) | ((score_a == score_b) & coin)
        return a if take_a else b

    cdef inline double live_cost(self, int i) noexcept:
        """The endpoint's cost, or more: with k requests in flight, a healthy endpoint finishes one about every
        cost / k; when none has finished for a time t, t * k is a latency it is already showing. Without this an
        endpoint that just turned slow keeps its old low cost until its first slow answer ends, and absorbs
        client after client meanwhile."""
        cdef double c = self.cost[i] * self.decay_now
        cdef double stalled
        if self.active[i] > 0 and self.clock_set:
            stalled = (self.now - self.since[i]) * self.active[i]
            if stalled > c:
                return stalled
        return c

    cdef void request_start(self, int i) noexcept:
        if 0 <= i < self.n:
            if self.active[i] == 0:
                self.since[i] = self.now
            self.active[i] += 1

    cdef void request_end(self, int i) noexcept:
        if 0 <= i < self.n and self.active[i] > 0:
            self.active[i] -= 1
            self.since[i] = self.now

    cdef void observe(self, int i, double rtt_seconds, int status) noexcept:
        cdef timespec ts
        cdef double rtt = rtt_seconds
        cdef double current
        if i < 0 or i >= self.n:
            return
        if self.self_clocked:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            self.advance(ts.tv_sec + ts.tv_nsec * 1e-9)
        if not rtt >= 0.0:
            rtt = 0.0   # negative or NaN
        elif rtt > MAX_SAMPLE:
            rtt = MAX_SAMPLE
        if (status == 429 or status == 503) and rtt < self.penalty:
            rtt = self.penalty
        current = self.cost[i] * self.decay_now
        if rtt < current and not self.unsampled[i]:
            # A sample below the peak: weigh it by the time it stands for (since the previous sample).
            current += rtt * (1.0 - exp((self.stamp[i] - self.now) / self.decay))
        else:
            current = rtt
        self.cost[i] = current / self.decay_now
        self.stamp[i] = self.now
        self.unsampled[i] = 0

    cdef void endpoint_up(self, int i) noexcept:
        cdef bint was_down = 0 <= i < self.n and not self.up[i]
        cdef double total = 0.0
        cdef int k
        Balancer.endpoint_up(self, i)
        if not was_down:
            return
        # Its cost from before it went down is stale: guess the mean of its peers' (O(n), events only).
        # Stored costs share one epoch, so their mean is a stored cost too.
        for k in range(self.n_up):
            if self.up_list[k] != i:
                total += self.cost[self.up_list[k]]
        if self.n_up > 1:
            self.cost[i] = total / (self.n_up - 1)
        else:
            self.cost[i] = self.default_rtt / self.decay_now
        self.stamp[i] = self.now
        self.unsampled[i] = 1

    cdef void rebuild_up(self) noexcept:
        # Runs on up/down events and weight changes, never per pick: the division happens here.
        cdef int i
        cdef double mean
        Balancer.rebuild_up(self)
        if self.load_unit == NULL:
            return   # called from Balancer.__cinit__, before this class allocated its arrays
        mean = <double>self.total_up / self.n_up if self.n_up > 0 else 1.0
        for i in range(self.n):
            self.load_unit[i] = mean / self.weights[i]

    cdef void set_clock(self, double now) noexcept:
        self.self_clocked = False
        self.advance(now)

    cdef void advance(self, double now) noexcept:
        cdef double x, factor
        cdef int i
        Balancer.set_clock(self, now)
        x = (self.now - self.epoch) / self.decay
        if x > REBASE:
            # Scale every stored cost to now, so decay_now starts again from 1 (O(n), every REBASE windows).
            factor = exp(-x)
            for i in range(self.n):
                self.cost[i] *= factor
            self.epoch = self.now
            self.decay_now = 1.0
        else:
            self.decay_now = exp(-x)

    cdef void shift_clock(self, double delta) noexcept:
        cdef int i
        Balancer.shift_clock(self, delta)
        self.epoch += delta
        for i in range(self.n):
            self.stamp[i] += delta

    # ---- Python API: tests and the admin view ----

    def costs(self):
        """Each endpoint's current cost estimate in seconds (decayed to the clock's now)."""
        return [self.cost[i] * self.decay_now for i in range(self.n)]

    def live_costs(self):
        """What pick() compares before the load factor: each cost, stretched by a stall in progress."""
        return [self.live_cost(i) for i in range(self.n)]

    @property
    def decay_window(self):
        """Decay time constant in seconds."""
        return self.decay
