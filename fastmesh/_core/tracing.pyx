"""W3C trace context for the data path: traceparent parsing, trace and span ids, the span switch.

Ids come from an xorshift64* generator private to the process, seeded from os.urandom when the module is imported
and again by each worker (seed(), from process/worker.py: forked workers must not share a sequence); no syscall
per request. Parsing follows the W3C Trace Context recommendation, level 1: version 00 is exactly 55 bytes of
lowercase hex and dashes; a later version (not ff) is read as version 00 when its first 55 bytes are and a dash
or nothing follows; an all-zero trace id or parent id makes it invalid. An invalid traceparent is treated as
absent. Nothing here allocates or calls Python on the request path: the recorder (a Python callable) is called
only for sampled requests and only while span export is configured (dataplane/tracing.py installs it).
"""
import os

from libc.string cimport memcpy

from fastmesh._core.balance.base cimport rng_next
from fastmesh._core.request cimport Span, span_of

cdef unsigned long long STATE[1]                  # the generator's state (never 0)
cdef bytes _HEX = b"0123456789abcdef"
cdef const char *HEX = _HEX
cdef object RECORDER = None                       # callable(span tuple), or None: no spans are recorded
cdef bint RECORDING = False                       # RECORDER is not None, readable without the GIL


def seed(bytes material=None) -> None:
    """Seed the id generator (8 or more bytes; os.urandom when none): each worker process calls it once."""
    if material is None or len(material) < 8:
        material = os.urandom(8)
    STATE[0] = int.from_bytes(material[:8], "little") or 0x9E3779B97F4A7C15


seed()


def set_recorder(recorder) -> None:
    """Install the span recorder (callable(span tuple)), or None to record no spans."""
    global RECORDER, RECORDING
    RECORDER = recorder
    RECORDING = recorder is not None


cdef object span_recorder():
    return RECORDER


cdef bint spans_recorded() noexcept nogil:
    return RECORDING


cdef unsigned long long trace_random() noexcept nogil:
    return rng_next(STATE)


cdef inline int hex_value(char c) noexcept nogil:
    # A lowercase hex digit's value, or -1 (W3C: uppercase is invalid).
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint _hex_run(const char *p, int n) noexcept nogil:
    # n lowercase hex digits, not all zero.
    cdef int i
    cdef bint nonzero = False
    for i in range(n):
        if hex_value(p[i]) < 0:
            return False
        if p[i] != b'0':
            nonzero = True
    return nonzero


cdef int traceparent_parse(Span value, char *out) noexcept nogil:
    cdef const char *p = value.ptr
    cdef int hi, lo
    if value.len < TRACEPARENT_LEN:
        return -1
    hi = hex_value(p[0])
    lo = hex_value(p[1])
    if hi < 0 or lo < 0 or (hi == 15 and lo == 15):
        return -1
    if hi == 0 and lo == 0:
        if value.len != TRACEPARENT_LEN:
            return -1
    elif value.len > TRACEPARENT_LEN and p[TRACEPARENT_LEN] != b'-':
        return -1                         # a later version: its version-00 prefix, then "-" and more
    if p[2] != b'-' or p[35] != b'-' or p[52] != b'-':
        return -1
    if not _hex_run(p + TRACE_ID_AT, 32) or not _hex_run(p + SPAN_ID_AT, 16):
        return -1
    hi = hex_value(p[FLAGS_AT])
    lo = hex_value(p[FLAGS_AT + 1])
    if hi < 0 or lo < 0:
        return -1
    memcpy(out, p, TRACEPARENT_LEN)
    out[0] = b'0'                         # we send what we understand: version 00
    out[1] = b'0'
    return hi * 16 + lo


cdef void _hex_ids(char *out, int words) noexcept nogil:
    cdef unsigned long long r
    cdef int i, j
    cdef bint nonzero = False
    while not nonzero:
        for i in range(words):
            r = rng_next(STATE)
            nonzero = nonzero or r != 0
            for j in range(16):
                out[16 * i + j] = HEX[(r >> (4 * j)) & 15]


cdef void trace_id_new(char *out) noexcept nogil:
    _hex_ids(out, 2)


cdef void span_id_new(char *out) noexcept nogil:
    _hex_ids(out, 1)


# ---- for tests and tools ----

def parse_traceparent(bytes value not None):
    """A traceparent value as fastmesh reads it: (trace id, parent id, flags) as text and int, or None if invalid."""
    cdef char out[TRACEPARENT_LEN]
    cdef int flags = traceparent_parse(span_of(value, len(value)), out)
    if flags < 0:
        return None
    return out[TRACE_ID_AT:TRACE_ID_AT + 32].decode("ascii"), out[SPAN_ID_AT:SPAN_ID_AT + 16].decode("ascii"), flags


def new_ids() -> tuple:
    """(a new trace id, a new span id) as hex text, from the worker's generator."""
    cdef char t[32]
    cdef char s[16]
    trace_id_new(t)
    span_id_new(s)
    return t[:32].decode("ascii"), s[:16].decode("ascii")
