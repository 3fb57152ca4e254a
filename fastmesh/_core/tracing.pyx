"""W3C trace context for the data path: traceparent parsing, trace and span ids, the span switch.

Ids come from an xorshift64* generator private to the process, seeded from os.urandom when the module is imported
and again by each worker (seed(), from process/worker.py: forked workers must not share a sequence); no syscall
per request. Parsing follows the W3C Trace Context recommendation, level 1: version 00 is exactly 55 bytes of
lowercase hex and dashes; a later version (not ff) is read as version 00 when its first 55 bytes are and a dash
or nothing follows; an all-zero trace id or parent id makes it invalid. An invalid traceparent is treated as
absent. A tracestate is passed on as it came unless W3C's rules drop members from it (tracestate_trim): invalid
ones, repeated keys, those past the 32nd, and, while it is longer than 512 bytes, members over 128 bytes and then
members from the end; only then is it rewritten. Nothing here allocates or calls Python on the request path: the
recorder (a Python callable) is called only for sampled requests and only while span export is configured
(dataplane/tracing.py installs it).
"""
import os

from libc.string cimport memcmp, memcpy

from fastmesh._core.balance.base cimport rng_next
from fastmesh._core.request cimport Span, Field, span_of, find_field

cdef unsigned long long STATE[1]                  # the generator's state (never 0)
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


cdef bytes _NOT_HEX = bytes(0 if chr(c) in "0123456789abcdef" else 1 for c in range(256))
cdef const unsigned char *NOT_HEX = _NOT_HEX        # 1 for a byte that is not a lowercase hex digit


cdef bint _hex_run(const char *p, int n) noexcept nogil:
    # n lowercase hex digits, not all zero. No branch per byte: a table lookup and two ORs (a continued trace checks
    # 48 of them per request).
    cdef int i
    cdef unsigned char bad = 0, nonzero = 0
    cdef const unsigned char *u = <const unsigned char *>p
    for i in range(n):
        bad |= NOT_HEX[u[i]]
        nonzero |= u[i] ^ 48
    return bad == 0 and nonzero != 0


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


cdef inline bint _key_char(unsigned char c) noexcept nogil:
    # lcalpha / DIGIT / "_" / "-" / "*" / "/": the characters of a tracestate key after its first.
    return (97 <= c <= 122) or (48 <= c <= 57) or c == 95 or c == 45 or c == 42 or c == 47


