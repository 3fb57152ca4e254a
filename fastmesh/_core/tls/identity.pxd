# Peer identities (SPIFFE URI SANs) against an allow list: exact entries and "prefix/*" path wildcards. Built once
# per listener (or route) from its config; a check is a walk over a few byte strings, with no Python call.

cdef struct IdentityPattern:
    char *text                 # the identity, or a wildcard's prefix up to and including its "/" (malloc'ed)
    Py_ssize_t len             # its length
    bint wildcard              # "spiffe://td/ns/x/*": any identity longer than the prefix that starts with it


cdef class Identities:
    # An allow list, searched in order. Use it from any codec: `allows(ptr, len)` on the verified peer identity
    # (context.pxd's tls_peer_uri fills a buffer with it); an empty identity (no certificate, no URI SAN) is never
    # allowed. Matching is byte-exact (SPIFFE IDs are case-sensitive in their path).
    cdef IdentityPattern *patterns
    cdef int n

    cdef bint allows(self, const char *identity, Py_ssize_t n) noexcept
