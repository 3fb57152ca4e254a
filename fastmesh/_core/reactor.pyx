"""The reactor: an epoll set nested in the asyncio loop, dispatching socket events to C methods in batches.

Why nested: uvloop costs a Python callback and a transport object per connection event; a proxy's relay needs
neither. The loop watches one fd (the epoll set); each wakeup drains up to MAX_EVENTS events and calls the
targets' cdef methods. Timers are a coarse tick (Sweeper objects) because proxy deadlines are seconds long.
"""
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, free

from fastmesh._core.includes.system cimport (
    epoll_create1, epoll_ctl, epoll_wait, epoll_event, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CLOEXEC,
    close, pipe2, fcntl, F_SETPIPE_SZ, O_NONBLOCK, O_CLOEXEC, clock_gettime, timespec, CLOCK_MONOTONIC, errno,
    sockaddr_storage,
)

import logging

log = logging.getLogger("fastmesh.reactor")

cdef uint64_t SIDE_MASK = 1      # low bit of epoll data: which of a target's two fds fired


cdef class EventTarget:
    cdef void on_events(self, uint32_t events, int side) noexcept:
        pass

    cdef void on_again(self) noexcept:
        pass


cdef class Sweeper:
    cdef void sweep(self, double now) noexcept:
        pass


cdef class ConnectionLimit:
    """Slots for open downstream connections. `ConnectionLimit(reactor, limit, parent)`: a listener's limit
    (0: none of its own) counting also in `parent`, the worker's. A listener that finds a limit full stops
    accepting and waits here: new connections queue in the kernel's backlog until a slot frees up."""

    def __cinit__(self, Reactor reactor, long limit=0, ConnectionLimit parent=None):
        self.reactor = reactor
        self.parent = parent
        self.active = 0
        self.limit = max(limit, 0)
        self.waiting = []

    def set_limit(self, long limit):
        """A reload: the new limit applies from the next accept; listeners waiting for room get it at once."""
        self.limit = max(limit, 0)
        self.wake()

    cdef bint full(self) noexcept:
        """No slot left here or in the parent."""
        if self.limit and self.active >= self.limit:
            return True
        return self.parent is not None and self.parent.full()

    cdef void take(self) noexcept:
        self.active += 1
        if self.parent is not None:
            self.parent.take()

    cdef void release(self) noexcept:
        self.active -= 1
        if self.parent is not None:
            self.parent.release()
        if self.waiting and not (self.limit and self.active >= self.limit):
            self.wake()

    cdef void wait(self, EventTarget listener) noexcept:
        """`listener` found this limit full: call its on_again() once a slot frees up."""
        if listener not in self.waiting:
            self.waiting.append(listener)

    cdef void wake(self) noexcept:
        """Every waiting listener tries again soon (from the reactor, not from inside a connection's close)."""
        cdef EventTarget target
        cdef list waiting = self.waiting
        self.waiting = []
        for target in waiting:
            self.reactor.again(target)


cdef class Acceptor(Sweeper):
    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept:
        close(fd)


cdef class PipePool:
    def __cinit__(self, int capacity=64, int size=1048576):
        self.capacity = capacity
        self.size = size
        self.count = 0
        self.open = 0
        self.limit = 0
        self.fds = <int *>malloc(sizeof(int) * 2 * (capacity if capacity > 0 else 1))
        if self.fds == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self.fds != NULL:
            for i in range(self.count * 2):
                close(self.fds[i])
            free(self.fds)
            self.fds = NULL

    cdef int take(self, int *pr, int *pw) noexcept:
        """A pipe from the pool, or a new one; -1 at the limit or when the system has no fds left."""
        cdef int p[2]
        if self.count > 0:
            self.count -= 1
            pr[0] = self.fds[2 * self.count]
            pw[0] = self.fds[2 * self.count + 1]
            return 0
        if self.limit and self.open >= self.limit:
            return -1
        if pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0:
            return -1
        self.open += 1
        # A larger pipe moves more per splice pair: fewer syscalls per MiB. If the system caps pipe sizes
        # lower, the default size still works.
        fcntl(p[0], F_SETPIPE_SZ, self.size)
        pr[0] = p[0]
        pw[0] = p[1]
        return 0

    cdef void give(self, int pr, int pw) noexcept:
        """Return an EMPTY pipe; callers close pipes that still hold data instead."""
        if self.count < self.capacity:
            self.fds[2 * self.count] = pr
            self.fds[2 * self.count + 1] = pw
            self.count += 1
        else:
            self.drop(pr, pw)

    cdef void drop(self, int pr, int pw) noexcept:
        """Close a pipe taken from the pool (one still holding bytes cannot be reused)."""
        close(pr)
        close(pw)
        self.open -= 1


