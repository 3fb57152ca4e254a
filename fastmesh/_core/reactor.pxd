# Reactor: one epoll set per event loop that the whole data path registers its sockets in. The asyncio loop
# sees a single readable fd; each wakeup dispatches a batch of events to C methods, with no Python call per event.

from libc.stdint cimport uint32_t
from fastmesh._core.includes.system cimport epoll_event, sockaddr_storage

cdef enum:
    MAX_EVENTS = 256           # events handled per epoll_wait batch


cdef class EventTarget:
    # Anything registered in the reactor: a listener or a connection. `side` tells which of its fds fired.
    cdef void on_events(self, uint32_t events, int side) noexcept
    # Called for targets parked with Reactor.again(): continue work left for fairness.
    cdef void on_again(self) noexcept


cdef class Sweeper:
    # Anything with deadlines to check (connect/idle timeouts, endpoints to re-admit); run by the reactor's tick.
    cdef void sweep(self, double now) noexcept


cdef class Acceptor(Sweeper):
    # A listener's protocol (tcp relay, http): takes each accepted connection and its peer address.
    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept


cdef class PipePool:
    # Spare splice pipes (read fd, write fd) of `size` bytes each, so idle connections hold none.
    cdef int *fds              # 2 * count fds: [r0, w0, r1, w1, ...]
    cdef int count             # pipes held now
    cdef int capacity          # most pipes kept; extra ones are closed
    cdef int size              # bytes each pipe holds (F_SETPIPE_SZ)

    cdef int take(self, int *pr, int *pw) noexcept
    cdef void give(self, int pr, int pw) noexcept


cdef class BufferPool:
    # Spare fixed-size byte buffers for the recv/send fallback relay.
    cdef char **bufs           # stack of free buffers
    cdef int count             # buffers held now
    cdef int capacity          # most buffers kept; extra ones are freed
    cdef int size              # bytes per buffer

    cdef char *take(self) noexcept
    cdef void give(self, char *buf) noexcept


cdef class Reactor:
    cdef int epfd                      # the epoll set
    cdef double now                    # CLOCK_MONOTONIC seconds, refreshed once per wakeup
    cdef object loop                   # the asyncio loop this reactor is attached to (None when detached)
    cdef list pending_again            # EventTargets waiting for an on_again() call
    cdef list graveyard                # closed targets kept alive until the current batch ends
    cdef list sweepers                 # Sweeper objects run by the tick
    cdef object tick_handle            # asyncio TimerHandle of the next tick
    cdef double tick_interval          # seconds between ticks
    cdef bint call_soon_pending        # a call_soon(poll) is already scheduled
    cdef PipePool pipes                # splice pipes shared by every relay of this reactor
    cdef BufferPool buffers            # fallback relay buffers
    cdef epoll_event events[MAX_EVENTS]  # the batch buffer for epoll_wait

    cdef int add(self, int fd, EventTarget target, int side, uint32_t events) noexcept
    cdef int modify(self, int fd, EventTarget target, int side, uint32_t events) noexcept
    cdef void again(self, EventTarget target) noexcept
    cdef void bury(self, EventTarget target) noexcept
    cdef void refresh_now(self) noexcept
    cdef void poll(self) noexcept
