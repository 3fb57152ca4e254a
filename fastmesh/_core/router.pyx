"""Compiled route table: the first route whose conditions a parsed request head meets, and its upstream edits.

A Router is built once per http listener (dataplane/routes.py turns the config into route specs) and
then only read. Per request, conn.pyx calls match() with the receive buffer and the parser's Head:
  - The request host (request_host()) and path (request_path()) are located once per match, as spans
    into the buffer, and only when some route has a host or path condition.
  - Routes are tried in order; per route the cheapest tests go first: method (one bit test for the
    methods the parser has ids for), host (length check, then a case-folding compare against the
    lower-case pattern), exact path or prefix (memcmp), header conditions (a scan of the Head's field
    offsets: name length, folded name, exact value). No Python object is touched and nothing is
    allocated; a 10-route table costs tens of nanoseconds (bench/micro/test_router.py).
  - path_regex is the exception. Python's re needs a str, so the first regex route that a request
    reaches after its other conditions pass decodes the path (UTF-8, surrogateescape: any byte string
    decodes) into one str, which later regex routes of the same match reuse. That costs a str
    allocation plus the search itself: a few hundred ns, and a backtracking pattern can cost far more
    on a hostile path (keep patterns linear, e.g. no nested quantifiers). Put regex routes after the
    routes that can be decided without one. An exception while searching counts as no match.
Semantics, each tested in tests/core/test_router.py:
  - Host: from the absolute-form (or authority-form) target when there is one, else the Host line
    (RFC 9112 section 3.2.2). Userinfo, the port and one final dot are dropped; case is ignored.
    "*.example.com" matches any name ending in ".example.com" (a.example.com, a.b.example.com), never
    example.com itself. A request with no host fails every host condition.
  - Path: the target up to "?", compared byte for byte as sent: no percent-decoding, no dot-segment
    removal (a prefix guarding "/admin/" does not see "/%61dmin/" or "/x/../admin/"; normalisation
    would be a listener option of its own). A prefix is a byte prefix ("/api" matches "/apix"). An
    absolute-form target without a path has the path "/".
  - Methods: exact, case-sensitive tokens. CONNECT matches only a route whose methods name it: a route
    without a method condition never turns the listener into a tunnel (conn.pyx answers 405). Headers:
    every condition needs a line with that name (any case) whose value (OWS trimmed by the parser)
    equals the configured value exactly.
"""

import re

from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.string cimport memchr, memcmp, memcpy

from fastmesh._core.codes cimport make_error
from fastmesh._core.http1.parser cimport (
    CC_TCHAR, CHAR_CLASS, HeaderField, METHOD_CONNECT, METHOD_DELETE, METHOD_GET, METHOD_HEAD, METHOD_OPTIONS,
    METHOD_OTHER, METHOD_PATCH, METHOD_POST, METHOD_PUT, METHOD_TRACE, TARGET_ABSOLUTE, TARGET_ASTERISK,
    TARGET_AUTHORITY, parse_request,
)

ctypedef unsigned char uchar

# The path of an absolute-form target that has none ("http://a.example" means "/").
cdef const char *SLASH = b"/"

# Method tokens the parser reports by id; other tokens are compared as bytes.
_METHOD_IDS = {
    "GET": METHOD_GET, "HEAD": METHOD_HEAD, "POST": METHOD_POST, "PUT": METHOD_PUT, "DELETE": METHOD_DELETE,
    "CONNECT": METHOD_CONNECT, "OPTIONS": METHOD_OPTIONS, "TRACE": METHOD_TRACE, "PATCH": METHOD_PATCH,
}
SPEC_KEYS = frozenset({
    "cluster", "host", "path", "path_prefix", "path_regex", "methods", "headers", "rewrite_prefix",
    "add_request_headers", "remove_request_headers", "add_response_headers",
})


# ---------------------------------------------------------------------------------------------------
# Locating the host and the path in a parsed request.

cdef inline uchar _lower(uchar c) noexcept nogil:
    # ASCII letters only: header names, hosts and tokens are ASCII, and obs-text must not be folded.
    return c | 0x20 if <uchar>(c - 65) < 26 else c


cdef inline bint _fold_eq(const char *a, const char *lower, Py_ssize_t n) noexcept nogil:
    # a (any case) equals `lower` (already lower case) ignoring ASCII case.
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(<uchar>a[i]) != <uchar>lower[i]:
            return False
    return True


