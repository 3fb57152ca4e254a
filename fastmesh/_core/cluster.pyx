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

Endpoint set updates (update(), from discovery): an endpoint is an index that never changes meaning. An
endpoint still listed keeps its index and everything kept per index (connect mark, health, ejection and its
accrual, the balancer's latency estimate and in-flight count, the pool's idle connections), its weight and
tier changed in place. A removed endpoint becomes a tombstone (OUT_REMOVED): out of the balancer at once and
for good, while the requests and connections that hold its index finish and report to it as before. An
added endpoint is appended (the arrays grow) and comes up through the balancer's endpoint_up, so it enters
slow start. Tombstones are never reused here: a connection that outlived its endpoint would otherwise
report its failure to a stranger, and the stats block's per-endpoint slots (indexed the same way) would
change owner under the supervisor's reader. Instead the supervisor, which assigns the slots (the
discovery manager), compacts when tombstones outnumber live endpoints; a compacted set no longer extends
this cluster's slots, so update() refuses it and the dataplane builds a new cluster (state carried over by
address with adopt()), as a reload does. A remap would have to find and rewrite every index held by a
connection, a pool and a retry in flight; tombstones cost a few dozen bytes per removed endpoint until then.

Priority tiers (DNS SRV priorities, endpoint `priority`): the balancer picks only from the most preferred
tier with an eligible endpoint (`serving`); the others are out with OUT_STANDBY. When the last eligible
endpoint of the serving tier goes out, the next tier takes over; when one of a more preferred tier is
eligible again, it takes back. Only tier switches walk the endpoints.
"""
from libc.math cimport ldexp
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memset

from fastmesh._core.includes.system cimport (
    socket, connect, setsockopt, close, errno, strerror, sockaddr, sockaddr_in, sockaddr_in6, inet_pton, htons,
    AF_INET, AF_INET6, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, IPPROTO_TCP, TCP_NODELAY, EINPROGRESS,
    clock_gettime, timespec, CLOCK_MONOTONIC,
)
from fastmesh._core.balance.base cimport Balancer
from fastmesh._core.stats cimport (
    StatsBlock, cluster_slots, HEADER_SLOTS, C_FIELDS, E_FIELDS, C_RETRIES, C_FAILED, C_EJECTIONS, C_CHECKS_OK,
    C_CHECKS_FAILED, C_GRPC, C_GRPC_OTHER, C_TLS_HANDSHAKES, C_TLS_RESUMED, C_TLS_FAILED, E_STATE, E_SEEN,
    E_ACTIVE, E_OPENED, E_FAILURES, bump,
)

import logging

from fastmesh._core.stats import GRPC_STATUSES

log = logging.getLogger("fastmesh.cluster")

cdef double BACKOFF_MIN = 0.5
cdef double BACKOFF_MAX = 30.0
cdef double EJECTION_JITTER = 0.2      # ejections last +-20%: endpoints ejected together come back apart
cdef double DECAY_AFTER = 60.0         # seconds without a failure that take one off an endpoint's ejection count
cdef int MAX_DOUBLINGS = 30            # 2^30 * any base ejection is past any max_ejection: stop doubling there
STATE_NAMES = ("up", "down", "probing", "unhealthy", "ejected", "removed", "standby")   # EndpointState numbering


def endpoint_label(int family, str host, int port):
    """"host:port", "[v6]:port": how a cluster names an endpoint in logs, stats and updates."""
    return _label(family, host, port)


cdef inline str _label(int family, str host, int port):
    # endpoint_label() without a Python call: an update labels and compares up to 10,000 endpoints.
    return f"[{host}]:{port}" if family == AF_INET6 else f"{host}:{port}"


cdef void *_more(void *p, Py_ssize_t old_n, Py_ssize_t n, size_t size) except NULL:
    # An endpoint array (max(old_n, 1) entries, as allocated) reallocated to n entries, the new ones zeroed.
    cdef void *q = realloc(p, n * size)
    if q == NULL:
        raise MemoryError()
    memset(<char *>q + old_n * size, 0, (n - old_n) * size)
    return q


cdef int _check_ip(int family, str host) except -1:
    # ValueError unless host is an IP literal of family.
    cdef unsigned char buf[16]
    if inet_pton(AF_INET6 if family == AF_INET6 else AF_INET, host.encode("ascii"), buf) != 1:
        raise ValueError(f"not an IPv{6 if family == AF_INET6 else 4} address: {host!r}")
    return 0


cdef int _index(Cluster c, i) except -1:
    if not 0 <= i < c.n:
        raise IndexError(f"endpoint {i} out of range 0..{c.n - 1}")
    return i


cdef class Cluster(Sweeper):
    """Built by dataplane/clusters.py from validated config: endpoints are (family, ip, port) already resolved."""

    def __cinit__(self, str name, list endpoints, Balancer balancer, double connect_timeout=1.0,
                  int connect_attempts=3):
        cdef int i
        cdef timespec ts
        self.name = name
        self.n = len(endpoints)
        self.n_tiers = 1
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
        self.tier = <int *>calloc(max(self.n, 1), sizeof(int))
        self.tier_ok = <int *>calloc(1, sizeof(int))
        if (self.addrs == NULL or self.addrlens == NULL or self.down_until == NULL or self.backoff == NULL
                or self.mark == NULL or self.out == NULL or self.accrual == NULL or self.tier == NULL
                or self.tier_ok == NULL):
            raise MemoryError()
        # An entry is (family, ip, port), (family, ip, port, tier) or None: a hole, a slot whose endpoint was
        # removed before this cluster was built (a worker started after the supervisor's update keeps the same
        # slots as the workers that saw it).
        balancer.begin_batch()
        for i, entry in enumerate(endpoints):
            self.backoff[i] = BACKOFF_MIN
            self.accrual[i].connect_only = True
            if entry is None:
                self.set_address(i, AF_INET, "0.0.0.0", 0)
                self.labels[i] = "-"
                self.out[i] = OUT_REMOVED
                self.state[i] = EP_REMOVED
                balancer.remove(i)
                continue
            self.set_address(i, entry[0], entry[1], entry[2])
            self.tier[i] = entry[3] if len(entry) > 3 else 0
            self.n_live += 1
        balancer.end_batch()
        self.count_tiers()
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
        free(self.tier)
        free(self.tier_ok)

    cdef void set_address(self, int i, int family, str host, int port) except *:
        """Endpoint i's socket address and label (labels grow with the endpoints)."""
        cdef sockaddr_in *a4
        cdef sockaddr_in6 *a6
        cdef bytes ip = host.encode("ascii")
        if family == AF_INET6:
            a6 = <sockaddr_in6 *>&self.addrs[i]
            a6.sin6_family = AF_INET6
            a6.sin6_port = htons(port)
            if inet_pton(AF_INET6, ip, &a6.sin6_addr) != 1:
                raise ValueError(f"not an IPv6 address: {host!r}")
            self.addrlens[i] = sizeof(sockaddr_in6)
        else:
            a4 = <sockaddr_in *>&self.addrs[i]
            a4.sin_family = AF_INET
            a4.sin_port = htons(port)
            if inet_pton(AF_INET, ip, &a4.sin_addr) != 1:
                raise ValueError(f"not an IPv4 address: {host!r}")
            self.addrlens[i] = sizeof(sockaddr_in)
        label = _label(family, host, port)
        if i < len(self.labels):
            self.labels[i] = label
        else:
            self.labels.append(label)

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
        cdef int k
        if i >= 0 or self.n_live == 0:
            return i
        # Fail open: every endpoint is marked down, so marks are not to be trusted; go round them all (not the
        # removed ones: they are not marked, they are gone).
        for k in range(self.n):
            i = (self.cursor + k) % self.n
            if self.out[i] & OUT_REMOVED or (i == avoid and self.n_live > 1):
                continue
            self.cursor = i + 1
            return i
        return -1

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
        if self.n_tiers > 1 and (was & ~OUT_STANDBY) == 0 and (self.out[i] & ~OUT_STANDBY) != 0:
            # Its tier has one eligible endpoint fewer: the next tier may have to take over.
            self.tier_ok[self.tier[i]] -= 1
            self.pick_tier()
        self.publish(i)

    cdef void clear_out(self, int i, unsigned char why) noexcept:
        """Drop reason `why`; when no reason is left the balancer may pick endpoint i again."""
        cdef unsigned char was = self.out[i]
        self.out[i] = was & ~why
        if was != 0 and self.out[i] == 0:
            self.balancer.endpoint_up(i)
        if self.n_tiers > 1 and (was & ~OUT_STANDBY) != 0 and (self.out[i] & ~OUT_STANDBY) == 0:
            # Eligible again: a more preferred tier than the serving one takes back.
            self.tier_ok[self.tier[i]] += 1
            self.pick_tier()
        self.publish(i)

    cdef void pick_tier(self) noexcept:
        """Serve from the most preferred tier with an eligible endpoint (unchanged while none has one: the
        fail-open rotation covers that); only a switch walks the endpoints."""
        cdef int t, s = -1
        for t in range(self.n_tiers):
            if self.tier_ok[t] > 0:
                s = t
                break
        if s >= 0 and s != self.serving:
            self.serving = s
            self.apply_standby()

    cdef void apply_standby(self) noexcept:
        """OUT_STANDBY on exactly the live endpoints of tiers behind the serving one (one balancer batch)."""
        cdef int i
        cdef bint nested = self.balancer.batching
        if not nested:
            self.balancer.begin_batch()
        for i in range(self.n):
            if self.out[i] & OUT_REMOVED:
                continue
            if self.tier[i] > self.serving:
                if not self.out[i] & OUT_STANDBY:
                    self.set_out(i, OUT_STANDBY)
            elif self.out[i] & OUT_STANDBY:
                self.clear_out(i, OUT_STANDBY)
        if not nested:
            try:
                self.balancer.end_batch()
            except MemoryError:
                log.error("cluster %s: out of memory rebuilding the balancer's tables", self.name)

    cdef void count_tiers(self) noexcept:
        """Recount the eligible endpoints per tier (after tiers changed) and choose the serving tier again."""
        cdef int i, t, n_tiers = 1
        cdef int *counts
        for i in range(self.n):
            if not self.out[i] & OUT_REMOVED and self.tier[i] + 1 > n_tiers:
                n_tiers = self.tier[i] + 1
        counts = <int *>calloc(n_tiers, sizeof(int))
        if counts == NULL:
            return
        for i in range(self.n):
            if not self.out[i] & OUT_REMOVED and (self.out[i] & ~OUT_STANDBY) == 0:
                counts[self.tier[i]] += 1
        free(self.tier_ok)
        self.tier_ok = counts
        self.n_tiers = n_tiers
        self.serving = 0
        for t in range(n_tiers):
            if counts[t] > 0:
                self.serving = t
                break
        self.apply_standby()

    cdef void publish(self, int i) noexcept:
        """The E_STATE slot: one word for readers, the most telling reason first (a failed connect explains
        an ejection that followed it; an ejection is sharper than failed checks)."""
        cdef unsigned char why = self.out[i]
        if why & OUT_REMOVED:
            self.state[i] = EP_REMOVED
        elif self.mark[i] == EP_DOWN:
            self.state[i] = EP_DOWN
        elif why & OUT_OUTLIER:
            self.state[i] = EP_EJECTED
        elif why & OUT_HEALTH:
            self.state[i] = EP_UNHEALTHY
        elif why & OUT_STANDBY:
            self.state[i] = EP_STANDBY
        else:
            self.state[i] = self.mark[i]

    # ---- endpoint set updates ------------------------------------------------------------------------

    cdef int grow(self, int n) except -1:
        """Room for n endpoints (appended slots zeroed); the stats region moves to a private block of the new
        shape, values along (the dataplane then attaches the supervisor's block of the new layout)."""
        cdef int old_n = self.n, i, f
        cdef StatsBlock block
        cdef uint64_t *dst
        cdef uint64_t *src = self.counters
        if n <= old_n:
            return 0
        self.addrs = <sockaddr_storage *>_more(self.addrs, old_n, n, sizeof(sockaddr_storage))
        self.addrlens = <socklen_t *>_more(self.addrlens, old_n, n, sizeof(socklen_t))
        self.down_until = <double *>_more(self.down_until, old_n, n, sizeof(double))
        self.backoff = <double *>_more(self.backoff, old_n, n, sizeof(double))
        self.mark = <unsigned char *>_more(self.mark, old_n, n, sizeof(unsigned char))
        self.out = <unsigned char *>_more(self.out, old_n, n, sizeof(unsigned char))
        self.accrual = <Accrual *>_more(self.accrual, old_n, n, sizeof(Accrual))
        self.tier = <int *>_more(self.tier, old_n, n, sizeof(int))
        block = StatsBlock(HEADER_SLOTS + cluster_slots(n))
        dst = block.region(HEADER_SLOTS, cluster_slots(n))
        for i in range(C_FIELDS):
            dst[i] = src[i]
            src[i] = 0
        for f in range(E_FIELDS):
            for i in range(old_n):
                dst[C_FIELDS + f * n + i] = src[C_FIELDS + f * old_n + i]
                src[C_FIELDS + f * old_n + i] = 0
        self.balancer.resize(n)
        self.n = n
        self.point_at(block, HEADER_SLOTS)
        for i in range(old_n, n):
            self.backoff[i] = BACKOFF_MIN
            self.accrual[i].connect_only = True
        return 0

    cdef void remove_endpoint(self, int i) noexcept:
        """Endpoint i left the set: out for good; what is in flight to it finishes and reports to it."""
        if self.out[i] & OUT_REMOVED:
            return
        if self.out[i] & OUT_OUTLIER:
            self.n_ejected -= 1
        self.seen[i] = self.now_ns
        self.set_out(i, OUT_REMOVED)
        self.balancer.remove(i)
        self.n_live -= 1

    def update(self, list table):
        """Apply the endpoint set `table`, slot by slot: entry i is (family, ip, port, weight, tier, id) or None
        for a slot whose endpoint is gone. It must extend this cluster's slots: every live endpoint at the
        same index or None, tombstones still None, new endpoints appended (the discovery manager assigns
        slots that way). ValueError, with nothing changed, when it does not: the caller builds a new
        cluster then. Returns (added, removed, changed weight or tier) counts.

        One balancer batch: 10,000 endpoints added or removed cost O(n) in all, not O(n) each."""
        cdef int i, old_n = self.n, n = len(table), added = 0, removed = 0, changed = 0
        cdef Balancer balancer = self.balancer
        if n < old_n:
            raise ValueError(f"cluster {self.name}: {n} slots do not extend the {old_n} it has")
        for i in range(old_n):
            e = table[i]
            if e is None:
                continue
            if self.out[i] & OUT_REMOVED or self.labels[i] != _label(e[0], e[1], e[2]):
                raise ValueError(f"cluster {self.name}: slot {i} holds {self.labels[i]}, not "
                                 f"{endpoint_label(e[0], e[1], e[2])}")
        for i in range(old_n, n):       # check the new addresses before anything changes
            e = table[i]
            if e is not None:
                _check_ip(e[0], e[1])
        balancer.begin_batch()
        try:
            self.grow(n)
            for i in range(old_n):
                if self.out[i] & OUT_REMOVED:
                    continue
                e = table[i]
                if e is None:
                    self.remove_endpoint(i)
                    removed += 1
                elif balancer.config_weights[i] != e[3] or self.tier[i] != e[4]:
                    balancer.set_config_weight(i, e[3])
                    self.tier[i] = e[4]
                    changed += 1
            for i in range(old_n, n):
                e = table[i]
                if e is None:
                    self.set_address(i, AF_INET, "0.0.0.0", 0)
                    self.labels[i] = "-"
                    self.out[i] = OUT_REMOVED
                    self.state[i] = EP_REMOVED
                    balancer.remove(i)
                    continue
                self.set_address(i, e[0], e[1], e[2])
                balancer.set_config_weight(i, e[3])
                balancer.set_endpoint_id(i, <unsigned long long>e[5])
                self.tier[i] = e[4]
                self.n_live += 1
                self.publish(i)
                balancer.endpoint_up(i)             # slow start, a fresh latency estimate
                added += 1
            self.count_tiers()
        finally:
            balancer.end_batch()
        return added, removed, changed

    def adopt(self, Cluster old):
        """Carry over, by address, what `old` (the cluster this one replaces) knew of the endpoints both have:
        connect marks, health verdicts, ejections and their accrual, the balancer's latency estimate."""
        cdef int i, j
        cdef unsigned char why
        index = {old.labels[j]: j for j in range(old.n) if not old.out[j] & OUT_REMOVED}
        self.balancer.begin_batch()
        try:
            for i in range(self.n):
                if self.out[i] & OUT_REMOVED:
                    continue
                j = index.get(self.labels[i], -1)
                if j < 0:
                    continue
                self.mark[i] = old.mark[j]
                self.down_until[i] = old.down_until[j]
                self.backoff[i] = old.backoff[j]
                self.accrual[i] = old.accrual[j]
                self.seen[i] = old.seen[j]
                why = old.out[j] & (OUT_CONNECT | OUT_HEALTH | OUT_OUTLIER)
                if why & OUT_OUTLIER:
                    self.n_ejected += 1
                if why:
                    self.set_out(i, why)
                self.balancer.adopt_endpoint(old.balancer, j, i)
        finally:
            self.balancer.end_batch()

    @property
    def slots(self):
        """Endpoint slots, tombstones included (endpoints() lists the live ones)."""
        return self.n

    @property
    def live_count(self):
        """Endpoints not removed."""
        return self.n_live

    @property
    def serving_tier(self):
        """The priority tier rank the balancer picks from (0: the most preferred)."""
        return self.serving

    # ---- outlier detection ---------------------------------------------------------------------------

    cdef void accrue_failure(self, int i, double now) noexcept:
        cdef Accrual *a = &self.accrual[i]
        a.streak += 1
        a.sr_failed += 1
        a.clean_since = now
        if self.out[i] & (OUT_OUTLIER | OUT_REMOVED):
            return              # a request that was in flight when the endpoint was ejected (or removed)
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
        if (self.n_ejected + 1) * 100 > self.n_live * self.max_ejected_percent:
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
            if not (self.out[i] & (OUT_OUTLIER | OUT_REMOVED)) and total >= self.sr_minimum and total > 0 \
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

    cdef bint sweep(self, double now) noexcept:
        """Re-admits endpoints whose time out is over, decays old ejections, judges success rates. Holds (returns True)
        while an endpoint waits for one of these, or a success-rate window has outcomes to judge."""
        cdef int i
        cdef Accrual *a
        cdef bint held = False
        self.now_ns = <uint64_t>(now * 1e9)
        for i in range(self.n):
            if self.out[i] & OUT_REMOVED:
                continue
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
            if (self.mark[i] == EP_DOWN or self.out[i] & OUT_OUTLIER or (a.ejections > 0 and not a.trial)
                    or a.sr_ok or a.sr_failed):
                held = True
        if self.sr_window > 0.0 and now >= self.sr_due:
            self.judge_success_rates(now)
            self.sr_due = now + self.sr_window
        return held

    # ---- Python-facing state -----------------------------------------------------------------------

    def endpoints(self):
        """Each endpoint's address and state, for stats, admin and tests. `state` is the published word;
        `healthy` is the active checks' verdict; `ejected_until` is monotonic seconds (None when not ejected)."""
        cdef int i
        return [{
            "index": i,
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
            "tier": self.tier[i],
        } for i in range(self.n) if not self.out[i] & OUT_REMOVED]

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
                         for i in range(C_GRPC_OTHER - C_GRPC + 1) if self.counters[C_GRPC + i]},
                "tls_handshakes": self.counters[C_TLS_HANDSHAKES], "tls_resumed": self.counters[C_TLS_RESUMED],
                "tls_failed": self.counters[C_TLS_FAILED]}

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
