"""Peak EWMA with power of two choices: of two endpoints drawn by weight, keep the lower latency-based score.

Cost is a peak-sensitive, time-decayed latency estimate (Finagle's PeakEwma, linkerd2's balancer):
a sample above the current cost replaces it at once (a slow endpoint is noticed after one request);
a lower one moves it by 1 - exp(-dt / decay), dt being the time since the endpoint's previous sample,
or by 1/SPAN of the difference when that is more (Finagle's rule alone takes `decay` seconds to forget
a peak at any request rate: at thousands of requests a second, tens of thousands of fresh samples);
between samples the cost decays toward zero with time constant `decay` (10 s by default).

Fairness to equal endpoints. Peak EWMA alone starves an endpoint whose estimate is wrong: one that loses
every comparison is never picked, so never re-measured, and only the decay frees it. With endpoints
answering in well under a millisecond, one late answer (a descheduled backend, a connect) sets a cost
10-100 times its peers', and the decay needs tens of seconds to wear it down; a fixed 30 ms placeholder
for an endpoint not measured yet loses the same way to peers measured at 1 ms. Two rules fix both:
- An endpoint with no sample yet (at creation, and after endpoint_up) costs the cluster's typical cost,
  an average of the cluster's recent samples, weighed as an endpoint's are (default_rtt until the first).
  Its first sample replaces that placeholder outright.
- An estimate is stale once the cluster has taken PROBE_SPACING times the samples the endpoint's weight
  would give it between two of its own without taking one there. A pick that draws an endpoint with a
  stale estimate and nothing in flight sends it the request (a probe), and that probe's sample replaces
  the estimate as a first sample would. A slow endpoint is probed at most once per that many samples and
  never while a probe is out, so it keeps under 1/PROBE_SPACING of its share; one fast again is back at
  its share one probe later. Counting samples, not seconds, makes that bound hold at any request rate.
  An endpoint whose last answer was a 429/503 is not probed: it asked for rest (below).

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
once per clock change (one exp per reactor wakeup). Picks multiply and compare two sample counters;
observe() pays an exp only for a sample that follows a quiet spell.

The owner calls set_clock once per wakeup. Until it first does, observe() reads CLOCK_MONOTONIC
itself (once per finished request, never per pick), so an unwired clock cannot freeze the costs.
"""
from libc.limits cimport ULLONG_MAX
from libc.math cimport exp, isfinite
from libc.stdlib cimport calloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastmesh._core.balance.base cimport Balancer, grow_array, rng_next, up_draw

# Stored costs are rescaled when exp((now - epoch) / decay) passes e**REBASE, well inside a double's
# range whatever the costs are.
cdef double REBASE = 30.0
# Added to every cost in the score: with zero costs (samples of 0 s, or costs decayed to nothing) the
# (active + 1) factor must still tell a busy endpoint from an idle one.
cdef double COST_FLOOR = 1e-6
# Samples are clamped to an hour: a NaN, infinite or absurd rtt must not poison the estimate.
cdef double MAX_SAMPLE = 3600.0
# A sample below an estimate counts at least 1 / SPAN of it: an estimate follows about the last SPAN samples
# however fast they come (the time-weighted rule alone would need `decay` seconds at any rate). The cluster's
# typical cost averages its last SPAN samples the same way.
cdef double SPAN = 16.0
# An estimate is stale after this many times the cluster samples its weight's share would put between two of
# its own: a probe then costs a slow endpoint at most 1 / PROBE_SPACING of its share (the slow-endpoint tests
# hold a slow one of five under 3% of the requests).
cdef long long PROBE_SPACING = 16


cdef inline double blend(EwmaBalancer b, double estimate, double rtt, double stamp) noexcept:
    # A sample rtt below `estimate` (a cost now, last sampled at `stamp`): moved by 1 / SPAN of the gap, or,
    # where the decay since `stamp` took more than 1 / SPAN off, by what the decay took (Finagle's rule:
    # estimate * exp(-dt / decay) + rtt * (1 - exp(-dt / decay)); the exp is paid only then).
    if (b.now - stamp) * SPAN > b.decay:
        return estimate + rtt * (1.0 - exp((stamp - b.now) / b.decay))
    return estimate + (rtt - estimate) / SPAN


