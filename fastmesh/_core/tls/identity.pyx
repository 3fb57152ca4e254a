"""Peer identities against an allow list (a listener's `allow_identities`): "spiffe://td/ns/x/sa/y" allows that
identity only, "spiffe://td/ns/x/*" every identity below that path (one or more segments), nothing else.

The TLS verify callback (context.pyx) asks it about the client certificate's URI SAN while the handshake is
still under way, so a denied client gets a refused handshake; HTTP listeners can keep one per route and ask it
about the identity of the connection (tls_peer_uri) per request, at the cost of a few memcmp calls."""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memcmp


cdef class Identities:
    """`Identities(["spiffe://td/ns/web/sa/api", "spiffe://td/ns/batch/*"])`: entries as the config loader
    checked them (config/sections/tls.py); a final "/*" makes an entry a wildcard, any other byte is literal."""

    def __cinit__(self, patterns=()):
        cdef bytes raw
        cdef IdentityPattern *p
        items = list(patterns)
        self.n = 0
        self.patterns = <IdentityPattern *>malloc(sizeof(IdentityPattern) * (len(items) or 1))
        if self.patterns == NULL:
            raise MemoryError()
        for pattern in items:
            wildcard = pattern.endswith("/*")
            raw = (pattern[:-1] if wildcard else pattern).encode("ascii")
            p = &self.patterns[self.n]
            p.text = <char *>malloc(len(raw) or 1)
            if p.text == NULL:
                raise MemoryError()
            memcpy(p.text, <char *>raw, len(raw))
            p.len = len(raw)
            p.wildcard = wildcard
            self.n += 1

    def __dealloc__(self):
        cdef int i
        if self.patterns != NULL:
            for i in range(self.n):
                free(self.patterns[i].text)
            free(self.patterns)
            self.patterns = NULL

    cdef bint allows(self, const char *identity, Py_ssize_t n) noexcept:
        cdef int i
        cdef IdentityPattern *p
        if n <= 0:
            return False
        for i in range(self.n):
            p = &self.patterns[i]
            if p.wildcard:
                if n > p.len and memcmp(identity, p.text, p.len) == 0:
                    return True
            elif n == p.len and memcmp(identity, p.text, n) == 0:
                return True
        return False

    def matches(self, str identity):
        """True when `identity` is allowed (what allows() answers, for Python callers and tests)."""
        cdef bytes raw = identity.encode("utf-8", "surrogateescape")
        return self.allows(raw, len(raw))

    def __len__(self):
        return self.n

    @property
    def patterns_text(self):
        """The allow list as configured."""
        return [(self.patterns[i].text[:self.patterns[i].len]).decode("ascii") + ("*" if self.patterns[i].wildcard
                                                                                  else "") for i in range(self.n)]
