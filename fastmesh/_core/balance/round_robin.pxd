# Smooth weighted round robin (nginx's idea): declarations, so other modules can cimport the class.
from fastmesh._core.balance.base cimport Balancer


cdef class RoundRobinBalancer(Balancer):
    cdef long long *current       # running score per endpoint; kept (frozen) while the endpoint is down
    cdef int next_pos             # equal-weights path: position in up_list of the next endpoint to hand out
