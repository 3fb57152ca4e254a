# Least request by power of two choices: declarations, so other modules can cimport the class.
from fastmesh._core.balance.base cimport Balancer


cdef class LeastRequestBalancer(Balancer):
    pass
