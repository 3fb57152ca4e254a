# Cluster: a named set of endpoints (socket addresses, weights, eligibility: connect-failure marks, active health,
# outlier ejection) and its balancer.

from libc.stdint cimport uint64_t

from fastmesh._core.includes.system cimport sockaddr_storage, socklen_t
from fastmesh._core.reactor cimport Sweeper
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.stats cimport StatsBlock

cdef enum EndpointState:
    EP_UP = 0                          # eligible; no recent connect failure
    EP_DOWN = 1                        # a connect failed; out of the balancer until down_until
    EP_PROBING = 2                     # back in the balancer; the next connect decides
    # Published in the E_STATE slot only (the connect mark itself is one of the three above):
    EP_UNHEALTHY = 3                   # failing active health checks
    EP_EJECTED = 4                     # ejected by outlier detection
    EP_REMOVED = 5                     # no longer in the endpoint set; its slot is never reused
    EP_STANDBY = 6                     # in a lower-priority tier that is not serving

# Why an endpoint is out of the balancer: bits of Cluster.out. The balancer hears endpoint_down when the first
# bit is set and endpoint_up when the last one clears, so each mechanism can mark and unmark on its own.
cdef enum:
    OUT_CONNECT = 1                    # the connect-failure mark (mark == EP_DOWN)
    OUT_HEALTH = 2                     # active health checks failed (Cluster.set_health)
    OUT_OUTLIER = 4                    # ejected by outlier detection (passive: request outcomes)
    OUT_STANDBY = 8                    # its priority tier is not serving (a more preferred tier has an eligible one)
    OUT_REMOVED = 16                   # removed by an update: out for good

# Outlier detection state of one endpoint (Linkerd 1's failure accrual plus an optional success rate).
ctypedef struct Accrual:
    int streak                         # failures in a row (requests and connects) since the last success
    bint connect_only                  # no request failure since the last request success: a connect success ends
    # the streak then (connect failures are refuted by a connect; an HTTP 5xx only by a good answer)
    bint trial                         # re-admitted after an ejection: the next outcome decides (fail: eject again)
    int ejections                      # ejections so far, less one per clean minute: the next ejection's exponent
    double until                       # monotonic time the current ejection ends
    double clean_since                 # monotonic time of the last failure or decay step (the decay clock)
    unsigned int sr_ok                 # successes in the current success-rate window
    unsigned int sr_failed             # failures in the current success-rate window


cdef class Cluster(Sweeper):
    cdef readonly str name             # the config's cluster name, for logs and stats
    cdef int n                         # number of endpoints
    cdef sockaddr_storage *addrs       # socket address per endpoint
    cdef socklen_t *addrlens           # length of each address
    cdef list labels                   # "host:port" per endpoint, for logs and stats
    cdef readonly Balancer balancer    # picks among endpoints that are up
    cdef readonly double connect_timeout   # seconds before a pending connect counts as failed
    cdef readonly int connect_attempts  # endpoints tried per downstream connection
    cdef public int proxy_protocol     # PROXY header version (1, 2) sent first on every upstream connection; 0: none
    cdef StatsBlock stats              # the block the slot pointers below point into (kept alive through this)
    cdef uint64_t *counters            # cluster-wide C_FIELDS slots (stats.pxd): retries, failed, ejections, checks
    cdef uint64_t *state               # published EndpointState: the connect mark, or why the endpoint is out
    cdef uint64_t *seen                # CLOCK_MONOTONIC ns of the last connect outcome or eligibility change (0 = none)
    cdef uint64_t *active              # upstream connections open per endpoint (connecting included)
    cdef double *down_until            # monotonic time an EP_DOWN endpoint is re-admitted
    cdef double *backoff               # current re-admission delay per endpoint, doubled per failure
    cdef uint64_t *failures            # connect failures per endpoint, ever
    cdef uint64_t *opened              # upstream connections established per endpoint, ever
    cdef uint64_t now_ns               # the last tick's time in ns: connect successes are stamped with it (cheap)
    cdef int cursor                    # round-robin position used when every endpoint is marked down
    cdef double log_after              # monotonic time before which failure logs are counted, not printed
    cdef int log_suppressed            # failure logs held back since the last one printed
    # Eligibility and outlier detection (appended, so the offsets above stay where they were).
    cdef unsigned char *mark           # connect-failure mark per endpoint: EP_UP, EP_DOWN or EP_PROBING
    cdef unsigned char *out            # OUT_* bits per endpoint; 0 = eligible
    cdef Accrual *accrual              # outlier detection state per endpoint
    cdef bint outlier                  # outlier detection on
    cdef int consecutive               # failures in a row that eject an endpoint
    cdef double base_ejection          # seconds of the first ejection; doubled per ejection since
    cdef double max_ejection           # seconds no ejection exceeds
    cdef int max_ejected_percent       # ejections never take more than this share of the endpoints out
    cdef int n_ejected                 # endpoints ejected now
    cdef double sr_window              # success-rate window in seconds; 0 = success rate off
    cdef unsigned int sr_minimum       # requests an endpoint needs in a window before its rate is judged
    cdef double sr_threshold           # a judged endpoint below this success share is ejected
    cdef double sr_due                 # monotonic time the current success-rate window ends
    # Endpoint set updates and priority tiers (appended).
    cdef int n_live                    # endpoints not removed (n counts removed slots too)
    cdef int *tier                     # per endpoint: its priority tier's rank, 0 = most preferred
    cdef int n_tiers                   # distinct tiers among the live endpoints (1 when priorities are unused)
    cdef int *tier_ok                  # per tier rank: live endpoints eligible but for OUT_STANDBY
    cdef int serving                   # the tier rank the balancer picks from: the first with an eligible endpoint

    cdef int grow(self, int n) except -1
    cdef void set_address(self, int i, int family, str host, int port) except *
    cdef void count_tiers(self) noexcept
    cdef void pick_tier(self) noexcept
    cdef void apply_standby(self) noexcept
    cdef void remove_endpoint(self, int i) noexcept

    cdef int choose(self, int avoid) noexcept
    cdef int open_socket(self, int i) noexcept
    cdef void connect_failed(self, int i, int err, double now) noexcept
    cdef void connect_succeeded(self, int i) noexcept
    # A finished HTTP exchange with endpoint i answered without a 5xx of the upstream's own.
    cdef void request_succeeded(self, int i) noexcept
    # A finished exchange with endpoint i failed: a 5xx from the upstream, a reset, or a response timeout
    # (connect failures go through connect_failed instead).
    cdef void request_failed(self, int i, double now) noexcept
    cdef void no_endpoint(self, str why, double now) noexcept
    cdef void point_at(self, StatsBlock block, Py_ssize_t offset) except *
    cdef void set_out(self, int i, unsigned char why) noexcept
    cdef void clear_out(self, int i, unsigned char why) noexcept
    cdef void publish(self, int i) noexcept
    cdef void accrue_failure(self, int i, double now) noexcept
    cdef void accrue_success(self, int i) noexcept
    cdef void eject(self, int i, double now, str why) noexcept
    cdef void judge_success_rates(self, double now) noexcept

    # Every upstream connection goes through these two: the balancer's in-flight count and the endpoint's
    # active gauge stay in step. Inline here so callers in other modules pay no call.
    cdef inline void upstream_start(self, int i) noexcept:
        self.balancer.request_start(i)
        self.active[i] += 1

    cdef inline void upstream_end(self, int i) noexcept:
        self.balancer.request_end(i)
        self.active[i] -= 1
