"""Lifetime counters for debug builds: how many connection objects of each kind are alive right now.

In a release build the calls sites compile to nothing (they test the compile-time constant FASTMESH_DEBUG);
here the counters exist either way, so live_objects() can always be asked and is all zeros in a release build.
"""

cdef long long live[3]            # per kind (DBG_KINDS of debug.pxd)


cdef void debug_new(int kind) noexcept:
    live[kind] += 1


cdef void debug_free(int kind) noexcept:
    live[kind] -= 1


def live_objects():
    """{kind: objects alive} for the connection objects of the data path."""
    return {"tcp_relay": live[DBG_RELAY], "http_downstream": live[DBG_DOWNSTREAM], "http_upstream": live[DBG_UPSTREAM]}
