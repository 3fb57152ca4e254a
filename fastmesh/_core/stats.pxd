# Stats blocks: flat arrays of uint64 slots (counters, gauges, histogram buckets) that the data path bumps with
# plain C adds, in shared memory the supervisor reads. Which slot means what is dataplane/stats.py's layout.

from libc.stdint cimport uint64_t

# Header: the first slots of every block. The supervisor writes the first four when it creates the block;
# the worker checks them before it attaches, then writes its pid and start time.
cdef enum:
    H_MAGIC = 0                # BLOCK_MAGIC: this memory is a fastmesh stats block
    H_VERSION = 1              # BLOCK_VERSION: the meaning of the fixed slots below
    H_LAYOUT = 2               # the layout key (a hash of the config's names): reader and writer agree on offsets
    H_SIZE = 3                 # slots in the block, header included
    H_PID = 4                  # pid of the worker writing the block; 0 while no worker is attached
    H_STARTED = 5              # when that worker attached, Unix time in ns
    H_LAG = 6                  # event-loop lag, ns: the latest delay of the worker's periodic probe timer
    H_MAX_CONNECTIONS = 7      # the worker's connection limit (max_connections, derived from its fd limit by default)
    HEADER_SLOTS = 8           # the first slot after the header

# Per listener: L_FIELDS consecutive slots, indexed by these.
cdef enum:
    L_ACCEPTED = 0             # downstream connections accepted (counter)
    L_ACTIVE = 1               # downstream connections open now (gauge)
    L_FAILED = 2               # downstream connections closed for want of an upstream endpoint (counter)
    L_BYTES_IN = 3             # bytes relayed downstream -> upstream (counter)
    L_BYTES_OUT = 4            # bytes relayed upstream -> downstream (counter); the relay adds to L_BYTES_IN + d
    L_LIMITED = 5              # connections accepted only after waiting in the backlog at a connection limit (counter)
    L_PAUSED = 6               # accepts that failed for want of fds (or memory) and paused accepting (counter)
    L_TLS_HANDSHAKES = 7       # TLS handshakes finished (counter)
    L_TLS_RESUMED = 8          # ...of which resumed a session (counter)
    L_TLS_FAILED = 9           # first of TF_COUNT - 1 slots: handshakes refused, by reason (tls/context.pxd TlsFail)
    L_PP_PASSED = 20           # connections the PROXY protocol gate handed on with a header read (counter)
    L_PP_REFUSED = 21          # first of PR_COUNT - 1 slots: connections the gate refused, by reason (codec.pxd)
    L_FIELDS = 27              # slots per listener

# Per cluster: C_FIELDS cluster-wide slots, then E_FIELDS arrays of one slot per endpoint (cluster_slots(n)).
cdef enum:
    C_RETRIES = 0              # upstream connects tried again on another endpoint after a failure (counter)
    C_FAILED = 1               # downstream connections given up: no endpoint could be connected (counter)
    C_EJECTIONS = 2            # endpoints ejected by outlier detection (counter)
    C_CHECKS_OK = 3            # active health checks that passed (counter)
    C_CHECKS_FAILED = 4        # active health checks that failed (counter)
    C_GRPC = 5                 # gRPC answers by grpc-status: slot C_GRPC + code for 0..16 (counters)...
    C_GRPC_OTHER = 22          # ...and one for the codes past 16 (a server's own)
    C_TLS_HANDSHAKES = 23      # TLS handshakes finished with the endpoints (counter; tls/context.pyx TlsClient)
    C_TLS_RESUMED = 24         # ...of which resumed a session (counter)
    C_TLS_FAILED = 25          # TLS handshakes with the endpoints that failed (counter)
    C_FIELDS = 26              # cluster-wide slots
    E_STATE = 0                # array index: endpoint state, an EndpointState of cluster.pxd (gauge)
    E_SEEN = 1                 # CLOCK_MONOTONIC ns of the endpoint's last connect outcome, 0 = none yet (gauge)
    E_ACTIVE = 2               # upstream connections open to the endpoint, connecting included (gauge)
    E_OPENED = 3               # upstream connections established (counter)
    E_FAILURES = 4             # upstream connects that failed or timed out (counter)
    E_FIELDS = 5               # arrays per cluster

