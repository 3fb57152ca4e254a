# Maglev consistent hashing (Google's lookup table, weighted): declarations.
from fastmesh._core.balance.base cimport Balancer


cdef class MaglevBalancer(Balancer):
    cdef unsigned long long *ids  # per endpoint: the stable 64-bit identity its table preferences derive from
    cdef int *table               # table_size slots, each holding the endpoint that owns it (-1 only if n == 0)
    cdef unsigned int table_size  # number of slots, a prime

    # Slow path of pick_hash: probe slots after `slot` for the first eligible endpoint for hashed key h.
    cdef int walk(self, unsigned int slot, unsigned long long h, int avoid) noexcept
    # Fill the table from the ids and configured weights of the endpoints not gone (construction, updates).
    cdef int populate(self) except -1
