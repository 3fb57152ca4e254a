"""The reactor: an epoll set dispatching socket events to C methods in batches, waited in by the event loop.

Why not uvloop's handles: uvloop costs a Python callback and a transport object per connection event; a proxy's
relay needs neither. Each wakeup drains up to MAX_EVENTS events and calls the targets' cdef methods. Timers are a
coarse tick (Sweeper objects) because proxy deadlines are seconds long.

Two ways to be waited in. A worker's loop (fastmesh/process/loop.py) is a stdlib asyncio loop whose selector is a
ReactorSelector: its select() is the reactor's own epoll_wait, data-path events are handled in C without going back
to Python, and the loop's own fds (self-pipe, control channel, admin) live in a stdlib epoll set nested in ours, so
a keep-alive request costs one epoll_wait per wakeup and no Python. Any other loop (uvloop, an embedding
application's) watches the epoll set as one readable fd and calls poll() when it fires: two waits per wakeup and a
Python callback: 18% more instructions per keep-alive HTTP/1.1 request and 2.5 times as many per relayed one as
the driven way (bench/callgrind_requests.py --whole, bench/README.md).
"""
from cpython.ref cimport PyObject
from cpython.pystate cimport (
    PyThreadState, PyInterpreterState, PyThreadState_Get, PyInterpreterState_ThreadHead, PyThreadState_Next,
)
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.math cimport ceil

from fastmesh._core.includes.system cimport (
    epoll_create1, epoll_ctl, epoll_wait, epoll_event, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLL_CLOEXEC,
    EPOLLIN, mmap, munmap, MAP_FAILED, MAP_PRIVATE, MAP_ANONYMOUS, PROT_READ, PROT_WRITE,
    close, pipe2, fcntl, F_SETPIPE_SZ, O_NONBLOCK, O_CLOEXEC, clock_gettime, timespec, CLOCK_MONOTONIC, errno,
    sockaddr_storage,
)

import logging

log = logging.getLogger("fastmesh.reactor")

cdef uint64_t SIDE_MASK = 1      # low bit of epoll data: which of a target's two fds fired
cdef uint64_t LOOP_FDS = 0       # epoll data of the ReactorSelector's nested set (no target has address 0)
cdef int SPIN_NONE = 2           # Reactor.spin(): nothing arrived before the spin ran out
cdef size_t PAGE = 4096
# A pool gives back the buffers nobody took over this long: after a burst of connections, the idle worker's memory
# returns to what its open connections hold (idle ones hold no buffer).
cdef double TRIM_EVERY = 10.0
# A worker holding no connection and no endpoint marked down ticks this often instead of every tick_interval (an
# idle sidecar need not wake 40 times a second); the first events after that bring the fast tick back at once.
cdef double IDLE_TICK = 1.0


cdef extern from "Python.h":
    # Public since 3.9; Cython's pystate.pxd lacks it.
    void *PyThreadState_GetInterpreter(PyThreadState *tstate)


cdef inline bint other_threads() noexcept:
    """Another Python thread exists (an executor, asyncio's child watcher): a blocking wait must let it run. A
    thread can only be started by Python code, which cannot run while this one waits holding the GIL. (A thread
    of C code that first asks for the GIL while we wait gets it at the next wakeup: an attached reactor's tick
    bounds a wait to tick_interval, IDLE_TICK when idle.)"""
    cdef PyThreadState *head = PyInterpreterState_ThreadHead(
        <PyInterpreterState *>PyThreadState_GetInterpreter(PyThreadState_Get()))
    return head != NULL and PyThreadState_Next(head) != NULL


cdef class EventTarget:
    cdef void on_events(self, uint32_t events, int side) noexcept:
        pass

    cdef void on_again(self) noexcept:
        pass


