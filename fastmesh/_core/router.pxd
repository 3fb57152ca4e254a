# Router: the compiled route table of one http listener, matched against the codec-neutral request view.
#
# Every byte a match compares (hosts, paths, header names and values, method tokens) lives in bytes
# objects the Router keeps; the C arrays hold pointers into them, so a match touches no Python object
# (path_regex routes excepted: see router.pyx). A route's header changes are compiled into edit-list
# entries (request.pxd) that each codec renders its own way.

from fastmesh._core.request cimport RequestView, Span, Edit, EditList
from fastmesh._core.naming cimport Names
from fastmesh._core.tls.identity cimport Identities

cdef enum HostKind:
    HOST_ANY = 0                  # no host condition
    HOST_EXACT = 1                # the request host equals RouteEntry.host (case-insensitive)
    HOST_SUFFIX = 2               # the request host ends with RouteEntry.host, which starts with "."

cdef enum PathKind:
    PATH_ANY = 0                  # no path condition
    PATH_EXACT = 1                # the path equals RouteEntry.path
    PATH_PREFIX = 2               # the path starts with RouteEntry.path
    PATH_REGEX = 3                # Router.regexes[RouteEntry.regex] finds a match in the path

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
    bint rewrite                  # the matched prefix (path) is replaced by rewrite_to upstream
    Span rewrite_to               # replacement for the prefix; starts with "/"
    int request_first             # Router.edits[request_first:+request_count]: request edits (removes, then adds)
    int request_count             # number of request edits
    int response_first            # Router.edits[response_first:+response_count]: response edits (adds)
    int response_count            # number of response edits
    int service                   # index into the service names for a route sent to a logical name, else -1
    void *identities              # allow_identities: a borrowed Identities (kept in Router.keep); NULL: anyone


cdef class Router:
    cdef RouteEntry *entries      # the routes, in the order they are tried
    cdef int n                    # number of routes
    cdef HeaderMatch *header_matches  # every route's header conditions, sliced by the entries
    cdef Span *tokens             # method tokens, sliced by the entries
    cdef Edit *edits              # every route's header edits, sliced by the entries
    cdef readonly Py_ssize_t max_growth  # a rewritten path is at most max_growth bytes longer than the request's
    cdef list keep                # bytes objects the Spans point into (kept alive with the Router)
    cdef list regexes             # `search` of each compiled path_regex, indexed by RouteEntry.regex
    cdef readonly tuple cluster_names    # cluster name per index, as given to the constructor
    cdef readonly tuple service_names    # logical name per service index (routes with `service`)
    cdef Names names                     # the process's naming (table and overrides); None: no service routes
    cdef readonly bint trust_naming      # honour a fastmesh-naming field (else every route's edits remove it)
    cdef public list limits              # per route: its RateLimit (ratelimit.pyx) or None; None: no route has one
    cdef readonly bint identities        # some route has allow_identities (else the exchange tests nothing more)

    # Index of the first route that matches the request view, or -1 when none does.
    cdef int match(self, const RequestView *v) noexcept
    # Whether a client with this verified identity (n == 0: none) may use route: the route's compiled allow list
    # (the one tls listeners check in their handshake), a few memcmp calls.
    cdef bint identity_allowed(self, int route, const char *identity, Py_ssize_t n) noexcept
    # Cluster index of a route (route must be a valid index); -1 for a route sent to a service.
    cdef int cluster(self, int route) noexcept
    # The cluster a request taking `route` goes to: the route's cluster, or what its service resolves to now
    # (naming.pyx; `connectors` by cluster index say which clusters have an endpoint up). -1: nothing.
    cdef int target(self, int route, list connectors, const RequestView *v) noexcept
    # Point the edit lists at the route's request and response edits (route may be -1: none).
    cdef void route_edits(self, int route, EditList *request, EditList *response) noexcept
    # The upstream path: head + tail, the route's prefix rewritten (without one, head is empty and tail is
    # v.path). The codec renders it with v.query. route may be -1 (no rewrite).
    cdef void rewrite_path(self, int route, const RequestView *v, Span *head, Span *tail) noexcept
