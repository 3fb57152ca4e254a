# Listener: a bound, listening socket in the reactor; accepts in C and hands each fd to its protocol.

from fastmesh._core.reactor cimport EventTarget, Reactor, Acceptor


cdef class Listener(EventTarget):
    cdef Reactor reactor               # epoll set the listening fd is registered in
    cdef int fd                        # the listening socket (owned: closed by close())
    cdef readonly str name             # the config's listener name
    cdef Acceptor protocol             # where accepted connections go (tcp relay or http)
    cdef bint paused                   # accepting stopped for a moment (out of fds)
    cdef readonly unsigned long long accept_errors   # accept4 failures other than EAGAIN

    cdef void accept_batch(self) noexcept
