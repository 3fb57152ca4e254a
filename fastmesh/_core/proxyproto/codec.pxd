# The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: bytes in, a verdict and the addresses out; and out.

from fastmesh._core.includes.system cimport sockaddr_in6

cdef enum:
    PP_V1 = 1                  # accept-mask bit: the text header ("PROXY TCP4 ...\r\n")
    PP_V2 = 2                  # accept-mask bit: the binary header (12-byte signature)
    PP_MORE = 0                # pp_parse: the header is not complete yet; look again when more bytes arrive
    PP_BAD = -1                # pp_parse: not a header this listener accepts (*reason says why)
    PP_V1_MAX = 107            # a v1 header's most bytes, CRLF included (the spec's bound)
    PP_V2_MAX = 2064           # a v2 header's most bytes we wait for: 16 + addresses + TLVs up to 2 KiB
    PP_OUT_MAX = 108           # room pp_encode needs (v1 TCP6 at its longest; v2 is at most 52)

# Why a header was refused (also the gate's per-reason counts; the gate adds timeout and closed).
cdef enum:                     # ProxyRefusal
    PR_NONE = 0
    PR_NOT_PROXY = 1           # the first bytes are neither "PROXY " nor the v2 signature (no header at all)
    PR_VERSION = 2             # a version the listener does not accept (proxy_protocol = "v1" or "v2")
    PR_MALFORMED = 3           # a header that breaks the spec (syntax, address, port, command, lengths, TLVs)
    PR_TOO_LONG = 4            # longer than PP_V1_MAX (v1) or PP_V2_MAX (v2)
    PR_TIMEOUT = 5             # the gate: no complete header within proxy_protocol_timeout
    PR_CLOSED = 6              # the gate: the client closed (or reset) before its header was complete
    PR_COUNT = 7               # reasons, PR_NONE included

ctypedef struct ProxyHeader:
    # What a complete header said.
    int version                # 1 or 2
    # local: no addresses to use (v1 UNKNOWN, v2 LOCAL, or a v2 family other than TCP over IPv4/IPv6): the
    # connection's own addresses stand
    bint local
    sockaddr_in6 src           # the client's address (a sockaddr_in in the same bytes for IPv4), unless local
    sockaddr_in6 dst           # the address the client connected to, unless local

ctypedef struct ProxyAddrs:
    # A client connection's two ends, kept to write the header a cluster asks for when its connection opens.
    sockaddr_in6 src           # the client (a sockaddr_in in the same bytes for IPv4; family 0: unknown)
    sockaddr_in6 dst           # the address it connected to (family 0: unknown)

# Parse a header at the start of p[0:n], accepting the versions in `accept` (PP_V1 | PP_V2). Returns the bytes the
# header takes (> 0) with *out filled, PP_MORE, or PP_BAD with *reason set.
cdef int pp_parse(const unsigned char *p, Py_ssize_t n, int accept, ProxyHeader *out, int *reason) noexcept nogil

# Write the header of `version` (1 or 2) for a connection from src to dst (struct sockaddr of AF_INET or AF_INET6;
# NULL or another family: "UNKNOWN" / v2 LOCAL) into out (PP_OUT_MAX bytes). Returns its length.
cdef int pp_encode(int version, const void *src, const void *dst, char *out) noexcept nogil

# The ends of client socket fd into *out: src copied from `peer` (its accept address, or the PROXY header's),
# dst the PROXY header's destination when the connection came with one (pp_dst_keep), else asked of the socket
# (getsockname).
cdef void pp_addrs(int fd, const void *peer, ProxyAddrs *out) noexcept nogil
# The destination (a sockaddr_in6, or a sockaddr_in in its bytes) the PROXY header of the connection on fd named,
# kept for pp_addrs while fd is that connection. NULL: the header named none (LOCAL, UNKNOWN): forget any.
cdef void pp_dst_keep(int fd, const sockaddr_in6 *dst) noexcept nogil
# fd is a new connection (every accept calls it): a destination kept for an earlier connection on fd is forgotten.
cdef void pp_dst_forget(int fd) noexcept nogil
