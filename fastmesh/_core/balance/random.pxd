# Weighted random: declarations, so other modules can cimport the class.
from fastmesh._core.balance.base cimport Balancer


cdef class RandomBalancer(Balancer):
    pass
