"""The PROXY protocol gate: a listener with proxy_protocol sends each accepted connection here first.

The header is read with MSG_PEEK and then taken with one recv() of exactly its length, so the protocol behind
(tcp relay, HTTP/1, HTTP/2 by prior knowledge, TLS) starts at the first byte after it and no byte is copied
twice. Most clients (HAProxy, load balancers) send the header with their first segment, so a connection is
usually looked at once, at accept, and handed on without touching epoll; one whose header is not all there yet
waits in the epoll set (edge-triggered) until it is, until proxy_protocol_timeout passes (the tick sweeps the
waiting list), or until the client closes. A connection without a valid header is closed, counted by reason (in the
gate and in the listener's stats slots, which /metrics sums over the workers) and never handed on; refusals are
logged at most once a second (with how many were not logged).

The address the header carries is what the protocol gets as the connection's peer: the client address of
X-Forwarded-For, the access log, source_ip hashing and filters; its destination is kept by fd (codec.pyx's
pp_dst_keep) for the PROXY header a cluster is sent, so that one names the address the client connected to. LOCAL
(v2) and UNKNOWN (v1) headers keep the socket's own addresses, as the spec says.
"""
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, memset

from fastmesh._core.includes.system cimport (
    close, recv, errno, epoll_ctl, epoll_event, sockaddr_storage, sockaddr_in, sockaddr_in6, inet_ntop,
    EAGAIN, EINTR, EPOLLIN, EPOLLRDHUP, EPOLLHUP, EPOLLERR, EPOLLET, EPOLL_CTL_DEL, MSG_PEEK, MSG_DONTWAIT,
    AF_INET, AF_INET6,
)
from fastmesh._core.reactor cimport EventTarget, Sweeper, Reactor, Acceptor, ConnectionLimit
from fastmesh._core.proxyproto.codec cimport (
    ProxyHeader, pp_parse, pp_dst_keep, PP_MORE, PP_BAD, PP_V1, PP_V2, PP_V2_MAX, PR_NONE, PR_TIMEOUT, PR_CLOSED,
    PR_COUNT,
)
from fastmesh._core.stats cimport L_PP_PASSED, L_PP_REFUSED, bump
from fastmesh._core.proxyproto.codec import REFUSALS

import logging

log = logging.getLogger("fastmesh.listener")

cdef uint32_t WAIT_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET
cdef int LOOK_WAIT = 0             # look(): the header is incomplete; keep waiting
cdef int LOOK_DONE = 1             # look(): handed on, or refused and closed


