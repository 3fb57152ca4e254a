# Ring hash (Karger / ketama consistent hashing with virtual nodes): declarations.
from fastmesh._core.balance.base cimport Balancer


cdef struct RingPoint:
    unsigned long long hash       # position on the ring
    int owner                     # index of the endpoint the point belongs to


cdef class RingHashBalancer(Balancer):
    cdef unsigned long long *ids  # per endpoint: the stable 64-bit identity its ring points are derived from
    cdef RingPoint *ring          # the points, ascending by hash (position and owner side by side: one cache line)
    cdef int ring_len             # number of points
    cdef int *bucket_start        # 2**bucket_bits + 1 entries: index of the first point in each top-bits bucket
    cdef int bucket_shift         # 64 - bucket_bits: h >> bucket_shift is the bucket of hash h
    cdef int vnodes               # ring points per unit of weight (before max_ring binds)
    cdef long long max_ring       # most points the ring may hold

    # Place the points of every endpoint not gone, sort them and index the buckets (construction, updates).
    cdef int build_ring(self) except -1

    # Slow path of pick_hash: from ring position p on, the first eligible endpoint for hashed key h.
    cdef int walk(self, int p, unsigned long long h, int avoid) noexcept
    # Fill bucket_start from the sorted ring.
    cdef int build_buckets(self) except -1
