# W3C trace context (traceparent / tracestate): the parser, the per-worker id generator and the switch that says
# whether sampled requests become span records. The exchange (exchange.pyx) keeps one request's context and asks
# the codecs, through its own header edits, to send our traceparent upstream.

from fastmesh._core.request cimport Span, Field

cdef enum TraceMode:
    # A listener's ForwardRules.trace: what it does with trace context.
    TRACE_OFF = 0                      # headers pass untouched; no trace id logged
    TRACE_PROPAGATE = 1                # a valid traceparent gets our span as its parent id (the default)
    TRACE_START = 2                    # ... and a request without one starts a new trace (an edge listener)

cdef enum TraceKind:
    # Exchange.trace_kind: where this request's trace context came from.
    TRACE_NONE = 0                     # none: nothing is sent or logged for it
    TRACE_CONTINUED = 1                # the caller's valid traceparent: same trace, the caller's span is the parent
    TRACE_STARTED = 2                  # started here (edge listener): no parent

cdef enum:
    TRACEPARENT_LEN = 55               # "00-" 32 hex trace id "-" 16 hex span id "-" 2 hex flags
    TRACESTATE_MAX = 512               # tracestate bytes passed on at most (W3C's floor); longer: members dropped
    TRACESTATE_MEMBERS = 32            # list members passed on at most (W3C's limit); later ones are dropped
    TRACESTATE_BIG = 128               # members longer than this are dropped first when the list is too long
    TRACE_ID_AT = 3                    # offset of the trace id in a traceparent value
    SPAN_ID_AT = 36                    # offset of the parent (span) id
    FLAGS_AT = 53                      # offset of the flags

# A traceparent value (version 00, or a later version read as 00 demands) into out[0:55] as version 00, lowercase
# as received: its flags byte (bit 0: sampled), or -1 when it is not valid (bad length, non-lowercase-hex, an
# all-zero trace or parent id, version ff).
cdef int traceparent_parse(Span value, char *out) noexcept nogil
# The tracestate fields among n fields as W3C's rules pass them on, into out (TRACESTATE_MAX bytes): invalid members
# (by the level 1 grammar) and repeated keys dropped, at most TRACESTATE_MEMBERS kept, and while the list is longer
# than TRACESTATE_MAX members over TRACESTATE_BIG bytes dropped from the end, then any from the end. Returns -1 when
# nothing is dropped (the fields pass as they came), else the length written (0: no member is left).
cdef int tracestate_trim(const char *base, const Field *fields, int n, char *out) noexcept nogil
# A fresh trace id (32 hex digits, never all zero) at out[0:32].
cdef void trace_id_new(char *out) noexcept nogil
# A fresh span id (16 hex digits, never all zero) at out[0:16].
cdef void span_id_new(char *out) noexcept nogil
# A uniform 64-bit draw from the worker's generator (sampling decisions).
cdef unsigned long long trace_random() noexcept nogil
# Whether sampled requests become span records (a span recorder is installed: dataplane/tracing.py).
cdef bint spans_recorded() noexcept nogil
# The installed span recorder: callable(span tuple), or None.
cdef object span_recorder()