cdef inline Py_ssize_t _absolute_path_start(const char *t, Py_ssize_t n, Span *authority) noexcept nogil:
    # In "scheme://authority/path?query", the index where the path starts; sets authority (empty when
    # the target has no "//"). The parser already checked "scheme:" (the first ":" ends the scheme).
    cdef const char *colon = <const char *>memchr(t, b':', n)
    cdef Py_ssize_t i = (colon - t) + 1 if colon != NULL else n
    cdef Py_ssize_t start
    authority.ptr = t + i
    authority.len = 0
    if i + 1 < n and t[i] == b'/' and t[i + 1] == b'/':
        i += 2
        start = i
        while i < n and t[i] != b'/' and t[i] != b'?' and t[i] != b'#':
            i += 1
        authority.ptr = t + start
        authority.len = i - start
    return i


cdef Span target_authority(const char *buf, const Head *h) noexcept nogil:
    cdef Span s
    s.ptr = buf + h.target_off
    s.len = 0
    if h.target_form == TARGET_ABSOLUTE:
        _absolute_path_start(s.ptr, h.target_len, &s)
    elif h.target_form == TARGET_AUTHORITY:
        s.len = h.target_len
    return s


cdef Span request_host(const char *buf, const Head *h) noexcept nogil:
    cdef Span s
    cdef const char *t
    cdef const HeaderField *f
    cdef Py_ssize_t i
    s.ptr = buf + h.target_off
    s.len = 0
    if h.target_form == TARGET_ABSOLUTE or h.target_form == TARGET_AUTHORITY:
        s = target_authority(buf, h)
        i = s.len - 1
        while i >= 0 and s.ptr[i] != b'@':   # userinfo ends at the last "@"
            i -= 1
        s.ptr += i + 1
        s.len -= i + 1
    elif h.host_index >= 0:
        f = &h.headers[h.host_index]
        s.ptr = buf + f.value_off
        s.len = f.value_len
    if s.len > 0 and s.ptr[0] == b'[':
        t = <const char *>memchr(s.ptr, b']', s.len)  # an IPv6 literal keeps its brackets
        if t != NULL:
            s.len = t - s.ptr + 1
    else:
        i = s.len - 1
        while i >= 0 and <uchar>(s.ptr[i] - 48) < 10:
            i -= 1
        if i >= 0 and s.ptr[i] == b':':
            s.len = i
    if s.len > 0 and s.ptr[s.len - 1] == b'.':
        s.len -= 1                           # "example.com." is example.com
    return s


cdef void request_path(const char *buf, const Head *h, Span *path, Span *rest) noexcept nogil:
    cdef const char *t = buf + h.target_off
    cdef Py_ssize_t n = h.target_len, start = 0, end
    cdef const char *q
    cdef Span authority
    if h.target_form == TARGET_AUTHORITY or h.target_form == TARGET_ASTERISK:
        path.ptr = t
        path.len = n if h.target_form == TARGET_ASTERISK else 0
        rest.ptr = t + n
        rest.len = 0
        return
    if h.target_form == TARGET_ABSOLUTE:
        start = _absolute_path_start(t, n, &authority)
    q = <const char *>memchr(t + start, b'?', n - start)
    end = q - t if q != NULL else n
    path.ptr = t + start
    path.len = end - start
    rest.ptr = t + end
    rest.len = n - end
    if path.len == 0 and h.target_form == TARGET_ABSOLUTE:
        path.ptr = SLASH
        path.len = 1


# ---------------------------------------------------------------------------------------------------
# One condition each; match() and explain() share them.

cdef inline bint _host_ok(const RouteEntry *e, Span host) noexcept nogil:
    if e.host_kind == HOST_ANY:
        return True
    if e.host_kind == HOST_EXACT:
        return host.len == e.host.len and _fold_eq(host.ptr, e.host.ptr, host.len)
    return host.len > e.host.len and _fold_eq(host.ptr + host.len - e.host.len, e.host.ptr, e.host.len)


cdef inline bint _plain_path_ok(const RouteEntry *e, Span path) noexcept nogil:
    # Exact and prefix conditions; PATH_REGEX is decided by the caller.
    if e.path_kind == PATH_EXACT:
        return path.len == e.path.len and memcmp(path.ptr, e.path.ptr, path.len) == 0
    if e.path_kind == PATH_PREFIX:
        return path.len >= e.path.len and memcmp(path.ptr, e.path.ptr, e.path.len) == 0
    return True


