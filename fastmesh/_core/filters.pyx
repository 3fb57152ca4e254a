"""Request filters, compiled side: the view a Python filter plugin gets, what it may ask for, and what a codec does
with the chain's outcome (the same for an HTTP/1 request and an HTTP/2 stream, gRPC calls included).

Only routes that have filters come here (HttpProxy.chains[route] is a chain, not None); every other request
pays one pointer test in the codec. For a filtered request the codec builds a FilterRequest from its request view
(two copies: the bytes the view points into and its field offsets; text is decoded only when a filter reads it),
calls the route's chain (run_chain: a Python callable, dataplane/filters.py) and settles the outcome (settle):
  None             go on: header edits join the route's (filter removes, route edits, filter adds) and a
                   route_to() cluster replaces the route's; the codec renders them its own way (the HTTP/1
                   head, an HTTP/1 leg's head, an h2 leg's HPACK block)
  an Answer        the client gets it (status, fields, body; answer_parts) and the request goes no further
  FILTER_PENDING   an async filter holds it: the HTTP/1 connection, or only the HTTP/2 stream, waits (everything
                   else goes on) until the chain calls _resume(outcome), which settles it the same way
  FILTER_FAILED, FILTER_TIMEOUT   500 `plugin` / 504 `plugin timeout` (a gRPC call gets them trailers-only)
A filter can edit neither framing nor connection fields (Host, Content-Length, Transfer-Encoding, Connection,
Upgrade, TE, Trailer, Keep-Alive, Proxy-Connection) nor fastmesh-timeout-ms: those raise ValueError, which is a
failing filter like any exception. Field names must be tokens and values carry no control characters but HTAB.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeLatin1

from fastmesh._core.request cimport (
    RequestView, Span, Field, Edit, EditList, EDIT_ADD, EDIT_REMOVE, span_of, edits_clear, find_field, fold_eq,
)
from fastmesh._core.errors cimport PE_NONE, PE_PLUGIN, PE_PLUGIN_TIMEOUT
from fastmesh._core.exchange cimport Exchange, ForwardRules
from fastmesh._core.ratelimit cimport RateLimit, RK_FILTER
from fastmesh._core.http1.parser cimport Head, Limits, limits_init, parse_response
from fastmesh._core.http1.view cimport view_parse

PROTECTED = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                       "keep-alive", "proxy-connection", "fastmesh-timeout-ms"})
cdef dict _REASONS = None      # status -> reason phrase, made when a plugin first answers (http's enum is 80 KiB)
cdef unsigned long long PROTECTED_LENGTHS = 0           # bit n: some protected name has n bytes
for _p in PROTECTED:
    PROTECTED_LENGTHS |= 1ULL << len(_p)
cdef bytes _TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
cdef bint TOKEN[256]
for _c in _TCHAR:
    TOKEN[_c] = True

PENDING, FAILED, TIMEOUT = FILTER_PENDING, FILTER_FAILED, FILTER_TIMEOUT


cdef bytes _name(object name):
    cdef bytes b
    cdef unsigned char c
    if not isinstance(name, str):
        raise TypeError(f"a field name is a str, got {type(name).__name__}")
    b = (<str>name).encode("latin-1")
    if not b:
        raise ValueError("a field name cannot be empty")
    for c in b:
        if not TOKEN[c]:
            raise ValueError(f"{name!r} is not a field name (a token: letters, digits and !#$%&'*+-.^_`|~)")
    return b


cdef bytes _value(object value):
    cdef bytes b
    cdef unsigned char c
    if not isinstance(value, str):
        raise TypeError(f"a field value is a str, got {type(value).__name__}")
    b = (<str>value).strip(" \t").encode("latin-1")
    for c in b:
        if (c < 32 and c != 9) or c == 127:
            raise ValueError(f"{value!r} holds a control character: not a field value")
    return b


cdef bytes _editable(object name):
    cdef bytes b = _name(name)
    cdef Py_ssize_t n = len(b)
    # Only names as long as a protected one are looked up (2, 4, 7, 10, 14, 16, 17 or 19 bytes).
    if n < 64 and (PROTECTED_LENGTHS >> n) & 1 and b.lower().decode("latin-1") in PROTECTED:
        raise ValueError(f"{name!r} frames the message or belongs to the connection: filters cannot edit it")
    return b


cdef Edit *join_edits(EditList *edits, list removes, list adds) except NULL:
    # A new route part for an edit list: removes (lower-case names, bytes) first, then the list's route edits, then
    # adds ((name, value) bytes). The caller owns the block; the bytes it points to must outlive it.
    cdef int n = (len(removes) if removes is not None else 0) + edits.route_n + (len(adds) if adds is not None else 0)
    cdef Edit *joined = <Edit *>PyMem_Malloc(n * sizeof(Edit))
    cdef int i
    if joined == NULL:
        raise MemoryError()
    n = 0
    if removes is not None:            # typed list loops: no iterator object made
        for name in removes:
            joined[n].kind = EDIT_REMOVE
            joined[n].name = span_of(PyBytes_AS_STRING(name), len(name))
            joined[n].value = span_of(NULL, 0)
            n += 1
    for i in range(edits.route_n):
        joined[n] = edits.route[i]
        n += 1
    if adds is not None:
        for name, value in adds:
            joined[n].kind = EDIT_ADD
            joined[n].name = span_of(PyBytes_AS_STRING(name), len(name))
            joined[n].value = span_of(PyBytes_AS_STRING(value), len(value))
            n += 1
    edits.route = joined
    edits.route_n = n
    return joined


cdef class FilterMessage:
    """The fields of a request or of the upstream's answer as a filter sees them, and the edits it asks for."""

    @property
    def headers(self) -> list:
        """Every field in wire order as (name, value), names as sent."""
        cdef const Field *f = <const Field *>PyBytes_AS_STRING(self.fields)
        cdef const char *base = PyBytes_AS_STRING(self.raw)
        cdef int i
        if self.headers_list is None:
            self.headers_list = [(base[f[i].name_off:f[i].name_off + f[i].name_len].decode("latin-1"),
                                  base[f[i].value_off:f[i].value_off + f[i].value_len].decode("latin-1"))
                                 for i in range(self.num_fields)]
        return self.headers_list

    def header(self, str name not None):
        """The first field called name (any case), or None."""
        cdef const Field *f = <const Field *>PyBytes_AS_STRING(self.fields)
        cdef const char *base = PyBytes_AS_STRING(self.raw)
        cdef bytes want = name.lower().encode("latin-1")
        cdef int i = find_field(base, f, self.num_fields, want, len(want), 0)
        if i < 0:
            return None
        return PyUnicode_DecodeLatin1(base + f[i].value_off, f[i].value_len, NULL)

    def set_header(self, name, value):
        """Send `name: value` on (a request upstream, an answer to the client) instead of the fields of that name."""
        cdef bytes n = _editable(name)
        cdef bytes v = _value(value)
        if self.removes is None:
            self.removes = []
        if self.adds is None:
            self.adds = []
        self.removes.append(n.lower())
        self.adds.append((n, v))

    def remove_header(self, name):
        """Send the message on without the fields called name."""
        cdef bytes n = _editable(name)
        if self.removes is None:
            self.removes = []
        self.removes.append(n.lower())


