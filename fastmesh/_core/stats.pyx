"""StatsBlock: the memory behind every counter of the data path, private (heap) or shared with the supervisor (mmap).

A worker is single-threaded, so writers use plain adds: no atomics, no locks. A reader in another process may see
a counter mid-update only as its old or new value: 64-bit aligned stores are single instructions on x86-64 and
arm64. Core objects (TcpProxy, Cluster) keep a reference to the block they point into, so it is unmapped only
after the last of them is gone.
"""
from cpython cimport array
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from fastmesh._core.includes.shared_words cimport map_words, free_words
from fastmesh._core.proxyproto.codec cimport PR_COUNT

cdef array.array Q_TEMPLATE = array.array("Q")

BLOCK_MAGIC = 0x66736d7374617473     # "fsmstats"
# 7: upstream TLS slots per cluster; 6: PROXY protocol gate slots per listener; 5: gRPC answers by grpc-status per
# cluster; 4: listener TLS slots
BLOCK_VERSION = 7

# The slot numbers of stats.pxd, for the Python layout (dataplane/stats.py) that computes offsets.
HEADER = {"magic": H_MAGIC, "version": H_VERSION, "layout": H_LAYOUT, "size": H_SIZE, "pid": H_PID,
          "started": H_STARTED, "lag": H_LAG, "max_connections": H_MAX_CONNECTIONS}
HEADER_SIZE = HEADER_SLOTS
# Why TLS handshakes fail, in tls/context.pxd's TlsFail order (TF_NONE left out).
TLS_FAIL_REASONS = ("version", "cipher", "no_client_cert", "bad_certificate", "unknown_sni", "not_tls",
                    "peer_refused", "timeout", "closed", "denied", "other")
# Why the PROXY protocol gate refuses a connection, in proxyproto/codec.pxd's ProxyRefusal order (PR_NONE left out).
PROXY_REFUSALS = ("not_proxy", "version", "malformed", "too_long", "timeout", "closed")
LISTENER_FIELDS = ("accepted", "active", "failed", "bytes_in", "bytes_out", "limited", "paused", "tls_handshakes",
                   "tls_resumed", *(f"tls_failed_{r}" for r in TLS_FAIL_REASONS),
                   "proxy_protocol_passed", *(f"proxy_protocol_refused_{r}" for r in PROXY_REFUSALS))
assert len(LISTENER_FIELDS) == L_FIELDS and LISTENER_FIELDS.index("tls_failed_version") == L_TLS_FAILED
assert len(PROXY_REFUSALS) == PR_COUNT - 1 and LISTENER_FIELDS.index("proxy_protocol_refused_not_proxy") == L_PP_REFUSED
# gRPC status names by code (grpc/doc/statuscodes.md), then the slot of codes past 16.
GRPC_STATUSES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                 "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED", "OTHER")
CLUSTER_FIELDS = ("retries", "failed", "ejections", "checks_ok", "checks_failed",
                  *(f"grpc_{name.lower()}" for name in GRPC_STATUSES), "tls_handshakes", "tls_resumed", "tls_failed")
assert len(CLUSTER_FIELDS) == C_FIELDS and CLUSTER_FIELDS.index("tls_handshakes") == C_TLS_HANDSHAKES
ENDPOINT_FIELDS = ("state", "seen", "active", "opened", "failures")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
HISTOGRAM_SIZE = HIST_FIELDS
HISTOGRAM_SUM = HIST_SUM
DURATION_BOUNDS = tuple(DURATION_BOUNDS_NS[i] / 1e9 for i in range(HIST_BOUNDS))
# E_STATE values, as cluster.pxd's EndpointState numbers them.
ENDPOINT_STATES = ("up", "down", "probing", "unhealthy", "ejected", "removed", "standby")


def cluster_size(Py_ssize_t endpoints):
    """Slots of a cluster region with this many endpoints."""
    return cluster_slots(endpoints)


cdef class StatsBlock:
    """`StatsBlock(size)` is private heap memory; `StatsBlock.map(fd, size)` maps a file other processes map too."""

    def __cinit__(self, Py_ssize_t size=0):
        if size < 0:
            raise ValueError("a block cannot have a negative size")
        self.size = size
        self.length = 0
        self.shared = False
        self.base = <uint64_t *>PyMem_Calloc(max(size, 1), sizeof(uint64_t))
        if self.base == NULL:
            raise MemoryError()

    @staticmethod
    def map(int fd, Py_ssize_t size, bint writable=True):
        """Map the first `size` slots of fd (a memfd the supervisor made; it must be at least that long)."""
        cdef StatsBlock block = StatsBlock(0)
        cdef size_t length = <size_t>max(size, 1) * sizeof(uint64_t)
        cdef uint64_t *p = map_words(fd, length, writable, "a stats block")
        PyMem_Free(block.base)
        block.base = p
        block.size = size
        block.length = length
        block.shared = True
        return block

    def __dealloc__(self):
        free_words(self.base, self.length)
        self.base = NULL

    cdef uint64_t *region(self, Py_ssize_t offset, Py_ssize_t count) except NULL:
        if offset < HEADER_SLOTS or count < 0 or offset + count > self.size:
            raise ValueError(f"slots {offset}..{offset + count} are outside this block of {self.size}")
        return self.base + offset

    # ---- Python-facing access (control plane and tests; never on the data path) -----------------------------

    def __len__(self):
        return self.size

    def __getitem__(self, Py_ssize_t i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.base[i]

    def __setitem__(self, Py_ssize_t i, uint64_t value):
        if not 0 <= i < self.size:
            raise IndexError(i)
        self.base[i] = value

    def snapshot(self):
        """A copy of every slot as array('Q'), taken with one memcpy."""
        cdef array.array out = array.clone(Q_TEMPLATE, self.size, False)
        if self.size:
            memcpy(out.data.as_voidptr, self.base, self.size * sizeof(uint64_t))
        return out

    def any_set(self, Py_ssize_t start, Py_ssize_t count):
        """Whether any of the `count` slots from `start` is non-zero: one C loop where the supervisor would
        otherwise index 10,000 endpoint gauges of every old block in Python."""
        cdef uint64_t *p = self.region(start, count)
        cdef Py_ssize_t i
        for i in range(count):
            if p[i]:
                return True
        return False

    def clear(self, Py_ssize_t start=HEADER_SLOTS):
        """Zero the slots from start on (the header stays)."""
        if 0 <= start < self.size:
            memset(self.base + start, 0, (self.size - start) * sizeof(uint64_t))

    def add_to(self, array.array out, Py_ssize_t start=HEADER_SLOTS):
        """out[i] += self[i] for every slot from start on (out: an array('Q') of at least this block's size).
        Unsigned wrap-around makes a gauge's net value come out right even while one block holds a decrement."""
        cdef uint64_t *dst
        cdef Py_ssize_t i
        if out.ob_descr.typecode != b"Q" or len(out) < self.size:
            raise ValueError("add_to needs an array('Q') at least as long as the block")
        dst = <uint64_t *>out.data.as_voidptr
        for i in range(max(start, 0), self.size):
            dst[i] += self.base[i]

    def count_status(self, Py_ssize_t offset, int status):
        """count_status() of stats.pxd on the R_FIELDS slots at offset (for tests and for Python callers)."""
        count_status(self.region(offset, R_FIELDS), status)

    def observe(self, Py_ssize_t offset, double seconds):
        """observe_ns() of stats.pxd on the histogram at offset."""
        observe_ns(self.region(offset, HIST_FIELDS), <uint64_t>(max(seconds, 0.0) * 1e9 + 0.5))
