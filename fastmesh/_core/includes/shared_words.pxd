# Blocks of 64-bit words the supervisor shares with its workers (stats, limits, rate limits): mapping one from a
# memfd and giving one back, written once for all of them.

from libc.stdint cimport uint64_t
from cpython.mem cimport PyMem_Free
from fastmesh._core.includes.system cimport errno, mmap, munmap, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE


# Map `length` bytes of fd, shared; OSError naming `what` when mmap fails.
cdef inline uint64_t *map_words(int fd, size_t length, bint writable, str what) except NULL:
    cdef void *p = mmap(NULL, length, PROT_READ | (PROT_WRITE if writable else 0), MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise OSError(errno, f"mmap of {what} failed")
    return <uint64_t *>p


# Give a block back: unmapped when it was mapped (length > 0), else freed (a private block from PyMem).
cdef inline void free_words(uint64_t *base, size_t length) noexcept:
    if base != NULL:
        if length:
            munmap(base, length)
        else:
            PyMem_Free(base)
