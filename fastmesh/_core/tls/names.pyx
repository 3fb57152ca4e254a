"""Server names to indexes for SNI: which certificate a TLS listener presents, which cluster a passthrough
listener picks. Exact names win over wildcards; "*.example.com" matches "a.example.com" but neither
"example.com" nor "a.b.example.com" (RFC 6125's one-label rule); case and a final dot are ignored."""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memcmp

cdef extern from "<ctype.h>" nogil:
    int tolower(int c)


def normalize(str name):
    """The form a configured or certificate name is kept in (lower case, no final dot, IDNA for non-ASCII)."""
    name = name.strip().rstrip(".").lower()
    wild = name.startswith("*.")
    base = name[2:] if wild else name
    if not base.isascii():
        base = base.encode("idna").decode("ascii")
    return ("*." if wild else "") + base


cdef class ServerNames:
    """`ServerNames([(name, index), ...])`; the first entry for a name wins."""

    def __cinit__(self, pairs=()):
        cdef bytes raw
        items = []
        seen = set()
        for name, index in pairs:
            key = normalize(name)
            if key not in seen:
                seen.add(key)
                items.append((key, int(index)))
        items.sort(key=lambda item: item[0].startswith("*."))      # stable: exact names first, order kept
        self.n = 0
        self.entries = <NameEntry *>malloc(sizeof(NameEntry) * (len(items) or 1))
        if self.entries == NULL:
            raise MemoryError()
        for key, index in items:
            wild = key.startswith("*.")
            raw = (key[2:] if wild else key).encode("ascii")
            self.entries[self.n].name = <char *>malloc(len(raw) + 1)
            if self.entries[self.n].name == NULL:
                raise MemoryError()
            memcpy(self.entries[self.n].name, <char *>raw, len(raw) + 1)
            self.entries[self.n].len = len(raw)
            self.entries[self.n].wildcard = wild
            self.entries[self.n].index = index
            self.n += 1

    def __dealloc__(self):
        cdef int i
        if self.entries != NULL:
            for i in range(self.n):
                free(self.entries[i].name)
            free(self.entries)
            self.entries = NULL

    def lookup(self, str name):
        """The index `name` maps to, or -1."""
        raw = name.encode("idna" if not name.isascii() else "ascii")
        return self.find(raw, len(raw))

    cdef int find(self, const char *name, Py_ssize_t n) noexcept:
        cdef char low[256]
        cdef Py_ssize_t k, dot = -1
        cdef int i
        cdef NameEntry *e
        if n > 0 and name[n - 1] == b'.':
            n -= 1
        if n <= 0 or n >= 256:
            return -1
        for k in range(n):
            low[k] = <char>tolower(name[k])
            if dot < 0 and low[k] == b'.':
                dot = k
        for i in range(self.n):
            e = &self.entries[i]
            if not e.wildcard:
                if e.len == n and memcmp(e.name, low, n) == 0:
                    return e.index
            elif dot > 0 and e.len == n - dot - 1 and memcmp(e.name, low + dot + 1, e.len) == 0:
                return e.index
        return -1
