"""A cluster's endpoints: socket addresses, eligibility (connect marks, health, outlier ejection), socket opening.

An endpoint is out of the balancer while any reason holds (a bit of `out`): the balancer hears endpoint_down
when the first reason appears and endpoint_up when the last one goes, so the three mechanisms never undo
each other.

Connect marks: a connect failure marks the endpoint down at once; the tick re-admits it after a backoff that
doubles per consecutive failure (0.5 s up to 30 s), and the next real connection is the probe.

Active health: Cluster.set_health(i, ok) from the checker (fastmesh/health/active.py).

Outlier detection (Linkerd 1's failure accrual): `consecutive` failures in a row (5xx answers, resets, response
timeouts, failed connects) eject the endpoint for base_ejection * 2^(ejections - 1), +-20% so that endpoints
ejected together do not return together, capped at max_ejection. When the ejection ends the endpoint is
re-admitted on trial: its next outcome decides (success: back to normal; failure: ejected again, for longer).
The ejection count drops by one per clean minute. A connect success refutes only connect failures: for a TCP
relay it is the success, while an HTTP endpoint answering 503 on fresh connections keeps its streak. Optional
success rate: at the end of each window, an endpoint with at least sr_minimum outcomes and a success share
below sr_threshold is ejected the same way (endpoints judged in index order, under the same cap).
Ejections never take more than max_ejected_percent of the endpoints out (one over the cap is skipped); and
when every endpoint is out for whatever reason the cluster fails open and tries them in turn: a wrong mark
must never make a cluster unreachable.
"""
from libc.math cimport ldexp
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

from fastmesh._core.includes.system cimport (
    socket, connect, setsockopt, close, errno, strerror, sockaddr, sockaddr_in, sockaddr_in6, inet_pton, htons,
    AF_INET, AF_INET6, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, IPPROTO_TCP, TCP_NODELAY, EINPROGRESS,
    clock_gettime, timespec, CLOCK_MONOTONIC,
)
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.stats cimport (
    StatsBlock, cluster_slots, HEADER_SLOTS, C_FIELDS, C_RETRIES, C_FAILED, C_EJECTIONS, C_CHECKS_OK, C_CHECKS_FAILED,
    C_GRPC, C_GRPC_OTHER,
    E_STATE, E_SEEN, E_ACTIVE, E_OPENED, E_FAILURES, bump,
)

import logging

from fastmesh._core.stats import GRPC_STATUSES

log = logging.getLogger("fastmesh.cluster")

cdef double BACKOFF_MIN = 0.5
cdef double BACKOFF_MAX = 30.0
cdef double EJECTION_JITTER = 0.2      # ejections last +-20%: endpoints ejected together come back apart
cdef double DECAY_AFTER = 60.0         # seconds without a failure that take one off an endpoint's ejection count
cdef int MAX_DOUBLINGS = 30            # 2^30 * any base ejection is past any max_ejection: stop doubling there
STATE_NAMES = ("up", "down", "probing", "unhealthy", "ejected")   # EndpointState numbering