cdef class Sweeper:
    cdef bint sweep(self, double now) noexcept:
        return False


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
    """`BufferPool(capacity, size)`: up to `capacity` spare buffers of `size` bytes. Each buffer is a mapping of its
    own, not a heap block: a buffer holds only the pages written into it (a short request touches one), and one
    given back by trim() returns them all to the system (freed heap blocks between live ones would not)."""

    def __cinit__(self, int capacity=64, int size=65536):
        self.capacity = capacity
        self.size = size
        self.mapped = (<size_t>size + PAGE - 1) // PAGE * PAGE
        self.count = 0
        self.low = 0
        self.last_trim = 0.0
        self.trim_every = TRIM_EVERY
        self.bufs = <char **>malloc(sizeof(char *) * (capacity if capacity > 0 else 1))
        if self.bufs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self.bufs != NULL:
            for i in range(self.count):
                munmap(self.bufs[i], self.mapped)
            free(self.bufs)
            self.bufs = NULL

    cdef char *take(self) noexcept:
        """A spare buffer, or a new one; NULL when the system has no memory left."""
        cdef void *p
        if self.count > 0:
            self.count -= 1
            if self.count < self.low:
                self.low = self.count
            return self.bufs[self.count]
        p = mmap(NULL, self.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        return NULL if p == MAP_FAILED else <char *>p

    cdef void give(self, char *buf) noexcept:
        if self.count < self.capacity:
            self.bufs[self.count] = buf
            self.count += 1
        else:
            munmap(buf, self.mapped)

    cdef int trim(self, double now) noexcept:
        """Every trim_every seconds (callers may ask more often): unmap the buffers that stayed spare since the last
        trim (the bottom of the stack: take() and give() work at its top). Returns how many were given back."""
        cdef int i, n
        if now < self.last_trim + self.trim_every:
            return 0
        self.last_trim = now
        n = self.low
        for i in range(n):
            munmap(self.bufs[i], self.mapped)
        for i in range(n, self.count):
            self.bufs[i - n] = self.bufs[i]
        self.count -= n
        self.low = self.count
        return n

    @property
    def spare(self):
        """Buffers held for reuse now."""
        return self.count


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
        self.idle_ticking = False
        self.call_soon_pending = False
        self.busy_poll = 0.0
        self.spin_window = 0.0
        self.last_event = 0.0
        self.spins_hit = 0
        self.spins_missed = 0
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
        if not self.driven:
            loop.add_reader(self.epfd, self._on_readable)
        self.tick_handle = loop.call_later(tick_interval, self._tick)

    def detach(self):
        if self.loop is None:
            return
        if not self.driven:
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

    @property
    def attached(self):
        """True while a loop dispatches this reactor (between attach() and detach())."""
        return self.loop is not None

    def _on_readable(self):
        cdef int got
        self.call_soon_pending = False
        self.poll(0)
        # Nested in another loop (uvloop): spin here, before that loop blocks. When events came, the loop gets one
        # turn for its own fds and timers (a callback queued makes its next wait non-blocking) and we spin again.
        if self.spinning() and self.loop is not None:
            got = self.spin(self.last_event + min(self.spin_window, self.busy_poll))
            if got != SPIN_NONE and not self.call_soon_pending:
                self.call_soon_pending = True
                self.loop.call_soon(self._on_readable)

    def _tick(self):
        cdef bint held
        self.refresh_now()
        held = self.sweep_all()
        self.buffers.trim(self.now)
        self.graveyard.clear()
        if self.loop is not None:
            self.idle_ticking = not held and self.tick_interval < IDLE_TICK
            self.tick_handle = self.loop.call_later(IDLE_TICK if self.idle_ticking else self.tick_interval, self._tick)

    @property
    def idle(self):
        """True while the tick runs every IDLE_TICK: at its last run no sweeper held a deadline, and no event came
        since."""
        return self.idle_ticking

    # ---- C core ------------------------------------------------------------------------------------

    cdef void refresh_now(self) noexcept:
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.now = ts.tv_sec + ts.tv_nsec * 1e-9

    cdef bint sweep_all(self) noexcept:
        """Every sweeper's deadlines checked at `now`; whether any still holds one."""
        cdef Sweeper s
        cdef bint held = False
        for s in list(self.sweepers):
            if s.sweep(self.now):
                held = True
        return held

    cdef void wake_tick(self) noexcept:
        """Events came while the tick was slow: run the sweepers now, before the events are handled (the clocks they
        keep, a balancer's and a cluster's, are then current for the first pick), and tick at tick_interval again
        from here. The slow tick's timer is cancelled."""
        self.idle_ticking = False
        self.sweep_all()
        try:
            if self.tick_handle is not None:
                self.tick_handle.cancel()
            self.tick_handle = self.loop.call_later(self.tick_interval, self._tick)
        except BaseException:
            log.exception("reactor: cannot schedule its tick")

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
        # that same poll() runs it, so no extra loop iteration (and empty epoll_wait) is scheduled for it. A driven
        # reactor needs no callback: the selector's next wait does not block while work is pending.
        if not self.call_soon_pending and not self.dispatching and not self.driven and self.loop is not None:
            self.call_soon_pending = True
            self.loop.call_soon(self._on_readable)

    cdef void bury(self, EventTarget target) noexcept:
        """Keep a closed target alive until the batch ends: later events in the batch may still name it."""
        self.graveyard.append(target)

    cdef int poll(self, int timeout_ms) noexcept:
        """One epoll_wait (blocking up to timeout_ms; -1: until an event) and its batch. Returns 1 when the loop's own
        fds (a ReactorSelector's nested set) are ready, -1 when the wait was interrupted (a signal), else 0."""
        cdef int n, i, loop_fds = 0
        cdef uint64_t data
        cdef EventTarget target
        cdef list again_now
        cdef int epfd = self.epfd
        cdef epoll_event *events = self.events
        if timeout_ms == 0 or not other_threads():
            n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms)
        else:
            # A wait that blocks lets other threads run: asyncio's child watcher and executors hand their results
            # over through the loop's self-pipe, which needs the GIL. (Releasing and taking it back costs about
            # 400 instructions a wakeup, so only when there is someone to let run.)
            with nogil:
                n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms)
        self.refresh_now()
        if n < 0:
            return -1
        if self.idle_ticking and n > 0 and self.loop is not None:
            self.wake_tick()
        if self.busy_poll > 0.0 and n > 0:     # one test per wakeup when busy polling is off
            self.adapt(self.now - self.last_event)
            self.last_event = self.now
        self.dispatching = True
        for i in range(n):
            data = self.events[i].data.u64
            if data == LOOP_FDS:
                loop_fds = 1
                continue
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
        return loop_fds

    cdef inline bint spinning(self) noexcept:
        """A wait now should spin first: busy polling is on and the window since the last events is still open."""
        return self.busy_poll > 0.0 and self.now - self.last_event < min(self.spin_window, self.busy_poll)

    cdef inline void adapt(self, double gap) noexcept:
        """Events came `gap` seconds after the previous ones: widen the window when a spin of up to busy_poll would
        have caught them (or did), narrow it when they came later (a spin would only have burnt the CPU)."""
        if self.spin_window > self.busy_poll:        # busy_poll was lowered (a reload)
            self.spin_window = self.busy_poll
        if gap <= self.busy_poll:
            if self.spin_window <= 0.0:
                self.spin_window = self.busy_poll / 8
            elif self.spin_window < self.busy_poll:
                self.spin_window = min(self.spin_window * 2, self.busy_poll)
        elif self.spin_window > self.busy_poll / 8:
            self.spin_window /= 2
        else:
            self.spin_window = 0.0

    cdef int spin(self, double until) noexcept:
        """Busy-poll: epoll_wait with a zero timeout until events come (their batch is dispatched, and poll()'s value
        returned) or the clock passes `until` (SPIN_NONE: the caller then blocks)."""
        cdef int got
        cdef double seen = self.last_event
        while True:
            got = self.poll(0)
            if got != 0 or self.last_event != seen or self.pending_again:
                self.spins_hit += 1
                return got
            if self.now >= until:
                self.spins_missed += 1
                return SPIN_NONE


