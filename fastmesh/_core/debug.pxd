# Lifetime counters of the data path's per-connection objects, kept only in debug builds (FASTMESH_DEBUG=1):
# tests assert that none is left alive once a proxy has stopped (uvloop's UVLOOP_DEBUG idea).

cdef enum:
    DBG_RELAY = 0              # TcpRelay: one proxied TCP connection
    DBG_DOWNSTREAM = 1         # Downstream: one HTTP client connection
    DBG_UPSTREAM = 2           # Upstream: one HTTP connection to an endpoint
    DBG_KINDS = 3              # number of kinds

cdef void debug_new(int kind) noexcept
cdef void debug_free(int kind) noexcept
