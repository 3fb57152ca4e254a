"""Accepts connections on a listening socket in batches, in C, and hands each fd to the listener's protocol.

The socket is registered edge-triggered; a wakeup accepts up to ACCEPT_BATCH connections and, if more may be
waiting, asks the reactor to come back after other connections had their turn.

Connection limits (HAProxy's maxconn): every accepted connection holds a slot of the listener's ConnectionLimit
and, through it, of the worker's until its client fd closes. A listener that finds a limit full stops accepting
and waits on that limit: new connections queue in the kernel's backlog (the client sees a slow connect, not an
error) and are accepted when a slot frees up. The listening fd stays in the epoll set: a connection arriving
meanwhile costs one wakeup that finds the limit full, which is cheaper than two epoll_ctl calls per episode on a
busy listener. Running out of file descriptors anyway (EMFILE/ENFILE, or no memory) pauses accepting for
100 ms instead of spinning. Each condition is logged when it begins and when it has been quiet for a second,
never per event, and counted in the listener's stats slots (L_LIMITED, L_PAUSED).

A listener with proxy_protocol hands each connection to its ProxyGate (proxyproto/gate.pyx) instead, which reads
the PROXY header and then hands it to the protocol with the client address the header carries. Listeners without
it pay one pointer test per accepted connection.
"""
from libc.stdint cimport uint32_t

from fastmesh._core.includes.system cimport (
    accept4, close, errno, strerror, EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EPROTO, EPERM,
    SOCK_NONBLOCK, SOCK_CLOEXEC, EPOLLIN, EPOLLET, sockaddr, sockaddr_storage, socklen_t,
)
from fastmesh._core.reactor cimport Reactor, EventTarget, Acceptor, ConnectionLimit
from fastmesh._core.stats cimport L_LIMITED, L_PAUSED, bump
from fastmesh._core.proxyproto.gate cimport ProxyGate
from fastmesh._core.proxyproto.codec cimport pp_dst_forget

import logging

log = logging.getLogger("fastmesh.listener")

cdef int ACCEPT_BATCH = 64
cdef double FD_PAUSE = 0.1              # seconds accepting pauses after running out of fds
cdef double EPISODE_QUIET = 1.0         # seconds without the condition that end an episode (and log its summary)


