# Reading the server name (SNI) out of a TLS ClientHello without decrypting anything: bytes in, a verdict out.

cdef enum:
    HELLO_FOUND = 1            # a complete ClientHello with a server name: *off and *n locate it in the bytes
    HELLO_NO_NAME = 0          # a complete ClientHello without a server name
    HELLO_MORE = -1            # the ClientHello is not complete yet: peek again when more bytes arrive
    HELLO_BAD = -2             # not a TLS ClientHello (or one larger than MAX_HELLO)
    MAX_HELLO = 16384          # bytes of handshake message we wait for at most

# The host_name of a ClientHello at the start of p[0:n] (TLS records as the client sent them, possibly several).
# scratch: MAX_HELLO bytes the handshake message is gathered in when it spans records; *off is then into scratch
# (*in_scratch set), else into p.
cdef int hello_server_name(const unsigned char *p, Py_ssize_t n, unsigned char *scratch, Py_ssize_t *off,
                           Py_ssize_t *length, bint *in_scratch) noexcept