cdef int _index(Cluster c, i) except -1:
    if not 0 <= i < c.n:
        raise IndexError(f"endpoint {i} out of range 0..{c.n - 1}")
    return i


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
        self.mark = <unsigned char *>calloc(max(self.n, 1), sizeof(unsigned char))
        self.out = <unsigned char *>calloc(max(self.n, 1), sizeof(unsigned char))
        self.accrual = <Accrual *>calloc(max(self.n, 1), sizeof(Accrual))
        if (self.addrs == NULL or self.addrlens == NULL or self.down_until == NULL or self.backoff == NULL
                or self.mark == NULL or self.out == NULL or self.accrual == NULL):
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
            self.accrual[i].connect_only = True
        # Outlier detection is off until set_outlier(): a Cluster built by hand (tests, tools) behaves as
        # configured, nothing more; dataplane wiring applies the config's defaults.

    def __dealloc__(self):
        free(self.addrs)
        free(self.addrlens)
        free(self.down_until)
        free(self.backoff)
        free(self.mark)
        free(self.out)
        free(self.accrual)

    def set_outlier(self, bint enabled, int consecutive_failures=5, double base_ejection=5.0,
                    double max_ejection=300.0, int max_ejected_percent=50, double success_rate_window=0.0,
                    int success_rate_minimum=20, double success_rate_threshold=0.5):
        """Configure outlier detection (config/schema.py's Outlier has the meaning of each value).

        Turning it off re-admits every ejected endpoint; values are checked by the config loader, only
        sanity-checked here."""
        cdef int i
        if enabled and (consecutive_failures < 1 or not base_ejection > 0.0 or max_ejection < base_ejection
                        or not 0 <= max_ejected_percent <= 100 or success_rate_window < 0.0
                        or success_rate_minimum < 1 or not 0.0 <= success_rate_threshold <= 1.0):
            raise ValueError("outlier settings out of range")
        self.outlier = enabled
        self.consecutive = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.max_ejected_percent = max_ejected_percent
        self.sr_window = success_rate_window if enabled else 0.0
        self.sr_minimum = <unsigned int>success_rate_minimum
        self.sr_threshold = success_rate_threshold
        self.sr_due = <double>self.now_ns / 1e9 + self.sr_window
        for i in range(self.n):
            self.accrual[i].sr_ok = 0
            self.accrual[i].sr_failed = 0
            if not enabled:
                self.accrual[i].streak = 0
                self.accrual[i].trial = False
                if self.out[i] & OUT_OUTLIER:
                    self.n_ejected -= 1
                    self.clear_out(i, OUT_OUTLIER)

    cdef void point_at(self, StatsBlock block, Py_ssize_t offset) except *:
        cdef uint64_t *slots = block.region(offset, cluster_slots(self.n))
        self.stats = block
        self.counters = slots
        slots += C_FIELDS
        self.state = slots + E_STATE * self.n          # published by publish(); the mark lives in `mark`
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
        if self.mark[i] == EP_PROBING:
            # One probe decides: out of the balancer again until this connect succeeds or fails, so a busy
            # cluster does not send a burst of connections to an endpoint that is most likely still down.
            self.set_out(i, OUT_CONNECT)
        # Small writes of request/response protocols must not wait for Nagle.
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if connect(fd, <sockaddr *>&self.addrs[i], self.addrlens[i]) < 0 and errno != EINPROGRESS:
            err = errno
            close(fd)
            return -err
        return fd

    cdef void connect_failed(self, int i, int err, double now) noexcept:
        bump(self.failures + i, 1)
        self.seen[i] = <uint64_t>(now * 1e9)
        if self.mark[i] == EP_UP:
            self.backoff[i] = BACKOFF_MIN
        elif self.mark[i] == EP_PROBING:
            self.backoff[i] = min(self.backoff[i] * 2.0, BACKOFF_MAX)
        self.mark[i] = EP_DOWN
        self.down_until[i] = now + self.backoff[i]
        self.set_out(i, OUT_CONNECT)
        if self.outlier:
            self.accrue_failure(i, now)
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
        cdef Accrual *a = &self.accrual[i]
        bump(self.opened + i, 1)
        self.seen[i] = self.now_ns
        if self.mark[i] != EP_UP:
            # A recovery must outrank the failure it follows even within one tick: stamp it exactly.
            clock_gettime(CLOCK_MONOTONIC, &ts)
            self.seen[i] = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
            self.mark[i] = EP_UP
            self.backoff[i] = BACKOFF_MIN
            self.clear_out(i, OUT_CONNECT)
        # It refutes connect failures only (see the module docstring): the TCP relay's success.
        if self.outlier and a.connect_only and (a.streak or a.trial):
            self.accrue_success(i)

    cdef void request_succeeded(self, int i) noexcept:
        """Call for every exchange with endpoint i that ended without a failure (any status below 500 from the
        upstream). Cheap: one increment and a test unless there is a streak or a trial to end."""
        cdef Accrual *a = &self.accrual[i]
        a.sr_ok += 1            # counted even with success rate off: a wrap-around there is never read
        if a.streak or a.trial or not a.connect_only:
            a.connect_only = True
            if self.outlier:
                self.accrue_success(i)

    cdef void request_failed(self, int i, double now) noexcept:
        """Call for every exchange with endpoint i that failed: a 5xx status from the upstream, a reset or an
        upstream that closed before the whole response, a response timeout. Not for connect failures (they go
        through connect_failed) nor for the proxy's own answers to the client's mistakes."""
        self.accrual[i].connect_only = False
        if self.outlier:
            self.accrue_failure(i, now)

    # ---- eligibility ---------------------------------------------------------------------------------

    cdef void set_out(self, int i, unsigned char why) noexcept:
        """Add reason `why` to endpoint i's; the first reason takes it out of the balancer."""
        cdef unsigned char was = self.out[i]
        self.out[i] = was | why
        if was == 0 and why != 0:
            self.balancer.endpoint_down(i)
        self.publish(i)

    cdef void clear_out(self, int i, unsigned char why) noexcept:
        """Drop reason `why`; when no reason is left the balancer may pick endpoint i again."""
        cdef unsigned char was = self.out[i]
        self.out[i] = was & ~why
        if was != 0 and self.out[i] == 0:
            self.balancer.endpoint_up(i)
        self.publish(i)

    cdef void publish(self, int i) noexcept:
        """The E_STATE slot: one word for readers, the most telling reason first (a failed connect explains
        an ejection that followed it; an ejection is sharper than failed checks)."""
        cdef unsigned char why = self.out[i]
        if self.mark[i] == EP_DOWN:
            self.state[i] = EP_DOWN
        elif why & OUT_OUTLIER:
            self.state[i] = EP_EJECTED
        elif why & OUT_HEALTH:
            self.state[i] = EP_UNHEALTHY
        else:
            self.state[i] = self.mark[i]

    # ---- outlier detection ---------------------------------------------------------------------------

    cdef void accrue_failure(self, int i, double now) noexcept:
        cdef Accrual *a = &self.accrual[i]
        a.streak += 1
        a.sr_failed += 1
        a.clean_since = now
        if self.out[i] & OUT_OUTLIER:
            return              # a request that was in flight when the endpoint was ejected
        if a.trial:
            self.eject(i, now, "failed its trial after an ejection")
        elif a.streak >= self.consecutive:
            self.eject(i, now, f"{a.streak} consecutive failures")

    cdef void accrue_success(self, int i) noexcept:
        cdef Accrual *a = &self.accrual[i]
        a.streak = 0
        if a.trial:
            a.trial = False
            log.info("cluster %s: endpoint %s passed its trial after an ejection", self.name, self.labels[i])

    cdef void eject(self, int i, double now, str why) noexcept:
        """Take endpoint i out for base_ejection * 2^(ejections - 1), jittered and capped; skipped (the streak
        stays, so the next failure asks again) while that would eject more than max_ejected_percent."""
        cdef Accrual *a = &self.accrual[i]
        cdef double seconds, draw
        if (self.n_ejected + 1) * 100 > self.n * self.max_ejected_percent:
            return
        a.ejections += 1
        a.trial = False
        a.streak = 0
        seconds = ldexp(self.base_ejection, min(a.ejections - 1, MAX_DOUBLINGS))
        draw = <double>(self.balancer.next_random() >> 11) * (1.0 / 9007199254740992.0)   # [0, 1) from 53 bits
        seconds *= 1.0 - EJECTION_JITTER + 2.0 * EJECTION_JITTER * draw
        seconds = min(seconds, self.max_ejection)
        a.until = now + seconds
        self.n_ejected += 1
        bump(self.counters + C_EJECTIONS, 1)
        self.seen[i] = <uint64_t>(now * 1e9)
        self.set_out(i, OUT_OUTLIER)
        log.warning("cluster %s: endpoint %s ejected for %.1fs: %s (ejection %d)", self.name, self.labels[i],
                    seconds, why, a.ejections)

    cdef void judge_success_rates(self, double now) noexcept:
        cdef int i
        cdef Accrual *a
        cdef unsigned int total
        for i in range(self.n):
            a = &self.accrual[i]
            total = a.sr_ok + a.sr_failed
            if not (self.out[i] & OUT_OUTLIER) and total >= self.sr_minimum and total > 0 \
                    and <double>a.sr_ok < self.sr_threshold * <double>total:
                self.eject(i, now, f"success rate {100.0 * a.sr_ok / total:.0f}% over {total} requests")
            a.sr_ok = 0
            a.sr_failed = 0

    cdef void no_endpoint(self, str why, double now) noexcept:
        bump(self.counters + C_FAILED, 1)
        if now >= self.log_after:
            log.warning("cluster %s: giving up on a connection or request: %s", self.name, why)
            self.log_after = now + 1.0
            self.log_suppressed = 0
        else:
            self.log_suppressed += 1

    cdef void sweep(self, double now) noexcept:
        cdef int i
        cdef Accrual *a
        self.now_ns = <uint64_t>(now * 1e9)
        for i in range(self.n):
            if self.mark[i] == EP_DOWN and now >= self.down_until[i]:
                # Re-admit on trial: the next connection probes it; a failure marks it down for twice as long.
                self.mark[i] = EP_PROBING
                self.clear_out(i, OUT_CONNECT)
            a = &self.accrual[i]
            if self.out[i] & OUT_OUTLIER:
                if now >= a.until:
                    # Back on trial: the next outcome decides.
                    self.n_ejected -= 1
                    a.trial = True
                    a.streak = 0
                    a.clean_since = now
                    self.seen[i] = self.now_ns
                    self.clear_out(i, OUT_OUTLIER)
            elif a.ejections > 0 and not a.trial and now - a.clean_since >= DECAY_AFTER:
                a.ejections -= 1
                a.clean_since = now
        if self.sr_window > 0.0 and now >= self.sr_due:
            self.judge_success_rates(now)
            self.sr_due = now + self.sr_window

    # ---- Python-facing state -----------------------------------------------------------------------

    def endpoints(self):
        """Each endpoint's address and state, for stats, admin and tests. `state` is the published word;
        `healthy` is the active checks' verdict; `ejected_until` is monotonic seconds (None when not ejected)."""
        cdef int i
        return [{
            "address": self.labels[i],
            "state": STATE_NAMES[self.state[i]],
            "eligible": self.out[i] == 0,
            "healthy": not (self.out[i] & OUT_HEALTH),
            "ejected": bool(self.out[i] & OUT_OUTLIER),
            "ejected_until": self.accrual[i].until if self.out[i] & OUT_OUTLIER else None,
            "ejections": self.accrual[i].ejections,
            "consecutive_failures": self.accrual[i].streak,
            "active": self.balancer.active[i],
            "connect_failures": self.failures[i],
            "connections": self.opened[i],
        } for i in range(self.n)]

    def set_health(self, i, bint healthy):
        """The active checker's verdict on endpoint i (only transitions need to be reported)."""
        cdef int k = _index(self, i)
        cdef timespec ts
        # Stamped exactly, like a connect recovery: across workers the latest word on an endpoint wins.
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.seen[k] = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
        if healthy:
            self.clear_out(k, OUT_HEALTH)
        else:
            self.set_out(k, OUT_HEALTH)

    def count_check(self, bint ok):
        """One active health check of this cluster ended (ok: it passed)."""
        self.counters[C_CHECKS_OK if ok else C_CHECKS_FAILED] += 1

    @property
    def ejected_count(self):
        """Endpoints ejected by outlier detection now."""
        return self.n_ejected

    @property
    def counts(self):
        """The cluster-wide counters by name (stats.pyx's CLUSTER_FIELDS order)."""
        return {"retries": self.counters[C_RETRIES], "failed": self.counters[C_FAILED],
                "ejections": self.counters[C_EJECTIONS], "checks_ok": self.counters[C_CHECKS_OK],
                "checks_failed": self.counters[C_CHECKS_FAILED],
                "grpc": {GRPC_STATUSES[i]: self.counters[C_GRPC + i]
                         for i in range(C_GRPC_OTHER - C_GRPC + 1) if self.counters[C_GRPC + i]}}

    # ---- the C entry points, callable from Python: tests drive the eligibility logic through these --------

    def request_ok(self, i):
        """request_succeeded(i)."""
        self.request_succeeded(_index(self, i))

    def request_fail(self, i, double now):
        """request_failed(i, now)."""
        self.request_failed(_index(self, i), now)

    def connect_ok(self, i):
        """connect_succeeded(i)."""
        self.connect_succeeded(_index(self, i))

    def connect_fail(self, i, double now, int err=111):
        """connect_failed(i, err, now); err 0 is a timeout, 111 ECONNREFUSED."""
        self.connect_failed(_index(self, i), err, now)

    def tick(self, double now):
        """What the reactor's tick does: re-admissions, ejection ends, decay, success-rate windows."""
        self.sweep(now)

    def pick(self, int avoid=-1):
        """choose(avoid): the balancer's pick, or the fail-open rotation when no endpoint is eligible."""
        return self.choose(avoid)
