# The per-listener HttpProxy: builds and drives the downstream HTTP/1 connections of conn.pxd.

from fastmesh._core.http1.conn cimport Front


cdef class HttpProxy(Front):
    # Front's fields are all it holds; this class adds the Python API (build, stats, reload, drain, close).
    pass