cdef class FilterRequest(FilterMessage):
    """What a filter plugin gets for one request (fastmesh.plugins.api.Request describes it)."""

    def __dealloc__(self):
        PyMem_Free(self.edits)
        PyMem_Free(self.resp_edits)

    cdef str _span(self, int i):
        if self.span_off[i] < 0:
            return self.span_text[i]
        return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(self.raw) + self.span_off[i], self.span_len[i], NULL)

    @property
    def method(self) -> str:
        return self._span(0)

    @property
    def authority(self) -> str:
        return self._span(1)

    @property
    def path(self) -> str:
        return self._span(2)

    @property
    def query(self) -> str:
        return self._span(3)

    @property
    def cluster(self) -> str:
        return self.cluster_names[self.cluster_index]

    def add_response_header(self, name, value):
        """Add `name: value` to the answer the client gets (the upstream's, or an Answer)."""
        item = (_editable(name), _value(value))
        if self.response_adds is None:
            self.response_adds = []
        self.response_adds.append(item)

    def route_to(self, str cluster not None):
        """Send the request to another cluster of the config (KeyError for an unknown name)."""
        try:
            self.cluster_index = self.cluster_names.index(cluster)
        except ValueError:
            raise KeyError(f"no cluster {cluster!r} (the clusters: {', '.join(self.cluster_names)})") from None

    @property
    def rate_limit_key(self):
        """The key this request counts under when its route has `rate_limit = { key = "filter" }` (None: the
        request is not limited). A filter sets it (a str, e.g. the tenant a token names)."""
        return None if self.rate_key is None else self.rate_key.decode("utf-8", "replace")

    @rate_limit_key.setter
    def rate_limit_key(self, value):
        if value is None:
            self.rate_key = None
        elif isinstance(value, str):
            self.rate_key = (<str>value).encode("utf-8")
        elif isinstance(value, bytes):
            self.rate_key = value
        else:
            raise TypeError(f"a rate-limit key is a str, got {type(value).__name__}")

    def _resume(self, outcome):
        """The chain's outcome after an async filter (called once, by the chain, on the loop)."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._filter_resumed(outcome)

    def __repr__(self):
        return f"<Request {self.method} {self.authority}{self.path}{self.query} from {self.peer}>"

    cdef int apply_edits(self, EditList *request, EditList *response) except -1:
        if self.removes or self.adds:
            self.edits = join_edits(request, self.removes, self.adds)
        if self.response_adds:
            self.resp_edits = join_edits(response, None, self.response_adds)
        return 0


cdef class FilterResponse(FilterMessage):
    """The upstream's answer head as a response filter sees it (fastmesh.plugins.api.Response describes it)."""

    def __dealloc__(self):
        PyMem_Free(self.kept)
        PyMem_Free(self.edits)

    def add_header(self, name, value):
        """Add `name: value` to the answer the client gets (next to the upstream's fields of that name)."""
        item = (_editable(name), _value(value))
        if self.adds is None:
            self.adds = []
        self.adds.append(item)

    def __repr__(self):
        return f"<Response {self.status} to {self.request!r}>"

    cdef int apply_edits(self, const char *base, const Field *fields, int n, EditList *response) except -1:
        cdef int i, j, k, m
        cdef bytes name
        cdef Span *gone
        cdef size_t at
        cdef bint drop
        if self.removes:
            m = len(self.removes)
            # One block: the kept fields (n), then the names to drop (m), compared in place (no text made).
            at = (n * sizeof(Field) + 15) & ~(<size_t>15)          # the names start aligned
            self.kept = <Field *>PyMem_Malloc(at + m * sizeof(Span))
            if self.kept == NULL:
                raise MemoryError()
            gone = <Span *>(<char *>self.kept + at)
            for j in range(m):
                name = self.removes[j]
                gone[j] = span_of(PyBytes_AS_STRING(name), len(name))
            k = 0
            for i in range(n):
                drop = False
                for j in range(m):
                    if fields[i].name_len == gone[j].len and fold_eq(base + fields[i].name_off, gone[j].ptr,
                                                                     gone[j].len):
                        drop = True
                        break
                if not drop:
                    self.kept[k] = fields[i]
                    k += 1
            self.kept_n = k
        if self.adds:
            self.edits = join_edits(response, None, self.adds)
        return 0


