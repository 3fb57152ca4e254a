# Reactor: one epoll set per event loop that the whole data path registers its sockets in. Either the asyncio loop
# waits in it itself (ReactorSelector: a worker's loop) or it sees the set as a single readable fd (any other loop);
# each wakeup dispatches a batch of events to C methods, with no Python call per event.

from libc.stdint cimport uint32_t, uint64_t
from fastmesh._core.includes.system cimport epoll_event, sockaddr_storage
from fastmesh._core.stats cimport StatsBlock

cdef enum:
    MAX_EVENTS = 256           # events handled per epoll_wait batch

cdef class Reactor            # declared below; ConnectionLimit refers to it


cdef class EventTarget:
    # Anything registered in the reactor: a listener or a connection. `side` tells which of its fds fired.
    cdef void on_events(self, uint32_t events, int side) noexcept
    # Called for targets parked with Reactor.again(): continue work left for fairness.
    cdef void on_again(self) noexcept


cdef class Sweeper:
    # Anything with deadlines to check (connect/idle timeouts, endpoints to re-admit); run by the reactor's tick.
    # Returns whether it still holds something a deadline applies to (a connection, an endpoint marked down): while
    # none does, the tick slows to IDLE_TICK.
    cdef bint sweep(self, double now) noexcept


cdef class ConnectionLimit:
    # Open downstream connections against a limit: a listener's own max_connections, chained to the worker's.
    # The listener takes a slot per accepted connection; the connection gives it back when its client fd closes.
    cdef Reactor reactor               # where listeners waiting for a slot are woken (Reactor.again)
    cdef ConnectionLimit parent        # the worker-wide limit every slot here also counts in, or None
    cdef readonly long active          # connections holding a slot now
    cdef readonly long limit           # most slots at once; 0: no limit of its own
    cdef list waiting                  # EventTargets (listeners) that stopped accepting at this limit

    cdef bint full(self) noexcept
    cdef void take(self) noexcept
    cdef void release(self) noexcept
    cdef void wait(self, EventTarget listener) noexcept
    cdef void wake(self) noexcept


cdef class Acceptor(Sweeper):
    # A listener's protocol (tcp relay, http): takes each accepted connection and its peer address.
    cdef ConnectionLimit limit         # the listener's limit its connections hold slots of (None: no listener's)
    cdef StatsBlock stats              # the block `counters` points into (kept alive through this reference)
    cdef uint64_t *counters            # the listener's L_FIELDS slots (stats.pxd): accepted, active, bytes...

    cdef void accept_fd(self, int fd, sockaddr_storage *peer) noexcept


cdef class PipePool:
    # Spare splice pipes (read fd, write fd) of `size` bytes each, so idle connections hold none.
    # Every pipe open counts against `limit`, so the fds they take fit the worker's fd budget; past it a
    # relay copies through a buffer instead.
    cdef int *fds              # 2 * count fds: [r0, w0, r1, w1, ...]
    cdef int count             # pipes held now
    cdef int capacity          # most pipes kept; extra ones are closed
    cdef int size              # bytes each pipe holds (F_SETPIPE_SZ)
    cdef readonly int open     # pipes open: held here plus in use by relays
    cdef public int limit      # most pipes open at once; 0: no limit

    cdef int take(self, int *pr, int *pw) noexcept
    cdef void give(self, int pr, int pw) noexcept
    cdef void drop(self, int pr, int pw) noexcept


cdef class BufferPool:
    # Spare fixed-size byte buffers: receive buffers of the HTTP paths, the recv/send fallback relay's.
    cdef char **bufs           # stack of free buffers, the least recently used at the bottom
    cdef int count             # buffers held now
    cdef int capacity          # most buffers kept; extra ones are unmapped
    cdef int size              # bytes per buffer
    cdef size_t mapped         # bytes each buffer's mapping takes (size rounded up to pages)
    cdef int low               # fewest buffers held since the last trim: those nobody needed all that time
    cdef double last_trim      # when trim() last gave back the buffers nobody needed
    cdef public double trim_every  # seconds between trims (TRIM_EVERY)

    cdef char *take(self) noexcept
    cdef void give(self, char *buf) noexcept
    cdef int trim(self, double now) noexcept


cdef class Reactor:
    cdef int epfd                      # the epoll set
    cdef double now                    # CLOCK_MONOTONIC seconds, refreshed once per wakeup
    cdef object loop                   # the asyncio loop this reactor is attached to (None when detached)
    cdef list pending_again            # EventTargets waiting for an on_again() call
    cdef list graveyard                # closed targets kept alive until the current batch ends
    cdef list sweepers                 # Sweeper objects run by the tick
    cdef object tick_handle            # asyncio TimerHandle of the next tick
    cdef double tick_interval          # seconds between ticks
    cdef bint idle_ticking             # the last tick found no deadline anywhere: the next one is IDLE_TICK away
    cdef bint call_soon_pending        # a call_soon(poll) is already scheduled
    cdef bint dispatching              # poll() is handing out events: its own end runs what again() asks
    cdef bint driven                   # a ReactorSelector waits in this epoll set: the loop watches no fd of ours
    # Busy polling: before blocking, keep asking epoll with a zero timeout until spin_window seconds have passed since
    # the last wakeup that brought events. A blocked core goes idle, and waking an idle (virtual) CPU can take a
    # millisecond; traffic dense enough to arrive within the window never pays that. The window adapts (as Linux's
    # guest haltpoll does): it grows toward busy_poll while events come within busy_poll of each other and shrinks
    # to nothing when they do not, so sparse traffic and an idle worker spin for nothing.
    cdef public double busy_poll       # the most seconds a spin lasts; 0: always block at once
    cdef readonly double spin_window   # the seconds the next spin lasts (0 .. busy_poll)
    cdef double last_event             # `now` of the last wakeup that brought events
    cdef readonly unsigned long long spins_hit    # spins that an event ended (no block, no idle core)
    cdef readonly unsigned long long spins_missed  # spins that ran out with nothing: the wait then blocked
    cdef readonly PipePool pipes       # splice pipes shared by every relay of this reactor
    cdef BufferPool buffers            # fallback relay buffers
    cdef epoll_event events[MAX_EVENTS]  # the batch buffer for epoll_wait

    cdef int add(self, int fd, EventTarget target, int side, uint32_t events) noexcept
    cdef int modify(self, int fd, EventTarget target, int side, uint32_t events) noexcept
    cdef void again(self, EventTarget target) noexcept
    cdef void bury(self, EventTarget target) noexcept
    cdef void refresh_now(self) noexcept
    cdef bint sweep_all(self) noexcept
    cdef void wake_tick(self) noexcept
    cdef int poll(self, int timeout_ms) noexcept
    cdef int spin(self, double until) noexcept
    cdef bint spinning(self) noexcept
    cdef void adapt(self, double gap) noexcept


cdef class ReactorSelector:
    # asyncio's selector that waits in a Reactor's epoll set: data-path events are dispatched in C, and only the
    # loop's own fds (kept in a stdlib selector whose epoll fd sits in the reactor's set) reach asyncio.
    cdef readonly Reactor reactor      # the reactor whose epoll_wait is the loop's one wait per wakeup
    cdef object inner                  # selectors.EpollSelector of the loop's own fds (self-pipe, control, admin)
    cdef object ready                  # the loop's deque of ready callbacks: non-empty ends a wait at once
    cdef list scheduled                # the loop's timer heap: a timer added during a dispatch ends the wait
