"""A cluster's endpoints: their socket addresses, connect-failure marks with backoff, and upstream socket opening.

A connect failure marks the endpoint down at once (its balancer stops picking it); the tick re-admits it after a
backoff that doubles per consecutive failure (0.5 s up to 30 s), and the next real connection is the probe.
When every endpoint is marked down the cluster fails open and tries them in turn: a wrong mark must never make
a cluster unreachable.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy

from fastmesh._core.includes.system cimport (
    socket, connect, setsockopt, close, errno, strerror, sockaddr, sockaddr_in, sockaddr_in6, inet_pton, htons,
    AF_INET, AF_INET6, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, IPPROTO_TCP, TCP_NODELAY, EINPROGRESS,
    clock_gettime, timespec, CLOCK_MONOTONIC,
)
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.stats cimport (
    StatsBlock, cluster_slots, HEADER_SLOTS, C_FIELDS, C_FAILED, E_STATE, E_SEEN, E_ACTIVE, E_OPENED, E_FAILURES,
)

import logging

log = logging.getLogger("fastmesh.cluster")

cdef double BACKOFF_MIN = 0.5
cdef double BACKOFF_MAX = 30.0


cdef class Cluster(Sweeper):
    """Built by dataplane/clusters.py from validated config: endpoints are (family, ip, port) already resolved."""

    def __cinit__(self, str name, list endpoints, Balancer balancer, double connect_timeout=1.0,
                  int connect_attempts=3):
        cdef int i
        cdef sockaddr_in *a4
        cdef sockaddr_in6 *a6
        cdef bytes ip
        cdef timespec ts
        self.name = name
        self.n = len(endpoints)
        if balancer.n != self.n:
            raise ValueError("balancer size does not match the endpoint count")
        self.balancer = balancer
        self.connect_timeout = connect_timeout
        self.connect_attempts = max(1, connect_attempts)
        self.labels = []
        self.addrs = <sockaddr_storage *>calloc(max(self.n, 1), sizeof(sockaddr_storage))
        self.addrlens = <socklen_t *>calloc(max(self.n, 1), sizeof(socklen_t))
        # Counters and endpoint states start in a private block; dataplane/stats.py moves them into the shared one.
        self.point_at(StatsBlock(HEADER_SLOTS + cluster_slots(self.n)), HEADER_SLOTS)
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.now_ns = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
        self.down_until = <double *>calloc(max(self.n, 1), sizeof(double))
        self.backoff = <double *>calloc(max(self.n, 1), sizeof(double))
        if self.addrs == NULL or self.addrlens == NULL or self.down_until == NULL or self.backoff == NULL:
            raise MemoryError()
        for i, (family, host, port) in enumerate(endpoints):
            ip = host.encode("ascii")
            if family == AF_INET6:
                a6 = <sockaddr_in6 *>&self.addrs[i]
                a6.sin6_family = AF_INET6
                a6.sin6_port = htons(port)
                if inet_pton(AF_INET6, ip, &a6.sin6_addr) != 1:
                    raise ValueError(f"not an IPv6 address: {host!r}")
                self.addrlens[i] = sizeof(sockaddr_in6)
                self.labels.append(f"[{host}]:{port}")
            else:
                a4 = <sockaddr_in *>&self.addrs[i]
                a4.sin_family = AF_INET
                a4.sin_port = htons(port)
                if inet_pton(AF_INET, ip, &a4.sin_addr) != 1:
                    raise ValueError(f"not an IPv4 address: {host!r}")
                self.addrlens[i] = sizeof(sockaddr_in)
                self.labels.append(f"{host}:{port}")
            self.backoff[i] = BACKOFF_MIN

    def __dealloc__(self):
        free(self.addrs)
        free(self.addrlens)
        free(self.down_until)
        free(self.backoff)

    cdef void point_at(self, StatsBlock block, Py_ssize_t offset) except *:
        cdef uint64_t *slots = block.region(offset, cluster_slots(self.n))
        self.stats = block
        self.counters = slots
        slots += C_FIELDS
        self.state = slots + E_STATE * self.n
        self.seen = slots + E_SEEN * self.n
        self.active = slots + E_ACTIVE * self.n
        self.opened = slots + E_OPENED * self.n
        self.failures = slots + E_FAILURES * self.n

    def attach_stats(self, StatsBlock block, Py_ssize_t offset):
        """Keep counters and endpoint states in block's cluster region at offset from now on (values move along)."""
        cdef Py_ssize_t i, size = cluster_slots(self.n)
        cdef uint64_t *old = self.counters
        cdef uint64_t *slots = block.region(offset, size)
        if slots == old:
            return
        for i in range(size):
            slots[i] += old[i]
            old[i] = 0
        self.point_at(block, offset)

    # ---- C core ------------------------------------------------------------------------------------

    cdef int choose(self, int avoid) noexcept:
        """The endpoint for the next connect, or -1 for an empty cluster."""
        cdef int i = self.balancer.pick(avoid)
        if i >= 0 or self.n == 0:
            return i
        # Fail open: every endpoint is marked down, so marks are not to be trusted; go round them all.
        i = self.cursor % self.n
        if i == avoid and self.n > 1:
            i = (i + 1) % self.n
        self.cursor = i + 1
        return i

    cdef int open_socket(self, int i) noexcept:
        """A non-blocking socket with a connect to endpoint i under way, or -errno on failure."""
        cdef int one = 1, err
        cdef int fd = socket(self.addrs[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            return -errno
        # Small writes of request/response protocols must not wait for Nagle.
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if connect(fd, <sockaddr *>&self.addrs[i], self.addrlens[i]) < 0 and errno != EINPROGRESS:
            err = errno
            close(fd)
            return -err
        return fd

    cdef void connect_failed(self, int i, int err, double now) noexcept:
        self.failures[i] += 1
        self.seen[i] = <uint64_t>(now * 1e9)
        if self.state[i] == EP_UP:
            self.backoff[i] = BACKOFF_MIN
            self.balancer.endpoint_down(i)
        elif self.state[i] == EP_PROBING:
            self.backoff[i] = min(self.backoff[i] * 2.0, BACKOFF_MAX)
            self.balancer.endpoint_down(i)
        self.state[i] = EP_DOWN
        self.down_until[i] = now + self.backoff[i]
        if now >= self.log_after:
            reason = "connect timeout" if err == 0 else strerror(err).decode("utf-8", "replace")
            extra = f" ({self.log_suppressed} more failures not logged)" if self.log_suppressed else ""
            log.warning("cluster %s: endpoint %s: %s; marked down for %.1fs%s", self.name, self.labels[i],
                        reason, self.backoff[i], extra)
            self.log_after = now + 1.0
            self.log_suppressed = 0
        else:
            self.log_suppressed += 1

    cdef void connect_succeeded(self, int i) noexcept:
        cdef timespec ts
        self.opened[i] += 1
        self.seen[i] = self.now_ns
        if self.state[i] != EP_UP:
            # A recovery must outrank the failure it follows even within one tick: stamp it exactly.
            clock_gettime(CLOCK_MONOTONIC, &ts)
            self.seen[i] = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
            if self.state[i] == EP_DOWN:
                self.balancer.endpoint_up(i)
            self.state[i] = EP_UP
            self.backoff[i] = BACKOFF_MIN

    cdef void no_endpoint(self, str why, double now) noexcept:
        self.counters[C_FAILED] += 1
        if now >= self.log_after:
            log.warning("cluster %s: closing a downstream connection: %s", self.name, why)
            self.log_after = now + 1.0
            self.log_suppressed = 0
        else:
            self.log_suppressed += 1

    cdef void sweep(self, double now) noexcept:
        cdef int i
        self.now_ns = <uint64_t>(now * 1e9)
        for i in range(self.n):
            if self.state[i] == EP_DOWN and now >= self.down_until[i]:
                # Re-admit on trial: the next connection probes it; a failure marks it down for twice as long.
                self.state[i] = EP_PROBING
                self.balancer.endpoint_up(i)

    # ---- Python-facing state -----------------------------------------------------------------------

    def endpoints(self):
        """Each endpoint's address and state, for stats, admin and tests."""
        cdef int i
        return [{
            "address": self.labels[i],
            "state": ("up", "down", "probing")[self.state[i]],
            "active": self.balancer.active[i],
            "connect_failures": self.failures[i],
            "connections": self.opened[i],
        } for i in range(self.n)]