cdef FilterResponse filter_response(FilterRequest r, int status, const char *base, const Field *fields, int n):
    cdef FilterResponse resp = FilterResponse.__new__(FilterResponse)
    cdef Py_ssize_t end = 0
    cdef int i
    for i in range(n):
        end = max(end, <Py_ssize_t>fields[i].value_off + fields[i].value_len,
                  <Py_ssize_t>fields[i].name_off + fields[i].name_len)
    resp.raw = PyBytes_FromStringAndSize(base, end)
    resp.fields = PyBytes_FromStringAndSize(<const char *>fields, n * sizeof(Field))
    resp.num_fields = n
    resp.status = status
    resp.request = r
    resp.kept_n = -1
    return resp


cdef int respond(FilterRequest r, int status, const char *base, const Field *fields, int n,
                 EditList *response) noexcept:
    cdef FilterResponse resp
    try:
        resp = filter_response(r, status, base, fields, n)
        r.resp = resp
        outcome = r.responder(r, resp)
        if outcome is None:
            resp.apply_edits(base, fields, n, response)
            return PE_NONE
        if type(outcome) is int:
            return PE_PLUGIN
        r.answer = outcome
        return FILTER_ANSWERED
    except BaseException:
        return PE_PLUGIN                 # the chain guards every plugin call; this is an edit that cannot be made


cdef inline void _keep_span(FilterRequest r, int i, Span s, const char *base, Py_ssize_t head_len):
    cdef Py_ssize_t off = s.ptr - base if s.ptr != NULL else -1
    if s.len == 0:
        r.span_off[i] = 0
        r.span_len[i] = 0
    elif 0 <= off and off + s.len <= head_len:
        r.span_off[i] = off
        r.span_len[i] = s.len
    else:
        # Not in the head (an absolute-form target without a path has the path "/"): kept as text.
        if r.span_text is None:
            r.span_text = (None, None, None, None)
        r.span_off[i] = -1
        r.span_text = r.span_text[:i] + (s.ptr[:s.len].decode("latin-1"),) + r.span_text[i + 1:]


