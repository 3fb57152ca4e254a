"""HTTP/1 message bodies on the move: framing (Content-Length, chunked, until close) and the pump that passes a
body from one socket to the other as it arrives, with backpressure.

The framing decisions themselves (which kind, which length, every anti-smuggling rule) are framing.pyx's; this
module counts bytes against them while they move. A body moves only while the destination takes it, and
reading stops while framed bytes wait, so a connection holds at most one receive buffer per side. An
unfinished chunk-size line is never passed on (BodyFrame.held), and trailer fields the parser knows by name
are removed in place (framing.trailers_strip), so no malformed or smuggling tail leaves.
"""
from fastmesh._core.buffer cimport (
    RecvBuf, OutBuf, rb_read, rb_release_if_empty, ob_add, ob_flush, ob_pending, io_send,
)
from fastmesh._core.includes.system cimport errno, EAGAIN
from fastmesh._core.tls.context cimport Tls, tls_drained
from fastmesh._core.reactor cimport BufferPool
from fastmesh._core.stats cimport bump_field
from fastmesh._core.http1.parser cimport Head, Limits
from fastmesh._core.http1.framing cimport (
    chunked_init, chunked_feed, trailers_strip, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE, CHUNK_DONE,
    CHUNK_SIZE_LF,
)

cdef Py_ssize_t COALESCE_MAX = 16384   # body bytes copied behind a head so both leave in one send

cdef extern from "<sys/ioctl.h>" nogil:
    enum:
        FIONREAD
    int ioctl(int fd, unsigned long request, ...)

# The trailer section of the chunked body that just ended: parsed and stripped within one frame_take().
cdef Head TRAILERS


cdef void frame_init(BodyFrame *f, int kind, long long length, const Limits *lim) noexcept:
    f.kind = kind
    f.length = length if length > 0 else 0
    f.remaining = f.length
    f.done = kind == BODY_NONE or (kind == BODY_LENGTH and length <= 0)
    f.dechunk = False
    f.skip = 0
    f.held = 0
    if kind == BODY_CHUNKED:
        chunked_init(&f.dec, lim, &TRAILERS)


cdef Py_ssize_t frame_take(BodyFrame *f, char *p, Py_ssize_t n) noexcept:
    """How many of the n bytes at p belong to the body and may be passed on; < 0: a chunked-coding error.

    Chunked: an unfinished size line is held back (f.held: fed to the decoder, left at p for the next call)
    until it proves valid, so a size that overflows or a bad byte never leaves half-sent. Trailer fields the
    parser knows by name are removed in place; f.skip then counts the bytes to drop after the span."""
    cdef Py_ssize_t used, total = 0, off, dlen, kept
    if f.done or n <= 0:
        return 0
    if f.kind == BODY_LENGTH:
        used = n if n < f.remaining else <Py_ssize_t>f.remaining
        f.remaining -= used
        if f.remaining == 0:
            f.done = True
        return used
    if f.kind == BODY_CHUNKED:
        total = f.held
        while total < n:
            used = chunked_feed(&f.dec, p + total, n - total, &off, &dlen)
            if used < 0:
                return used
            if used == 0:
                break
            if f.dec.state == CHUNK_DONE:
                f.done = True
                f.held = 0
                if f.dec.trailers_len > 2:
                    kept = trailers_strip(p + total + f.dec.trailers_off, f.dec.trailers_len, &TRAILERS,
                                          f.dec.trailers_off)
                    f.skip = f.dec.trailers_len - kept
                return total + used - f.skip
            total += used
        # States up to CHUNK_SIZE_LF are the size line; line_len is 0 at its start.
        f.held = f.dec.line_len if f.dec.state <= CHUNK_SIZE_LF else 0
        return total - f.held
    return n   # BODY_UNTIL_CLOSE: everything until the upstream closes


cdef bint body_in_socket(int fd, Tls *tls, RecvBuf *b, BodyFrame *f, Py_ssize_t ready) noexcept:
    cdef int queued = 0
    if f.kind != BODY_LENGTH or tls != NULL:
        return True
    if ioctl(fd, FIONREAD, &queued) < 0:
        return False
    return queued + (b.end - b.start) >= f.remaining + ready


cdef int pump_body(RecvBuf *src, int sfd, Tls *stls, bint *s_readable, bint s_hangup, int dfd, Tls *dtls,
                   bint *d_writable, OutBuf *dpend, BodyFrame *f, Py_ssize_t *ready, BufferPool pool, bint request,
                   unsigned long long *moved, unsigned long long *received, bint *fresh) noexcept:
    cdef Py_ssize_t n, avail, room, off, dlen
    cdef int r
    while True:
        if dpend != NULL and ob_pending(dpend):
            if not d_writable[0]:
                return 0
            # A head and the body bytes that came with it leave in one send (one segment): sent apart,
            # the client waits for a second packet. Only small bodies are copied; big ones stream.
            if ready[0] == 0 and not f.dechunk and not f.done and src.data != NULL:
                avail = src.end - src.start
                if avail > 0:
                    n = frame_take(f, src.data + src.start, avail)
                    if n < 0:
                        return -4 if fresh != NULL and fresh[0] else -3
                    ready[0] = n
            if 0 < ready[0] <= COALESCE_MAX and not f.dechunk:
                ob_add(dpend, src.data + src.start, ready[0])
                src.start += ready[0] + f.skip
                f.skip = 0
                moved[0] += ready[0]
                ready[0] = 0
            avail = ob_pending(dpend)
            r = ob_flush(dpend, dfd, dtls)
            if fresh != NULL and (r != 0 or ob_pending(dpend) != avail):
                fresh[0] = False
            if r < 0:
                return -2
            if r == 0:
                d_writable[0] = False
                return 0
        if ready[0] > 0:
            if not d_writable[0]:
                return 0
            n = io_send(dfd, dtls, src.data + src.start, ready[0])
            if n > 0:
                src.start += n
                ready[0] -= n
                moved[0] += n
                if ready[0] > 0:
                    d_writable[0] = False
                else:
                    src.start += f.skip
                    f.skip = 0
                continue
            if n < 0 and errno == EAGAIN:
                d_writable[0] = False
                return 0
            return -2
        if f.done:
            return 1
        avail = src.end - src.start if src.data != NULL else 0
        if avail > 0 and f.dechunk:
            n = chunked_feed(&f.dec, src.data + src.start, avail, &off, &dlen)
            if n < 0:
                return -3
            if f.dec.state == CHUNK_DONE:
                f.done = True
            if n > 0:
                # Drop the framing around the data span; send the span alone.
                src.start += off
                ready[0] = dlen
                f.skip = n - off - dlen
                if dlen == 0:
                    src.start += f.skip
                    f.skip = 0
                continue
        elif avail > 0:
            n = frame_take(f, src.data + src.start, avail)
            if n < 0:
                return -3
            if n > 0:
                ready[0] = n
                continue
            if f.done:
                return 1
        if not s_readable[0]:
            if not request:
                rb_release_if_empty(src, pool)
            return 0
        room = pool.size - src.end if src.data != NULL else pool.size
        n = rb_read(src, sfd, pool, stls)
        if n > 0:
            if received != NULL:
                bump_field(received, <unsigned long long>n)
            if n < room and not s_hangup and tls_drained(stls):
                s_readable[0] = False
            continue
        if n == 0:
            if f.kind == BODY_UNTIL_CLOSE:
                f.done = True
                return 1
            return -1
        if n == -2:
            return -3
        if errno == EAGAIN:
            s_readable[0] = False
            if not request:
                rb_release_if_empty(src, pool)
            return 0
        return -1
