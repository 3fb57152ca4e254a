"""Compiled route table: the first route whose conditions a request view meets, and its header edits.

A Router is built once per http listener (dataplane/routes.py turns the config into route specs) and
then only read. Per request, the exchange calls match() with the codec's request view (request.pxd):
  - The codec located the host (authority) and path once, as spans into its buffer (http1/view.pyx for
    HTTP/1), so the router reads the same view whatever the protocol.
  - Routes are tried in order; per route the cheapest tests go first: method (one bit test for the
    methods the parser has ids for), host (length check, then a case-folding compare against the
    lower-case pattern), exact path or prefix (memcmp), header conditions (a scan of the view's field
    offsets: name length, folded name, exact value). No Python object is touched and nothing is
    allocated; a 10-route table costs tens of nanoseconds (bench/micro/test_router.py).
  - path_regex is the exception. Python's re needs a str, so the first regex route that a request
    reaches after its other conditions pass decodes the path (UTF-8, surrogateescape: any byte string
    decodes) into one str, which later regex routes of the same match reuse. That costs a str
    allocation plus the search itself: a few hundred ns, and a backtracking pattern can cost far more
    on a hostile path (keep patterns linear, e.g. no nested quantifiers). Put regex routes after the
    routes that can be decided without one. An exception while searching counts as no match.
  - Header edits (remove_request_headers, add_request_headers, add_response_headers) are compiled into
    edit-list entries once; the codec renders them (HTTP/1: straight into the forwarded head).
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
    without a method condition never turns the listener into a tunnel (the exchange answers 405). Headers:
    every condition needs a line with that name (any case) whose value (OWS trimmed by the parser)
    equals the configured value exactly.
"""

import re

from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.string cimport memcmp

from fastmesh._core.http1.parser cimport CC_TCHAR, CHAR_CLASS, Head, METHOD_CONNECT, METHOD_OTHER
from fastmesh._core.http1.view cimport view_parse, view_init
from fastmesh._core.http1.view import request_parts  # noqa: F401  # no-cython-lint (re-exported for explain)
from fastmesh._core.http1.parser import METHOD_NAMES
from fastmesh._core.naming cimport Names
from fastmesh._core.naming import OVERRIDE_HEADER
from fastmesh._core.tls.identity cimport Identities
from fastmesh._core.request cimport (
    RequestView, Span, Field, Edit, EditList, fold_eq, EDIT_ADD, EDIT_REMOVE,
)

ctypedef unsigned char uchar


NAMING_FIELD = OVERRIDE_HEADER.encode("ascii")   # the per-request naming override (naming.pyx)

# Method tokens the parser reports by id; other tokens are compared as bytes.
METHOD_IDS = {name: i for i, name in enumerate(METHOD_NAMES) if i != METHOD_OTHER}
SPEC_KEYS = frozenset({
    "cluster", "service", "host", "path", "path_prefix", "path_regex", "methods", "headers", "rewrite_prefix",
    "add_request_headers", "remove_request_headers", "add_response_headers", "allow_identities",
})


# ---------------------------------------------------------------------------------------------------
# One condition each; match() and explain() share them.

cdef inline bint _host_ok(const RouteEntry *e, Span host) noexcept nogil:
    if e.host_kind == HOST_ANY:
        return True
    if e.host_kind == HOST_EXACT:
        return host.len == e.host.len and fold_eq(host.ptr, e.host.ptr, host.len)
    return host.len > e.host.len and fold_eq(host.ptr + host.len - e.host.len, e.host.ptr, e.host.len)


cdef inline bint _plain_path_ok(const RouteEntry *e, Span path) noexcept nogil:
    # Exact and prefix conditions; PATH_REGEX is decided by the caller.
    if e.path_kind == PATH_EXACT:
        return path.len == e.path.len and memcmp(path.ptr, e.path.ptr, path.len) == 0
    if e.path_kind == PATH_PREFIX:
        return path.len >= e.path.len and memcmp(path.ptr, e.path.ptr, e.path.len) == 0
    return True