cdef FilterRequest filter_request(const RequestView *v, Py_ssize_t head_len, str listener, const char *peer,
                                  int peer_len, int route, tuple cluster_names, int cluster, str trace_id,
                                  bytes identity):
    cdef FilterRequest r = FilterRequest.__new__(FilterRequest)
    r.raw = PyBytes_FromStringAndSize(v.base, head_len)
    r.fields = PyBytes_FromStringAndSize(<const char *>v.fields, v.num_fields * sizeof(Field))
    r.num_fields = v.num_fields
    _keep_span(r, 0, v.method_token, v.base, head_len)
    _keep_span(r, 1, v.authority, v.base, head_len)
    _keep_span(r, 2, v.path, v.base, head_len)
    _keep_span(r, 3, v.query, v.base, head_len)
    r.listener = listener
    r.peer = peer[:peer_len].decode("latin-1")
    r.trace_id = trace_id
    r.identity = identity.decode("latin-1") if identity is not None else ""
    r.route = route
    r.cluster_names = cluster_names
    r.cluster_index = cluster
    return r


cdef tuple answer_parts(object answer, FilterRequest r):
    cdef int status
    status = answer.status
    if not 200 <= status <= 599:
        raise ValueError(f"an Answer's status is 200 to 599, got {status}")
    body = answer.body
    if isinstance(body, str):
        body = (<str>body).encode("utf-8")
    elif not isinstance(body, bytes):
        body = bytes(body)
    headers = answer.headers
    items = headers.items() if hasattr(headers, "items") else headers
    fields = [(_editable(name), _value(value)) for name, value in items]
    if r.response_adds:
        fields += r.response_adds
    return status, _reason(status), fields, body


cdef bytes _reason(int status):
    global _REASONS
    if _REASONS is None:
        from http import HTTPStatus
        _REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
    return _REASONS.get(status, b"Unknown")


cdef object run_chain(object chain, FilterRequest r):
    try:
        r.responder = getattr(chain, "respond", None)
        return chain(r)
    except BaseException:
        return FILTER_FAILED             # the chain guards every plugin call; this is a bug in the chain


cdef int settle(FilterRequest r, object outcome, Exchange ex, list connectors, const RequestView *v,
                const ForwardRules *rules, double now) noexcept:
    if outcome is None:
        try:
            r.apply_edits(&ex.request_edits, &ex.response_edits)
        except BaseException:
            return PE_PLUGIN
        if r.cluster_index != ex.cluster:
            ex.use_cluster(r.cluster_index, connectors, v, rules, now)
        if r.rate_key is not None and ex.router.limits is not None:
            limit = ex.router.limits[ex.route]
            if limit is not None and (<RateLimit>limit).kind == RK_FILTER:
                return ex.rate_limited(<RateLimit>limit, PyBytes_AS_STRING(r.rate_key), len(r.rate_key), v)
        return PE_NONE
    if type(outcome) is int:
        return PE_PLUGIN_TIMEOUT if <int>outcome == FILTER_TIMEOUT else PE_PLUGIN
    return FILTER_ANSWERED


# ---- Python-facing: the micro-benchmark drives what the codec does per filtered request, sans IO ----

def bench_filter(bytes raw_head not None, chain, Py_ssize_t count) -> int:
    """Parse raw_head once, then `count` times what a filtered request adds in the codec: its FilterRequest, the
    chain's call and its edits joined to an (empty) edit list. Returns how many calls let the request go on."""
    cdef Head h
    cdef RequestView v
    cdef EditList req, resp
    cdef FilterRequest r
    cdef Py_ssize_t _, passed = 0
    cdef tuple names = ("web",)
    view_parse(raw_head, &h, &v)
    for _ in range(count):
        edits_clear(&req)
        edits_clear(&resp)
        r = filter_request(&v, len(raw_head), "web", b"127.0.0.1", 9, 0, names, 0, "", None)
        if chain(r) is None:
            r.apply_edits(&req, &resp)
            passed += 1
    return passed


def bench_respond(bytes raw_request not None, bytes raw_response not None, chain, Py_ssize_t count) -> int:
    """Parse both heads once, then `count` times what a response filter adds in the codec for one answer: its
    FilterResponse, the chain's respond() call and its edits joined to an (empty) edit list. Returns how many
    answers went on (were not replaced)."""
    cdef Head h, rh
    cdef Limits lim
    cdef RequestView v
    cdef EditList resp
    cdef Py_ssize_t _, passed = 0
    cdef FilterRequest r
    view_parse(raw_request, &h, &v)
    limits_init(&lim)
    if parse_response(raw_response, len(raw_response), &rh, &lim) <= 0:
        raise ValueError("not a whole response head")
    r = filter_request(&v, len(raw_request), "web", b"127.0.0.1", 9, 0, ("web",), 0, "", None)
    r.responder = chain.respond
    if r.responder is None:
        raise ValueError("the chain has no response filter")
    for _ in range(count):
        edits_clear(&resp)
        if respond(r, rh.status, raw_response, rh.headers, rh.num_headers, &resp) == PE_NONE:
            passed += 1
    return passed