cdef class Waiting(EventTarget):

    cdef void on_events(self, uint32_t events, int side) noexcept:
        cdef ProxyGate gate = self.gate
        cdef int fd = self.fd
        if fd < 0:
            return
        if gate.look(fd, &self.peer, (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0, True) == LOOK_DONE:
            self.fd = -1                # handed on (its registration removed first) or closed
            gate.unlink(self)


cdef class ProxyGate(Sweeper):

    def __cinit__(self, Reactor reactor, str name, int accept=PP_V1 | PP_V2, double timeout=5.0):
        self.reactor = reactor
        self.name = name
        self.accept = accept
        self.timeout = timeout

    def set_target(self, Acceptor protocol, ConnectionLimit limit):
        """Where connections go once their header is read, and the limit their slots belong to."""
        self.protocol = protocol
        self.limit = limit

    @property
    def refused(self):
        """Connections refused, by reason (REFUSALS names; reasons never seen are left out)."""
        cdef int i
        return {REFUSALS[i]: self.refused_by[i] for i in range(1, PR_COUNT) if self.refused_by[i]}

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept:
        cdef Waiting w
        if self.look(fd, peer, False, False) == LOOK_DONE:
            return
        w = Waiting.__new__(Waiting)
        w.gate = self
        w.fd = fd
        memcpy(&w.peer, peer, sizeof(sockaddr_storage))
        w.deadline = self.reactor.now + self.timeout
        if self.reactor.add(fd, w, 0, WAIT_EVENTS) < 0:
            self.refuse(fd, PR_CLOSED, peer)
            return
        w.next = self.head
        if self.head is not None:
            self.head.prev = w
        self.head = w
        self.waiting += 1

    cdef int look(self, int fd, sockaddr_storage *peer, bint hangup, bint registered) noexcept:
        """Peek at what fd has sent: hand it on (header taken off the socket), refuse it, or keep waiting."""
        cdef unsigned char buf[PP_V2_MAX]
        cdef ProxyHeader h
        cdef sockaddr_storage client
        cdef epoll_event ev
        cdef Py_ssize_t n
        cdef int r, reason = PR_NONE
        while True:
            n = recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT)
            if n >= 0 or errno != EINTR:
                break
        if n < 0:
            if errno == EAGAIN and not hangup:
                return LOOK_WAIT
            self.refuse(fd, PR_CLOSED, peer)
            return LOOK_DONE
        if n == 0:
            self.refuse(fd, PR_CLOSED, peer)
            return LOOK_DONE
        r = pp_parse(buf, n, self.accept, &h, &reason)
        if r == PP_MORE:
            if hangup:
                self.refuse(fd, PR_CLOSED, peer)
                return LOOK_DONE
            return LOOK_WAIT
        if r == PP_BAD:
            self.refuse(fd, reason, peer)
            return LOOK_DONE
        # Take exactly the header off the socket: the protocol behind starts at the byte after it.
        if recv(fd, buf, r, MSG_DONTWAIT) != r:
            self.refuse(fd, PR_CLOSED, peer)
            return LOOK_DONE
        if registered:
            # Out of the epoll set it waited in: the protocol registers it anew.
            epoll_ctl(self.reactor.epfd, EPOLL_CTL_DEL, fd, &ev)
        if h.local:
            memcpy(&client, peer, sizeof(sockaddr_storage))
            pp_dst_keep(fd, NULL)
        else:
            memset(&client, 0, sizeof(sockaddr_storage))
            memcpy(&client, &h.src, sizeof(sockaddr_in6))
            pp_dst_keep(fd, &h.dst)             # a PROXY header sent upstream names it as the destination
        self.passed += 1
        bump(self.protocol.counters + L_PP_PASSED, 1)
        self.protocol.accept_fd(fd, &client)
        return LOOK_DONE

    cdef void refuse(self, int fd, int reason, sockaddr_storage *peer) noexcept:
        """Close a connection that brought no valid header (its slot goes back), count it and log it."""
        cdef char ip[64]
        close(fd)
        if self.limit is not None:
            self.limit.release()
        self.refused_by[reason] += 1
        if self.protocol is not None:
            bump(self.protocol.counters + L_PP_REFUSED + reason - 1, 1)
        if self.reactor.now < self.log_after:
            self.log_skipped += 1
            return
        self.log_after = self.reactor.now + 1.0
        ip[0] = 0
        if peer.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>peer).sin_addr, ip, sizeof(ip))
        elif peer.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>peer).sin6_addr, ip, sizeof(ip))
        try:
            log.warning("listener %s: closed a connection from %s without a valid PROXY protocol header (%s)%s",
                        self.name, ip.decode("ascii", "replace"), REFUSALS[reason],
                        f"; {self.log_skipped} more refused since the last message" if self.log_skipped else "")
        except BaseException:
            pass
        self.log_skipped = 0

    cdef void unlink(self, Waiting w) noexcept:
        if w.prev is not None:
            w.prev.next = w.next
        else:
            self.head = w.next
        if w.next is not None:
            w.next.prev = w.prev
        w.prev = None
        w.next = None
        self.waiting -= 1
        self.reactor.bury(w)

    cdef bint sweep(self, double now) noexcept:
        """Connections whose header did not come in time are refused (a walk of the waiting ones, each tick)."""
        cdef Waiting w = self.head
        cdef Waiting nxt
        while w is not None:
            nxt = w.next
            if now >= w.deadline and w.fd >= 0:
                self.refuse(w.fd, PR_TIMEOUT, &w.peer)      # closing the fd also takes it out of the epoll set
                w.fd = -1
                self.unlink(w)
            w = nxt
        return self.head is not None

    def close_waiting(self):
        """Close every connection still waiting for its header (the listener stopped, or the worker stops)."""
        while self.head is not None:
            if self.head.fd >= 0:
                close(self.head.fd)
                if self.limit is not None:
                    self.limit.release()
                self.head.fd = -1
            self.unlink(self.head)