cdef inline bint _method_ok(const RouteEntry *e, const Span *tokens, const char *buf,
                            const Head *h) noexcept nogil:
    cdef int i
    if e.any_method:
        return h.method != METHOD_CONNECT     # a tunnel only where a route names CONNECT
    if h.method != METHOD_OTHER:
        return (e.method_mask >> h.method) & 1
    for i in range(e.other_first, e.other_first + e.other_count):
        if tokens[i].len == h.method_len and memcmp(tokens[i].ptr, buf + h.method_off, h.method_len) == 0:
            return True
    return False


cdef inline int _failed_header(const RouteEntry *e, const HeaderMatch *matches, const char *buf,
                               const Head *h) noexcept nogil:
    # Index (within the route's conditions) of the first header condition no line meets, or -1.
    cdef int k, j
    cdef const HeaderMatch *m
    cdef const HeaderField *f
    for k in range(e.match_count):
        m = &matches[e.match_first + k]
        for j in range(h.num_headers):
            f = &h.headers[j]
            if f.name_len == m.name.len and f.value_len == m.value.len \
                    and memcmp(buf + f.value_off, m.value.ptr, m.value.len) == 0 \
                    and _fold_eq(buf + f.name_off, m.name.ptr, m.name.len):
                break
        else:
            return k
    return -1


# ---------------------------------------------------------------------------------------------------
# Building: Python route specs -> C arrays. Checks here are the ones C safety and header injection
# depend on; the config loader gives the friendly messages first.

cdef inline bint _is_token(bytes b):
    cdef Py_ssize_t i
    if not b:
        return False
    for i in range(len(b)):
        if not (CHAR_CLASS[<uchar>b[i]] & CC_TCHAR):
            return False
    return True


cdef inline bint _is_field_value(bytes b):
    # Bytes a field value may hold on the wire: no CTL (so no CR, LF, NUL) but HTAB, no DEL.
    cdef Py_ssize_t i
    cdef uchar c
    for i in range(len(b)):
        c = b[i]
        if (c < 0x20 and c != 9) or c == 0x7F:
            return False
    return True


cdef bytes _name_bytes(object name, str what):
    if not isinstance(name, str):
        raise ValueError(f"{what}: header names are str, got {name!r}")
    b = name.encode("latin-1", "replace")
    if not _is_token(b):
        raise ValueError(f"{what}: not a header name: {name!r}")
    return b


cdef bytes _value_bytes(object value, str what):
    if not isinstance(value, str):
        raise ValueError(f"{what}: header values are str, got {value!r}")
    b = value.encode("utf-8")
    if not _is_field_value(b):
        raise ValueError(f"{what}: control characters in header value {value!r}")
    return b


cdef bytes _render_headers(object table, str what):
    # {"X-A": "b"} -> b"X-A: b\r\n", names as written (they are sent as written).
    lines = []
    for name, value in dict(table).items():
        lines.append(_name_bytes(name, what) + b": " + _value_bytes(value, what) + b"\r\n")
    return b"".join(lines)


cdef bytes _path_bytes(object value, str what):
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{what}: a path starting with '/' is needed, got {value!r}")
    b = value.encode("utf-8")
    for c in b:
        if c <= 0x20 or c == 0x7F or c == 0x3F or c == 0x23:  # CTL, SP, DEL, "?", "#"
            raise ValueError(f"{what}: {value!r} cannot appear in a request path")
    return b


cdef Span _span(Router router, bytes b):
    # Keep b alive with the Router and point into it.
    cdef Span s
    router.keep.append(b)
    s.ptr = b
    s.len = len(b)
    return s


