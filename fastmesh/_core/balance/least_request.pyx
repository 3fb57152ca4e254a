"""Least request by power of two choices: draw two distinct up endpoints by weight, keep the lighter per weight.

Two random candidates instead of a full scan keep the pick O(log n) (O(1) with equal weights) and
spread a burst of picks made before any count changes, where "always the least loaded" would send
the whole burst to one endpoint. Loads are compared as active[a]/weight[a] against
active[b]/weight[b] by cross-multiplying, so no division; equal loads are settled by a coin flip.
With no requests in flight every pair ties, so the split follows the weighted draw of the pair
(flatter than the weights); under load the active/weight comparison pulls it to the weights.

Slow start: the base scales `weights` while an endpoint ramps, which lowers both its chance to be drawn
and its capacity in the active/weight comparison.
"""
from fastmesh._core.balance.base cimport Balancer, rng_next, up_draw


cdef class LeastRequestBalancer(Balancer):
    """Power of two choices over active requests per unit of weight."""

    cdef int pick(self, int avoid) noexcept:
        cdef int n_up = self.n_up
        cdef int a, b, coin, take_a
        cdef long long load_a, load_b
        if n_up <= 1:
            # -1 when nothing is up; the single up endpoint otherwise, even if it is `avoid`.
            return self.up_list[0] if n_up == 1 else -1
        if n_up == 2 and 0 <= avoid < self.n and self.up[avoid]:
            # Only one candidate besides avoid: no choice to make.
            return self.up_list[1] if self.up_list[0] == avoid else self.up_list[0]
        a = up_draw(self, avoid, -1)
        b = up_draw(self, avoid, a)
        load_a = <long long>self.active[a] * self.weights[b]
        load_b = <long long>self.active[b] * self.weights[a]
        # Which one wins is random by design, so decide it without a branch: a if it is lighter,
        # b if it is lighter, else the coin (the top bit: xorshift64*'s low bits are its weakest).
        coin = <int>(rng_next(&self.rng) >> 63)
        take_a = (load_a < load_b) | ((load_a == load_b) & coin)
        return a if take_a else b
