# Request filters: the compiled side of Python filter plugins. A route with filters gets a FilterRequest (the view
# a plugin reads, and what it asks for); routes without filters never reach this module.

from fastmesh._core.request cimport RequestView, Edit, EditList

cdef enum FilterOutcome:
    # What a filter chain (dataplane/filters.py) returns when it does not return an Answer (or None: go on).
    FILTER_PENDING = 1                 # an async filter holds the request; FilterRequest._resume() comes later
    FILTER_FAILED = 2                  # a filter raised (failure_mode "closed"): 500 `fastmesh-error: plugin`
    FILTER_TIMEOUT = 3                 # an async filter ran out of time ("closed"): 504 `plugin timeout`


cdef class FilterRequest:
    # One request as a filter sees it. Everything is a copy (an async filter outlives the receive buffer's view),
    # decoded only when a filter reads it.
    cdef bytes raw                     # the request head as received
    cdef bytes fields                  # the view's Field array (offsets into raw), copied
    cdef int num_fields                # entries in fields
    cdef Py_ssize_t span_off[4]        # method, authority, path, query: offset into raw, or -1: see span_text
    cdef Py_ssize_t span_len[4]
    cdef tuple span_text               # the spans that do not point into raw (an absolute target's "/"), or None
    cdef readonly str listener         # the listener's name
    cdef readonly str peer             # the client's address
    cdef readonly int route            # the matched route's index
    cdef tuple cluster_names           # the router's clusters by index
    cdef readonly int cluster_index    # where the request goes; route_to() changes it
    cdef list removes                  # lower-case names of request fields to drop (bytes); None until one is
    cdef list adds                     # (name, value) bytes of request fields to add; None until one is
    cdef list response_adds            # (name, value) bytes of answer fields to add; None until one is
    cdef Edit *edits                   # the request edit list's route part once ours joined it (owned)
    cdef Edit *resp_edits              # the same for the response
    cdef object headers_list           # the decoded headers, once a filter asked
    cdef public object owner           # the codec's connection an async chain resumes (None when synchronous)

    # A view span as text (0 method, 1 authority, 2 path, 3 query), decoded now.
    cdef str _span(self, int i)

    # Point the edit lists' route part at the route's edits followed by this request's (removes first, then the
    # route's, then our adds); the lists stay valid while this object lives.
    cdef int apply_edits(self, EditList *request, EditList *response) except -1


# The FilterRequest for a routed request view (head_len bytes of head at v.base).
cdef FilterRequest filter_request(const RequestView *v, Py_ssize_t head_len, str listener, const char *peer,
                                  int peer_len, int route, tuple cluster_names, int cluster)
# A filter's Answer as HTTP/1 parts: (status, reason, field lines, body); ValueError when it cannot be sent.
cdef tuple answer_parts(object answer, FilterRequest r)
