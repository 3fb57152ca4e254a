# TLS contexts (a listener's certificates, SNI, ALPN, verification; a cluster's origination settings) and the
# per-connection operations every codec calls: handshake, recv, send, close. All C; no Python per byte.

from libc.stdint cimport uint64_t
from fastmesh._core.tls.openssl cimport SSL, SSL_CTX, SSL_SESSION
from fastmesh._core.tls.names cimport ServerNames
from fastmesh._core.tls.identity cimport Identities


# Why a handshake failed: the TF_* index of its counter (FAIL_REASONS in context.pyx names them, in this order).
cdef enum TlsFail:
    TF_NONE = 0                # no failure
    TF_VERSION = 1             # no protocol version in common (an old client: TLS 1.0 offered, or SSLv3)
    TF_CIPHER = 2              # no cipher, group or signature algorithm in common
    TF_NO_CLIENT_CERT = 3      # a client certificate is required and none was sent
    TF_BAD_CERT = 4            # the peer's certificate failed verification (untrusted CA, expired, wrong name)
    TF_UNKNOWN_SNI = 5         # strict_sni: the server name the client asked for has no certificate here
    TF_NOT_TLS = 6             # the bytes were not a TLS handshake (plain HTTP, garbage before the ClientHello)
    TF_PEER_REFUSED = 7        # the peer sent a fatal alert (it refused our certificate, say)
    TF_TIMEOUT = 8             # handshake_timeout ran out before the handshake finished
    TF_CLOSED = 9              # the peer closed or reset the connection during the handshake
    TF_DENIED = 10             # the handshake succeeded but the peer's identity is not allowed here
    TF_OTHER = 11              # anything else OpenSSL refused
    TF_COUNT = 12              # reasons, TF_NONE included

# Tls.state
cdef enum:
    TLS_OFF = 0                # cleartext: ssl is NULL
    TLS_HANDSHAKE = 1          # handshake under way
    TLS_OPEN = 2               # handshake done: records flow
    TLS_FAILED = 3             # the handshake or a record failed: only closing is left


ctypedef struct Tls:
    # One side of a connection: its SSL object and what the last I/O call waits for. Embedded in the connection
    # object (zeroed: cleartext), so a cleartext connection costs one NULL test per read or write.
    SSL *ssl                   # NULL: the side is cleartext
    unsigned char state        # TLS_OFF, TLS_HANDSHAKE, TLS_OPEN, TLS_FAILED
    unsigned char read_wants_out   # the last SSL_read needs the socket writable: retry reads on EPOLLOUT too
    unsigned char write_wants_in   # the last SSL_write needs the socket readable: retry writes on EPOLLIN too
    # more: the last tls_recv returned data but stopped before WANT_READ, as a close_notify, EOF or error
    # already sits in OpenSSL's buffer behind it (no edge will announce it: read on, see tls_drained)
    unsigned char more
    unsigned char fail         # a TlsFail once something failed
    unsigned char sni_unknown  # the SNI callback refused the client's server name
    unsigned char denied       # the verify callback refused the client's identity (allow_identities)
    int endpoint               # client side: the endpoint index (its session is kept for the next connection)
    void *owner                # the TlsServer or TlsClient this side belongs to (borrowed; it outlives us)


cdef struct TicketKey:
    # One rotation period's session-ticket key, derived from the instance's secret (the same in every worker).
    unsigned char name[16]     # sent in the ticket: which key encrypted it
    unsigned char hmac[32]     # the ticket's HMAC-SHA256 key
    unsigned char aes[32]      # the ticket's AES-256-CBC key


