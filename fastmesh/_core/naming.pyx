"""Per-request naming: a route's logical name -> a cluster, in C, from a compiled naming table.

The rules (prefix rewrites, the last matching rule first, wildcards) are applied once, when a table is compiled
(fastmesh/config/naming.py builds one tree per service a route names; dataplane/naming.py hands the trees here).
What is left for each request is what can change between requests, walked over the flat node array:
  - NODE_CLUSTER resolves to its cluster when the cluster has an endpoint the balancer may pick (`n_up > 0`: not
    empty, not every endpoint down, unhealthy or ejected), else to nothing;
  - NODE_ALT takes the first child that resolves (`a | b`, and the earlier rules a later one falls back to);
  - NODE_SPLIT draws a child by weight among the children that resolve (one xorshift draw; a dead branch's share
    goes to the live ones in proportion), so `0.9 * a & 0.1 * b` keeps its ratio while both live; a split with no
    live child fails when one of its children failed, else resolves to nothing;
  - NODE_NEG (`~`, an unknown name) resolves to nothing: the walk goes on to the next alternative;
  - NODE_FAIL (`!`) fails: an alternative that reaches it stops there (no later branch, no earlier rule), and the
    request gets no cluster (503 `no endpoints`), not the first cluster the name prefers.
No Python object is touched on that walk. A `fastmesh-naming` field (on listeners that trust it) is the exception:
its value is looked up in a small cache of tables compiled with it (a dict lookup; the first request with a new
value compiles it through the hook the wiring installed), and only then is the walk the same.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.time cimport time as c_time

from fastmesh._core.balance.base cimport rng_next
from fastmesh._core.cluster cimport Cluster
from fastmesh._core.stats cimport StatsBlock, bump
from fastmesh._core.request cimport RequestView, find_field, field_value, Span
from fastmesh._core.upstream.connector cimport Connector

OVERRIDE_HEADER = "fastmesh-naming"        # the per-request override field (its rules win over the table's)
cdef const char *OVERRIDE_FIELD = b"fastmesh-naming"
cdef int OVERRIDE_LEN = 15
cdef int MAX_OVERRIDES = 256               # override tables kept; past it the cache starts over
OUTCOMES = ("chosen", "fallback", "first", "none")     # NR_* in order: the labels of the resolution counters
OVERRIDE_RESULTS = ("accepted", "refused")             # NO_* in order
RESOLUTION_SLOTS = NR_FIELDS
OVERRIDE_SLOTS = NO_FIELDS


cdef inline bint _live(list connectors, const unsigned char *alive, int c) noexcept:
    cdef Cluster cluster
    if alive != NULL:
        return alive[c] != 0
    if c < 0 or c >= len(connectors):
        return False
    cluster = (<Connector>connectors[c]).cluster
    return cluster.n > 0 and cluster.balancer.n_up > 0


cdef int _walk(NameTable t, int node, list connectors, const unsigned char *alive, int *trace,
               unsigned long long *rng, bint *fell) noexcept:
    # `fell` is set when the result came through a fallback (an alternative after one that resolved to nothing).
    cdef const NameNode *n = &t.nodes[node]
    cdef int results[SPLIT_MAX]
    cdef bint kid_fell[SPLIT_MAX]
    cdef int k, got = WALK_NOTHING, drawn = -1
    cdef bint failed = False
    cdef double total = 0.0, draw
    if n.kind == NODE_CLUSTER:
        got = n.cluster if _live(connectors, alive, n.cluster) else WALK_NOTHING
    elif n.kind == NODE_FAIL:
        got = WALK_FAIL
    elif n.kind == NODE_ALT:
        for k in range(n.count):
            got = _walk(t, t.kids[n.first + k], connectors, alive, trace, rng, fell)
            if got >= 0 or got == WALK_FAIL:
                if got >= 0 and k > 0:
                    fell[0] = True
                break
    elif n.kind == NODE_SPLIT:
        for k in range(n.count):
            kid_fell[k] = False
            results[k] = _walk(t, t.kids[n.first + k], connectors, alive, trace, rng, &kid_fell[k])
            if results[k] >= 0:
                total += t.weights[n.first + k]
            elif results[k] == WALK_FAIL:
                failed = True
        if total <= 0.0 and failed:
            got = WALK_FAIL
        elif total > 0.0:
            draw = (rng_next(rng) >> 11) * (1.0 / 9007199254740992.0) * total    # uniform in [0, total)
            for k in range(n.count):
                if results[k] >= 0:
                    got = results[k]
                    drawn = k
                    draw -= t.weights[n.first + k]
                    if draw < 0.0:
                        break
            if kid_fell[drawn]:
                fell[0] = True
    if trace != NULL:
        trace[node] = got
    return got


cdef class NameTable:
    """A compiled naming table: NameTable(trees, services, source).

    `trees`: per service id, its flattened tree (config/naming.py's flatten(): (kind, cluster, child ids, weights)
    per node, node 0 the root) or None when the service has none; `services` names them; `source` is kept for
    display (the rules it was compiled from).
    """

    def __cinit__(self):
        self.nodes = NULL
        self.kids = NULL
        self.weights = NULL
        self.roots = NULL
        self.primary = NULL

    def __dealloc__(self):
        PyMem_Free(self.primary)
        PyMem_Free(self.nodes)
        PyMem_Free(self.kids)
        PyMem_Free(self.weights)
        PyMem_Free(self.roots)

    def __init__(self, trees, services, source=None):
        cdef int base, i, n_nodes = 0, n_kids = 0, at = 0
        cdef NameNode *node
        if self.nodes != NULL:
            raise RuntimeError("a NameTable is built once")
        trees = list(trees)
        self.services = tuple(services)
        self.source = source
        if len(trees) != len(self.services):
            raise ValueError(f"{len(trees)} trees for {len(self.services)} services")
        for tree in trees:
            if tree is not None:
                n_nodes += len(tree)
                n_kids += sum(len(kids) for _, _, kids, _ in tree)
        self.nodes = <NameNode *>PyMem_Calloc(max(n_nodes, 1), sizeof(NameNode))
        self.kids = <int *>PyMem_Calloc(max(n_kids, 1), sizeof(int))
        self.weights = <double *>PyMem_Calloc(max(n_kids, 1), sizeof(double))
        self.roots = <int *>PyMem_Calloc(max(len(trees), 1), sizeof(int))
        self.primary = <int *>PyMem_Calloc(max(len(trees), 1), sizeof(int))
        if self.nodes == NULL or self.kids == NULL or self.weights == NULL or self.roots == NULL \
                or self.primary == NULL:
            raise MemoryError()
        self.n_services = len(trees)
        self.sizes = tuple(len(tree) if tree else 0 for tree in trees)
        for s, tree in enumerate(trees):
            self.roots[s] = -1
            self.primary[s] = -1
            if not tree:
                continue
            base = self.n_nodes
            self.roots[s] = base
            for kind, cluster, kids, weights in tree:
                if kind not in (NODE_NEG, NODE_CLUSTER, NODE_ALT, NODE_SPLIT, NODE_FAIL):
                    raise ValueError(f"service {s}: unknown node kind {kind!r}")
                if kind == NODE_SPLIT and len(kids) > SPLIT_MAX:
                    raise ValueError(f"service {s}: a split of {len(kids)} branches (at most {SPLIT_MAX})")
                if kind == NODE_SPLIT and len(weights) != len(kids):
                    raise ValueError(f"service {s}: a split needs a weight per branch")
                node = &self.nodes[self.n_nodes]
                node.kind = kind
                node.cluster = cluster
                if kind == NODE_CLUSTER and self.primary[s] < 0:
                    self.primary[s] = cluster
                node.first = at
                node.count = len(kids)
                for i, kid in enumerate(kids):
                    if not 0 < kid < len(tree):
                        raise ValueError(f"service {s}: child {kid} is not a later node of the tree")
                    self.kids[at] = base + kid
                    self.weights[at] = float(weights[i]) if kind == NODE_SPLIT else 1.0
                    if not self.weights[at] > 0.0:
                        raise ValueError(f"service {s}: weights must be above 0")
                    at += 1
                self.n_nodes += 1

    cdef int resolve(self, int service, list connectors, const unsigned char *alive, int *trace,
                     unsigned long long *rng, int *outcome) noexcept:
        cdef int got, how
        cdef bint fell = False
        if service < 0 or service >= self.n_services or self.roots[service] < 0:
            got, how = -1, NR_NONE
        else:
            got = _walk(self, self.roots[service], connectors, alive, trace, rng, &fell)
            if got >= 0:
                how = NR_FALLBACK if fell else NR_CHOSEN
            elif got == WALK_FAIL or self.primary[service] < 0:
                got, how = -1, NR_NONE
            else:
                got, how = self.primary[service], NR_FIRST
        if outcome != NULL:
            outcome[0] = how
        return got

    # ---- Python face: tests, explain, the admin server ----

    def __len__(self):
        return self.n_nodes

    def trace(self, int service, alive, unsigned long long seed=1):
        """(the cluster resolve() gives, per node of the service's tree: the cluster it resolved to, -1 nothing, -2 not
        visited, -3 failed at a `!`), with `alive[c]` saying whether cluster c has an endpoint up."""
        cdef bytes live = bytes(1 if a else 0 for a in alive)
        cdef unsigned long long rng = seed or 1
        cdef int *out
        cdef int got, i, root, size
        if service < 0 or service >= self.n_services or self.roots[service] < 0:
            return -1, []
        root = self.roots[service]
        size = self.sizes[service]
        out = <int *>PyMem_Calloc(self.n_nodes, sizeof(int))
        if out == NULL:
            raise MemoryError()
        try:
            for i in range(self.n_nodes):
                out[i] = -2
            got = self.resolve(service, [], live, out, &rng, NULL)
            return got, [out[root + i] for i in range(size)]
        finally:
            PyMem_Free(out)

    def first_cluster(self, int service) -> int:
        """The cluster taken when no branch of the service is live (the first its tree names), or -1."""
        return self.primary[service] if 0 <= service < self.n_services else -1

    def shares(self, int service, alive, int draws=10000, unsigned long long seed=1):
        """{cluster: share of `draws` resolutions} with `alive[c]` per cluster (a split's shares, as the core draws
        them)."""
        cdef bytes live = bytes(1 if a else 0 for a in alive)
        cdef unsigned long long rng = seed or 1
        cdef int _, c
        counts = {}
        for _ in range(draws):
            c = self.resolve(service, [], live, NULL, &rng, NULL)
            counts[c] = counts.get(c, 0) + 1
        return {c: n / draws for c, n in sorted(counts.items())}

    def outcome(self, int service, alive, unsigned long long seed=1):
        """(cluster, outcome) of one resolution with `alive[c]` per cluster; outcome one of OUTCOMES."""
        cdef bytes live = bytes(1 if a else 0 for a in alive)
        cdef unsigned long long rng = seed or 1
        cdef int how = NR_NONE
        cdef int got = self.resolve(service, [], live, NULL, &rng, &how)
        return got, OUTCOMES[how]


cdef class Names:
    """Names(table=None, seed=0): the current NameTable of a process and the override cache; set_table() swaps."""

    def __cinit__(self, table=None, unsigned long long seed=0):
        self.table = table
        self.rng = seed or (<unsigned long long>c_time(NULL) * 0x9E3779B97F4A7C15ULL) | 1
        self.overrides = {}
        self.compile_override = None
        self.resolutions = NULL
        self.override_counts = NULL
        self.n_counted = 0
        self.block = None

    def attach_stats(self, StatsBlock block, Py_ssize_t offset, int services):
        """Count into `block` from `offset` on: NR_FIELDS slots per service id below `services`, then the
        NO_FIELDS override slots (dataplane/stats.py lays them out)."""
        self.resolutions = block.region(offset, services * NR_FIELDS) if services else NULL
        self.override_counts = block.region(offset + services * NR_FIELDS, NO_FIELDS)
        self.n_counted = services
        self.block = block

    def set_table(self, NameTable table, compile_override=None):
        """Use `table` from the next request on; overrides are compiled again (against this table) as they come."""
        self.table = table
        self.compile_override = compile_override
        self.overrides = {}

    @property
    def current(self):
        return self.table

    cdef int resolve(self, int service, list connectors, const RequestView *v) noexcept:
        cdef NameTable table = self.table
        cdef int i
        cdef Span value
        if v != NULL:
            i = find_field(v.base, v.fields, v.num_fields, OVERRIDE_FIELD, OVERRIDE_LEN, 0)
            if i >= 0:
                value = field_value(v.base, &v.fields[i])
                table = self._override(PyBytes_FromStringAndSize(value.ptr, value.len), table)
        cdef int got, how = NR_NONE
        if table is None:
            got = -1
        else:
            got = table.resolve(service, connectors, NULL, NULL, &self.rng, &how)
        if self.resolutions != NULL and 0 <= service < self.n_counted:
            bump(&self.resolutions[service * NR_FIELDS + how], 1)
        return got

    cdef NameTable _override(self, bytes value, NameTable base):
        """The table a fastmesh-naming value asks for (cached), or `base` when it does not compile."""
        cdef object found
        try:
            found = self.overrides.get(value, False)
            if found is False:
                found = None
                if self.compile_override is not None:
                    try:
                        found = self.compile_override(value)
                    except Exception:
                        found = None
                if len(self.overrides) >= MAX_OVERRIDES:
                    self.overrides.clear()
                self.overrides[value] = found
            if found is None:
                self.refused += 1
                if self.override_counts != NULL:
                    bump(&self.override_counts[NO_REFUSED], 1)
                return base
            self.overridden += 1
            if self.override_counts != NULL:
                bump(&self.override_counts[NO_ACCEPTED], 1)
            return <NameTable>found
        except Exception:
            return base
