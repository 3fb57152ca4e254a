"""The L4 relay: accepted connections are connected to an upstream endpoint and relayed both ways.

Per connection the lean sequence is: accept, connect upstream at once (no waiting for the client's first
bytes, no getpeername), register both fds edge-triggered once (no epoll_ctl afterwards), and on the
upstream's first writability move whatever the client already sent.

Each direction starts by copying through a pooled 64 KiB buffer (recv/send): for the small messages of
request/response traffic that is the cheapest path, and a short read proves the socket drained, so no
EAGAIN probe is needed. A direction whose read fills the whole buffer is a bulk stream: from then on it moves
socket -> pipe -> socket with splice(2), zero-copy, through 1 MiB pipes (few syscalls per MiB). Either way a
direction reads only while its buffer/pipe is empty, so a slow reader stops the writer (backpressure) and a
connection holds at most one pipe or buffer per direction; idle connections hold none (they go back to the
reactor's pools when empty). A FIN is passed on as shutdown(SHUT_WR) once the direction is drained
(half-close); the relay closes when both FINs have passed, on any error, or after idle_timeout without traffic.
"""
cimport cython
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from fastmesh._core.includes.system cimport (
    splice, close, shutdown, recv, send, getsockopt, errno, socklen_t, sockaddr_storage,
    EAGAIN, EINVAL, ENOSYS, EPROTO, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP, EPOLLET,
    SPLICE_F_MOVE, SPLICE_F_NONBLOCK, SHUT_WR, SOL_SOCKET, SO_ERROR, MSG_NOSIGNAL, MSG_DONTWAIT,
)
from fastmesh._core.reactor cimport Reactor, EventTarget, Acceptor, ConnectionLimit
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.debug cimport debug_new, debug_free, DBG_RELAY
from fastmesh._core.stats cimport (
    StatsBlock, L_ACCEPTED, L_ACTIVE, L_FAILED, L_BYTES_IN, L_BYTES_OUT, L_FIELDS, HEADER_SLOTS, bump,
)
from fastmesh._core.upstream.connector cimport Connector, try_init, CONNECT_OPENED
from fastmesh._core.includes.system cimport (
    sockaddr_in, sockaddr_in6, inet_ntop, AF_INET, AF_INET6, MSG_PEEK,
)
from fastmesh._core.stats cimport L_TLS_HANDSHAKES, L_TLS_RESUMED, L_TLS_FAILED
from fastmesh._core.proxyproto.codec cimport ProxyAddrs, pp_addrs, pp_encode, PP_OUT_MAX
from fastmesh._core.tls.context cimport (
    TlsServer, TlsClient, tls_accept, tls_connect, tls_handshake, tls_recv, tls_send, tls_close_notify,
    tls_free, tls_resumed, tls_move, TF_TIMEOUT, TF_NOT_TLS, TF_CLOSED,
)
from fastmesh._core.tls.names cimport ServerNames
from fastmesh._core.naming cimport Names
from fastmesh._core.tls.clienthello cimport hello_server_name, HELLO_FOUND, HELLO_MORE, HELLO_BAD, MAX_HELLO

import logging

log = logging.getLogger("fastmesh.tcp")

cdef uint32_t RELAY_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
# Bytes one direction may move per wakeup before yielding to other connections.
cdef Py_ssize_t FAIR_SHARE = 4 * 1048576