cdef class TlsServer:
    # A listener's TLS: one SSL_CTX per certificate (the first is the default), chosen by the client's SNI.
    # adopt() swaps in a rebuilt one's contexts in place: the object (and so every Tls.owner) stays the same.
    cdef SSL_CTX **ctxs                # one per certificate
    cdef int nctx
    cdef ServerNames names             # server name -> certificate (from their DNS SANs, or configured)
    cdef bytes alpn                    # protocols we speak, ALPN wire format (length-prefixed), our preference first
    cdef readonly bint strict_sni      # refuse a server name no certificate has (else: the default certificate)
    cdef readonly double handshake_timeout   # seconds a client has to finish its handshake
    cdef readonly bint verify_clients  # client certificates are checked against client_ca
    cdef readonly list certificates    # per certificate: {"cert", "names", "uris", "not_after"} (Unix time)
    cdef readonly str spec             # a digest of the settings and file contents: a reload rebuilds when it changes
    cdef readonly list files           # the files it read (certificates, keys, client_ca): what a watch looks at
    cdef readonly Identities identities   # allow_identities (None: any certificate client_ca verifies)
    cdef readonly double ticket_rotation  # seconds a ticket key encrypts new tickets (then decrypts one period more)
    cdef TicketKey keys[3]             # the previous, current and next period's ticket keys
    cdef long key_epoch                # the period `keys` were derived for (-1: derive at the next ticket)
    cdef tuple args                    # what it was built from, so rebuild() can read the files again
    cdef dict kwargs
    cdef double log_after[12]          # (TF_COUNT) per reason: monotonic time before which failures are not logged
    cdef unsigned long long log_held[12]  # (TF_COUNT entries) failures not logged since the last line

    cdef void failed(self, Tls *t, uint64_t *counters, str listener, int fd, double now) noexcept


cdef class TlsClient:
    # A cluster's TLS origination: trust, the name checked, an optional client certificate, ALPN, and the last
    # session per endpoint for resumption. adopt() swaps in a rebuilt one's context in place, like TlsServer's.
    cdef SSL_CTX *ctx
    cdef bytes server_name             # SNI and the name verified; empty: verify the endpoint's IP address
    cdef readonly bint verify          # check the endpoint's certificate (false only when configured so)
    cdef SSL_SESSION **sessions        # per endpoint, the newest resumable session (or NULL)
    cdef int nsessions
    cdef readonly unsigned long long handshakes   # upstream handshakes finished (this context's, for proxy.stats())
    cdef readonly unsigned long long resumed      # ...of which resumed a session
    cdef readonly unsigned long long failures     # upstream handshakes that failed
    cdef double log_after              # monotonic time before which failures are counted, not logged
    cdef readonly list certificates    # the client certificate, if any: {"cert", "names", "uris", "not_after"}
    cdef readonly str spec             # a digest of the settings and file contents
    cdef readonly list files           # the files it read (ca, cert, key): what a watch looks at
    cdef tuple args                    # what it was built from, so rebuild() can read the files again
    cdef dict kwargs

    # A handshake with an endpoint finished: counted here and in the cluster's C_FIELDS slots (`counters`).
    cdef void finished(self, Tls *t, uint64_t *counters) noexcept
    # One failed: counted the same way, and logged at most once a second.
    cdef void failed(self, Tls *t, uint64_t *counters, str cluster, str endpoint, double now) noexcept


cdef int tls_accept(Tls *t, TlsServer srv, int fd) noexcept
cdef int tls_connect(Tls *t, TlsClient cli, int fd, int endpoint, const char *ip) noexcept
cdef int tls_handshake(Tls *t) noexcept
cdef Py_ssize_t tls_recv(Tls *t, char *buf, Py_ssize_t n) noexcept


cdef inline bint tls_drained(Tls *t) noexcept nogil:
    """After a short read: is the side's socket known empty (wait for its next edge)? Always for cleartext
    (t NULL or no SSL); over TLS not when the last tls_recv stopped at a buffered close or error."""
    return t == NULL or not t.more


cdef Py_ssize_t tls_send(Tls *t, const char *buf, Py_ssize_t n) noexcept
cdef void tls_close_notify(Tls *t) noexcept
cdef void tls_free(Tls *t) noexcept
cdef Tls *tls_alloc() noexcept
cdef void tls_release(Tls **t) noexcept
cdef void tls_move(Tls *dst, Tls *src) noexcept
cdef bint tls_resumed(Tls *t) noexcept
cdef int tls_alpn(Tls *t, const unsigned char **proto) noexcept
cdef Py_ssize_t tls_peer_uri(Tls *t, char *out, Py_ssize_t cap) noexcept