cdef class BufferPool:
    def __cinit__(self, int capacity=64, int size=65536):
        self.capacity = capacity
        self.size = size
        self.count = 0
        self.bufs = <char **>malloc(sizeof(char *) * (capacity if capacity > 0 else 1))
        if self.bufs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self.bufs != NULL:
            for i in range(self.count):
                free(self.bufs[i])
            free(self.bufs)
            self.bufs = NULL

    cdef char *take(self) noexcept:
        if self.count > 0:
            self.count -= 1
            return self.bufs[self.count]
        return <char *>malloc(self.size)

    cdef void give(self, char *buf) noexcept:
        if self.count < self.capacity:
            self.bufs[self.count] = buf
            self.count += 1
        else:
            free(buf)


cdef class Reactor:
    """One per event loop. Python code only attaches, detaches and registers sweepers; the rest is C."""

    def __cinit__(self, int pipe_size=1048576, int pipe_pool=64, int buffer_size=65536):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.loop = None
        self.pending_again = []
        self.graveyard = []
        self.sweepers = []
        self.tick_handle = None
        self.tick_interval = 0.1
        self.call_soon_pending = False
        self.pipes = PipePool(pipe_pool, pipe_size)
        self.buffers = BufferPool(pipe_pool, buffer_size)
        self.refresh_now()

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    # ---- Python-facing control -------------------------------------------------------------------

    def attach(self, loop, double tick_interval=0.025):
        """Start dispatching on `loop` (call from the loop's thread)."""
        if self.loop is not None:
            raise RuntimeError("reactor already attached")
        self.loop = loop
        self.tick_interval = tick_interval
        loop.add_reader(self.epfd, self._on_readable)
        self.tick_handle = loop.call_later(tick_interval, self._tick)

    def detach(self):
        if self.loop is None:
            return
        self.loop.remove_reader(self.epfd)
        if self.tick_handle is not None:
            self.tick_handle.cancel()
            self.tick_handle = None
        self.loop = None

    def add_sweeper(self, Sweeper sweeper):
        self.sweepers.append(sweeper)

    def remove_sweeper(self, Sweeper sweeper):
        if sweeper in self.sweepers:
            self.sweepers.remove(sweeper)

    def _on_readable(self):
        self.call_soon_pending = False
        self.poll()

    def _tick(self):
        cdef Sweeper s
        self.refresh_now()
        for s in list(self.sweepers):
            s.sweep(self.now)
        self.graveyard.clear()
        if self.loop is not None:
            self.tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    # ---- C core ------------------------------------------------------------------------------------

    cdef void refresh_now(self) noexcept:
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.now = ts.tv_sec + ts.tv_nsec * 1e-9

    cdef int add(self, int fd, EventTarget target, int side, uint32_t events) noexcept:
        """Register fd for `target`; the target must stay alive (someone owns it) while fd is open."""
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = <uint64_t>(<uintptr_t><PyObject *>target) | <uint64_t>side
        return epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)

    cdef int modify(self, int fd, EventTarget target, int side, uint32_t events) noexcept:
        """Point a registered fd at another target (a connection changing protocol); re-arms its edges."""
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = <uint64_t>(<uintptr_t><PyObject *>target) | <uint64_t>side
        return epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &ev)

    cdef void again(self, EventTarget target) noexcept:
        """Ask for target.on_again() soon: work was left undone to be fair to other connections."""
        self.pending_again.append(target)
        # Asked while poll() dispatches events (a connection wanting its output flushed at the end of the pass):
        # that same poll() runs it, so no extra loop iteration (and empty epoll_wait) is scheduled for it.
        if not self.call_soon_pending and not self.dispatching and self.loop is not None:
            self.call_soon_pending = True
            self.loop.call_soon(self._on_readable)

    cdef void bury(self, EventTarget target) noexcept:
        """Keep a closed target alive until the batch ends: later events in the batch may still name it."""
        self.graveyard.append(target)

    cdef void poll(self) noexcept:
        cdef int n, i
        cdef uint64_t data
        cdef EventTarget target
        cdef list again_now
        n = epoll_wait(self.epfd, self.events, MAX_EVENTS, 0)
        self.refresh_now()
        self.dispatching = True
        for i in range(n):
            data = self.events[i].data.u64
            target = <EventTarget><PyObject *><uintptr_t>(data & ~(<uint64_t>SIDE_MASK))
            target.on_events(self.events[i].events, <int>(data & SIDE_MASK))
        self.dispatching = False
        if self.pending_again:
            again_now = self.pending_again
            self.pending_again = []
            for target in again_now:
                target.on_again()
        if self.graveyard:
            self.graveyard.clear()