cdef class TcpProxy(Acceptor):
    """Where a tcp listener's connections go. Built by dataplane/; the listener calls accept_fd()."""

    def __cinit__(self, Reactor reactor, Cluster cluster, str name, double idle_timeout=3600.0,
                  bint use_splice=True, TlsServer tls=None, TlsClient upstream_tls=None, sni_routes=None,
                  double hello_timeout=10.0, Names names=None, int service=-1, service_clusters=None,
                  service_tls=None):
        self.reactor = reactor
        self.cluster = cluster
        self.connector = Connector(reactor, cluster)
        self.tls = tls
        self.upstream_tls = upstream_tls
        self.hello_timeout = hello_timeout
        self.sni_routes = None
        self.sni_targets = []
        self.log_after = 0.0
        if sni_routes is not None:
            # Passthrough: [(server name, Cluster)]; the listener's own cluster takes every other name.
            targets = {}
            pairs = []
            for server_name, target in sni_routes:
                if target not in targets:
                    targets[target] = len(self.sni_targets)
                    self.sni_targets.append((target, self.connector if target is cluster
                                             else Connector(reactor, target)))
                pairs.append((server_name, targets[target]))
            self.sni_routes = ServerNames(pairs)
        # A service listener: every cluster of the naming table by index (the listener's cluster is one of them),
        # resolved per connection; `cluster` is then only the first the service names (a placeholder otherwise).
        # service_tls: per cluster index, the TlsClient relays to that cluster originate with (None: cleartext).
        self.names = names
        self.service = service if names is not None else -1
        self.service_targets = []
        self.service_tls = []
        self.routed = NULL
        if names is not None:
            for target in service_clusters:
                self.service_targets.append(self.connector if target is cluster else Connector(reactor, target))
            self.service_tls = list(service_tls) if service_tls is not None else [None] * len(self.service_targets)
            if len(self.service_tls) != len(self.service_targets):
                raise ValueError("service_tls needs one entry (a TlsClient or None) per cluster of service_clusters")
            for ctx in self.service_tls:
                if ctx is not None and not isinstance(ctx, TlsClient):
                    raise TypeError(f"service_tls entries are TlsClient or None, not {type(ctx).__name__}")
        self.name = name
        self.idle_timeout = idle_timeout
        self.use_splice = use_splice
        self.head = None
        # Counters start in a private block; dataplane/stats.py moves them into the shared one before traffic.
        self.stats = StatsBlock(HEADER_SLOTS + L_FIELDS)
        self.counters = self.stats.region(HEADER_SLOTS, L_FIELDS)

    def attach_stats(self, StatsBlock block, Py_ssize_t offset, Py_ssize_t routed=-1):
        """Count into block's L_FIELDS slots at offset from now on (the counts so far move along); a service
        listener its connections per cluster too, into the slots at `routed` (one per cluster index; -1: not)."""
        cdef uint64_t *slots = block.region(offset, L_FIELDS)
        cdef uint64_t *per_cluster = NULL
        cdef int i
        if routed >= 0 and self.service_targets:
            # Taken before anything moves: slots outside the block raise and leave the counting where it was.
            per_cluster = block.region(routed, len(self.service_targets))
        if slots != self.counters:
            for i in range(L_FIELDS):
                slots[i] += self.counters[i]
                self.counters[i] = 0
        self.stats = block
        self.counters = slots
        self.routed = per_cluster

    @property
    def upstream_contexts(self):
        """Every origination context its relays may use, as [(cluster name, TlsClient)]: the cluster's, or per
        cluster a service listener may resolve to (each once)."""
        cdef Connector target
        out = []
        if self.upstream_tls is not None:
            out.append((self.cluster.name, self.upstream_tls))
        for target, ctx in zip(self.service_targets, self.service_tls):
            if ctx is not None:
                out.append((target.cluster.name, ctx))
        return out

    @property
    def sni_routes_count(self):
        """Passthrough server names routed (0: not a passthrough listener)."""
        return 0 if self.sni_routes is None else self.sni_routes.n

    @property
    def active(self):
        """Downstream connections open now."""
        return <long long>self.counters[L_ACTIVE]

    @property
    def accepted(self):
        """Downstream connections accepted, ever."""
        return self.counters[L_ACCEPTED]

    @property
    def failed(self):
        """Downstream connections closed for want of an endpoint."""
        return self.counters[L_FAILED]

    @property
    def bytes_in(self):
        """Bytes relayed downstream -> upstream."""
        return self.counters[L_BYTES_IN]

    @property
    def bytes_out(self):
        """Bytes relayed upstream -> downstream."""
        return self.counters[L_BYTES_OUT]

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept:
        cdef TcpRelay r = TcpRelay.new(self, fd)
        cdef int idx
        cdef Connector picked
        if self.names is not None:
            # A service listener: the naming table in force now picks the cluster for this connection.
            idx = self.names.resolve(self.service, self.service_targets, NULL)
            if 0 <= idx < len(self.service_targets):
                picked = <Connector>self.service_targets[idx]
                r.cluster = picked.cluster
                r.connector = picked
                r.up_tls = <TlsClient>self.service_tls[idx]
                if r.up_tls is not None:
                    r.use_splice = False    # records are encrypted in user space: this relay copies
                if self.routed != NULL:
                    bump(self.routed + idx, 1)
            else:
                # `!`, or a name naming no cluster: refused like a listener without endpoints.
                r.cluster = None
        if r.cluster is not None and (r.cluster.proxy_protocol or self.sni_routes is not None):
            # A PROXY header may be owed upstream: keep the client's ends (its address as accepted, or as the
            # listener's own PROXY header said) until the upstream connection opens.
            r.proxy_addrs = <ProxyAddrs *>malloc(sizeof(ProxyAddrs))
            if r.proxy_addrs != NULL:
                pp_addrs(fd, peer, r.proxy_addrs)
        r.next = self.head
        if self.head is not None:
            self.head.prev = r
        self.head = r
        self.counters[L_ACTIVE] += 1
        bump(self.counters + L_ACCEPTED, 1)
        if r.cluster is None:
            r.cluster = self.cluster
            bump(self.counters + L_FAILED, 1)
            r.close()
            return
        if self.reactor.add(fd, r, 0, RELAY_EVENTS) < 0:
            r.close()
            return
        if self.tls is not None:
            # Terminate TLS: the upstream is connected only once the client has proved it speaks TLS to us.
            if tls_accept(&r.tls[0], self.tls, fd) < 0:
                r.close()
                return
            r.state = RS_HANDSHAKE
            r.handshake_deadline = self.reactor.now + self.tls.handshake_timeout
            return
        if self.sni_routes is not None:
            r.state = RS_PEEK
            r.handshake_deadline = self.reactor.now + self.hello_timeout
            return
        r.connect_next()

    cdef void refused(self, int reason, int fd, str why) noexcept:
        """A passthrough client refused before any upstream was picked: count it, log it (once a second)."""
        bump(self.counters + L_TLS_FAILED + reason - 1, 1)
        if self.reactor.now < self.log_after:
            return
        self.log_after = self.reactor.now + 1.0
        try:
            log.warning("listener %s: TLS passthrough refused a connection: %s", self.name, why)
        except BaseException:
            pass

    cdef void unlink(self, TcpRelay r) noexcept:
        if r.prev is not None:
            r.prev.next = r.next
        else:
            self.head = r.next
        if r.next is not None:
            r.next.prev = r.prev
        r.prev = None
        r.next = None
        self.counters[L_ACTIVE] -= 1

    cdef bint sweep(self, double now) noexcept:
        """Connect timeouts and idle timeouts: a walk of the open relays, a few times a second."""
        cdef TcpRelay r = self.head
        cdef TcpRelay nxt
        while r is not None:
            nxt = r.next
            if r.state == RS_CONNECTING:
                if now >= r.connect_deadline:
                    r.connect_error(0)
            elif r.state == RS_UP_HANDSHAKE:
                if now >= r.connect_deadline:
                    r.tls[1].fail = TF_TIMEOUT
                    r.up_tls.failed(&r.tls[1], r.cluster.counters, r.cluster.name, r.cluster.labels[r.endpoint], now)
                    r.connect_error(0)
            elif r.state == RS_HANDSHAKE:
                if now >= r.handshake_deadline:
                    r.tls[0].fail = TF_TIMEOUT
                    self.tls.failed(&r.tls[0], self.counters, self.name, r.fds[0], now)
                    r.close()
            elif r.state == RS_PEEK:
                if now >= r.handshake_deadline:
                    self.refused(TF_TIMEOUT, r.fds[0], "no complete ClientHello within hello_timeout")
                    r.close()
            elif r.state == RS_OPEN and now - r.last_active >= self.idle_timeout:
                r.close()
            r = nxt
        return self.head is not None

    def close_all(self):
        """Close every open relay at once (end of a drain)."""
        while self.head is not None:
            self.head.close()
        self.reactor.graveyard.clear()


