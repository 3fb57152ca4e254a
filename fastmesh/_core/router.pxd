# Router: the compiled route table of one http listener; C-level declarations that conn.pyx cimports.
#
# Every byte a match compares (hosts, paths, header names and values, method tokens) lives in bytes
# objects the Router keeps; the C arrays hold pointers into them, so a match touches no Python object
# (path_regex routes excepted: see router.pyx).

from fastmesh._core.http1.parser cimport Head

cdef enum HostKind:
    HOST_ANY = 0                  # no host condition
    HOST_EXACT = 1                # the request host equals RouteEntry.host (case-insensitive)
    HOST_SUFFIX = 2               # the request host ends with RouteEntry.host, which starts with "."

cdef enum PathKind:
    PATH_ANY = 0                  # no path condition
    PATH_EXACT = 1                # the path equals RouteEntry.path
    PATH_PREFIX = 2               # the path starts with RouteEntry.path
    PATH_REGEX = 3                # Router.regexes[RouteEntry.regex] finds a match in the path

ctypedef struct Span:
    const char *ptr               # first byte (inside a bytes object the Router keeps, or the request buffer)
    Py_ssize_t len                # number of bytes; 0 for an empty span

ctypedef struct HeaderMatch:
    Span name                     # lower-case field name
    Span value                    # the value a line of that name must have, byte for byte

ctypedef struct RouteEntry:
    int cluster                   # index into the cluster names the Router was built with
    int host_kind                 # HostKind
    Span host                     # lower-case host (no port, no final dot); for HOST_SUFFIX ".example.com"
    int path_kind                 # PathKind
    Span path                     # exact path or prefix; for PATH_REGEX the pattern text (explain only)
    int regex                     # index into Router.regexes for PATH_REGEX, -1 otherwise
    bint any_method               # no method condition
    unsigned int method_mask      # bit (1 << Method id) per allowed method the parser knows by id
    int other_first               # Router.tokens[other_first:+other_count]: allowed methods without an id
    int other_count               # number of such method tokens
    int match_first               # Router.header_matches[match_first:+match_count]: header conditions
    int match_count               # number of header conditions (all must hold)
    int remove_first              # Router.tokens[remove_first:+remove_count]: lower-case names to drop upstream
    int remove_count              # number of names to drop
    bint rewrite                  # the matched prefix (path) is replaced by rewrite_to upstream
    Span rewrite_to               # replacement for the prefix; starts with "/"
    Span add_request              # pre-rendered "Name: value\r\n" lines appended to the upstream request
    Span add_response             # pre-rendered lines appended to the downstream response


cdef class Router:
    cdef RouteEntry *entries      # the routes, in the order they are tried
    cdef int n                    # number of routes
    cdef HeaderMatch *header_matches  # every route's header conditions, sliced by the entries
    cdef Span *tokens             # method tokens and names to remove, sliced by the entries
    cdef bint uses_host           # some route has a host condition: match() must find the request host
    cdef bint uses_path           # some route has a path condition: match() must split the target
    cdef readonly Py_ssize_t max_growth  # rewrite_target() writes at most target_len + max_growth bytes
    cdef list keep                # bytes objects the Spans point into (kept alive with the Router)
    cdef list regexes             # `search` of each compiled path_regex, indexed by RouteEntry.regex
    cdef readonly tuple cluster_names    # cluster name per index, as given to the constructor

    # Index of the first route that matches the parsed request head h over buf, or -1 when none does.
    cdef int match(self, const char *buf, const Head *h) noexcept
    # Cluster index of a route (route must be a valid index).
    cdef int cluster(self, int route) noexcept
    # Lines to append to the upstream request / downstream response ("Name: value\r\n"...), maybe empty.
    cdef Span add_request_headers(self, int route) noexcept
    cdef Span add_response_headers(self, int route) noexcept
    # Whether the route drops request header `name` (any case). removes_any() is 0 when it drops none,
    # so the caller can skip the per-line calls.
    cdef bint removes(self, int route, const char *name, Py_ssize_t len) noexcept
    cdef bint removes_any(self, int route) noexcept
    # Write the origin-form target for upstream into out[0:cap]: absolute-form reduced to path and
    # query, the route's prefix rewritten. Returns the length, or -1 when it does not fit.
    # route may be -1 (no rewrite).
    cdef Py_ssize_t rewrite_target(self, int route, const char *buf, const Head *h, char *out,
                                   Py_ssize_t cap) noexcept


# The authority of an absolute-form or authority-form target as sent (port kept; the parser refused
# userinfo), else an empty span: what a forwarded request's Host must say (RFC 9112 section 3.2.2).
cdef Span target_authority(const char *buf, const Head *h) noexcept nogil
# The request host as routing sees it: the absolute-form or authority-form target's authority (RFC 9112
# section 3.2.2: it wins over Host), else the Host value; userinfo, port and a final dot removed.
# Empty (len 0) when the request names no host.
cdef Span request_host(const char *buf, const Head *h) noexcept nogil
# The target's path (before "?") and the rest (from "?", or empty). An absolute-form target without a
# path gives an empty path; authority-form gives an empty path; asterisk-form gives "*".
cdef void request_path(const char *buf, const Head *h, Span *path, Span *rest) noexcept nogil