cdef int _fill(Router router, RouteEntry *e, dict spec, str what, dict index, int *n_matches,
               int *n_tokens) except -1:
    # One spec -> *e; n_matches/n_tokens are the next free slots of the shared arrays (advanced here).
    e.cluster = index[spec["cluster"]]
    e.regex = -1

    host = spec.get("host")
    if host is not None:
        text = str(host).lower()
        text = text[:len(text) - 1] if text.endswith(".") else text
        e.host_kind = HOST_SUFFIX if text.startswith("*.") else HOST_EXACT
        text = text[1:] if e.host_kind == HOST_SUFFIX else text
        if text in ("", ".") or "*" in text or (":" in text and not text.startswith("[")) \
                or not text.isascii():
            raise ValueError(f"{what}: not a host name or *.suffix: {host!r}")
        e.host = _span(router, text.encode("ascii"))

    given = [key for key in ("path", "path_prefix", "path_regex") if spec.get(key) is not None]
    if len(given) > 1:
        raise ValueError(f"{what}: only one of path, path_prefix, path_regex, got {given}")
    if spec.get("path") is not None:
        e.path_kind = PATH_EXACT
        e.path = _span(router, _path_bytes(spec["path"], what))
    elif spec.get("path_prefix") is not None:
        e.path_kind = PATH_PREFIX
        e.path = _span(router, _path_bytes(spec["path_prefix"], what))
    elif spec.get("path_regex") is not None:
        e.path_kind = PATH_REGEX
        e.regex = len(router.regexes)
        router.regexes.append(re.compile(spec["path_regex"]).search)
        e.path = _span(router, str(spec["path_regex"]).encode("utf-8"))

    methods = spec.get("methods") or ()
    e.any_method = not methods
    e.other_first = n_tokens[0]
    for method in methods:
        if not isinstance(method, str) or not _is_token(method.encode("latin-1", "replace")):
            raise ValueError(f"{what}: not a method token: {method!r}")
        if method in _METHOD_IDS:
            e.method_mask |= (<unsigned int>1) << <int>_METHOD_IDS[method]
        else:
            router.tokens[n_tokens[0]] = _span(router, method.encode("ascii"))
            n_tokens[0] += 1
            e.other_count += 1

    e.match_first = n_matches[0]
    for name, value in dict(spec.get("headers") or {}).items():
        router.header_matches[n_matches[0]].name = _span(router, _name_bytes(name, what).lower())
        router.header_matches[n_matches[0]].value = _span(router, _value_bytes(value, what))
        n_matches[0] += 1
        e.match_count += 1

    rewrite = spec.get("rewrite_prefix")
    if rewrite is not None:
        if e.path_kind != PATH_PREFIX:
            raise ValueError(f"{what}: rewrite_prefix needs path_prefix")
        e.rewrite = True
        e.rewrite_to = _span(router, _path_bytes(rewrite, what))
        router.max_growth = max(router.max_growth, e.rewrite_to.len - e.path.len)

    e.remove_first = n_tokens[0]
    for name in spec.get("remove_request_headers") or ():
        router.tokens[n_tokens[0]] = _span(router, _name_bytes(name, what).lower())
        n_tokens[0] += 1
        e.remove_count += 1

    e.add_request = _span(router, _render_headers(spec.get("add_request_headers") or {}, what))
    e.add_response = _span(router, _render_headers(spec.get("add_response_headers") or {}, what))
    return 0


