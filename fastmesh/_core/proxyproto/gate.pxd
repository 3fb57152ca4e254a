# The gate of a listener with proxy_protocol: reads each connection's PROXY header, then hands the connection on.

from libc.stdint cimport uint32_t
from fastmesh._core.includes.system cimport sockaddr_storage
from fastmesh._core.reactor cimport EventTarget, Sweeper, Reactor, Acceptor, ConnectionLimit
from fastmesh._core.proxyproto.codec cimport PR_COUNT


cdef class Waiting(EventTarget):
    # A connection whose header has not arrived in full yet.
    cdef ProxyGate gate                # the gate it waits in
    cdef Waiting prev                  # neighbours in the gate's list of waiting connections
    cdef Waiting next
    cdef int fd                        # the client socket; -1 once closed or handed on
    cdef double deadline               # when the header must be complete (proxy_protocol_timeout after accept)
    cdef sockaddr_storage peer         # the socket's peer (a LOCAL/UNKNOWN header keeps it as the client address)


cdef class ProxyGate(Sweeper):
    cdef Reactor reactor               # the epoll set waiting connections sit in, and the clock
    cdef readonly str name             # the listener's name (logs)
    cdef public int accept             # versions accepted: PP_V1 | PP_V2 (codec.pxd); 0: no header expected
    cdef public double timeout         # seconds a connection gets to send its whole header
    cdef Acceptor protocol             # where connections go once their header is read (the listener's)
    cdef ConnectionLimit limit         # the listener's limit (a refused connection gives its slot back)
    cdef Waiting head                  # connections waiting for the rest of their header
    cdef readonly long waiting         # how many
    cdef unsigned long long refused_by[PR_COUNT]   # connections refused, by ProxyRefusal
    cdef readonly unsigned long long passed        # connections handed on with a header read
    cdef double log_after              # refusals are logged at most once a second
    cdef unsigned long long log_skipped            # refusals not logged since the last line

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept
    cdef int look(self, int fd, sockaddr_storage *peer, bint hangup, bint registered) noexcept
    cdef void refuse(self, int fd, int reason, sockaddr_storage *peer) noexcept
    cdef void unlink(self, Waiting w) noexcept
