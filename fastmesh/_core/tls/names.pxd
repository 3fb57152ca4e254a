# Server names to indexes, as SNI matching needs them: exact names first, then "*.suffix" wildcards (one label).

cdef struct NameEntry:
    char *name                 # lower-case server name without its "*." (malloc'ed)
    Py_ssize_t len             # its length
    bint wildcard              # "*.suffix": matches exactly one label before the suffix
    int index                  # what the name maps to (a certificate, a route)


cdef class ServerNames:
    # A small table, searched in order (exact entries sort first): a few dozen names cost less than hashing.
    cdef NameEntry *entries
    cdef int n

    cdef int find(self, const char *name, Py_ssize_t n) noexcept