cdef inline double stored_cost(EwmaBalancer b, int i) noexcept:
    # Endpoint i's cost scaled to the epoch: the cluster's typical cost while it has no sample of its own.
    return b.typical if b.unsampled[i] else b.cost[i]


cdef inline bint stale(EwmaBalancer b, int i) noexcept:
    # Nothing in flight to endpoint i and no sample from it for its gap: a pick that draws it probes it.
    return b.active[i] == 0 and b.seq > b.probe_at[i]


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
        self.last_seq = <unsigned long long *>calloc(self.n + 1, sizeof(unsigned long long))
        self.gap = <unsigned long long *>calloc(self.n + 1, sizeof(unsigned long long))
        self.probe_at = <unsigned long long *>calloc(self.n + 1, sizeof(unsigned long long))
        self.penalized = <unsigned char *>calloc(self.n + 1, sizeof(unsigned char))
        if (self.cost == NULL or self.stamp == NULL or self.unsampled == NULL or self.load_unit == NULL
                or self.since == NULL or self.last_seq == NULL or self.gap == NULL or self.probe_at == NULL
                or self.penalized == NULL):
            raise MemoryError()
        self.decay_now = 1.0
        self.self_clocked = True

    def __init__(self, weights, seed=None, *, slow_start=0.0, decay=10.0, default_rtt=0.030, penalty=1.0):
        cdef int i
        self.decay = _seconds(decay, "decay", True)
        self.default_rtt = _seconds(default_rtt, "default_rtt", False)
        self.penalty = _seconds(penalty, "penalty", False)
        self.typical = self.default_rtt
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
        free(self.last_seq)
        free(self.gap)
        free(self.probe_at)
        free(self.penalized)

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
        if avoid < 0:
            # A stale estimate is re-measured: the request goes to it (a retry, avoid >= 0, never probes).
            # Rare, so the branch is predictable.
            take_a = stale(self, a)
            if take_a != stale(self, b):
                return a if take_a else b
        # A candidate carrying the failure penalty would hand its rival a free win however loaded the rival
        # is (and park every client on an endpoint that just turned slow): draw a fresh rival instead.
        if n_up > 2 and avoid < 0:
            if stored_cost(self, a) * self.decay_now >= self.penalty > stored_cost(self, b) * self.decay_now:
                a = up_draw(self, a, b)
            elif stored_cost(self, b) * self.decay_now >= self.penalty > stored_cost(self, a) * self.decay_now:
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
        cdef double c = stored_cost(self, i) * self.decay_now
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
        cdef double current, typical
        cdef bint penalty, fresh
        if i < 0 or i >= self.n:
            return
        if self.self_clocked:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            self.advance(ts.tv_sec + ts.tv_nsec * 1e-9)
        if not rtt >= 0.0:
            rtt = 0.0   # negative or NaN
        elif rtt > MAX_SAMPLE:
            rtt = MAX_SAMPLE
        penalty = status == 429 or status == 503
        if not penalty:
            # The cluster's typical cost follows its latencies (a refusal's speed is not one).
            if self.typical_set:
                typical = blend(self, self.typical * self.decay_now, rtt, self.typical_stamp)
            else:
                typical = rtt
                self.typical_set = True
            self.typical = typical / self.decay_now
            self.typical_stamp = self.now
        elif rtt < self.penalty:
            rtt = self.penalty
        # With no sample of its own, or none for its gap (this is a probe), the estimate is a placeholder or
        # stale: the sample replaces it, whichever way it goes.
        fresh = self.unsampled[i] or self.seq - self.last_seq[i] > self.gap[i]
        current = self.cost[i] * self.decay_now
        if rtt < current and not fresh:
            # A sample below the peak: it pulls the estimate down (by at least 1 / SPAN, more after a gap).
            current = blend(self, current, rtt, self.stamp[i])
        else:
            current = rtt
        self.cost[i] = current / self.decay_now
        self.stamp[i] = self.now
        self.unsampled[i] = 0
        self.seq += 1
        self.last_seq[i] = self.seq
        self.penalized[i] = penalty
        self.probe_at[i] = ULLONG_MAX if penalty else self.seq + self.gap[i]

    cdef void endpoint_up(self, int i) noexcept:
        cdef bint was_down = 0 <= i < self.n and not self.up[i]
        Balancer.endpoint_up(self, i)
        if not was_down or not self.up[i]:
            return
        # Its cost from before it went down is stale: until its first sample it costs the cluster's typical
        # cost (not its peers' mean: one peer's spike would make that a cost no equal endpoint shows).
        self.cost[i] = self.typical
        self.stamp[i] = self.now
        self.unsampled[i] = 1
        self.penalized[i] = 0
        self.last_seq[i] = self.seq
        self.probe_at[i] = self.seq + self.gap[i]

    cdef int resized(self, int old_n) except -1:
        # New endpoints (added by a discovery update) cost the cluster's typical cost until their first sample.
        cdef int i
        self.cost = <double *>grow_array(self.cost, old_n, self.n, sizeof(double))
        self.stamp = <double *>grow_array(self.stamp, old_n, self.n, sizeof(double))
        self.unsampled = <unsigned char *>grow_array(self.unsampled, old_n, self.n, sizeof(unsigned char))
        self.load_unit = <double *>grow_array(self.load_unit, old_n, self.n, sizeof(double))
        self.since = <double *>grow_array(self.since, old_n, self.n, sizeof(double))
        self.last_seq = <unsigned long long *>grow_array(self.last_seq, old_n, self.n, sizeof(unsigned long long))
        self.gap = <unsigned long long *>grow_array(self.gap, old_n, self.n, sizeof(unsigned long long))
        self.probe_at = <unsigned long long *>grow_array(self.probe_at, old_n, self.n, sizeof(unsigned long long))
        self.penalized = <unsigned char *>grow_array(self.penalized, old_n, self.n, sizeof(unsigned char))
        for i in range(old_n, self.n):
            self.cost[i] = self.typical
            self.stamp[i] = self.now
            self.unsampled[i] = 1
            self.load_unit[i] = 1.0
            self.last_seq[i] = self.seq
        return 0

    cdef void adopt_endpoint(self, Balancer old, int j, int i) noexcept:
        # The estimate of the endpoint this one replaces (a rebuilt cluster): cost as it stands now, rescaled to
        # this balancer's epoch, and whether it was measured or penalized.
        cdef EwmaBalancer o
        if not isinstance(old, EwmaBalancer) or not 0 <= i < self.n or not 0 <= j < old.n:
            return
        o = <EwmaBalancer>old
        if o.unsampled[j]:
            return
        self.cost[i] = o.cost[j] * o.decay_now / self.decay_now
        self.stamp[i] = self.now
        self.unsampled[i] = 0
        self.penalized[i] = o.penalized[j]
        self.last_seq[i] = self.seq

    cdef void rebuild_up(self) noexcept:
        # Runs on up/down events and weight changes, never per pick: the division happens here.
        cdef int i
        cdef double mean
        Balancer.rebuild_up(self)
        if self.load_unit == NULL or self.probe_at == NULL:
            return   # called from Balancer.__cinit__, before this class allocated its arrays
        mean = <double>self.total_up / self.n_up if self.n_up > 0 else 1.0
        for i in range(self.n):
            self.load_unit[i] = mean / self.weights[i]
            # Between two samples of its own, an endpoint drawn by weight sees total_up / weight cluster samples.
            self.gap[i] = <unsigned long long>(PROBE_SPACING * self.total_up / self.weights[i])
            if not self.penalized[i]:
                self.probe_at[i] = self.last_seq[i] + self.gap[i]

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
            self.typical *= factor
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
        self.typical_stamp += delta

    # ---- Python API: tests and the admin view ----

    def costs(self):
        """Each endpoint's current cost estimate in seconds (decayed to the clock's now); the cluster's typical
        cost for an endpoint with no sample yet."""
        return [stored_cost(self, i) * self.decay_now for i in range(self.n)]

    def typical_cost(self):
        """The cluster's typical cost in seconds: what an endpoint with no sample of its own costs."""
        return self.typical * self.decay_now

    def stale_endpoints(self):
        """Endpoints whose estimate is stale with nothing in flight: the next pick drawing one probes it."""
        return [i for i in range(self.n) if self.up[i] and stale(self, i)]

    def live_costs(self):
        """What pick() compares before the load factor: each cost, stretched by a stall in progress."""
        return [self.live_cost(i) for i in range(self.n)]

    @property
    def decay_window(self):
        """Decay time constant in seconds."""
        return self.decay