cdef class Router:
    """The compiled routes of one http listener.

    Router(routes, clusters): `routes` is a list of specs, dicts with the config's route keys
    ("cluster" required; "host", "path", "path_prefix", "path_regex", "methods", "headers",
    "rewrite_prefix", "add_request_headers", "remove_request_headers", "add_response_headers"), tried in
    order. `clusters` lists the cluster names; a route's cluster index is its name's position there.
    """

    def __cinit__(self):
        self.entries = NULL
        self.header_matches = NULL
        self.tokens = NULL
        self.n = 0
        self.keep = []
        self.regexes = []
        self.cluster_names = ()

    def __dealloc__(self):
        PyMem_Free(self.entries)
        PyMem_Free(self.header_matches)
        PyMem_Free(self.tokens)

    def __init__(self, routes, clusters):
        cdef int n_matches = 0, n_tokens = 0, i
        if self.entries != NULL:
            raise RuntimeError("a Router is built once")
        self.cluster_names = tuple(clusters)
        index = {}
        for i, name in enumerate(self.cluster_names):
            index.setdefault(name, i)
        specs = [dict(spec) for spec in routes]
        for i, spec in enumerate(specs):
            unknown = set(spec) - SPEC_KEYS
            if unknown:
                raise ValueError(f"route {i}: unknown keys {sorted(unknown)}")
            if spec.get("cluster") not in index:
                raise ValueError(f"route {i}: cluster {spec.get('cluster')!r} is not one of {list(index)}")
            for key in ("methods", "remove_request_headers"):
                if isinstance(spec.get(key), (str, bytes)):
                    raise ValueError(f"route {i}: {key} is a list of str, got {spec[key]!r}")
            n_matches += len(spec.get("headers") or ())
            n_tokens += len(spec.get("methods") or ()) + len(spec.get("remove_request_headers") or ())
        self.entries = <RouteEntry *>PyMem_Calloc(max(len(specs), 1), sizeof(RouteEntry))
        self.header_matches = <HeaderMatch *>PyMem_Calloc(max(n_matches, 1), sizeof(HeaderMatch))
        self.tokens = <Span *>PyMem_Calloc(max(n_tokens, 1), sizeof(Span))
        if self.entries == NULL or self.header_matches == NULL or self.tokens == NULL:
            raise MemoryError()
        n_matches = n_tokens = 0
        for i, spec in enumerate(specs):
            _fill(self, &self.entries[i], spec, f"route {i}", index, &n_matches, &n_tokens)
            self.n = i + 1
            self.uses_host |= self.entries[i].host_kind != HOST_ANY
            self.uses_path |= self.entries[i].path_kind != PATH_ANY or self.entries[i].rewrite

    # ---- the C API conn.pyx uses ----

    cdef int match(self, const char *buf, const Head *h) noexcept:
        cdef Span host, path, rest
        cdef const RouteEntry *e
        cdef int r
        cdef object path_str = None
        cdef bint found
        host.ptr = path.ptr = buf
        host.len = path.len = 0
        if self.uses_host:
            host = request_host(buf, h)
        if self.uses_path:
            request_path(buf, h, &path, &rest)
        for r in range(self.n):
            e = &self.entries[r]
            if not _method_ok(e, self.tokens, buf, h) or not _host_ok(e, host) or not _plain_path_ok(e, path):
                continue
            if e.match_count and _failed_header(e, self.header_matches, buf, h) >= 0:
                continue
            if e.path_kind == PATH_REGEX:
                try:
                    if path_str is None:
                        path_str = PyUnicode_DecodeUTF8(path.ptr, path.len, "surrogateescape")
                    found = self.regexes[e.regex](path_str) is not None
                except Exception:
                    found = False
                if not found:
                    continue
            return r
        return -1

    cdef int cluster(self, int route) noexcept:
        return self.entries[route].cluster

    cdef Span add_request_headers(self, int route) noexcept:
        return self.entries[route].add_request

    cdef Span add_response_headers(self, int route) noexcept:
        return self.entries[route].add_response

    cdef bint removes_any(self, int route) noexcept:
        return self.entries[route].remove_count > 0

    cdef bint removes(self, int route, const char *name, Py_ssize_t len) noexcept:
        cdef const RouteEntry *e = &self.entries[route]
        cdef int i
        for i in range(e.remove_first, e.remove_first + e.remove_count):
            if self.tokens[i].len == len and _fold_eq(name, self.tokens[i].ptr, len):
                return True
        return False

    cdef Py_ssize_t rewrite_target(self, int route, const char *buf, const Head *h, char *out,
                                   Py_ssize_t cap) noexcept:
        cdef Span path, rest, head, tail
        cdef const RouteEntry *e
        request_path(buf, h, &path, &rest)
        if h.target_form == TARGET_AUTHORITY:
            path.ptr = buf + h.target_off     # CONNECT keeps its authority-form target
            path.len = h.target_len
        head.ptr = tail.ptr = path.ptr
        head.len = 0
        tail.len = path.len
        if 0 <= route < self.n:
            e = &self.entries[route]
            if e.rewrite and path.len >= e.path.len and memcmp(path.ptr, e.path.ptr, e.path.len) == 0:
                head = e.rewrite_to
                tail.ptr = path.ptr + e.path.len
                tail.len = path.len - e.path.len
                if head.len and head.ptr[head.len - 1] == 47 and tail.len and tail.ptr[0] == 47:
                    # "/api" -> "/" on "/api/users" gives "/users", not "//users".
                    tail.ptr += 1
                    tail.len -= 1
        if head.len + tail.len + rest.len > cap:
            return -1
        memcpy(out, head.ptr, head.len)
        memcpy(out + head.len, tail.ptr, tail.len)
        memcpy(out + head.len + tail.len, rest.ptr, rest.len)
        return head.len + tail.len + rest.len

    # ---- Python wrappers: tests, benchmarks and the explain feature ----

    def __len__(self):
        return self.n

    def match_request(self, bytes raw_head not None) -> int:
        """Parse a complete request head (default limits) and return the index of the route it takes, or -1."""
        cdef Head h
        _parse(raw_head, &h)
        return self.match(raw_head, &h)

    def explain(self, bytes raw_head not None) -> list:
        """Per route, in order: {"route", "cluster", "matched", "failed"}.

        "failed" names the first condition the request does not meet, checked in the order "host",
        "path", "method", "header <name>" (None when the route matches). Every route is reported, so a
        route shadowed by an earlier match shows as matched too; match_request() gives the one taken.
        """
        cdef Head h
        cdef Span host, path, rest
        cdef const RouteEntry *e
        cdef const HeaderMatch *m
        cdef int r, k
        _parse(raw_head, &h)
        host = request_host(raw_head, &h)
        request_path(raw_head, &h, &path, &rest)
        out = []
        for r in range(self.n):
            e = &self.entries[r]
            failed = None
            if not _host_ok(e, host):
                failed = "host"
            elif not _plain_path_ok(e, path) or (e.path_kind == PATH_REGEX and self.regexes[e.regex](
                    PyUnicode_DecodeUTF8(path.ptr, path.len, "surrogateescape")) is None):
                failed = "path"
            elif not _method_ok(e, self.tokens, raw_head, &h):
                failed = "method"
            else:
                k = _failed_header(e, self.header_matches, raw_head, &h)
                if k >= 0:
                    m = &self.header_matches[e.match_first + k]
                    failed = "header " + m.name.ptr[:m.name.len].decode("ascii")
            out.append({"route": r, "cluster": self.cluster_names[e.cluster], "matched": failed is None,
                        "failed": failed})
        return out

    def cluster_index(self, int route) -> int:
        _check_route(self, route)
        return self.cluster(route)

    def request_headers_block(self, int route) -> bytes:
        """The pre-rendered lines the route appends to the upstream request."""
        _check_route(self, route)
        cdef Span s = self.add_request_headers(route)
        return s.ptr[:s.len]

    def response_headers_block(self, int route) -> bytes:
        """The pre-rendered lines the route appends to the downstream response."""
        _check_route(self, route)
        cdef Span s = self.add_response_headers(route)
        return s.ptr[:s.len]

    def removes_header(self, int route, bytes name not None) -> bool:
        _check_route(self, route)
        return self.removes(route, name, len(name))

    def target_for(self, bytes raw_head not None, int route, Py_ssize_t cap=-1):
        """rewrite_target() for a request head: the upstream target, or None when it exceeds cap
        (cap -1: room for any target)."""
        cdef Head h
        _parse(raw_head, &h)
        if cap < 0:
            cap = h.target_len + self.max_growth
        out = bytearray(cap)
        cdef Py_ssize_t n = self.rewrite_target(route, raw_head, &h, out, cap)
        return None if n < 0 else bytes(out[:n])

    def bench_match(self, bytes raw_head not None, Py_ssize_t count) -> int:
        """Parse once, then match `count` times in C (benchmarks); returns the sum of the route indexes."""
        cdef Head h
        cdef Py_ssize_t _, total = 0
        cdef const char *buf = raw_head
        _parse(raw_head, &h)
        for _ in range(count):
            total += self.match(buf, &h)
        return total


cdef int _check_route(Router router, int route) except -1:
    if not 0 <= route < router.n:
        raise IndexError(f"no route {route} (the router has {router.n})")
    return 0


cdef int _parse(bytes raw_head, Head *h) except -1:
    cdef Py_ssize_t r = parse_request(raw_head, len(raw_head), h, NULL)
    if r < 0:
        raise make_error(<int>r)
    if r == 0:
        raise ValueError("incomplete request head")
    return 0


def request_parts(bytes raw_head not None) -> tuple:
    """(host, path, rest) as routing sees a request head: request_host() and request_path()."""
    cdef Head h
    cdef Span path, rest
    _parse(raw_head, &h)
    cdef Span host = request_host(raw_head, &h)
    request_path(raw_head, &h, &path, &rest)
    return host.ptr[:host.len], path.ptr[:path.len], rest.ptr[:rest.len]