cdef class ReactorSelector:
    """`ReactorSelector(reactor)`: a selector for asyncio.SelectorEventLoop (the selectors.BaseSelector interface)
    that waits in `reactor`'s epoll set. register()/unregister()/modify() keep the loop's own fds in a stdlib
    EpollSelector nested in that set; select(timeout) dispatches data-path events in C, in as many wakeups as come
    before the timeout, and returns to Python only when the loop has something to do: its fds are ready, a callback
    or an earlier timer was added by the data path (a retry's backoff), a signal arrived, or the timeout passed.
    bind(loop) must follow the loop's creation (it reads the loop's ready queue and timer heap)."""

    def __cinit__(self, Reactor reactor):
        import selectors
        cdef epoll_event ev
        self.reactor = reactor
        self.inner = selectors.EpollSelector()
        ev.events = EPOLLIN
        ev.data.u64 = LOOP_FDS
        if epoll_ctl(reactor.epfd, EPOLL_CTL_ADD, self.inner.fileno(), &ev) < 0:
            self.inner.close()
            raise OSError(errno, "cannot nest the loop's epoll set in the reactor's")
        reactor.driven = True
        self.ready = None
        self.scheduled = None

    def bind(self, loop):
        """Read `loop`'s ready queue and timer heap (a stdlib BaseEventLoop's `_ready` and `_scheduled`): work the
        data path hands the loop must end a wait at once."""
        self.ready = loop._ready
        self.scheduled = loop._scheduled

    def register(self, fileobj, events, data=None):
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self.inner.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj):
        return self.inner.get_key(fileobj)

    def get_map(self):
        return self.inner.get_map()

    def close(self):
        if self.inner is not None:
            epoll_ctl(self.reactor.epfd, EPOLL_CTL_DEL, self.inner.fileno(), NULL)
            self.inner.close()
            self.inner = None
        self.reactor.driven = False

    def select(self, timeout=None):
        cdef Reactor r = self.reactor
        cdef bint forever = timeout is None
        cdef double deadline = 0.0, left, until
        cdef int ms, got
        cdef Py_ssize_t timers = len(self.scheduled) if self.scheduled is not None else 0
        if not forever:
            r.refresh_now()
            deadline = r.now + <double>timeout
        while True:
            if r.pending_again:
                ms = 0
            elif forever:
                ms = -1
            else:
                left = deadline - r.now
                ms = 0 if left <= 0.0 else <int>ceil(left * 1000.0)
            if ms != 0 and r.spinning():
                # Events came a moment ago: poll without blocking until the window since the last one closes (or
                # the loop's next timer is due), then block as usual (the next pass finds the window closed).
                until = r.last_event + min(r.spin_window, r.busy_poll)
                if not forever and deadline < until:
                    until = deadline
                got = r.spin(until)
                if got == SPIN_NONE:
                    continue
            else:
                got = r.poll(ms)
            if got > 0:
                return self.inner.select(0)
            if got < 0 or not forever and r.now >= deadline:
                return []
            if self.ready is not None and (len(self.ready) or len(self.scheduled) != timers):
                return []
