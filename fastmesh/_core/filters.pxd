# Request filters: the compiled side of Python filter plugins. A route with filters gets a FilterRequest (the view
# a plugin reads, and what it asks for); routes without filters never reach this module.

from fastmesh._core.request cimport RequestView, Edit, EditList, Field
from fastmesh._core.exchange cimport Exchange, ForwardRules

cdef enum FilterOutcome:
    # What a filter chain (dataplane/filters.py) returns when it does not return an Answer (or None: go on).
    FILTER_PENDING = 1                 # an async filter holds the request; FilterRequest._resume() comes later
    FILTER_FAILED = 2                  # a filter raised (failure_mode "closed"): 500 `fastmesh-error: plugin`
    FILTER_TIMEOUT = 3                 # an async filter ran out of time ("closed"): 504 `plugin timeout`

cdef enum:
    FILTER_ANSWERED = -1               # settle(): the outcome is an Answer the codec renders (answer_parts)


cdef class FilterResponse


cdef class FilterMessage:
    # One message head as a filter sees it (a request, or the upstream's answer): its fields, copied and decoded only
    # when a filter reads them, and the field edits the filter asks for. The header accessors and their protection
    # rules live here once; each subclass joins removes and adds to its codec's edit list its own way.
    cdef bytes raw                     # the bytes the fields point into: a request head, or its decoded header block,
    #                                    or the upstream's answer head
    cdef bytes fields                  # the Field array (offsets into raw), copied
    cdef int num_fields                # entries in fields
    cdef list removes                  # lower-case names of fields to drop (bytes); None until one is
    cdef list adds                     # (name, value) bytes of fields to add; None until one is
    cdef object headers_list           # the decoded headers, once a filter asked


cdef class FilterRequest(FilterMessage):
    # One request as a filter sees it. Everything is a copy (an async filter may outlive the buffer the view points
    # into: the receive buffer, or a stream its client reset), decoded only when a filter reads it.
    cdef Py_ssize_t span_off[4]        # method, authority, path, query: offset into raw, or -1: see span_text
    cdef Py_ssize_t span_len[4]
    cdef tuple span_text               # the spans that do not point into raw (an absolute target's "/"), or None
    cdef readonly str listener         # the listener's name
    cdef readonly str peer             # the client's address
    cdef readonly str trace_id         # the request's W3C trace id (32 hex digits), "" without trace context
    cdef readonly str identity         # the client's verified identity (its certificate's URI SAN), "" when none
    cdef readonly int route            # the matched route's index
    cdef tuple cluster_names           # the router's clusters by index
    cdef readonly int cluster_index    # where the request goes; route_to() changes it
    cdef list response_adds            # (name, value) bytes of answer fields to add; None until one is
    cdef Edit *edits                   # the request edit list's route part once ours joined it (owned)
    cdef Edit *resp_edits              # the same for the response
    cdef public object owner           # who an async chain resumes: the HTTP/1 connection or HTTP/2 stream (or None)
    cdef bytes rate_key                # the key a filter set for a route limited by key = "filter", or None
    cdef public object responder       # the chain's response side (FilterChain.respond), None: no response filter
    cdef public object answer          # respond(): the Answer a response filter gave instead of the upstream's
    cdef FilterResponse resp           # respond(): the answer head its response filters saw and edited

    # A view span as text (0 method, 1 authority, 2 path, 3 query), decoded now.
    cdef str _span(self, int i)

    # Point the edit lists' route part at the route's edits followed by this request's (removes first, then the
    # route's, then our adds); the lists stay valid while this object lives.
    cdef int apply_edits(self, EditList *request, EditList *response) except -1


cdef class FilterResponse(FilterMessage):
    # The upstream's final answer head as a response filter sees it (a copy, decoded when read), and its edits.
    cdef readonly int status           # the upstream's status code
    cdef readonly FilterRequest request   # the request it answers (what its filters saw and set)
    cdef Field *kept                   # after respond(): the fields that stay (offsets into the codec's base), owned
    cdef int kept_n                    # entries in kept; -1: no field was removed (render the upstream's as they are)
    cdef Edit *edits                   # the response edit list's route part once our adds joined it (owned)

    # Note what the filters removed (kept, kept_n) and point the response list's route part at the route's edits
    # followed by our adds.
    cdef int apply_edits(self, const char *base, const Field *fields, int n, EditList *response) except -1


# The FilterRequest for a routed request view: head_len bytes at v.base hold every span and field the view points
# to (HTTP/1: the request head in the receive buffer; HTTP/2: the stream's decoded header block).
cdef FilterRequest filter_request(const RequestView *v, Py_ssize_t head_len, str listener, const char *peer,
                                  int peer_len, int route, tuple cluster_names, int cluster, str trace_id,
                                  bytes identity)
# A filter's Answer as parts any codec renders: (status, reason, [(name, value) bytes], body), the filter's
# answer fields after the Answer's own; ValueError when it cannot be sent.
cdef tuple answer_parts(object answer, FilterRequest r)
# The route's chain called with r: None, an Answer, or a FilterOutcome (FILTER_FAILED for a chain that raised).
cdef object run_chain(object chain, FilterRequest r)
# The response side of a filtered request whose chain has response filters (r.responder is not None), for the
# upstream's final answer head (status; n fields pointing into base): 0 go on (the filters' added fields joined
# the response edit list, valid while r lives; when they removed some, r.resp.kept_n >= 0 and the codec renders
# r.resp.kept instead of fields); FILTER_ANSWERED: r.answer holds an Answer to send instead (the codec drops the
# upstream's); PE_PLUGIN: a response filter failed (failure_mode "closed").
cdef int respond(FilterRequest r, int status, const char *base, const Field *fields, int n,
                 EditList *response) noexcept
# What the codec does with a chain's outcome for the request its exchange routed (view v): 0 go on (the
# filter's edits joined the exchange's, a route_to() cluster chosen); FILTER_ANSWERED: the outcome is an Answer
# to render; else the ProxyError to answer with (PE_PLUGIN, PE_PLUGIN_TIMEOUT).
cdef int settle(FilterRequest r, object outcome, Exchange ex, list connectors, const RequestView *v,
                const ForwardRules *rules, double now) noexcept


cdef inline bint parked(object outcome) noexcept:
    # The chain's outcome says an async filter holds the request (FilterRequest._resume() follows).
    return outcome is not None and type(outcome) is int and <int>outcome == FILTER_PENDING