# Per (HTTP listener, cluster): responses by status class; R_1XX + status // 100 - 1 (counters).
cdef enum:
    R_1XX = 0
    R_2XX = 1
    R_3XX = 2
    R_4XX = 3
    R_5XX = 4
    R_FIELDS = 5               # slots per (listener, cluster)

# Per cluster with HTTP traffic: a request-duration histogram. Bucket b counts durations <= the bound b
# (non-cumulative; the renderer adds them up); the last bucket is +Inf. Bounds: DURATION_BOUNDS_NS below.
cdef enum:
    HIST_BOUNDS = 14           # finite bucket bounds
    HIST_SUM = 15              # slot after the HIST_BOUNDS + 1 buckets: summed durations in ns
    HIST_FIELDS = 16           # slots per histogram

cdef extern from *:
    """
    /* Request-duration bucket bounds in ns: 0.5 ms to 10 s, roughly 1-2.5-5 steps (HIST_BOUNDS entries). */
    static const unsigned long long fm_duration_bounds_ns[14] = {
        500000ULL, 1000000ULL, 2500000ULL, 5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL,
        100000000ULL, 250000000ULL, 500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL,
        10000000000ULL,
    };
    """
    const unsigned long long *DURATION_BOUNDS_NS "fm_duration_bounds_ns"


cdef class StatsBlock:
    # A stats block: heap memory private to this process, or an mmap of a file (memfd) other processes map too.
    cdef uint64_t *base        # slot 0
    cdef Py_ssize_t size       # slots
    cdef size_t length         # bytes mapped; 0 for a heap block
    cdef readonly bint shared  # mapped from a file: writes are visible to every process mapping it

    # base + offset after checking that count slots fit; raises ValueError (a layout bug) otherwise.
    cdef uint64_t *region(self, Py_ssize_t offset, Py_ssize_t count) except NULL


cdef inline Py_ssize_t cluster_slots(Py_ssize_t n) noexcept:
    # Slots of a cluster region with n endpoints.
    return C_FIELDS + E_FIELDS * n


# Pure counters and histograms go through the helpers below: a FASTMESH_STATS=0 build (setup.py --no-stats) compiles
# them to nothing, so bench/metrics_overhead.py can measure what counting costs. Gauges the control plane decides
# by (L_ACTIVE, E_STATE, E_SEEN, E_ACTIVE) are written directly and stay in every build.

cdef inline void bump(uint64_t *slot, uint64_t n) noexcept:
    # Add n to a counter slot of a stats block.
    if FASTMESH_STATS:
        slot[0] += n


cdef inline void bump_field(unsigned long long *field, unsigned long long n) noexcept:
    # Add n to a counter kept in an object's own field (the per-object counts proxy.stats() reports).
    if FASTMESH_STATS:
        field[0] += n


cdef inline void count_status(uint64_t *classes, int status) noexcept:
    # One response with this status into a (listener, cluster)'s R_FIELDS slots; codes outside 100-599 are not counted.
    if FASTMESH_STATS and 100 <= status < 600:
        classes[status // 100 - 1] += 1


cdef inline void count_grpc(uint64_t *counters, int code) noexcept:
    # One gRPC answer with this grpc-status into a cluster's counters (C_FIELDS slots); code < 0: none to count.
    if FASTMESH_STATS and code >= 0:
        counters[C_GRPC + code if code <= 16 else C_GRPC_OTHER] += 1


cdef inline void observe_ns(uint64_t *hist, uint64_t ns) noexcept:
    # One duration into a histogram's HIST_FIELDS slots: a linear scan is fine for 14 bounds (most hits are early).
    cdef int b = 0
    if not FASTMESH_STATS:
        return
    while b < HIST_BOUNDS and ns > DURATION_BOUNDS_NS[b]:
        b += 1
    hist[b] += 1
    hist[HIST_SUM] += ns
