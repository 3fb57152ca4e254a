# TCP relay (L4): each accepted connection is spliced to an upstream endpoint, both directions, zero-copy.

from libc.stdint cimport uint64_t

from fastmesh._core.includes.system cimport sockaddr_storage
from fastmesh._core.reactor cimport EventTarget, Acceptor, Reactor, ConnectionLimit
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.buffer cimport RecvBuf
from fastmesh._core.upstream.connector cimport Connector, ConnectTry
from fastmesh._core.tls.context cimport Tls, TlsServer, TlsClient
from fastmesh._core.tls.names cimport ServerNames
from fastmesh._core.proxyproto.codec cimport ProxyAddrs
from fastmesh._core.naming cimport Names


cdef struct Direction:
    int pr                     # read end of this direction's pipe (-1 when no pipe is held)
    int pw                     # write end of the pipe
    Py_ssize_t pending         # bytes in the pipe/buffer not yet written to the destination
    char *buf                  # fallback (no-splice) buffer, NULL when none is held
    Py_ssize_t buf_off         # where the pending bytes start in buf
    unsigned char src_eof      # the source sent its FIN
    unsigned char dst_shut     # the FIN was passed on: shutdown(dst, SHUT_WR) done
    unsigned char spliced      # this direction moves through a pipe (it proved to be a bulk stream)
    unsigned char bulk         # the last read filled the whole buffer: switch to splice once it drains


cdef enum RelayState:
    RS_CONNECTING = 1          # downstream accepted; upstream connect under way
    RS_OPEN = 2                # both sockets connected; bytes flow
    RS_CLOSED = 3              # both fds closed; the object only waits to be freed
    RS_HANDSHAKE = 4           # terminating TLS: the client's handshake is under way (no upstream yet)
    RS_UP_HANDSHAKE = 5        # originating TLS: upstream connected, our handshake with it under way
    RS_PEEK = 6                # passthrough: waiting for the whole ClientHello to pick a cluster by its SNI


cdef class TcpProxy(Acceptor):
    # Per listener: where accepted connections go, their options, the open relays and their counters.
    cdef Reactor reactor                   # epoll set the relays register in
    cdef readonly Cluster cluster          # upstream endpoints and balancer
    cdef Connector connector               # picks and connects upstream (shared with every protocol)
    cdef readonly str name                 # listener name, for logs
    cdef readonly double idle_timeout      # seconds without traffic before a relay is closed
    cdef readonly bint use_splice          # splice(2) through pipes; False: recv/send through buffers
    cdef TcpRelay head                     # first open relay (intrusive doubly linked list owns them)
    cdef readonly TlsServer tls            # terminate TLS from clients (None: the client side is cleartext)
    cdef readonly TlsClient upstream_tls   # originate TLS to the cluster (None: cleartext upstream)
    cdef ServerNames sni_routes            # passthrough: ClientHello server name -> index into sni_targets (None: off)
    cdef list sni_targets                  # (Cluster, Connector) per passthrough route
    cdef readonly double hello_timeout     # passthrough: seconds a client has to send its whole ClientHello
    cdef double log_after                  # passthrough refusals: monotonic time before which they are not logged
    cdef Names names                       # service listeners: resolves `service` per connection (None: off)
    cdef readonly int service              # that service's id in the naming table (-1: the listener has a cluster)
    cdef list service_targets              # Connector per cluster index (the naming table's), for the resolution
    cdef list service_tls                  # TlsClient per cluster index: what relays to it originate (None: cleartext)
    cdef uint64_t *routed                  # service listeners: connections sent per cluster index (NULL: not counted)

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept
    cdef void unlink(self, TcpRelay r) noexcept
    cdef void refused(self, int reason, int fd, str why) noexcept


cdef class TcpRelay(EventTarget):
    # One proxied connection: a downstream fd (side 0) and an upstream fd (side 1).
    cdef TcpProxy owner                    # the listener's proxy; owns this relay through its list
    cdef Cluster cluster                   # where this relay connects: the listener's cluster, or a passthrough pick
    cdef Connector connector               # that cluster's connector
    cdef TlsClient up_tls                  # originate TLS with this context, its cluster's (None: cleartext upstream)
    cdef Tls tls[2]                        # per side: TLS state (ssl NULL: cleartext)
    cdef double handshake_deadline         # RS_HANDSHAKE / RS_PEEK: when the client's time is up
    cdef ConnectionLimit limit             # the slot the downstream fd holds, given back when it closes (or None)
    cdef TcpRelay prev                     # list neighbours
    cdef TcpRelay next
    cdef int fds[2]                        # [downstream, upstream]; -1 when closed or not yet opened
    cdef unsigned char readable[2]         # edge-triggered readiness per side, cleared on EAGAIN
    cdef unsigned char writable[2]
    cdef unsigned char hangup[2]           # the peer's FIN/RST was seen: read until 0, never stop at a short read
    cdef Direction dirs[2]                 # dirs[0]: downstream -> upstream; dirs[1]: upstream -> downstream
    cdef int state                         # a RelayState
    cdef int endpoint                      # index of the upstream endpoint in the cluster, -1 before a pick
    cdef ConnectTry ct                     # the walk over endpoints for the upstream connection
    cdef bint use_splice                   # bulk directions may switch to splice (cleared if unsupported)
    cdef double connect_deadline           # when a pending connect counts as failed
    cdef double last_active                # when bytes last moved
    # The client's ends, for a cluster's PROXY header: malloc'd only when a cluster the relay may connect to sends
    # one, freed once it is sent.
    cdef ProxyAddrs *proxy_addrs

    @staticmethod
    cdef TcpRelay new(TcpProxy owner, int fd)

    @staticmethod
    cdef TcpRelay adopt(TcpProxy owner, int dfd, int ufd, int endpoint, RecvBuf *down, RecvBuf *up, Tls *dtls,
                        Tls *utls,
                        ConnectionLimit limit)
    cdef void connect_next(self) noexcept
    cdef void client_handshake(self) noexcept
    cdef void upstream_handshake(self) noexcept
    cdef void peek_hello(self) noexcept
    cdef Py_ssize_t side_recv(self, int d, char *buf, Py_ssize_t n) noexcept
    cdef Py_ssize_t side_send(self, int d, const char *buf, Py_ssize_t n) noexcept
    cdef void connect_error(self, int err) noexcept
    cdef int send_proxy_header(self) noexcept
    cdef void pump(self) noexcept
    cdef int pump_splice(self, int d) noexcept
    cdef int pump_copy(self, int d) noexcept
    cdef void pass_fin(self, int d) noexcept
    cdef void release(self, int d) noexcept
    cdef void close(self) noexcept
