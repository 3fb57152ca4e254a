# Naming: a route's logical name resolved to a cluster per request, from a compiled naming table (the tree
# fastmesh/config/naming.py builds: alternatives, weighted splits, clusters). Liveness and weighted draws are decided
# here, in C, per request; the rules themselves were applied when the table was compiled.

from libc.stdint cimport uint64_t

from fastmesh._core.request cimport RequestView

cdef enum NodeKind:
    NODE_NEG = 0                  # resolves to nothing
    NODE_CLUSTER = 1              # a concrete cluster: itself when it has an endpoint up, else nothing
    NODE_ALT = 2                  # the first child that resolves (fallback: `a | b`, earlier rules)
    NODE_SPLIT = 3                # a child drawn by weight among those that resolve (`0.9 * a & 0.1 * b`)
    NODE_FAIL = 4                 # fails: `!` (an alternative stops there, no earlier rule is tried)

cdef enum:
    WALK_NOTHING = -1             # a walk's result: resolves to nothing (fallback continues)
    WALK_FAIL = -3                # a walk's result: failed (`!`): fallback stops, the request gets no cluster

ctypedef struct NameNode:
    int kind                      # NodeKind
    int cluster                   # NODE_CLUSTER: index into the cluster list the table was compiled with
    int first                     # children: NameTable.kids[first:first + count] (node ids)
    int count                     # number of children

cdef enum:
    SPLIT_MAX = 32                # children of one split (config/naming.py's MAX_SPLIT)

# Counters (a stats block's naming region, dataplane/stats.py): per service NR_FIELDS slots, then NO_FIELDS.
cdef enum:
    NR_CHOSEN = 0                 # resolved to a live cluster with no fallback taken
    NR_FALLBACK = 1               # resolved to a live cluster after a `|` branch or a later rule resolved to nothing
    NR_FIRST = 2                  # nothing live: sent to the first cluster the name prefers
    NR_NONE = 3                   # no cluster: the walk reached a `!`, or the name names no cluster
    NR_FIELDS = 4                 # slots per service
    NO_ACCEPTED = 0               # requests resolved with a fastmesh-naming override's table
    NO_REFUSED = 1                # requests whose fastmesh-naming value did not compile (the table was used)
    NO_FIELDS = 2

cdef class NameTable:
    cdef NameNode *nodes          # every service's tree, concatenated
    cdef int n_nodes              # entries in nodes
    cdef int *kids                # child node ids, sliced by the nodes
    cdef double *weights          # weight per entry of kids (splits; 1.0 elsewhere)
    cdef int *roots               # per service id: its tree's root node, -1 when the service has none
    cdef int n_services           # entries in roots
    cdef int *primary             # per service id: the first cluster its tree names (taken when none is live), or -1
    cdef readonly tuple sizes     # per service id: the number of nodes of its tree
    cdef readonly tuple services  # service name per id, as compiled
    cdef readonly object source   # what the table was compiled from (the rules' text), for /naming and explain

    # The cluster index the service resolves to now: the live one the tree picks, else the first cluster it names
    # (that cluster's own fail-open and errors then apply), -1 when it names none or the walk reached a `!`.
    # `connectors` (the listener's, by cluster index) say which clusters have an endpoint up, unless `alive` (one
    # byte per cluster) is given; `trace` (n_nodes ints) receives each visited node's result when not NULL; `rng` is
    # the xorshift state splits draw from.
    # `outcome` (when not NULL) receives an NR_* value: how the name resolved.
    cdef int resolve(self, int service, list connectors, const unsigned char *alive, int *trace,
                     unsigned long long *rng, int *outcome) noexcept

cdef class Names:
    # The naming of one process, shared by every http listener's router: the current table (swapped whole when the
    # table changes, so a request sees one table or the other) and per-request overrides (fastmesh-naming).
    cdef NameTable table          # the table in use; None: no naming (service routes resolve to nothing)
    cdef unsigned long long rng   # xorshift64* state for the splits' draws
    cdef dict overrides           # override field value (bytes) -> NameTable compiled with it, or None if refused
    cdef public object compile_override   # (value: bytes) -> NameTable: installed by the wiring (dataplane/naming.py)
    cdef readonly unsigned long long overridden   # requests resolved with an override table
    cdef readonly unsigned long long refused      # override values that did not compile (the base table was used)
    cdef uint64_t *resolutions    # per service id < n_counted: NR_FIELDS counters in a stats block; NULL: not counted
    cdef uint64_t *override_counts    # NO_FIELDS counters in that block (NULL with resolutions)
    cdef int n_counted            # services the block has slots for
    cdef object block             # the StatsBlock the pointers point into (kept alive with them)

    # The cluster index for route service `service`, or -1. `v`: the request, read for a fastmesh-naming override
    # (NULL on listeners that do not trust it).
    cdef int resolve(self, int service, list connectors, const RequestView *v) noexcept
    # The table an override field's value asks for (compiled once, then cached), or `base` when it does not compile.
    cdef NameTable _override(self, bytes value, NameTable base)
