"""One upstream connector for every protocol: endpoint pick, connect with failover, breaker waiters, failure marks.

connect() walks a ConnectTry: the balancer picks (by the request's hash key when it has one, else avoiding the
endpoint that just failed and, for up to three redraws, every endpoint the request already failed on), a pool
subclass may answer with an idle connection (has_idle), the connection breaker may refuse (CONNECT_FULL: the
caller queues in `waiters` with wait(), or refuses), and a socket is opened. A connect that fails at once marks
the endpoint and the walk moves on; one that fails later comes back through connect_failed(). Both count the
same, whatever the protocol: each connect after the first of a walk is a cluster retry (C_RETRIES), and a walk
that finds no endpoint is a failed one (C_FAILED, logged at most once a second).
"""
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.reactor cimport Reactor
from fastmesh._core.limits cimport F_CONNECTIONS, F_PENDING
from fastmesh._core.stats cimport C_RETRIES, bump
from fastmesh._core.includes.system cimport sockaddr_storage, sockaddr_in, sockaddr_in6, inet_ntop, AF_INET, AF_INET6
from fastmesh._core.tls.context cimport Tls, tls_alloc, tls_connect, tls_release


cdef tuple hash_key_spec(str hash_key):
    if not hash_key:
        return HASH_NONE, b""
    kind, _, name = hash_key.partition(":")
    return ({"header": HASH_HEADER, "cookie": HASH_COOKIE, "source_ip": HASH_SOURCE}[kind],
            name.lower().encode("ascii") if kind == "header" else name.encode("ascii"))


cdef class ConnectUser(EventTarget):
    cdef void slot_free(self) noexcept:
        pass


cdef class Connector(Sweeper):
    """Built with its cluster (the TCP relay's) or as the base of a protocol pool (HttpPool)."""

    def __cinit__(self, Reactor reactor, Cluster cluster, *args, **kwargs):
        # Subclasses take more arguments (Cython hands them all to every __cinit__) and set `policy` themselves.
        self.reactor = reactor
        self.cluster = cluster
        self.waiters = []
        self.hash_kind = HASH_NONE
        self.hash_name = b""

    cdef void set_hash_key(self, str hash_key) except *:
        """The request's consistent-hash key, from the config: "header:NAME", "cookie:NAME" or "source_ip"."""
        self.hash_kind, self.hash_name = hash_key_spec(hash_key)

    cdef int pick(self, ConnectTry *t) noexcept:
        """The endpoint for the next connect of t, or -1 for an empty cluster."""
        cdef Cluster cluster = self.cluster
        cdef int ep = cluster.balancer.pick_hash(t.key, t.avoid) if t.keyed else -1
        cdef int redraw = 0
        if ep < 0:
            ep = cluster.choose(t.avoid)      # unkeyed, or nothing up for the key: the fail-open path
            while t.tried and 0 <= ep < 64 and (t.tried >> ep) & 1 and redraw < 3:
                ep = cluster.choose(t.avoid)
                redraw += 1
        return ep

    cdef Tls *start_tls(self, int fd, int ep) noexcept:
        """The client side of TLS on fd, a connected socket to endpoint ep (its address is what is verified when
        the cluster names no server_name). NULL when out of memory; the handshake starts at the first
        tls_handshake."""
        cdef Tls *t = tls_alloc()
        cdef char ip[64]
        cdef sockaddr_storage *sa = &self.cluster.addrs[ep]
        if t == NULL:
            return NULL
        ip[0] = 0
        if sa.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>sa).sin_addr, ip, sizeof(ip))
        elif sa.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>sa).sin6_addr, ip, sizeof(ip))
        if tls_connect(t, self.tls, fd, ep, ip) < 0:
            tls_release(&t)
        return t

    cdef bint has_idle(self, int ep) noexcept:
        """Whether an idle connection to ep can serve the request (pools override it)."""
        return False

    cdef int connect(self, ConnectTry *t) noexcept:
        """The next connection for t: a ConnectOutcome (the socket or the endpoint is in t)."""
        cdef Cluster cluster = self.cluster
        cdef int ep, fd
        # The latency-aware balancer judges stalls on this clock: keep it at the wakeup's time.
        cluster.balancer.set_clock(self.reactor.now)
        while t.attempts < cluster.connect_attempts:
            ep = self.pick(t)
            if ep < 0:
                t.err = 0
                cluster.no_endpoint("the cluster has no endpoints", self.reactor.now)
                return CONNECT_NONE
            t.endpoint = ep
            if self.has_idle(ep):
                return CONNECT_IDLE
            if self.policy is not None and not self.policy.cell.take(F_CONNECTIONS, self.policy.max_connections):
                return CONNECT_FULL
            if t.attempts:
                bump(cluster.counters + C_RETRIES, 1)
            t.attempts += 1
            fd = cluster.open_socket(ep)
            if fd < 0:
                if self.policy is not None:
                    self.policy.cell.give(F_CONNECTIONS)
                self.connect_failed(t, ep, -fd)
                continue
            t.fd = fd
            return CONNECT_OPENED
        cluster.no_endpoint(f"{t.attempts} connect attempt(s) failed", self.reactor.now)
        return CONNECT_NONE

    cdef void connect_failed(self, ConnectTry *t, int ep, int err) noexcept:
        """A connect of t to ep failed (err from SO_ERROR or connect(), 0 for a timeout): mark ep, avoid it."""
        t.err = err
        try_avoid(t, ep)
        self.cluster.connect_failed(ep, err, self.reactor.now)

    cdef bint wait(self, ConnectUser user) noexcept:
        """Queue user for the next free connection slot if the instance has fewer than max_pending waiting;
        else False (counted as overloaded)."""
        if self.policy is None:
            return False
        if not self.policy.cell.take(F_PENDING, self.policy.max_pending):
            self.policy.overloaded += 1
            return False
        self.waiters.append(user)
        return True

    cdef void unwait(self, ConnectUser user) noexcept:
        """user no longer waits (answered, or gone): its max_pending slot is free."""
        if user in self.waiters:
            self.waiters.remove(user)
            self.policy.cell.give(F_PENDING)

    cdef void wake_waiter(self) noexcept:
        """A connection went idle or closed: the longest waiting request tries again."""
        cdef ConnectUser user
        if self.waiters:
            user = <ConnectUser>self.waiters.pop(0)
            self.policy.cell.give(F_PENDING)
            user.slot_free()

    cdef void connection_gone(self) noexcept:
        """A connection of this connector closed or left it (an upgrade's tunnel): its max_connections slot is
        free."""
        self.active -= 1
        if self.policy is not None:
            self.policy.cell.give(F_CONNECTIONS)