cdef inline bint _method_ok(const RouteEntry *e, const Span *tokens, const RequestView *v) noexcept nogil:
    cdef int i
    if e.any_method:
        return v.method != METHOD_CONNECT     # a tunnel only where a route names CONNECT
    if v.method != METHOD_OTHER:
        return (e.method_mask >> v.method) & 1
    for i in range(e.other_first, e.other_first + e.other_count):
        if tokens[i].len == v.method_token.len \
                and memcmp(tokens[i].ptr, v.method_token.ptr, v.method_token.len) == 0:
            return True
    return False


cdef inline int _failed_header(const RouteEntry *e, const HeaderMatch *matches, const RequestView *v) noexcept nogil:
    # Index (within the route's conditions) of the first header condition no field meets, or -1.
    cdef int k, j
    cdef const HeaderMatch *m
    cdef const Field *f
    cdef const char *buf = v.base
    for k in range(e.match_count):
        m = &matches[e.match_first + k]
        for j in range(v.num_fields):
            f = &v.fields[j]
            if f.name_len == m.name.len and f.value_len == m.value.len \
                    and memcmp(buf + f.value_off, m.value.ptr, m.value.len) == 0 \
                    and fold_eq(buf + f.name_off, m.name.ptr, m.name.len):
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


cdef int _add_edits(Router router, object table, str what, int *n_edits) except -1:
    # {"X-A": "b"} -> EDIT_ADD entries, names as written (they are sent as written).
    for name, value in dict(table).items():
        _edit(router, n_edits, EDIT_ADD, _name_bytes(name, what), _value_bytes(value, what))
    return 0


cdef void _edit(Router router, int *n_edits, int kind, bytes name, bytes value):
    cdef Edit *e = &router.edits[n_edits[0]]
    e.kind = kind
    e.name = _span(router, name)
    e.value = _span(router, value)
    n_edits[0] += 1


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


cdef int _fill(Router router, RouteEntry *e, dict spec, str what, dict index, dict services, int *n_matches,
               int *n_tokens, int *n_edits) except -1:
    # One spec -> *e; n_matches/n_tokens/n_edits are the next free slots of the shared arrays (advanced here).
    if spec.get("service") is not None:
        e.cluster = -1
        e.service = services[spec["service"]]
    else:
        e.cluster = index[spec["cluster"]]
        e.service = -1
    e.regex = -1

    allow = spec.get("allow_identities")
    if allow:
        # The matcher tls listeners use in their handshake (config/sections/tls.py's identity_problem checked the
        # entries).
        if isinstance(allow, (str, bytes)):
            raise ValueError(f"{what}: allow_identities is a list of str, got {allow!r}")
        for p in allow:
            if not isinstance(p, str) or not p or not p.isascii() or "*" in p[:-2] or \
                    (p.endswith("*") and not p.endswith("/*")):
                raise ValueError(f"{what}: allow_identities entry {p!r}: an identity, or a prefix ending in /*")
        ids = Identities(allow)
        router.keep.append(ids)
        e.identities = <void *>ids
        router.identities = True

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
        if method in METHOD_IDS:
            e.method_mask |= (<unsigned int>1) << <int>METHOD_IDS[method]
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

    e.request_first = n_edits[0]
    if not router.trust_naming:
        _edit(router, n_edits, EDIT_REMOVE, NAMING_FIELD, b"")     # never steers a hop further on
    for name in spec.get("remove_request_headers") or ():
        _edit(router, n_edits, EDIT_REMOVE, _name_bytes(name, what).lower(), b"")
    _add_edits(router, spec.get("add_request_headers") or {}, what, n_edits)
    e.request_count = n_edits[0] - e.request_first
    e.response_first = n_edits[0]
    _add_edits(router, spec.get("add_response_headers") or {}, what, n_edits)
    e.response_count = n_edits[0] - e.response_first
    return 0


