"""Smooth weighted round robin: exact weight proportions, interleaved; a rotating index when weights are equal.

Each pick adds every candidate's weight to its score, takes the highest score and charges it the
candidates' summed weight (nginx's smooth WRR). Scores always sum to zero over all endpoints, so a
down endpoint simply keeps its score and resumes where it was when it comes back.

With equal weights (the common case) the pick is a rotating index, O(1). The weighted pick scans the
up endpoints, O(n): under 1 ns per endpoint here, so ~1 us at 1,000 weighted endpoints and nothing
at the tens a cluster usually has. An earliest-deadline heap would be O(log n) but hands out a
different, lumpier order (5,1,1 gives a a a a then the light ones), which is what smooth WRR avoids.

Slow start: the base scales `weights` while an endpoint ramps (recomputed on the owner's clock, a few
dozen times per window). Each change zeroes the scores, so the new proportions hold from the next pick
instead of after the old scores, which were earned under other weights, have worked themselves out.
"""
from libc.limits cimport LLONG_MIN
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from fastmesh._core.balance.base cimport Balancer, grow_array


cdef class RoundRobinBalancer(Balancer):
    """Smooth weighted round robin."""

    def __cinit__(self, *args, **kwargs):
        # Balancer.__cinit__ has already validated the weights and set self.n.
        self.current = <long long *>calloc(self.n + 1, sizeof(long long))
        if self.current == NULL:
            raise MemoryError()
        self.next_pos = 0

    def __dealloc__(self):
        free(self.current)

    cdef int pick(self, int avoid) noexcept:
        cdef int n_up = self.n_up
        cdef int pos, i, k, best, skip
        cdef long long total, score, best_score
        cdef long long *current
        cdef int *weights
        cdef int *up_list
        if n_up == 0:
            return -1
        if self.uniform:
            pos = self.next_pos
            if pos >= n_up:
                pos = 0
            i = self.up_list[pos]
            pos += 1
            if i == avoid and n_up > 1:
                if pos >= n_up:
                    pos = 0
                i = self.up_list[pos]
                pos += 1
            self.next_pos = pos
            return i
        # Weighted: avoid sits this round out, so its score does not move (the zero sum still holds).
        # The scan runs in two spans around avoid's position so the loop body has no avoid test.
        skip = self.up_pos[avoid] if 0 <= avoid < self.n else -1
        total = self.total_up
        if skip < 0:
            skip = n_up
        else:
            total -= self.weights[avoid]
        # Locals, not self.x: a store through current[] could alias self's fields as far as the C
        # compiler knows (-fno-strict-aliasing), which would reload every pointer on every step.
        current = self.current
        weights = self.weights
        up_list = self.up_list
        best = -1
        best_score = LLONG_MIN
        for k in range(skip):
            i = up_list[k]
            score = current[i] + weights[i]
            current[i] = score
            if score > best_score:
                best = i
                best_score = score
        for k in range(skip + 1, n_up):
            i = up_list[k]
            score = current[i] + weights[i]
            current[i] = score
            if score > best_score:
                best = i
                best_score = score
        if best < 0:
            # avoid is the only endpoint up.
            return avoid
        current[best] = best_score - total
        return best

    cdef int resized(self, int old_n) except -1:
        self.current = <long long *>grow_array(self.current, old_n, self.n, sizeof(long long))
        return 0

    cdef void weights_changed(self) noexcept:
        memset(self.current, 0, self.n * sizeof(long long))
        self.next_pos = 0
