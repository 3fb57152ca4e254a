# The codec-neutral request view (what routing, policies and logs read) and the header edit list (what they
# ask to change): every codec fills the first and renders the second its own way.
#
# A view holds no bytes of its own: spans and field offsets point into `base`, the codec's buffer (HTTP/1: the
# receive buffer at the request head, zero-copy; HTTP/2: the stream's decoded header block). A view is valid
# while that buffer is: the exchange reads it when the request starts and keeps nothing that points into it.

from libc.stdint cimport uint32_t
from libc.string cimport memcmp

cdef enum Method:
    # Method ids every codec maps its method token to; METHOD_OTHER means "read RequestView.method_token".
    METHOD_OTHER = 0
    METHOD_GET = 1
    METHOD_HEAD = 2
    METHOD_POST = 3
    METHOD_PUT = 4
    METHOD_DELETE = 5
    METHOD_CONNECT = 6
    METHOD_OPTIONS = 7
    METHOD_TRACE = 8
    METHOD_PATCH = 9

ctypedef struct Span:
    const char *ptr                # first byte (in a buffer someone else keeps alive)
    Py_ssize_t len                 # number of bytes; 0 for an empty span

ctypedef struct Field:
    # One header field, as offsets into the view's base (the HTTP/1 parser fills these in place).
    uint32_t name_off              # offset of the name
    uint32_t name_len              # length of the name (never 0)
    uint32_t value_off             # offset of the value, leading OWS skipped
    uint32_t value_len             # length of the value, trailing OWS trimmed (may be 0)
    uint32_t id                    # the codec's id for a name it knows (0: any other name)

ctypedef struct RequestView:
    const char *base               # the bytes the spans and field offsets point into
    int method                     # Method id
    Span method_token              # the method as sent
    Span authority                 # the host as routing sees it: userinfo, port and a final dot removed
    Span path                      # the path, up to "?", as sent (never percent-decoded)
    Span query                     # from "?" on, or empty
    bint has_path                  # the target has a path (false: CONNECT's authority-form)
    const Field *fields            # header fields in wire order (HTTP/2: pseudo-header fields excluded)
    int num_fields                 # entries in fields
    # A fastmesh-client-identity field may be among them (HTTP/1: the parser saw one; HTTP/2: always set, its
    # decoder does not look): the exchange then lists its removal.
    bint identity_field

cdef enum EditKind:
    EDIT_ADD = 1                   # append the field "name: value"
    EDIT_REMOVE = 2                # drop every field called name (any case)
    EDIT_ADD_ABSENT = 3            # append "name: value" unless the request has a field called name
    EDIT_DEADLINE = 4              # drop every field called name; append it with the time budget of this try, in ms

ctypedef struct Edit:
    int kind                       # EditKind
    Span name                      # field name: lowercase for the kinds that match names, as sent for EDIT_ADD
    Span value                     # EDIT_ADD / EDIT_ADD_ABSENT: the value

cdef enum:
    EDITS_OWN = 12                 # room for the exchange's own edits of one request (11 at most today)

ctypedef struct EditList:
    # Header edits of one message: the exchange's own, then the matched route's (compiled once by the router).
    Edit own[EDITS_OWN]            # forwarding fields, the request id, the deadline, the trace context (last)
    int n                          # entries used in own
    const Edit *route              # the route's edits (removes first, then adds), NULL when none
    int route_n                    # entries in route


cdef inline unsigned char lower_ascii(unsigned char c) noexcept nogil:
    # ASCII letters only: field names and hosts are ASCII, and obs-text must not be folded.
    return c | 0x20 if <unsigned char>(c - 65) < 26 else c


cdef inline int method_id(const char *p, Py_ssize_t n) noexcept nogil:
    # The Method id of a method token (case-sensitive, RFC 9110 section 9.1); METHOD_OTHER for any other token.
    if n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return METHOD_GET
        if memcmp(p, b"PUT", 3) == 0:
            return METHOD_PUT
    elif n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return METHOD_POST
        if memcmp(p, b"HEAD", 4) == 0:
            return METHOD_HEAD
    elif n == 5:
        if memcmp(p, b"PATCH", 5) == 0:
            return METHOD_PATCH
        if memcmp(p, b"TRACE", 5) == 0:
            return METHOD_TRACE
    elif n == 6:
        if memcmp(p, b"DELETE", 6) == 0:
            return METHOD_DELETE
    elif n == 7:
        if memcmp(p, b"OPTIONS", 7) == 0:
            return METHOD_OPTIONS
        if memcmp(p, b"CONNECT", 7) == 0:
            return METHOD_CONNECT
    return METHOD_OTHER


cdef inline bint fold_eq(const char *a, const char *lower, Py_ssize_t n) noexcept nogil:
    # a (any case) equals `lower` (already lowercase), ignoring ASCII case.
    cdef Py_ssize_t i
    for i in range(n):
        if lower_ascii(<unsigned char>a[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef inline int find_field(const char *base, const Field *fields, int n, const char *lower, Py_ssize_t m,
                           int start) noexcept nogil:
    # Index of the first field at or after `start` called `lower` (any case), or -1.
    cdef int i
    for i in range(start, n):
        if fields[i].name_len == m and fold_eq(base + fields[i].name_off, lower, m):
            return i
    return -1


cdef inline Span field_value(const char *base, const Field *f) noexcept nogil:
    cdef Span s
    s.ptr = base + f.value_off
    s.len = f.value_len
    return s


cdef inline Span span_of(const char *p, Py_ssize_t n) noexcept nogil:
    cdef Span s
    s.ptr = p
    s.len = n
    return s


cdef inline bint span_eq(Span a, Span b) noexcept nogil:
    return a.len == b.len and memcmp(a.ptr, b.ptr, a.len) == 0


cdef inline void edits_clear(EditList *e) noexcept nogil:
    e.n = 0
    e.route = NULL
    e.route_n = 0


cdef inline void edit_add(EditList *e, int kind, Span name, Span value) noexcept nogil:
    # One own edit; the exchange never adds more than EDITS_OWN.
    if e.n < EDITS_OWN:
        e.own[e.n].kind = kind
        e.own[e.n].name = name
        e.own[e.n].value = value
        e.n += 1


cdef inline const Edit *edit_at(const EditList *e, int i) noexcept nogil:
    # Edit i of the list: own ones first, then the route's.
    return &e.own[i] if i < e.n else &e.route[i - e.n]
