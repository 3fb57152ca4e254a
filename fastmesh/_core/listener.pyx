"""Accepts connections on a listening socket in batches, in C, and hands each fd to the listener's protocol.

The socket is registered edge-triggered; a wakeup accepts up to ACCEPT_BATCH connections and, if more may be
waiting, asks the reactor to come back after other connections had their turn. Running out of file
descriptors pauses accepting for 100 ms instead of spinning.
"""
from libc.stdint cimport uint32_t

from fastmesh._core.includes.system cimport (
    accept4, close, errno, strerror, EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EPROTO, EPERM,
    SOCK_NONBLOCK, SOCK_CLOEXEC, EPOLLIN, EPOLLET, sockaddr, sockaddr_storage, socklen_t,
)
from fastmesh._core.reactor cimport Reactor, EventTarget, Acceptor

import logging

log = logging.getLogger("fastmesh.listener")

cdef int ACCEPT_BATCH = 64


cdef class Listener(EventTarget):

    def __cinit__(self, Reactor reactor, int fd, str name, Acceptor protocol):
        self.reactor = reactor
        self.fd = fd
        self.name = name
        self.protocol = protocol
        self.paused = False

    def start(self):
        """Register the listening fd: connections are accepted from the next loop iteration on."""
        if self.reactor.add(self.fd, self, 0, EPOLLIN | EPOLLET) < 0:
            raise OSError(errno, f"listener {self.name}: epoll_ctl failed: {strerror(errno).decode()}")
        # Connections that queued before registration raise no edge: look once.
        self.reactor.again(self)

    def close(self):
        """Stop accepting: closing the fd also removes it from the epoll set."""
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def set_protocol(self, Acceptor protocol):
        """A reload: connections accepted from now on go to `protocol`; open ones stay with the old one."""
        self.protocol = protocol

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
            peerlen = sizeof(peer)
            cfd = accept4(self.fd, <sockaddr *>&peer, &peerlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd >= 0:
                self.protocol.accept_fd(cfd, &peer)
                continue
            err = errno
            if err == EAGAIN:
                return
            if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
                continue
            self.accept_errors += 1
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                log.error("listener %s: accept failed: %s; pausing accepts for 100 ms", self.name,
                          strerror(err).decode())
                self.paused = True
                if self.reactor.loop is not None:
                    self.reactor.loop.call_later(0.1, self._resume)
                return
            log.error("listener %s: accept failed: %s", self.name, strerror(err).decode())
            return
        # A full batch: more may be queued, and the edge will not fire again for them.
        self.reactor.again(self)
