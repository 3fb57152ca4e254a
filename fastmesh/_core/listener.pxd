# Listener: a bound, listening socket in the reactor; accepts in C and hands each fd to its protocol.

from fastmesh._core.reactor cimport EventTarget, Reactor, Acceptor, ConnectionLimit
from fastmesh._core.proxyproto.gate cimport ProxyGate


cdef class Listener(EventTarget):
    cdef Reactor reactor               # epoll set the listening fd is registered in
    cdef int fd                        # the listening socket (owned: closed by close())
    cdef readonly str name             # the config's listener name
    cdef Acceptor protocol             # where accepted connections go (tcp relay or http)
    # proxy_protocol: reads each connection's PROXY header first (None: never enabled; kept once made, so the
    # connections waiting in it outlive a reload that turns it off)
    cdef readonly ProxyGate gate
    cdef readonly ConnectionLimit limit   # this listener's max_connections, chained to the worker's limit
    cdef bint paused                   # accepting stopped for a moment (out of fds)
    cdef bint stopped                  # accepting stopped at a connection limit until a slot frees up
    cdef bint backlogged               # connections may be waiting in the backlog since the limit was reached
    cdef readonly unsigned long long accept_errors   # accept4 failures other than EAGAIN
    # Episodes, logged once when they begin and once when they end (never once per event):
    cdef double limited_since          # when the connection limit was first reached in this episode; 0: none
    cdef double limited_last           # when the limit was last found full
    cdef unsigned long long limited_waited   # connections accepted after waiting in the backlog, this episode
    cdef double fds_since              # when accepting first failed for want of fds in this episode; 0: none
    cdef double fds_last               # when it last failed
    cdef unsigned long long fds_pauses  # pauses in this episode
    cdef int fds_errno                 # the error of the first failure (EMFILE, ENFILE, ENOBUFS or ENOMEM)
    cdef object episode_timer          # asyncio TimerHandle that ends quiet episodes, or None

    cdef void accept_batch(self) noexcept
    cdef void at_limit(self) noexcept
    cdef void out_of_fds(self, int err) noexcept
