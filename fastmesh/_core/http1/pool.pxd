# Upstream HTTP/1 connections and the per-cluster pools that keep idle ones for reuse.

from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.reactor cimport EventTarget, Reactor
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.policy cimport ClusterPolicy
from fastmesh._core.upstream.connector cimport Connector, ConnectUser, ConnectTry
from fastmesh._core.exchange cimport Exchange
from fastmesh._core.tls.context cimport Tls


cdef enum UpstreamState:
    UP_CONNECTING = 1          # connect under way; the request head may already wait in `out`
    UP_ACTIVE = 2              # serving an exchange for `user`
    UP_IDLE = 3                # kept in the pool, no user; any event means the server closed it
    UP_CLOSED = 4


cdef class UpstreamUser(ConnectUser):
    # Whoever drives an exchange on an upstream connection (the downstream HTTP/1 connection).
    cdef void upstream_ready(self, Upstream up) noexcept      # readiness of up changed: run the exchange
    cdef void upstream_failed(self, Upstream up, int err) noexcept   # connect failed (err) or timed out (0)


cdef class Upstream(EventTarget):
    # One connection to an endpoint of a cluster.
    cdef HttpPool pool                     # the pool it belongs to
    cdef UpstreamUser user                 # the exchange using it, None while idle
    cdef Upstream prev                     # neighbours in the pool's idle list of its endpoint
    cdef Upstream next
    cdef int fd                            # the socket; -1 once closed
    cdef int endpoint                      # endpoint index in the cluster
    cdef int state                         # UpstreamState
    cdef bint readable                     # edge-triggered readiness, cleared on EAGAIN/short read
    cdef bint writable
    cdef bint hangup                       # the server's FIN/RST was seen
    cdef bint reused                       # served an exchange before this one (a stale keep-alive may fail)
    cdef RecvBuf rbuf                      # bytes read from the server
    cdef OutBuf out                        # request head (and chunk lines) waiting to be sent
    cdef double deadline                   # connect deadline while connecting; idle expiry while idle
    cdef char *proxy_hdr                   # the PROXY header sent first (the cluster sends one; else NULL): only an
    cdef int proxy_len                     # exchange whose header is the same (the same client connection) reuses it
    # The cluster's TLS on this connection (NULL: cleartext); its handshake runs in UP_CONNECTING, under the
    # connect deadline.
    cdef Tls *tls

    cdef void fail(self, int err) noexcept
    cdef void handshake(self) noexcept
    cdef void abort(self) noexcept
    cdef void close(self) noexcept


cdef class HttpPool(Connector):
    # Per cluster: the shared connector (picks, failover, breaker) plus idle HTTP/1 connections to reuse.
    cdef list idle_heads                   # per endpoint: first idle Upstream or None
    cdef int *idle_count                   # per endpoint: idle connections held
    cdef int *peak                         # per endpoint: most connections in use at once in this peak window
    cdef int *last_peak                    # ...and in the window before it (idle ones kept: the larger, capped)
    cdef double window_end                 # when the peak window rolls over (the sweep does it)
    cdef readonly int max_idle             # idle connections kept per endpoint at most (the ceiling)
    cdef readonly double idle_timeout      # seconds an idle connection is kept
    cdef public object tunnel              # TcpProxy carrying this cluster's upgraded connections, made on demand
    cdef readonly bint retired             # replaced by a reload: finishes its exchanges, keeps nothing idle
    cdef readonly unsigned long long opened    # connections opened, ever
    cdef readonly unsigned long long reuses    # exchanges served by a reused connection, ever
    cdef const char *want                  # acquire() of a PROXY cluster: the header the exchange needs (has_idle
    cdef int want_len                      # looks for an idle connection that sent it) ...
    cdef Upstream found                    # ... and the one it found

    cdef Upstream acquire(self, UpstreamUser user, Exchange ex, int *outcome)
    cdef void release(self, Upstream up) noexcept
    cdef void done_with(self, Upstream up, bint reuse, bint finished) noexcept
    cdef void unlink_idle(self, Upstream up) noexcept
    cdef int grow_slots(self, int n) except -1
