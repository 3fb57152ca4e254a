"""Weighted random: each pick draws an up endpoint with probability weight / summed weight of the candidates.

The draw is a binary search over the cumulative weights the base rebuilds on up/down events
(O(log n)), or a single bounded draw when all weights are equal. No per-pick state is kept, so
concurrent callers and flapping endpoints cannot skew it.

Slow start: the base scales `weights` (and so the cumulative weights) while an endpoint ramps,
recomputed on the owner's clock a few dozen times per window; the draw itself is unchanged.
"""
from fastmesh._core.balance.base cimport Balancer, up_draw


cdef class RandomBalancer(Balancer):
    """Weighted random choice among up endpoints."""

    cdef int pick(self, int avoid) noexcept:
        if self.n_up <= 1:
            # -1 when nothing is up; the single up endpoint otherwise, even if it is `avoid`.
            return self.up_list[0] if self.n_up == 1 else -1
        return up_draw(self, avoid, -1)