cdef class Listener(EventTarget):

    def __cinit__(self, Reactor reactor, int fd, str name, Acceptor protocol, ConnectionLimit worker_limit=None,
                  long max_connections=0):
        self.reactor = reactor
        self.fd = fd
        self.name = name
        self.limit = ConnectionLimit(reactor, max_connections, worker_limit)
        self.protocol = protocol
        protocol.limit = self.limit
        self.paused = False
        self.stopped = False
        self.backlogged = False
        self.episode_timer = None

    def start(self):
        """Register the listening fd: connections are accepted from the next loop iteration on."""
        if self.reactor.add(self.fd, self, 0, EPOLLIN | EPOLLET) < 0:
            raise OSError(errno, f"listener {self.name}: epoll_ctl failed: {strerror(errno).decode()}")
        # Connections that queued before registration raise no edge: look once.
        self.reactor.again(self)

    def close(self):
        """Stop accepting: closing the fd also removes it from the epoll set (and connections still owing their
        PROXY header are closed)."""
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        if self.gate is not None:
            self.gate.close_waiting()
            self.reactor.remove_sweeper(self.gate)
        if self.episode_timer is not None:
            self.episode_timer.cancel()
            self.episode_timer = None

    def set_protocol(self, Acceptor protocol):
        """A reload: connections accepted from now on go to `protocol`; open ones stay with the old one."""
        protocol.limit = self.limit
        self.protocol = protocol
        if self.gate is not None:
            self.gate.set_target(protocol, self.limit)

    def set_proxy_protocol(self, int accept, double timeout):
        """Require a PROXY header of the versions in `accept` (codec PP_V1 | PP_V2) within `timeout` seconds on
        every connection accepted from now on; accept 0: none (connections already waiting finish their wait)."""
        if self.gate is None:
            if not accept:
                return
            self.gate = ProxyGate(self.reactor, self.name, accept, timeout)
            self.gate.set_target(self.protocol, self.limit)
            self.reactor.add_sweeper(self.gate)
        self.gate.accept = accept
        self.gate.timeout = timeout

    @property
    def fileno(self):
        return self.fd

    cdef void on_events(self, uint32_t events, int side) noexcept:
        self.accept_batch()

    cdef void on_again(self) noexcept:
        self.accept_batch()

    def _resume(self):
        self.paused = False
        self.accept_batch()

    cdef void accept_batch(self) noexcept:
        cdef int _, cfd, err
        cdef sockaddr_storage peer
        cdef socklen_t peerlen
        if self.fd < 0 or self.paused:
            return
        for _ in range(ACCEPT_BATCH):
            if self.limit.full():
                self.at_limit()
                return
            self.stopped = False
            peerlen = sizeof(peer)
            cfd = accept4(self.fd, <sockaddr *>&peer, &peerlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd >= 0:
                # The slot first: accept_fd may close the connection at once, which gives it back.
                self.limit.take()
                pp_dst_forget(cfd)          # a PROXY destination kept for an earlier connection on this fd
                if self.backlogged:
                    bump(self.protocol.counters + L_LIMITED, 1)
                    self.limited_waited += 1
                if self.gate is not None and self.gate.accept:
                    self.gate.accept_fd(cfd, &peer)
                else:
                    self.protocol.accept_fd(cfd, &peer)
                continue
            err = errno
            if err == EAGAIN:
                self.backlogged = False
                return
            if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
                continue
            self.accept_errors += 1
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                self.out_of_fds(err)
                return
            log.error("listener %s: accept failed: %s", self.name, strerror(err).decode())
            return
        # A full batch: more may be queued, and the edge will not fire again for them.
        self.reactor.again(self)

    cdef void at_limit(self) noexcept:
        """A limit is full: wait on it (it calls on_again() when a slot frees up); connections queue meanwhile."""
        cdef ConnectionLimit lim = self.limit
        cdef str which
        while lim is not None:
            if lim.limit and lim.active >= lim.limit:
                lim.wait(self)
                break
            lim = lim.parent
        self.stopped = True
        self.backlogged = True
        self.limited_last = self.reactor.now
        if self.limited_since:
            return
        self.limited_since = self.reactor.now
        self.limited_waited = 0
        which = ("listener" if lim is self.limit else "worker") + f" max_connections {lim.limit if lim else 0}"
        log.warning("listener %s: connection limit reached (%s); new connections wait in the backlog until "
                    "open ones close", self.name, which)
        self.watch_episodes()

    cdef void out_of_fds(self, int err) noexcept:
        """accept4 failed for want of fds (or memory): pause FD_PAUSE seconds rather than spin on the edge."""
        bump(self.protocol.counters + L_PAUSED, 1)
        self.paused = True
        if self.reactor.loop is not None:
            self.reactor.loop.call_later(FD_PAUSE, self._resume)
        self.fds_last = self.reactor.now
        self.fds_pauses += 1
        if self.fds_since:
            return
        self.fds_since = self.reactor.now
        self.fds_pauses = 1
        self.fds_errno = err
        log.error("listener %s: out of file descriptors (accept: %s); accepting paused, retried every %d ms. "
                  "Raise the fd limit (ulimit -n) or lower max_connections", self.name, strerror(err).decode(),
                  <int>(FD_PAUSE * 1000))
        self.watch_episodes()

    def watch_episodes(self):
        if self.episode_timer is None and self.reactor.loop is not None:
            self.episode_timer = self.reactor.loop.call_later(EPISODE_QUIET, self._end_episodes)

    def _end_episodes(self):
        """Log the end of each episode that has been quiet for EPISODE_QUIET, with what happened in it."""
        cdef double now = self.reactor.now
        self.episode_timer = None
        if self.limited_since and not self.stopped and now - self.limited_last >= EPISODE_QUIET:
            log.warning("listener %s: below the connection limit again after %.1fs; %d connection(s) waited in the "
                        "backlog", self.name, self.limited_last - self.limited_since, self.limited_waited)
            self.limited_since = 0
        if self.fds_since and not self.paused and now - self.fds_last >= EPISODE_QUIET:
            log.warning("listener %s: accepting again after %.1fs out of file descriptors (%s); accepting paused "
                        "%d time(s)", self.name, self.fds_last - self.fds_since + FD_PAUSE,
                        strerror(self.fds_errno).decode(), self.fds_pauses)
            self.fds_since = 0
        if (self.limited_since or self.fds_since) and self.fd >= 0:
            self.watch_episodes()
