# Peak EWMA with power of two choices (Finagle's and linkerd2's latency-aware balancer): declarations.
from fastmesh._core.balance.base cimport Balancer


cdef class EwmaBalancer(Balancer):
    cdef double decay             # time constant in seconds: an old cost fades by a factor e per `decay` seconds
    cdef double default_rtt       # cost in seconds of an endpoint with no sample yet (at creation and endpoint_up)
    cdef double penalty           # least latency in seconds a 429 or 503 answer counts as
    cdef double *cost             # per endpoint: its cost (s) scaled to `epoch`; cost now = cost[i] * decay_now
    cdef double *stamp            # per endpoint: `now` at its last sample or reset
    cdef unsigned char *unsampled  # per endpoint: 1 while its cost is the default_rtt placeholder
    cdef double epoch             # the time the stored costs are scaled to (moved forward before they overflow)
    cdef double decay_now         # exp(-(now - epoch) / decay): turns stored costs into costs now
    cdef double *load_unit        # per endpoint: mean up weight / its weight, what one in-flight request adds
    cdef bint self_clocked        # no owner has called set_clock yet, so observe() reads CLOCK_MONOTONIC itself
    cdef double *since            # per endpoint: when it last finished a request (or got its first in flight)
    # Added for fairness: unmeasured estimates start from what the cluster sees, stale ones get a probe.
    cdef double typical           # the cluster's typical cost (s), scaled to `epoch`: what unsampled endpoints cost
    cdef bint typical_set         # typical has taken a sample (until then it is default_rtt)
    cdef double typical_stamp     # `now` at the cluster's last sample
    cdef unsigned long long seq   # samples the cluster has taken (observe() calls)
    cdef unsigned long long *last_seq  # per endpoint: seq at its last sample (or at creation / endpoint_up)
    cdef unsigned long long *gap  # per endpoint: cluster samples with none of its own that make its estimate stale
    cdef unsigned long long *probe_at  # per endpoint: last_seq + gap (stale past it); ULLONG_MAX while penalized
    cdef unsigned char *penalized  # per endpoint: its last sample was a 429/503 penalty (no probe: it asked for rest)

    # Move the clock to `now` (through the base) and refresh decay_now.
    cdef void advance(self, double now) noexcept
    # Cost now, stretched to the time it has sat on requests without finishing one.
    cdef double live_cost(self, int i) noexcept
