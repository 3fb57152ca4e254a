# The upstream connector every protocol shares: pick an endpoint, open a connection, fail over, queue behind
# the connection breaker. The TCP relay uses it as it is; HttpPool (http1/pool.pyx) extends it with idle lists.

from fastmesh._core.reactor cimport EventTarget, Sweeper, Reactor
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.policy cimport ClusterPolicy
from fastmesh._core.tls.context cimport Tls, TlsClient


cdef enum ConnectOutcome:
    CONNECT_OPENED = 1                 # a new socket with its connect under way: ConnectTry.fd
    CONNECT_IDLE = 2                   # the pool holds an idle connection to ConnectTry.endpoint: reuse it
    CONNECT_FULL = 3                   # connection breaker: every slot is taken (wait for one, or refuse)
    CONNECT_NONE = 4                   # no endpoint left to try; ConnectTry.err: the last errno (0: none up)


cdef enum HashKind:
    HASH_NONE = 0                      # the balancer picks without a key
    HASH_HEADER = 1                    # key: a request header's value
    HASH_COOKIE = 2                    # key: a cookie's value
    HASH_SOURCE = 3                    # key: the client's IP address


ctypedef struct ConnectTry:
    # One request's (or relay's) walk over a cluster's endpoints; the caller keeps it, the connector updates it.
    int attempts                       # connects started for the current try (at most cluster.connect_attempts)
    int avoid                          # endpoint of the last failure: the next pick avoids it (-1: none)
    unsigned long long tried           # bit per endpoint (0..63) the request failed on: picks prefer others
    unsigned long long key             # consistent-hash key of the request
    bint keyed                         # `key` is set: the balancer picks by it
    int endpoint                       # the endpoint of the last pick (-1: none)
    int err                            # errno of the last failed connect, 0 for a timeout or no endpoint up
    int fd                             # CONNECT_OPENED: the new socket


cdef inline void try_init(ConnectTry *t) noexcept:
    # A fresh walk: no failure seen, no key.
    t.attempts = 0
    t.avoid = -1
    t.tried = 0
    t.key = 0
    t.keyed = False
    t.endpoint = -1
    t.err = 0
    t.fd = -1


cdef inline void try_avoid(ConnectTry *t, int ep) noexcept:
    # Endpoint ep failed this request (connect, reset, timeout, 5xx): later picks avoid it.
    t.avoid = ep
    if 0 <= ep < 64:
        t.tried |= 1ULL << ep


# (HashKind, name bytes) of a configured hash key: "header:NAME" (name lowercased), "cookie:NAME", "source_ip".
cdef tuple hash_key_spec(str hash_key)


cdef class ConnectUser(EventTarget):
    # Whoever waits in Connector.waiters for a connection slot (an HTTP exchange's connection).
    cdef void slot_free(self) noexcept          # a slot opened up: try again


cdef class Connector(Sweeper):
    # Per cluster and protocol: endpoint picks, connects with failover, and the connection breaker's queue.
    cdef Reactor reactor                   # the clock (now) and, for pools, the epoll set
    cdef readonly Cluster cluster          # endpoints, balancer, connect-failure marks, counters
    cdef readonly ClusterPolicy policy     # connection breaker (max_connections, max_pending); None: no breaker
    cdef list waiters                      # ConnectUsers waiting for a slot, oldest first (each: a max_pending slot)
    cdef readonly long active              # connections open now, idle included (each holds a max_connections slot)
    cdef readonly int hash_kind            # what keys a consistent-hash pick (HashKind)
    cdef bytes hash_name                   # header name (lowercase) or cookie name for HASH_HEADER / HASH_COOKIE
    cdef public TlsClient tls              # HTTP pools: originate TLS to the endpoints (None: cleartext)

    cdef void set_hash_key(self, str hash_key) except *

    cdef int pick(self, ConnectTry *t) noexcept
    cdef bint has_idle(self, int ep) noexcept
    cdef int connect(self, ConnectTry *t) noexcept
    cdef void connect_failed(self, ConnectTry *t, int ep, int err) noexcept
    cdef bint wait(self, ConnectUser user) noexcept
    cdef void unwait(self, ConnectUser user) noexcept
    cdef Tls *start_tls(self, int fd, int ep) noexcept
    cdef void wake_waiter(self) noexcept
    cdef void connection_gone(self) noexcept
