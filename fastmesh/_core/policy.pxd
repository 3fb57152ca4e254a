# Per-cluster request policy: retry budget, retry rules, timeouts and circuit-breaker limits; cheap checks per request.

from fastmesh._core.limits cimport LimitCell

cdef enum RetryOn:
    RETRY_CONNECT_FAILURE = 1          # the request never reached a backend (always safe)
    RETRY_RESET = 2                    # the connection failed before any response byte
    RETRY_TIMEOUT = 4                  # a try's response timeout expired
    RETRY_5XX = 8                      # any 5xx response (listed codes are in `statuses`)
    RETRY_GRPC = 16                    # a gRPC answer whose grpc-status is in `grpc_statuses` (POST included)

cdef enum:
    GRPC_CODES = 17                    # gRPC status codes 0..16 (grpc/doc/statuscodes.md)


cdef class RetryBudget:
    # Finagle's idea: retries may add at most `percent` of the requests seen over `window` seconds, plus a floor
    # of `min_per_second`. Counts live in a ring of time slots (limits.pxd's BUDGET_RING) in the cluster's limit
    # cell, so old traffic leaves the window slot by slot and every worker of the instance draws on one budget.
    cdef double percent                # share of requests that may be retried (0.2 = 20%)
    cdef double min_per_second         # retries always allowed per second, whatever the traffic
    cdef double window                 # seconds of history
    cdef double slot_len               # window / BUDGET_RING
    cdef long long current             # the time slot of the latest deposit or withdrawal
    cdef LimitCell cell                # where the ring lives (shared by the instance's workers, or private)
    cdef readonly unsigned long long exhausted   # retries refused by the budget, ever (this process)

    cdef void deposit(self, double now) noexcept
    cdef bint try_withdraw(self, double now) noexcept


cdef class ConcurrencyLimit:
    # A gradient limiter (Netflix concurrency-limits' Gradient2, simplified): the limit follows
    # limit * clamp(tolerance * long_rtt / short_rtt, 0.5, 1) + sqrt(limit), smoothed, so it grows while latency holds
    # and falls as soon as latency climbs above its long-run level.
    cdef readonly double limit         # requests in flight allowed now
    cdef readonly double min_limit     # floor of the limit
    cdef readonly double max_limit     # ceiling of the limit
    cdef readonly double tolerance     # how far short-term latency may exceed the long-run level before cutting
    cdef readonly double smoothing     # share of each new estimate taken into the limit
    cdef readonly double short_rtt     # EWMA of recent latencies (about 10 samples)
    cdef readonly double long_rtt      # EWMA of latencies over about 600 samples: the no-load baseline
    cdef readonly unsigned long long samples   # latencies seen

    cdef void sample(self, double rtt) noexcept


cdef class ClusterPolicy:
    # Everything about how requests to one cluster are handled beyond picking an endpoint.
    cdef readonly RetryBudget budget   # caps retries relative to traffic
    cdef readonly int attempts         # tries per request, first one included (1 = no retries)
    cdef readonly int retry_on         # RetryOn bits
    cdef unsigned char statuses[600]   # 1 for each status code that is retried (with RETRY_5XX: all of 500..599)
    cdef unsigned char grpc_statuses[GRPC_CODES]   # 1 for each grpc-status that is retried (RETRY_GRPC set if any)
    cdef readonly double backoff_base  # first retry waits up to this (jittered), doubling per retry
    cdef readonly double backoff_max   # retry wait cap
    cdef readonly double timeout       # total seconds per request, retries included (0 = none)
    cdef readonly double per_try_timeout   # seconds from a try's start to its response head
    cdef readonly long max_connections  # circuit breakers (for the instance): upstream connections open
    cdef readonly long max_pending     # requests waiting for a connection slot (0: none wait)
    cdef readonly long max_requests    # requests in flight
    cdef readonly long max_retries     # retries in flight
    cdef readonly LimitCell cell       # the instance's counts that the limits above are checked against
    cdef readonly long requests_active  # requests in flight now in this process
    cdef readonly long retries_active  # retries in flight now in this process
    cdef readonly unsigned long long overloaded   # requests refused by a circuit breaker, ever
    cdef readonly unsigned long long retried      # retries sent, ever
    cdef readonly ConcurrencyLimit adaptive   # adaptive concurrency limit, None when off

    cdef bint retryable_status(self, int status) noexcept
    cdef bint retryable_grpc(self, int code) noexcept
    cdef long request_limit(self) noexcept
