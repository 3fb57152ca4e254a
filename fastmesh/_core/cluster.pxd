# Cluster: a named set of endpoints (socket addresses, weights, connect-failure marks) and its balancer.

from libc.stdint cimport uint64_t

from fastmesh._core.includes.system cimport sockaddr_storage, socklen_t
from fastmesh._core.reactor cimport Sweeper
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.stats cimport StatsBlock

cdef enum EndpointState:
    EP_UP = 0                          # eligible; no recent connect failure
    EP_DOWN = 1                        # a connect failed; out of the balancer until down_until
    EP_PROBING = 2                     # back in the balancer; the next connect decides


cdef class Cluster(Sweeper):
    cdef readonly str name             # the config's cluster name, for logs and stats
    cdef int n                         # number of endpoints
    cdef sockaddr_storage *addrs       # socket address per endpoint
    cdef socklen_t *addrlens           # length of each address
    cdef list labels                   # "host:port" per endpoint, for logs and stats
    cdef readonly Balancer balancer    # picks among endpoints that are up
    cdef readonly double connect_timeout   # seconds before a pending connect counts as failed
    cdef readonly int connect_attempts # endpoints tried per downstream connection
    cdef StatsBlock stats              # the block the slot pointers below point into (kept alive through this)
    cdef uint64_t *counters            # cluster-wide C_FIELDS slots (stats.pxd): retries, failed connections
    cdef uint64_t *state               # EP_UP, EP_DOWN (connect failed) or EP_PROBING (re-admitted, on trial)
    cdef uint64_t *seen                # CLOCK_MONOTONIC ns of each endpoint's last connect outcome (0 = none yet)
    cdef uint64_t *active              # upstream connections open per endpoint (connecting included)
    cdef double *down_until            # monotonic time an EP_DOWN endpoint is re-admitted
    cdef double *backoff               # current re-admission delay per endpoint, doubled per failure
    cdef uint64_t *failures            # connect failures per endpoint, ever
    cdef uint64_t *opened              # upstream connections established per endpoint, ever
    cdef uint64_t now_ns               # the last tick's time in ns: connect successes are stamped with it (cheap)
    cdef int cursor                    # round-robin position used when every endpoint is marked down
    cdef double log_after              # monotonic time before which failure logs are counted, not printed
    cdef int log_suppressed            # failure logs held back since the last one printed

    cdef int choose(self, int avoid) noexcept
    cdef int open_socket(self, int i) noexcept
    cdef void connect_failed(self, int i, int err, double now) noexcept
    cdef void connect_succeeded(self, int i) noexcept
    cdef void no_endpoint(self, str why, double now) noexcept
    cdef void point_at(self, StatsBlock block, Py_ssize_t offset) except *

    # Every upstream connection goes through these two: the balancer's in-flight count and the endpoint's
    # active gauge stay in step. Inline here so callers in other modules pay no call.
    cdef inline void upstream_start(self, int i) noexcept:
        self.balancer.request_start(i)
        self.active[i] += 1

    cdef inline void upstream_end(self, int i) noexcept:
        self.balancer.request_end(i)
        self.active[i] -= 1
