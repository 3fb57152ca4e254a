"""Per-cluster request policy: the retry budget and rules, timeouts and circuit-breaker limits.

The budget follows Finagle's RetryBudget: every request deposits, every retry withdraws, and retries may not
exceed `percent` of the window's requests plus `min_per_second` x window. Unlike a per-retry token bucket it
never lets a burst of failures turn into a burst of retries, and a fully failing backend sees at most about
(1 + percent) x the offered load. The window is a ring of time slots in the cluster's limit cell (limits.pyx):
each worker deposits into its own ring, a withdrawal sums every worker's, so the budget is the instance's.
The circuit-breaker gauges are counted in the same cell; the adaptive limit's estimate is this process's own
(learned from the latencies it sees), checked against the instance's requests in flight.
"""
from libc.math cimport sqrt
from libc.string cimport memset
from libc.stdint cimport uint64_t

from fastmesh._core.limits cimport LimitCell, F_RING_REQUESTS, F_RING_RETRIES, BUDGET_RING
from fastmesh._core.limits import private_cell


cdef class RetryBudget:

    def __cinit__(self, double percent=0.2, double min_per_second=10.0, double window=10.0, LimitCell cell=None):
        self.percent = percent
        self.min_per_second = min_per_second
        self.window = window
        self.slot_len = window / BUDGET_RING
        self.current = 0
        self.cell = cell if cell is not None else private_cell()

    cdef void deposit(self, double now) noexcept:
        self.current = <long long>(now / self.slot_len)
        self.cell.ring_add(self.current, F_RING_REQUESTS)

    cdef bint try_withdraw(self, double now) noexcept:
        cdef uint64_t requests, retries
        self.current = <long long>(now / self.slot_len)
        self.cell.ring_sums(self.current, &requests, &retries)
        if retries + 1 > self.percent * requests + self.min_per_second * self.window:
            self.exhausted += 1
            return False
        self.cell.ring_add(self.current, F_RING_RETRIES)
        return True

    # Python-level access for tests and the control plane.
    def deposit_at(self, double now):
        self.deposit(now)

    def withdraw_at(self, double now):
        return self.try_withdraw(now)

    @property
    def window_requests(self):
        """Requests in the window as of the latest deposit or withdrawal, over every worker."""
        cdef uint64_t requests, retries
        self.cell.ring_sums(self.current, &requests, &retries)
        return requests

    @property
    def window_retries(self):
        cdef uint64_t requests, retries
        self.cell.ring_sums(self.current, &requests, &retries)
        return retries


cdef class ConcurrencyLimit:
    """Adjusts a concurrency limit from the latencies of finished requests; O(1) per sample, no allocation."""

    def __cinit__(self, double initial=20.0, double min_limit=4.0, double max_limit=1000.0, double tolerance=1.5,
                  double smoothing=0.2):
        self.limit = initial
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.smoothing = smoothing

    cdef void sample(self, double rtt) noexcept:
        cdef double gradient, target
        if rtt <= 0.0:
            return
        self.samples += 1
        if self.samples == 1:
            self.short_rtt = rtt
            self.long_rtt = rtt
        else:
            self.short_rtt += (rtt - self.short_rtt) * 0.1
            self.long_rtt += (rtt - self.long_rtt) * (1.0 / 600.0)
            if self.long_rtt > 2.0 * self.short_rtt:
                # Load went away after a long busy spell: let the baseline come back down faster.
                self.long_rtt *= 0.95
        gradient = self.tolerance * self.long_rtt / self.short_rtt
        if gradient > 1.0:
            gradient = 1.0
        elif gradient < 0.5:
            gradient = 0.5
        target = self.limit * gradient + sqrt(self.limit)
        target = self.limit * (1.0 - self.smoothing) + target * self.smoothing
        if target < self.min_limit:
            target = self.min_limit
        elif target > self.max_limit:
            target = self.max_limit
        self.limit = target

    def sample_py(self, double rtt):
        """For tests: feed one latency in seconds."""
        self.sample(rtt)


cdef class ClusterPolicy:
    """Built by dataplane/clusters.py from the cluster's config."""

    def __cinit__(self, *, int attempts=1, on=("connect-failure",), double budget_percent=0.2,
                  double budget_min_per_second=10.0, double budget_window=10.0, double backoff_base=0.025,
                  double backoff_max=0.25, double timeout=0.0, double per_try_timeout=15.0,
                  long max_connections=1024, long max_pending=1024, long max_requests=1024, long max_retries=3,
                  adaptive=None, LimitCell cell=None, grpc_status=()):
        cdef int code
        self.cell = cell if cell is not None else private_cell()
        self.budget = RetryBudget(budget_percent, budget_min_per_second, budget_window, self.cell)
        self.attempts = max(1, attempts)
        self.retry_on = 0
        memset(self.statuses, 0, sizeof(self.statuses))
        for cls in on:
            if cls == "connect-failure":
                self.retry_on |= RETRY_CONNECT_FAILURE
            elif cls == "reset":
                self.retry_on |= RETRY_RESET
            elif cls == "timeout":
                self.retry_on |= RETRY_TIMEOUT
            elif cls == "5xx":
                self.retry_on |= RETRY_5XX
                for code in range(500, 600):
                    self.statuses[code] = 1
            else:
                code = int(cls)
                if not 100 <= code <= 599:
                    raise ValueError(f"not a status code: {cls!r}")
                self.statuses[code] = 1
        memset(self.grpc_statuses, 0, sizeof(self.grpc_statuses))
        for code in grpc_status:
            if not 1 <= code < GRPC_CODES:
                raise ValueError(f"not a retryable gRPC status: {code!r}")
            self.grpc_statuses[code] = 1
            self.retry_on |= RETRY_GRPC
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.per_try_timeout = per_try_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.adaptive = adaptive          # a ConcurrencyLimit, or None

    cdef bint retryable_status(self, int status) noexcept:
        return 100 <= status < 600 and self.statuses[status] != 0

    cdef bint retryable_grpc(self, int code) noexcept:
        return 0 <= code < GRPC_CODES and self.grpc_statuses[code] != 0

    cdef long request_limit(self) noexcept:
        """Requests the instance may have in flight to the cluster now: max_requests, or the adaptive limit
        when that is lower."""
        cdef long adaptive
        if self.adaptive is None:
            return self.max_requests
        adaptive = <long>self.adaptive.limit
        return adaptive if adaptive < self.max_requests else self.max_requests

    @property
    def retries_on(self):
        return self.retry_on