@cython.final
cdef class TcpRelay(EventTarget):

    def __cinit__(self):
        if FASTMESH_DEBUG:
            debug_new(DBG_RELAY)

    def __dealloc__(self):
        if FASTMESH_DEBUG:
            debug_free(DBG_RELAY)

    @staticmethod
    cdef TcpRelay new(TcpProxy owner, int fd):
        cdef TcpRelay r = TcpRelay.__new__(TcpRelay)
        cdef int d
        r.owner = owner
        r.cluster = owner.cluster
        r.connector = owner.connector
        r.up_tls = owner.upstream_tls
        r.limit = owner.limit
        r.fds[0] = fd
        r.fds[1] = -1
        for d in range(2):
            r.tls[d].ssl = NULL
            r.tls[d].state = 0
            r.readable[d] = 0
            r.writable[d] = 0
            r.hangup[d] = 0
            r.dirs[d].spliced = 0
            r.dirs[d].bulk = 0
            r.dirs[d].pr = -1
            r.dirs[d].pw = -1
            r.dirs[d].pending = 0
            r.dirs[d].buf = NULL
            r.dirs[d].buf_off = 0
            r.dirs[d].src_eof = 0
            r.dirs[d].dst_shut = 0
        r.state = RS_CONNECTING
        r.endpoint = -1
        try_init(&r.ct)
        # Records are encrypted in user space (no kernel TLS here): a TLS side cannot splice.
        r.use_splice = owner.use_splice and owner.tls is None and owner.upstream_tls is None
        r.last_active = owner.reactor.now
        r.proxy_addrs = NULL
        return r

    @staticmethod
    cdef TcpRelay adopt(TcpProxy owner, int dfd, int ufd, int endpoint, RecvBuf *down, RecvBuf *up, Tls *dtls,
                        Tls *utls, ConnectionLimit limit):
        """Take over two connected sockets (an HTTP connection after 101 Switching Protocols), with the bytes
        each side already sent: down's go upstream, up's go downstream. The receive buffers change hands, and
        so does the connection-limit slot the client holds (`limit`), and each side's TLS (dtls, utls: NULL for
        cleartext; their contents move into the relay): a relay with a TLS side copies, never splices."""
        cdef TcpRelay r = TcpRelay.new(owner, dfd)
        cdef RecvBuf *b
        cdef int d
        r.limit = limit
        if dtls != NULL:
            tls_move(&r.tls[0], dtls)
        if utls != NULL:
            tls_move(&r.tls[1], utls)
        if r.tls[0].ssl != NULL or r.tls[1].ssl != NULL:
            r.use_splice = False
            r.dirs[0].spliced = 0
            r.dirs[1].spliced = 0
        r.fds[1] = ufd
        r.endpoint = endpoint
        r.state = RS_OPEN
        for d in range(2):
            b = down if d == 0 else up
            if b.data != NULL and b.end > b.start:
                r.dirs[d].buf = b.data
                r.dirs[d].buf_off = b.start
                r.dirs[d].pending = b.end - b.start
                b.data = NULL
                b.start = 0
                b.end = 0
            r.readable[d] = 1
            r.writable[d] = 1
        r.next = owner.head
        if owner.head is not None:
            owner.head.prev = r
        owner.head = r
        owner.counters[L_ACTIVE] += 1
        bump(owner.counters + L_ACCEPTED, 1)
        owner.reactor.modify(dfd, r, 0, RELAY_EVENTS)
        owner.reactor.modify(ufd, r, 1, RELAY_EVENTS)
        r.pump()
        return r

    # ---- connecting ----------------------------------------------------------------------------

    cdef void connect_next(self) noexcept:
        """Open an upstream connection to the next endpoint, or close the client when none is left to try."""
        cdef Reactor reactor = self.owner.reactor
        cdef Cluster cluster = self.cluster
        if self.connector.connect(&self.ct) == CONNECT_OPENED:
            if reactor.add(self.ct.fd, self, 1, RELAY_EVENTS) == 0:
                self.fds[1] = self.ct.fd
                self.endpoint = self.ct.endpoint
                cluster.upstream_start(self.endpoint)
                self.connect_deadline = reactor.now + cluster.connect_timeout
                return
            close(self.ct.fd)
        bump(self.owner.counters + L_FAILED, 1)
        self.close()

    cdef void connect_error(self, int err) noexcept:
        """The pending upstream connect failed (err from SO_ERROR) or timed out (err 0): try another endpoint."""
        cdef int ep = self.endpoint
        tls_free(&self.tls[1])
        close(self.fds[1])
        self.fds[1] = -1
        self.readable[1] = 0
        self.writable[1] = 0
        self.endpoint = -1
        self.state = RS_CONNECTING
        self.cluster.upstream_end(ep)
        self.connector.connect_failed(&self.ct, ep, err)
        self.connect_next()

    # ---- TLS -----------------------------------------------------------------------------------

    cdef void client_handshake(self) noexcept:
        """Terminating: advance the client's handshake; once done, connect upstream."""
        cdef int r = tls_handshake(&self.tls[0])
        if r == 0:
            return
        if r < 0:
            self.owner.tls.failed(&self.tls[0], self.owner.counters, self.owner.name, self.fds[0],
                                  self.owner.reactor.now)
            self.close()
            return
        bump(self.owner.counters + L_TLS_HANDSHAKES, 1)
        if tls_resumed(&self.tls[0]):
            bump(self.owner.counters + L_TLS_RESUMED, 1)
        # Application data may already sit decrypted in OpenSSL's buffer: no edge will announce it.
        self.readable[0] = 1
        self.writable[0] = 1
        self.state = RS_CONNECTING
        self.connect_next()

    cdef void upstream_handshake(self) noexcept:
        """Originating: advance our handshake with the endpoint; once done, the relay opens."""
        cdef TlsClient cli = self.up_tls
        cdef int r = tls_handshake(&self.tls[1])
        if r == 0:
            return
        if r < 0:
            cli.failed(&self.tls[1], self.cluster.counters, self.cluster.name, self.cluster.labels[self.endpoint],
                       self.owner.reactor.now)
            self.connect_error(EPROTO)            # the endpoint's log line says "protocol error", not a timeout
            return
        cli.finished(&self.tls[1], self.cluster.counters)
        self.state = RS_OPEN
        self.cluster.connect_succeeded(self.endpoint)
        self.last_active = self.owner.reactor.now
        self.readable[1] = 1
        self.writable[1] = 1
        self.pump()

    cdef void peek_hello(self) noexcept:
        """Passthrough: read the ClientHello without taking it off the socket, pick the cluster by its SNI, then
        connect and relay everything (the ClientHello included) untouched."""
        cdef unsigned char scratch[MAX_HELLO]
        cdef char *buf = self.owner.reactor.buffers.take()
        cdef Py_ssize_t n, off = 0, length = 0
        cdef bint in_scratch = False
        cdef int verdict, idx = -1
        if buf == NULL:
            self.close()
            return
        n = recv(self.fds[0], buf, MAX_HELLO + 1024, MSG_PEEK | MSG_DONTWAIT)
        if n <= 0:
            self.owner.reactor.buffers.give(buf)
            if n == 0 or errno != EAGAIN:
                self.owner.refused(TF_CLOSED, self.fds[0], "the client closed before its ClientHello was whole")
                self.close()
            return
        verdict = hello_server_name(<unsigned char *>buf, n, scratch, &off, &length, &in_scratch)
        if verdict == HELLO_FOUND:
            idx = self.owner.sni_routes.find((<char *>scratch if in_scratch else buf) + off, length)
        self.owner.reactor.buffers.give(buf)
        if verdict == HELLO_MORE and n < MAX_HELLO + 1024:
            return                              # wait for the rest (the next segment raises a new edge)
        if verdict == HELLO_BAD or verdict == HELLO_MORE:
            self.owner.refused(TF_NOT_TLS, self.fds[0], "the first bytes were not a TLS ClientHello")
            self.close()
            return
        if idx >= 0:
            self.cluster, self.connector = self.owner.sni_targets[idx]
        # The events seen while peeking were not recorded: take the client side as ready both ways.
        self.readable[0] = 1
        self.writable[0] = 1
        self.state = RS_CONNECTING
        self.connect_next()

    cdef Py_ssize_t side_recv(self, int d, char *buf, Py_ssize_t n) noexcept:
        if self.tls[d].ssl == NULL:
            return recv(self.fds[d], buf, n, MSG_DONTWAIT)
        return tls_recv(&self.tls[d], buf, n)

    cdef Py_ssize_t side_send(self, int d, const char *buf, Py_ssize_t n) noexcept:
        if self.tls[d].ssl == NULL:
            return send(self.fds[d], buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        return tls_send(&self.tls[d], buf, n)

    # ---- events --------------------------------------------------------------------------------

    cdef void on_events(self, uint32_t events, int side) noexcept:
        cdef int err = 0
        cdef socklen_t errlen = sizeof(err)
        cdef char ip[64]
        cdef sockaddr_storage *sa
        if self.state == RS_CLOSED:
            return
        if self.state == RS_HANDSHAKE:
            self.client_handshake()
            return
        if self.state == RS_PEEK:
            self.peek_hello()
            return
        if side == 1 and self.state == RS_UP_HANDSHAKE:
            self.upstream_handshake()
            return
        if side == 1 and self.state == RS_CONNECTING:
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(self.fds[1], SOL_SOCKET, SO_ERROR, &err, &errlen)
                self.connect_error(err)
                return
            if not (events & EPOLLOUT):
                return
            if self.cluster.proxy_protocol and self.send_proxy_header() < 0:
                self.connect_error(errno)
                return
            if self.up_tls is not None:
                ip[0] = 0
                sa = &self.cluster.addrs[self.endpoint]
                if sa.ss_family == AF_INET:
                    inet_ntop(AF_INET, &(<sockaddr_in *>sa).sin_addr, ip, sizeof(ip))
                elif sa.ss_family == AF_INET6:
                    inet_ntop(AF_INET6, &(<sockaddr_in6 *>sa).sin6_addr, ip, sizeof(ip))
                if tls_connect(&self.tls[1], self.up_tls, self.fds[1], self.endpoint, ip) < 0:
                    self.close()
                    return
                self.state = RS_UP_HANDSHAKE
                self.connect_deadline = self.owner.reactor.now + self.cluster.connect_timeout
                self.upstream_handshake()
                return
            self.state = RS_OPEN
            self.cluster.connect_succeeded(self.endpoint)
            self.last_active = self.owner.reactor.now
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable[side] = 1
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.hangup[side] = 1
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable[side] = 1
        if self.tls[side].ssl != NULL:
            # OpenSSL may need the other readiness than the call it blocked: a read waiting to write (a
            # renegotiation-like exchange, a key update) or a write waiting to read.
            if events & EPOLLOUT and self.tls[side].read_wants_out:
                self.readable[side] = 1
            if events & EPOLLIN and self.tls[side].write_wants_in:
                self.writable[side] = 1
        if self.state == RS_OPEN:
            self.pump()

    cdef void on_again(self) noexcept:
        if self.state == RS_OPEN:
            self.pump()

    # ---- moving bytes --------------------------------------------------------------------------

    cdef void pump(self) noexcept:
        cdef int r0, r1
        r0 = self.pump_splice(0) if self.dirs[0].spliced else self.pump_copy(0)
        if r0 >= 0:
            r1 = self.pump_splice(1) if self.dirs[1].spliced else self.pump_copy(1)
        else:
            r1 = -1
        if r0 < 0 or r1 < 0 or (self.dirs[0].dst_shut and self.dirs[1].dst_shut):
            self.close()
        elif r0 > 0 or r1 > 0:
            self.owner.reactor.again(self)

    cdef int pump_splice(self, int d) noexcept:
        """Move direction d until blocked: 0 blocked or done, 1 yielded for fairness, -1 error."""
        cdef Direction *dr = &self.dirs[d]
        cdef int src = self.fds[d]
        cdef int dst = self.fds[1 - d]
        cdef Py_ssize_t n, moved = 0
        cdef int result = 0
        # This direction's byte counter (L_BYTES_OUT for d = 1), looked up once rather than per send.
        cdef uint64_t *counted = self.owner.counters + L_BYTES_IN + d
        while True:
            if dr.pending > 0:
                if not self.writable[1 - d]:
                    break
                n = splice(dr.pr, NULL, dst, NULL, dr.pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                if n > 0:
                    dr.pending -= n
                    bump(counted, <uint64_t>n)
                    continue
                if n < 0 and errno == EAGAIN:
                    self.writable[1 - d] = 0
                    break
                return -1
            if dr.src_eof:
                if not dr.dst_shut:
                    self.pass_fin(d)
                break
            if not self.readable[d]:
                break
            if moved >= FAIR_SHARE:
                result = 1
                break
            if dr.pr < 0 and self.owner.reactor.pipes.take(&dr.pr, &dr.pw) < 0:
                # No pipe to be had (the worker's pipe budget is spent, or no fd is left): copy for the rest
                # of this relay, which needs no fd.
                self.use_splice = False
                dr.spliced = 0
                dr.bulk = 0
                return self.pump_copy(d)
            # The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
            n = splice(src, NULL, dr.pw, NULL, self.owner.reactor.pipes.size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                dr.pending = n
                moved += n
                self.last_active = self.owner.reactor.now
            elif n == 0:
                dr.src_eof = 1
            elif errno == EAGAIN:
                self.readable[d] = 0
            elif errno == EINVAL or errno == ENOSYS:
                # This socket type or kernel cannot splice: copy for the rest of this relay.
                self.release(d)
                self.use_splice = False
                dr.spliced = 0
                dr.bulk = 0
                return self.pump_copy(d)
            else:
                return -1
        if dr.pending == 0 and dr.pr >= 0:
            self.release(d)
        return result

    cdef int pump_copy(self, int d) noexcept:
        """pump_splice's twin through a pooled buffer (recv/send, or TLS records on a TLS side): the same
        contract."""
        cdef Direction *dr = &self.dirs[d]
        cdef Py_ssize_t n, moved = 0
        cdef int result = 0
        # This direction's byte counter (L_BYTES_OUT for d = 1), looked up once rather than per send.
        cdef uint64_t *counted = self.owner.counters + L_BYTES_IN + d
        while True:
            if dr.pending > 0:
                if not self.writable[1 - d]:
                    break
                n = self.side_send(1 - d, dr.buf + dr.buf_off, dr.pending)
                if n > 0:
                    if n < dr.pending:
                        # A short write means the socket buffer is full; its EPOLLOUT edge will come.
                        self.writable[1 - d] = 0
                    dr.pending -= n
                    dr.buf_off += n
                    bump(counted, <uint64_t>n)
                    continue
                if n < 0 and errno == EAGAIN:
                    self.writable[1 - d] = 0
                    break
                return -1
            if dr.src_eof:
                if not dr.dst_shut:
                    self.pass_fin(d)
                break
            if not self.readable[d]:
                break
            if moved >= FAIR_SHARE:
                result = 1
                break
            if dr.bulk:
                # The previous read filled the buffer: a bulk stream, cheaper through a pipe from now on.
                self.release(d)
                dr.spliced = 1
                return self.pump_splice(d)
            if dr.buf == NULL:
                dr.buf = self.owner.reactor.buffers.take()
                if dr.buf == NULL:
                    return -1
            n = self.side_recv(d, dr.buf, self.owner.reactor.buffers.size)
            if n > 0:
                dr.pending = n
                dr.buf_off = 0
                moved += n
                self.last_active = self.owner.reactor.now
                if n == self.owner.reactor.buffers.size:
                    dr.bulk = self.use_splice
                elif not self.hangup[d] and not self.tls[d].more:
                    # A short read emptied the socket; new data raises a new edge. After a FIN was seen
                    # there is no new edge to come, so then we read on until recv returns 0; the same when
                    # OpenSSL already holds the peer's close_notify behind these bytes (tls_recv's `more`).
                    self.readable[d] = 0
            elif n == 0:
                dr.src_eof = 1
            elif errno == EAGAIN:
                self.readable[d] = 0
            else:
                return -1
        if dr.pending == 0 and dr.buf != NULL:
            self.release(d)
        return result

    cdef void pass_fin(self, int d) noexcept:
        """Direction d is drained after its source's FIN: pass the FIN on. When the other direction is already
        finished the relay closes right after, and close() sends that FIN anyway: skip the shutdown syscall."""
        self.dirs[d].dst_shut = 1
        if self.tls[1 - d].ssl != NULL:
            tls_close_notify(&self.tls[1 - d])
        if not self.dirs[1 - d].dst_shut:
            shutdown(self.fds[1 - d], SHUT_WR)

    cdef void release(self, int d) noexcept:
        """Give direction d's pipe/buffer back to the pools (a pipe still holding bytes is closed instead)."""
        cdef Direction *dr = &self.dirs[d]
        cdef Reactor reactor = self.owner.reactor
        if dr.pr >= 0:
            if dr.pending == 0:
                reactor.pipes.give(dr.pr, dr.pw)
            else:
                reactor.pipes.drop(dr.pr, dr.pw)
            dr.pr = -1
            dr.pw = -1
        if dr.buf != NULL:
            reactor.buffers.give(dr.buf)
            dr.buf = NULL
        dr.pending = 0

    cdef int send_proxy_header(self) noexcept:
        """The cluster's PROXY header, first on the new upstream connection (before a TLS ClientHello): 0 sent,
        -1 when the socket took less (a fresh connection's empty send buffer takes 108 bytes, so that is an error
        of the connection, treated as a failed connect)."""
        cdef char out[PP_OUT_MAX]
        cdef int n
        if self.proxy_addrs == NULL:
            n = pp_encode(self.cluster.proxy_protocol, NULL, NULL, out)
        else:
            n = pp_encode(self.cluster.proxy_protocol, &self.proxy_addrs.src, &self.proxy_addrs.dst, out)
        if send(self.fds[1], out, n, MSG_NOSIGNAL | MSG_DONTWAIT) != n:
            return -1
        free(self.proxy_addrs)
        self.proxy_addrs = NULL
        return 0

    cdef void close(self) noexcept:  # no-cython-lint
        cdef TcpProxy owner = self.owner
        if self.state == RS_CLOSED:
            return
        free(self.proxy_addrs)
        self.proxy_addrs = NULL
        tls_free(&self.tls[0])
        tls_free(&self.tls[1])
        if self.fds[0] >= 0:
            close(self.fds[0])
            self.fds[0] = -1
            if self.limit is not None:
                self.limit.release()
                self.limit = None
        if self.fds[1] >= 0:
            close(self.fds[1])
            self.fds[1] = -1
            self.cluster.upstream_end(self.endpoint)
        self.state = RS_CLOSED
        self.release(0)
        self.release(1)
        # Keep self alive until the batch ends (later events may name it), then drop the list's reference.
        owner.reactor.bury(self)
        owner.unlink(self)
