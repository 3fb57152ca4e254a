# HTTP/1 message bodies on the move: the framing state of one body and the pump between two sockets.

from fastmesh._core.buffer cimport RecvBuf, OutBuf
from fastmesh._core.tls.context cimport Tls
from fastmesh._core.reactor cimport BufferPool
from fastmesh._core.http1.parser cimport Limits
from fastmesh._core.http1.framing cimport ChunkedDecoder


ctypedef struct BodyFrame:
    int kind                   # framing.BodyKind
    long long length           # BODY_LENGTH: the whole body's length (a retry starts over)
    long long remaining        # BODY_LENGTH: bytes still to pass
    bint done                  # the whole body has been framed
    bint dechunk               # pass only the chunk data (an HTTP/1.0 client cannot read chunked)
    Py_ssize_t skip            # bytes after the span being sent, dropped once it is out (dechunk, trailers)
    Py_ssize_t held            # BODY_CHUNKED: bytes of an unfinished size line, fed but not passed on yet
    ChunkedDecoder dec         # BODY_CHUNKED: validates the chunked coding and finds its end


# Start framing a body of `kind` (framing.pyx's request_body/response_body decided it) and `length`.
cdef void frame_init(BodyFrame *f, int kind, long long length, const Limits *lim) noexcept
# How many of the n bytes at p belong to the body and may be passed on; < 0: a chunked-coding error.
cdef Py_ssize_t frame_take(BodyFrame *f, char *p, Py_ssize_t n) noexcept
# After the client's FIN: whether the bytes it sent before it (buffered in b or still queued in socket fd) hold
# the rest of the request body f (`ready` of them already framed). Chunked bodies are given the benefit of the doubt,
# and so are TLS connections (tls not NULL: records OpenSSL already took are invisible to FIONREAD).
cdef bint body_in_socket(int fd, Tls *tls, RecvBuf *b, BodyFrame *f, Py_ssize_t ready) noexcept
# Pass a body from src (socket sfd, its TLS stls or NULL) to dfd (dtls): 1 done, 0 blocked, -1 source closed/failed
# early, -2 destination failed, -3 framing error, -4 framing error while no byte of the head in dpend has left
# (*fresh still true).
# The destination's queued head (dpend, may be NULL) goes first, after the body bytes already here were framed,
# with them when they are few. `pool` gives src its buffers; `request`: the client's side (its buffer is kept
# when empty); `moved` counts the bytes passed, `received` (may be NULL) the bytes read; `fresh` (may be NULL)
# is cleared once a byte of dpend left.
cdef int pump_body(RecvBuf *src, int sfd, Tls *stls, bint *s_readable, bint s_hangup, int dfd, Tls *dtls,
                   bint *d_writable, OutBuf *dpend, BodyFrame *f, Py_ssize_t *ready, BufferPool pool, bint request,
                   unsigned long long *moved, unsigned long long *received, bint *fresh) noexcept