cdef Py_ssize_t _member_key(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    # The key length of list member p[0:n] ("key=value", OWS already trimmed) when it is valid by W3C trace context
    # level 1 (simple-key, or tenant-id "@" system-id; a value of 1 to 256 printable characters but "," and "=",
    # not ending in a space), else -1.
    cdef Py_ssize_t i, k = -1, at = -1
    for i in range(n):
        if p[i] == 61:
            k = i
            break
    if k <= 0 or k > 256 or n - k - 1 < 1 or n - k - 1 > 256:
        return -1
    for i in range(k):
        if p[i] == 64:
            at = i
            break
    if at < 0:
        if not 97 <= p[0] <= 122:
            return -1
        for i in range(1, k):
            if not _key_char(p[i]):
                return -1
    else:
        if at > 241 or k - at - 1 < 1 or k - at - 1 > 14:
            return -1
        if not (97 <= p[0] <= 122 or 48 <= p[0] <= 57) or not 97 <= p[at + 1] <= 122:
            return -1
        for i in range(1, k):
            if i != at and i != at + 1 and not _key_char(p[i]):
                return -1
    for i in range(k + 1, n):
        if p[i] < 32 or p[i] > 126 or p[i] == 44 or p[i] == 61:
            return -1
    if p[n - 1] == 32:
        return -1
    return k


cdef int tracestate_trim(const char *base, const Field *fields, int nf, char *out) noexcept nogil:
    cdef const unsigned char *mp[TRACESTATE_MEMBERS]     # the members kept, in order
    cdef Py_ssize_t ml[TRACESTATE_MEMBERS]
    cdef Py_ssize_t mk[TRACESTATE_MEMBERS]               # their key lengths
    cdef const unsigned char *p
    cdef Py_ssize_t n, s, e, a, b, k, total = -1
    cdef int f, i, j, kept = 0, dropped = 0
    f = find_field(base, fields, nf, b"tracestate", 10, 0)
    while f >= 0:
        # Fields of one name combine with "," (RFC 9110 section 5.3): members are read across them.
        p = <const unsigned char *>base + fields[f].value_off
        n = fields[f].value_len
        s = 0
        while s <= n:
            e = s
            while e < n and p[e] != 44:
                e += 1
            a = s
            b = e
            while a < b and (p[a] == 32 or p[a] == 9):
                a += 1
            while b > a and (p[b - 1] == 32 or p[b - 1] == 9):
                b -= 1
            if b > a:                                    # empty members are allowed and carry nothing
                k = _member_key(p + a, b - a)
                if k > 0:
                    for j in range(kept):
                        if mk[j] == k and memcmp(mp[j], p + a, k) == 0:
                            k = -1                       # a key already listed: the first one stands
                            break
                if k < 0 or kept == TRACESTATE_MEMBERS:
                    dropped += 1
                else:
                    mp[kept] = p + a
                    ml[kept] = b - a
                    mk[kept] = k
                    kept += 1
                    total += b - a + 1
            s = e + 1
        f = find_field(base, fields, nf, b"tracestate", 10, f + 1)
    # Too long: W3C says to drop members over 128 bytes first, then from the end of the list.
    j = kept - 1
    while total > TRACESTATE_MAX and j >= 0:
        if ml[j] > TRACESTATE_BIG:
            total -= ml[j] + 1
            for i in range(j, kept - 1):
                mp[i] = mp[i + 1]
                ml[i] = ml[i + 1]
            kept -= 1
            dropped += 1
        j -= 1
    while total > TRACESTATE_MAX:
        kept -= 1
        total -= ml[kept] + 1
        dropped += 1
    if dropped == 0:
        return -1
    n = 0
    for i in range(kept):
        if i:
            out[n] = 44
            n += 1
        memcpy(out + n, mp[i], ml[i])
        n += ml[i]
    return <int>n


cdef bytes _HEX_PAIRS = "".join(f"{b:02x}" for b in range(256)).encode("ascii")
cdef const char *HEX_PAIRS = _HEX_PAIRS             # a byte's two hex digits at 2 * byte


cdef void _hex_ids(char *out, int words) noexcept nogil:
    cdef unsigned long long r
    cdef int i, j, b
    cdef bint nonzero = False
    while not nonzero:
        for i in range(words):
            r = rng_next(STATE)
            nonzero = nonzero or r != 0
            for j in range(8):                      # a byte at a time: two digits from the 512-byte table
                b = (r >> (8 * j)) & 255
                memcpy(out + 16 * i + 2 * j, HEX_PAIRS + 2 * b, 2)


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


def trim_tracestate(list values not None):
    """tracestate field values (bytes, in order) as fastmesh passes them on: None when they pass as they came, else
    the one value sent instead (b"": none is sent)."""
    cdef char out[TRACESTATE_MAX]
    cdef Field fields[16]
    cdef int r, i
    if len(values) > 16:
        raise ValueError("at most 16 fields")
    base = b"".join(b"tracestate" + v for v in values)
    at = 0
    for i, v in enumerate(values):
        fields[i].name_off = at
        fields[i].name_len = 10
        fields[i].value_off = at + 10
        fields[i].value_len = len(v)
        fields[i].id = 0
        at += 10 + len(v)
    r = tracestate_trim(base, fields, len(values), out)
    return None if r < 0 else out[:r]


def new_ids() -> tuple:
    """(a new trace id, a new span id) as hex text, from the worker's generator."""
    cdef char t[32]
    cdef char s[16]
    trace_id_new(t)
    span_id_new(s)
    return t[:32].decode("ascii"), s[:16].decode("ascii")
