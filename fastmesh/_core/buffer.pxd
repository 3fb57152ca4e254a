# Byte buffers of the HTTP path: a receive buffer (pooled, zero-copy slices by offset) and an output queue.

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove
from fastmesh._core.includes.system cimport recv, send, errno, EAGAIN, MSG_NOSIGNAL, MSG_DONTWAIT
from fastmesh._core.reactor cimport BufferPool
from fastmesh._core.tls.context cimport Tls, tls_recv, tls_send, tls_drained


ctypedef struct RecvBuf:
    char *data                 # a BufferPool buffer, NULL while nothing is buffered
    Py_ssize_t start           # first byte not yet consumed
    Py_ssize_t end             # one past the last byte received


ctypedef struct OutBuf:
    char *data                 # bytes we produced (heads, error answers) the socket has not taken yet
    Py_ssize_t off             # first unsent byte
    Py_ssize_t len             # one past the last byte
    Py_ssize_t cap             # allocated size


cdef inline Py_ssize_t rb_avail(RecvBuf *b) noexcept nogil:
    return b.end - b.start


# The connection's transport: the socket itself when tls is NULL (cleartext: one predictable branch), else its
# TLS records (tls/context.pyx keeps recv's and send's contracts: EAGAIN, 0 at EOF, a short read drains).
cdef inline Py_ssize_t io_recv(int fd, Tls *tls, char *buf, Py_ssize_t n) noexcept:
    if tls == NULL:
        return recv(fd, buf, n, MSG_DONTWAIT)
    return tls_recv(tls, buf, n)


cdef inline Py_ssize_t io_send(int fd, Tls *tls, const char *buf, Py_ssize_t n) noexcept:
    if tls == NULL:
        return send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
    return tls_send(tls, buf, n)


# Read what the socket has into b (taking a pool buffer if none is held; compacting first when the free
# tail is gone). Returns bytes read, 0 at EOF, -1 with errno set (EAGAIN: nothing to read), or -2 when the
# buffer is full (the caller's message does not fit).
cdef inline Py_ssize_t rb_read(RecvBuf *b, int fd, BufferPool pool, Tls *tls) noexcept:
    cdef Py_ssize_t n
    if b.data == NULL:
        b.data = pool.take()
        if b.data == NULL:
            return -2
        b.start = 0
        b.end = 0
    if b.start == b.end:
        b.start = 0
        b.end = 0
    elif b.end == pool.size and b.start > 0:
        memmove(b.data, b.data + b.start, b.end - b.start)
        b.end -= b.start
        b.start = 0
    if b.end == pool.size:
        return -2
    n = io_recv(fd, tls, b.data + b.end, pool.size - b.end)
    if n > 0:
        b.end += n
    return n


# rb_read on an edge-triggered socket: *readable is cleared once the socket is known to be empty (a short read
# while no hang-up was seen and OpenSSL holds no close behind it, or EAGAIN), so the caller waits for the next
# edge. Returns as rb_read does.
cdef inline Py_ssize_t rb_read_edge(RecvBuf *b, int fd, BufferPool pool, bint *readable, bint hangup,
                                    Tls *tls) noexcept:
    cdef Py_ssize_t room = pool.size - b.end if b.data != NULL else pool.size
    cdef Py_ssize_t n = rb_read(b, fd, pool, tls)
    if n > 0:
        if n < room and not hangup and tls_drained(tls):
            readable[0] = False
    elif n == -1 and errno == EAGAIN:
        readable[0] = False
    return n


# Give the buffer back when it holds nothing (idle connections hold no buffer).
cdef inline void rb_release_if_empty(RecvBuf *b, BufferPool pool) noexcept:
    if b.data != NULL and b.start == b.end:
        pool.give(b.data)
        b.data = NULL
        b.start = 0
        b.end = 0


cdef inline void rb_free(RecvBuf *b, BufferPool pool) noexcept:
    if b.data != NULL:
        pool.give(b.data)
        b.data = NULL
    b.start = 0
    b.end = 0


cdef inline int ob_reserve(OutBuf *o, Py_ssize_t more) noexcept:
    cdef Py_ssize_t need = o.len + more
    cdef Py_ssize_t cap
    cdef char *p
    if need <= o.cap:
        return 0
    if o.off > 0:
        memmove(o.data, o.data + o.off, o.len - o.off)
        o.len -= o.off
        o.off = 0
        need = o.len + more
        if need <= o.cap:
            return 0
    cap = o.cap * 2 if o.cap else 2048
    while cap < need:
        cap *= 2
    p = <char *>realloc(o.data, cap)
    if p == NULL:
        return -1
    o.data = p
    o.cap = cap
    return 0


cdef inline int ob_add(OutBuf *o, const char *s, Py_ssize_t n) noexcept:
    if n <= 0:
        return 0
    if ob_reserve(o, n) < 0:
        return -1
    memcpy(o.data + o.len, s, n)
    o.len += n
    return 0


cdef inline Py_ssize_t ob_pending(OutBuf *o) noexcept nogil:
    return o.len - o.off


# Send what is queued. Returns 1 when all was sent, 0 when the socket is full (wait for EPOLLOUT), -1 on error.
cdef inline int ob_flush(OutBuf *o, int fd, Tls *tls) noexcept:
    cdef Py_ssize_t n
    while o.off < o.len:
        n = io_send(fd, tls, o.data + o.off, o.len - o.off)
        if n > 0:
            o.off += n
            continue
        if n < 0 and errno == EAGAIN:
            return 0
        return -1
    o.off = 0
    o.len = 0
    return 1


# Send what o holds while fd may take it: 1 all sent, 0 the socket is (or just became) full (*writable cleared:
# wait for EPOLLOUT), -1 on error.
cdef inline int ob_send(OutBuf *o, int fd, bint *writable, Tls *tls) noexcept:
    cdef int r
    if o.off >= o.len:
        return 1
    if not writable[0]:
        return 0
    r = ob_flush(o, fd, tls)
    if r == 0:
        writable[0] = False
    return r


cdef inline void ob_free(OutBuf *o) noexcept:
    if o.data != NULL:
        free(o.data)
    o.data = NULL
    o.off = 0
    o.len = 0
    o.cap = 0