cdef class Router:
    """The compiled routes of one http listener.

    Router(routes, clusters, services=(), names=None, trust_naming=True): `routes` is a list of specs, dicts with
    the config's route keys ("cluster" or "service" required; "host", "path", "path_prefix", "path_regex", "methods",
    "headers",
    "rewrite_prefix", "add_request_headers", "remove_request_headers", "add_response_headers"), tried in
    order. `clusters` lists the cluster names; a route's cluster index is its name's position there. `services`
    lists the logical names routes may send to (a route's service index is its position there) and `names` is the
    naming they are resolved with per request (naming.pyx). `trust_naming`: a fastmesh-naming field overrides the
    table (else every route removes it from the forwarded request).
    """

    def __cinit__(self):
        self.entries = NULL
        self.header_matches = NULL
        self.tokens = NULL
        self.edits = NULL
        self.n = 0
        self.keep = []
        self.regexes = []
        self.cluster_names = ()
        self.service_names = ()

    def __dealloc__(self):
        PyMem_Free(self.entries)
        PyMem_Free(self.header_matches)
        PyMem_Free(self.tokens)
        PyMem_Free(self.edits)

    def __init__(self, routes, clusters, services=(), Names names=None, bint trust_naming=True):
        cdef int n_matches = 0, n_tokens = 0, n_edits = 0, i
        if self.entries != NULL:
            raise RuntimeError("a Router is built once")
        self.cluster_names = tuple(clusters)
        self.service_names = tuple(services)
        self.names = names
        self.trust_naming = trust_naming
        index = {}
        for i, name in enumerate(self.cluster_names):
            index.setdefault(name, i)
        service_index = {}
        for i, name in enumerate(self.service_names):
            service_index.setdefault(name, i)
        specs = [dict(spec) for spec in routes]
        for i, spec in enumerate(specs):
            unknown = set(spec) - SPEC_KEYS
            if unknown:
                raise ValueError(f"route {i}: unknown keys {sorted(unknown)}")
            if spec.get("service") is not None:
                if spec.get("cluster") is not None:
                    raise ValueError(f"route {i}: cluster or service, not both")
                if spec["service"] not in service_index:
                    raise ValueError(f"route {i}: service {spec['service']!r} is not one of {list(service_index)}")
            elif spec.get("cluster") not in index:
                raise ValueError(f"route {i}: cluster {spec.get('cluster')!r} is not one of {list(index)}")
            for key in ("methods", "remove_request_headers"):
                if isinstance(spec.get(key), (str, bytes)):
                    raise ValueError(f"route {i}: {key} is a list of str, got {spec[key]!r}")
            n_matches += len(spec.get("headers") or ())
            n_tokens += len(spec.get("methods") or ())
            n_edits += (0 if trust_naming else 1) + len(spec.get("remove_request_headers") or ()) \
                + len(spec.get("add_request_headers") or ()) + len(spec.get("add_response_headers") or ())
        self.entries = <RouteEntry *>PyMem_Calloc(max(len(specs), 1), sizeof(RouteEntry))
        self.header_matches = <HeaderMatch *>PyMem_Calloc(max(n_matches, 1), sizeof(HeaderMatch))
        self.tokens = <Span *>PyMem_Calloc(max(n_tokens, 1), sizeof(Span))
        self.edits = <Edit *>PyMem_Calloc(max(n_edits, 1), sizeof(Edit))
        if self.entries == NULL or self.header_matches == NULL or self.tokens == NULL or self.edits == NULL:
            raise MemoryError()
        n_matches = n_tokens = n_edits = 0
        for i, spec in enumerate(specs):
            _fill(self, &self.entries[i], spec, f"route {i}", index, service_index, &n_matches, &n_tokens, &n_edits)
            self.n = i + 1

    # ---- the C API the exchange and the codecs use ----

    cdef bint identity_allowed(self, int route, const char *identity, Py_ssize_t n) noexcept:
        cdef void *allow = self.entries[route].identities
        return allow == NULL or (<Identities>allow).allows(identity, n)

    def allows(self, int route, identity):
        """identity_allowed() from Python (explain, tests); identity: str, bytes or None (none shown)."""
        if not 0 <= route < self.n:
            raise IndexError(f"route {route} of {self.n}")
        raw = b"" if identity is None else identity.encode() if isinstance(identity, str) else bytes(identity)
        return self.identity_allowed(route, raw, len(raw))

    cdef int match(self, const RequestView *v) noexcept:
        cdef const RouteEntry *e
        cdef int r
        cdef object path_str = None
        cdef bint found
        for r in range(self.n):
            e = &self.entries[r]
            if not _method_ok(e, self.tokens, v) or not _host_ok(e, v.authority) or not _plain_path_ok(e, v.path):
                continue
            if e.match_count and _failed_header(e, self.header_matches, v) >= 0:
                continue
            if e.path_kind == PATH_REGEX:
                try:
                    if path_str is None:
                        path_str = PyUnicode_DecodeUTF8(v.path.ptr, v.path.len, "surrogateescape")
                    found = self.regexes[e.regex](path_str) is not None
                except Exception:
                    found = False
                if not found:
                    continue
            return r
        return -1

    cdef int cluster(self, int route) noexcept:
        return self.entries[route].cluster

    cdef int target(self, int route, list connectors, const RequestView *v) noexcept:
        cdef const RouteEntry *e = &self.entries[route]
        if e.service < 0:
            return e.cluster
        if self.names is None:
            return -1
        return self.names.resolve(e.service, connectors, v if self.trust_naming else NULL)

    cdef void route_edits(self, int route, EditList *request, EditList *response) noexcept:
        cdef const RouteEntry *e
        if 0 <= route < self.n:
            e = &self.entries[route]
            request.route = self.edits + e.request_first
            request.route_n = e.request_count
            response.route = self.edits + e.response_first
            response.route_n = e.response_count
        else:
            request.route = response.route = NULL
            request.route_n = response.route_n = 0

    cdef void rewrite_path(self, int route, const RequestView *v, Span *head, Span *tail) noexcept:
        cdef const RouteEntry *e
        head.ptr = v.path.ptr
        head.len = 0
        tail[0] = v.path
        if 0 <= route < self.n:
            e = &self.entries[route]
            if e.rewrite and v.path.len >= e.path.len and memcmp(v.path.ptr, e.path.ptr, e.path.len) == 0:
                head[0] = e.rewrite_to
                tail.ptr = v.path.ptr + e.path.len
                tail.len = v.path.len - e.path.len
                if head.len and head.ptr[head.len - 1] == 47 and tail.len and tail.ptr[0] == 47:
                    # "/api" -> "/" on "/api/users" gives "/users", not "//users".
                    tail.ptr += 1
                    tail.len -= 1

    # ---- Python wrappers: tests, benchmarks and the explain feature ----

    def __len__(self):
        return self.n

    def match_request(self, bytes raw_head not None) -> int:
        """Parse a complete HTTP/1 request head (default limits) and return the index of the route it takes, or
        -1."""
        cdef Head h
        cdef RequestView v
        view_parse(raw_head, &h, &v)
        return self.match(&v)

    def explain(self, bytes raw_head not None) -> list:
        """Per route, in order: {"route", "cluster", "matched", "failed"}, and "service" for a route sent to a
        logical name (its "cluster" is None).

        "failed" names the first condition the request does not meet, checked in the order "host",
        "path", "method", "header <name>" (None when the route matches). Every route is reported, so a
        route shadowed by an earlier match shows as matched too; match_request() gives the one taken.
        """
        cdef Head h
        cdef RequestView v
        cdef const RouteEntry *e
        cdef const HeaderMatch *m
        cdef int r, k
        view_parse(raw_head, &h, &v)
        out = []
        for r in range(self.n):
            e = &self.entries[r]
            failed = None
            if not _host_ok(e, v.authority):
                failed = "host"
            elif not _plain_path_ok(e, v.path) or (e.path_kind == PATH_REGEX and self.regexes[e.regex](
                    PyUnicode_DecodeUTF8(v.path.ptr, v.path.len, "surrogateescape")) is None):
                failed = "path"
            elif not _method_ok(e, self.tokens, &v):
                failed = "method"
            else:
                k = _failed_header(e, self.header_matches, &v)
                if k >= 0:
                    m = &self.header_matches[e.match_first + k]
                    failed = "header " + m.name.ptr[:m.name.len].decode("ascii")
            row = {"route": r, "cluster": self.cluster_names[e.cluster] if e.service < 0 else None,
                   "matched": failed is None, "failed": failed}
            if e.service >= 0:
                row["service"] = self.service_names[e.service]      # a route sent to a logical name
            out.append(row)
        return out

    def cluster_index(self, int route) -> int:
        _check_route(self, route)
        return self.cluster(route)

    def service_index(self, int route) -> int:
        """The route's service index, or -1 for a route sent to a cluster."""
        _check_route(self, route)
        return self.entries[route].service

    def target_request(self, bytes raw_head not None, list connectors not None) -> int:
        """The cluster an HTTP/1 request head would go to now (route, then naming with any override), or -1."""
        cdef Head h
        cdef RequestView v
        cdef int r
        view_parse(raw_head, &h, &v)
        r = self.match(&v)
        return self.target(r, connectors, &v) if r >= 0 else -1

    def request_edits(self, int route) -> list:
        """The route's request edits: ("remove", name, b"") and ("add", name, value), in the order applied."""
        _check_route(self, route)
        cdef EditList req, resp
        self.route_edits(route, &req, &resp)
        return _edit_list(req.route, req.route_n)

    def response_edits(self, int route) -> list:
        """The route's response edits: ("add", name, value)."""
        _check_route(self, route)
        cdef EditList req, resp
        self.route_edits(route, &req, &resp)
        return _edit_list(resp.route, resp.route_n)

    def target_for(self, bytes raw_head not None, int route):
        """The target an HTTP/1 request head is sent upstream with: origin-form, the route's prefix rewritten
        (CONNECT keeps its authority-form target)."""
        cdef Head h
        cdef RequestView v
        cdef Span head, tail
        view_parse(raw_head, &h, &v)
        if not v.has_path:
            return raw_head[h.target_off:h.target_off + h.target_len]
        self.rewrite_path(route, &v, &head, &tail)
        return head.ptr[:head.len] + tail.ptr[:tail.len] + v.query.ptr[:v.query.len]

    def bench_target(self, bytes raw_head not None, list connectors not None, Py_ssize_t count) -> int:
        """Parse once, then match and resolve the target cluster `count` times in C (benchmarks: what a service
        route's naming adds to a match); returns the sum of the cluster indexes."""
        cdef Head h
        cdef RequestView v
        cdef Py_ssize_t _, total = 0
        cdef int r
        view_parse(raw_head, &h, &v)
        for _ in range(count):
            r = self.match(&v)
            total += self.target(r, connectors, &v) if r >= 0 else -1
        return total

    def bench_match(self, bytes raw_head not None, Py_ssize_t count, bint view_each=False) -> int:
        """Parse once, then match `count` times in C (benchmarks); returns the sum of the route indexes.
        view_each: build the request view from the parsed head before each match too (what a request pays)."""
        cdef Head h
        cdef RequestView v
        cdef Py_ssize_t _, total = 0
        cdef const char *buf = raw_head
        view_parse(raw_head, &h, &v)
        for _ in range(count):
            if view_each:
                view_init(&v, buf, &h)
            total += self.match(&v)
        return total


cdef list _edit_list(const Edit *edits, int n):
    cdef int i
    names = {EDIT_ADD: "add", EDIT_REMOVE: "remove"}
    return [(names[edits[i].kind], edits[i].name.ptr[:edits[i].name.len], edits[i].value.ptr[:edits[i].value.len])
            for i in range(n)]


cdef int _check_route(Router router, int route) except -1:
    if not 0 <= route < router.n:
        raise IndexError(f"no route {route} (the router has {router.n})")
    return 0
