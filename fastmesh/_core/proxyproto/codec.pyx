"""The PROXY protocol, versions 1 and 2 (haproxy.org's proxy-protocol.txt), read and written without I/O.

A listener behind another proxy or load balancer gets the client's real address from the header that proxy sends
first on the connection; a cluster may ask for the same header from us. pp_parse() looks at the bytes a
connection has sent so far and says: not complete yet, refused (and why), or complete (its length and the
addresses). Nothing is trusted: v1 is matched byte by byte (addresses through inet_pton, ports as at most five
digits up to 65535) within its 107 bytes; v2's lengths are checked against its family, its TLVs are walked (each
must fit, none is interpreted) and a header over PP_V2_MAX bytes is refused rather than waited for. A bare
"PROXY " prefix that stops is only incomplete; a byte that cannot start a header is refused at once, so a client
speaking HTTP (or TLS) straight to a listener that expects the header is turned away without a wait.

pp_encode() writes what HAProxy's send-proxy / send-proxy-v2 write: v1 "TCP4"/"TCP6" (an IPv4 address beside an
IPv6 one is written IPv4-mapped), "UNKNOWN" without usable addresses; v2 PROXY over TCP, or LOCAL without
addresses, and no TLVs.
"""
from libc.stdlib cimport realloc
from libc.string cimport memcmp, memcpy, memset

import time

from fastmesh._core.includes.system cimport (
    sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t, getsockname, inet_pton, inet_ntop, htons,
    AF_INET, AF_INET6,
)

cdef const unsigned char *V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
cdef const char *V1_PREFIX = b"PROXY "


cdef inline unsigned int u16(const unsigned char *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline int v1_port(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """A decimal port of 1-5 digits up to 65535 (no sign, no spaces): its value, or -1."""
    cdef int v = 0
    cdef Py_ssize_t i
    if n < 1 or n > 5:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v if v <= 65535 else -1


cdef inline int v4_addr(const unsigned char *p, Py_ssize_t n, unsigned char *out) noexcept nogil:
    """Dotted-quad IPv4 text (four decimal parts of 1-3 digits up to 255, no leading zero) into 4 bytes: 0 or -1."""
    cdef Py_ssize_t i = 0, start
    cdef int part, v
    for part in range(4):
        start = i
        v = 0
        while i < n and 48 <= p[i] <= 57 and i - start < 3:
            v = v * 10 + (p[i] - 48)
            i += 1
        if i == start or v > 255 or (p[start] == 48 and i - start > 1):
            return -1
        out[part] = <unsigned char>v
        if part < 3:
            if i >= n or p[i] != 46:
                return -1
            i += 1
    return 0 if i == n else -1


cdef inline int v1_addr(const unsigned char *p, Py_ssize_t n, int family, sockaddr_in6 *out) noexcept nogil:
    """An address of `family` as text in p[0:n] into *out (port left 0): 0, or -1 when it is not one."""
    cdef char text[48]
    if n < 2 or n > 45:
        return -1
    memset(out, 0, sizeof(sockaddr_in6))
    if family == AF_INET:
        (<sockaddr_in *>out).sin_family = AF_INET
        return v4_addr(p, n, <unsigned char *>&(<sockaddr_in *>out).sin_addr)
    memcpy(text, p, n)
    text[n] = 0
    out.sin6_family = AF_INET6
    return 0 if inet_pton(AF_INET6, text, &out.sin6_addr) == 1 else -1


cdef int parse_v1(const unsigned char *p, Py_ssize_t n, ProxyHeader *out, int *reason) noexcept nogil:
    # "PROXY " has matched. The line ends at the first CR, which must come with its LF within PP_V1_MAX bytes.
    cdef Py_ssize_t end = -1, i, pos, fields[4], flen[4]
    cdef int family, k, port
    for i in range(6, min(n, <Py_ssize_t>PP_V1_MAX)):
        if p[i] == 13:            # CR
            end = i
            break
        if p[i] == 10 or p[i] == 0:
            reason[0] = PR_MALFORMED
            return PP_BAD
    if end < 0:
        if n >= PP_V1_MAX:
            reason[0] = PR_TOO_LONG
            return PP_BAD
        return PP_MORE
    if end + 1 >= n:
        return PP_MORE
    if p[end + 1] != 10:
        reason[0] = PR_MALFORMED
        return PP_BAD
    out.version = 1
    if end - 6 >= 7 and memcmp(p + 6, b"UNKNOWN", 7) == 0 and (end == 13 or p[13] == 32):
        out.local = True          # whatever follows UNKNOWN is ignored (the spec says so)
        return <int>(end + 2)
    if end - 6 < 5 or p[6] != 84 or p[7] != 67 or p[8] != 80 or p[10] != 32:     # "TCP?" SP
        reason[0] = PR_MALFORMED
        return PP_BAD
    if p[9] == 52:
        family = AF_INET
    elif p[9] == 54:
        family = AF_INET6
    else:
        reason[0] = PR_MALFORMED
        return PP_BAD
    # Four fields separated by single spaces: src dst sport dport.
    pos = 11
    for k in range(4):
        fields[k] = pos
        while pos < end and p[pos] != 32:
            pos += 1
        flen[k] = pos - fields[k]
        if flen[k] == 0 or (k < 3 and pos >= end):
            reason[0] = PR_MALFORMED
            return PP_BAD
        pos += 1
    if pos - 1 != end:
        reason[0] = PR_MALFORMED
        return PP_BAD
    if v1_addr(p + fields[0], flen[0], family, &out.src) < 0 or v1_addr(p + fields[1], flen[1], family, &out.dst) < 0:
        reason[0] = PR_MALFORMED
        return PP_BAD
    port = v1_port(p + fields[2], flen[2])
    k = v1_port(p + fields[3], flen[3])
    if port < 0 or k < 0:
        reason[0] = PR_MALFORMED
        return PP_BAD
    out.src.sin6_port = htons(<unsigned short>port)       # sin_port sits at the same offset
    out.dst.sin6_port = htons(<unsigned short>k)
    out.local = False
    return <int>(end + 2)


cdef int parse_v2(const unsigned char *p, Py_ssize_t n, ProxyHeader *out, int *reason) noexcept nogil:
    # The 12-byte signature has matched; 16 bytes are there.
    cdef int cmd = p[12] & 0x0F, fam = p[13]
    cdef Py_ssize_t length = u16(p + 14), total = 16 + length, pos, addr_len
    if p[12] >> 4 != 2 or cmd > 1:
        reason[0] = PR_MALFORMED
        return PP_BAD
    if total > PP_V2_MAX:
        reason[0] = PR_TOO_LONG
        return PP_BAD
    if n < total:
        return PP_MORE
    out.version = 2
    out.local = True
    if fam == 0x11:               # TCP over IPv4
        addr_len = 12
    elif fam == 0x21:             # TCP over IPv6
        addr_len = 36
    elif fam >> 4 == 3:           # AF_UNIX: 2 x 108 bytes of paths
        addr_len = 216
    elif fam >> 4 > 3 or (fam & 0x0F) > 2:
        reason[0] = PR_MALFORMED
        return PP_BAD
    else:
        addr_len = 0              # AF_UNSPEC, or UDP: no address block we use
        if fam == 0x12 or fam == 0x22:
            addr_len = 12 if fam == 0x12 else 36
    if length < addr_len:
        reason[0] = PR_MALFORMED
        return PP_BAD
    # TLVs: type, 16-bit length, value; each must fit in what the header's length left them.
    pos = 16 + addr_len
    while pos < total:
        if total - pos < 3 or total - pos - 3 < u16(p + pos + 1):
            reason[0] = PR_MALFORMED
            return PP_BAD
        pos += 3 + u16(p + pos + 1)
    if cmd == 1 and fam == 0x11:
        memset(&out.src, 0, sizeof(sockaddr_in6))
        memset(&out.dst, 0, sizeof(sockaddr_in6))
        (<sockaddr_in *>&out.src).sin_family = AF_INET
        (<sockaddr_in *>&out.dst).sin_family = AF_INET
        memcpy(&(<sockaddr_in *>&out.src).sin_addr, p + 16, 4)
        memcpy(&(<sockaddr_in *>&out.dst).sin_addr, p + 20, 4)
        memcpy(&(<sockaddr_in *>&out.src).sin_port, p + 24, 2)     # both in network order already
        memcpy(&(<sockaddr_in *>&out.dst).sin_port, p + 26, 2)
        out.local = False
    elif cmd == 1 and fam == 0x21:
        memset(&out.src, 0, sizeof(sockaddr_in6))
        memset(&out.dst, 0, sizeof(sockaddr_in6))
        out.src.sin6_family = AF_INET6
        out.dst.sin6_family = AF_INET6
        memcpy(&out.src.sin6_addr, p + 16, 16)
        memcpy(&out.dst.sin6_addr, p + 32, 16)
        memcpy(&out.src.sin6_port, p + 48, 2)
        memcpy(&out.dst.sin6_port, p + 50, 2)
        out.local = False
    return <int>total


cdef int pp_parse(const unsigned char *p, Py_ssize_t n, int accept, ProxyHeader *out, int *reason) noexcept nogil:
    cdef Py_ssize_t m
    reason[0] = PR_NONE
    if n <= 0:
        return PP_MORE
    if p[0] == 80:                # 'P': v1, or nothing
        m = min(n, <Py_ssize_t>6)
        if memcmp(p, V1_PREFIX, m) != 0:
            reason[0] = PR_NOT_PROXY
            return PP_BAD
        if not accept & PP_V1:
            reason[0] = PR_VERSION
            return PP_BAD
        if n < 6:
            return PP_MORE
        return parse_v1(p, n, out, reason)
    if p[0] == 13:                # CR: v2's signature, or nothing
        m = min(n, <Py_ssize_t>12)
        if memcmp(p, V2_SIG, m) != 0:
            reason[0] = PR_NOT_PROXY
            return PP_BAD
        if not accept & PP_V2:
            reason[0] = PR_VERSION
            return PP_BAD
        if n < 16:
            return PP_MORE
        return parse_v2(p, n, out, reason)
    reason[0] = PR_NOT_PROXY
    return PP_BAD


cdef inline void mapped(const sockaddr_in *a, sockaddr_in6 *out) noexcept nogil:
    """An IPv4 address as IPv4-mapped IPv6 (::ffff:a.b.c.d), port kept."""
    memset(out, 0, sizeof(sockaddr_in6))
    out.sin6_family = AF_INET6
    out.sin6_port = a.sin_port
    out.sin6_addr.s6_addr[10] = 0xFF
    out.sin6_addr.s6_addr[11] = 0xFF
    memcpy(&out.sin6_addr.s6_addr[12], &a.sin_addr, 4)


cdef inline int put_v4(char *o, const void *addr) noexcept nogil:
    """IPv4 as dotted-quad text into o (at most 15 bytes): its length (glibc's inet_ntop goes through sprintf)."""
    cdef const unsigned char *b = <const unsigned char *>addr
    cdef int n = 0, i, v
    for i in range(4):
        v = b[i]
        if v >= 100:
            o[n] = <char>(48 + v // 100)
            n += 1
        if v >= 10:
            o[n] = <char>(48 + v // 10 % 10)
            n += 1
        o[n] = <char>(48 + v % 10)
        n += 1
        if i < 3:
            o[n] = 46
            n += 1
    return n


cdef inline int put_port(char *o, unsigned short port_be) noexcept nogil:
    cdef unsigned int v = ((port_be & 0xFF) << 8) | (port_be >> 8)
    cdef char digits[5]
    cdef int n = 0, i
    while True:
        digits[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        o[i] = digits[n - 1 - i]
    return n


cdef int pp_encode(int version, const void *src, const void *dst, char *out) noexcept nogil:
    cdef sockaddr_in6 s6, d6
    cdef const sockaddr_in6 *s = <const sockaddr_in6 *>src
    cdef const sockaddr_in6 *d = <const sockaddr_in6 *>dst
    cdef int fam = 0, n
    cdef unsigned char *u = <unsigned char *>out
    cdef char text[48]
    if s != NULL and d != NULL and (s.sin6_family == AF_INET or s.sin6_family == AF_INET6) and (
            d.sin6_family == AF_INET or d.sin6_family == AF_INET6):
        if s.sin6_family == d.sin6_family:
            fam = s.sin6_family
        else:                     # one of each: both as IPv6 (HAProxy does the same)
            if s.sin6_family == AF_INET:
                mapped(<const sockaddr_in *>s, &s6)
                s = &s6
            else:
                mapped(<const sockaddr_in *>d, &d6)
                d = &d6
            fam = AF_INET6
    if version == 1:
        if fam == 0:
            memcpy(out, b"PROXY UNKNOWN\r\n", 15)
            return 15
        memcpy(out, b"PROXY TCP4 " if fam == AF_INET else b"PROXY TCP6 ", 11)
        n = 11
        if fam == AF_INET:
            n += put_v4(out + n, &(<const sockaddr_in *>s).sin_addr)
        else:
            inet_ntop(AF_INET6, &s.sin6_addr, text, sizeof(text))
            n += copy_text(out + n, text)
        out[n] = 32
        n += 1
        if fam == AF_INET:
            n += put_v4(out + n, &(<const sockaddr_in *>d).sin_addr)
        else:
            inet_ntop(AF_INET6, &d.sin6_addr, text, sizeof(text))
            n += copy_text(out + n, text)
        out[n] = 32
        n += 1
        n += put_port(out + n, s.sin6_port)     # sin_port and sin6_port share their offset
        out[n] = 32
        n += 1
        n += put_port(out + n, d.sin6_port)
        out[n] = 13
        out[n + 1] = 10
        return n + 2
    memcpy(out, V2_SIG, 12)
    if fam == 0:
        u[12] = 0x20              # version 2, LOCAL
        u[13] = 0x00
        u[14] = 0
        u[15] = 0
        return 16
    u[12] = 0x21                  # version 2, PROXY
    if fam == AF_INET:
        u[13] = 0x11
        u[14] = 0
        u[15] = 12
        memcpy(out + 16, &(<const sockaddr_in *>s).sin_addr, 4)
        memcpy(out + 20, &(<const sockaddr_in *>d).sin_addr, 4)
        memcpy(out + 24, &s.sin6_port, 2)
        memcpy(out + 26, &d.sin6_port, 2)
        return 28
    u[13] = 0x21
    u[14] = 0
    u[15] = 36
    memcpy(out + 16, &s.sin6_addr, 16)
    memcpy(out + 32, &d.sin6_addr, 16)
    memcpy(out + 48, &s.sin6_port, 2)
    memcpy(out + 50, &d.sin6_port, 2)
    return 52


# Destinations named by PROXY headers, by client fd (family 0: none). A side table rather than one more argument
# through every protocol's accept: only connections that came through a gate with a header fill it, it grows to the
# highest such fd (28 bytes a slot), and each accept clears its fd's slot, so a reused fd never inherits one.
cdef sockaddr_in6 *DST = NULL
cdef int DST_N = 0


cdef void pp_dst_keep(int fd, const sockaddr_in6 *dst) noexcept nogil:
    global DST, DST_N
    cdef int n
    cdef sockaddr_in6 *grown
    if fd < 0:
        return
    if dst == NULL or dst.sin6_family == 0:
        pp_dst_forget(fd)
        return
    if fd >= DST_N:
        n = DST_N * 2 if DST_N else 256
        while n <= fd:
            n *= 2
        grown = <sockaddr_in6 *>realloc(DST, n * sizeof(sockaddr_in6))
        if grown == NULL:
            return                           # no memory: the socket's own address stands in
        memset(grown + DST_N, 0, (n - DST_N) * sizeof(sockaddr_in6))
        DST = grown
        DST_N = n
    memcpy(&DST[fd], dst, sizeof(sockaddr_in6))


cdef void pp_dst_forget(int fd) noexcept nogil:
    if 0 <= fd < DST_N:
        DST[fd].sin6_family = 0


cdef void pp_addrs(int fd, const void *peer, ProxyAddrs *out) noexcept nogil:
    cdef sockaddr_storage local
    cdef socklen_t n = sizeof(local)
    memset(out, 0, sizeof(ProxyAddrs))
    if peer != NULL:
        memcpy(&out.src, peer, sizeof(sockaddr_in6))
    if 0 <= fd < DST_N and DST[fd].sin6_family != 0:
        # The connection came through a PROXY header: the address its client connected to is the header's
        # destination (the proxy in front's listener), not ours.
        memcpy(&out.dst, &DST[fd], sizeof(sockaddr_in6))
    elif getsockname(fd, <sockaddr *>&local, &n) == 0:
        memcpy(&out.dst, &local, sizeof(sockaddr_in6))


cdef inline int copy_text(char *o, const char *t) noexcept nogil:
    cdef int i = 0
    while t[i] != 0:
        o[i] = t[i]
        i += 1
    return i


# ---- Python API (tests, fuzzing, benchmarks) -------------------------------------------------------------

V1 = PP_V1                         # the accept masks a listener's gate takes (either version: V1 | V2)
V2 = PP_V2
REFUSALS = ("none", "not_proxy", "version", "malformed", "too_long", "timeout", "closed")


class ProxyHeaderError(ValueError):
    """A header refused by pp_parse(); `reason` is one of REFUSALS."""

    def __init__(self, reason):
        super().__init__(f"PROXY protocol header refused: {reason}")
        self.reason = reason


cdef object addr_tuple(const sockaddr_in6 *a):
    cdef char text[48]
    cdef unsigned short port
    if a.sin6_family == AF_INET:
        inet_ntop(AF_INET, &(<const sockaddr_in *>a).sin_addr, text, sizeof(text))
    else:
        inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof(text))
    port = ((a.sin6_port & 0xFF) << 8) | (a.sin6_port >> 8)
    return (text.decode("ascii"), port)


def parse(const unsigned char[:] data, int accept=PP_V1 | PP_V2):
    """Parse the header at the start of data: None while incomplete, else (length, version, src, dst) with src and
    dst (host, port) pairs, or None each for a header without addresses. Raises ProxyHeaderError when refused."""
    cdef ProxyHeader h
    cdef int reason = 0, r
    cdef Py_ssize_t n = data.shape[0]
    memset(&h, 0, sizeof(h))
    r = pp_parse(&data[0] if n else NULL, n, accept, &h, &reason)
    if r == PP_MORE:
        return None
    if r == PP_BAD:
        raise ProxyHeaderError(REFUSALS[reason])
    if h.local:
        return (r, h.version, None, None)
    return (r, h.version, addr_tuple(&h.src), addr_tuple(&h.dst))


cdef int fill(object pair, sockaddr_in6 *out) except -1:
    memset(out, 0, sizeof(sockaddr_in6))
    host = pair[0].encode("ascii")
    if inet_pton(AF_INET, host, &(<sockaddr_in *>out).sin_addr) == 1:
        (<sockaddr_in *>out).sin_family = AF_INET
    elif inet_pton(AF_INET6, host, &out.sin6_addr) == 1:
        out.sin6_family = AF_INET6
    else:
        raise ValueError(f"not an IP address: {pair[0]!r}")
    out.sin6_port = htons(<unsigned short>pair[1])
    return 0


def encode(int version, src=None, dst=None):
    """The header of version 1 or 2 for a connection from src to dst ((host, port) pairs; None: unknown)."""
    cdef sockaddr_in6 s, d
    cdef char out[PP_OUT_MAX]
    cdef int n
    if version not in (1, 2):
        raise ValueError("version must be 1 or 2")
    if src is None or dst is None:
        n = pp_encode(version, NULL, NULL, out)
    else:
        fill(src, &s)
        fill(dst, &d)
        n = pp_encode(version, &s, &d, out)
    return out[:n]


def bench_parse(const unsigned char[:] data, long count):
    """Seconds per pp_parse() of data, over `count` rounds in C (bench/micro/test_proxyproto.py)."""
    cdef ProxyHeader h
    cdef int reason = 0, r = 0
    cdef long _
    cdef Py_ssize_t n = data.shape[0]
    start = time.perf_counter()
    for _ in range(count):
        r += pp_parse(&data[0], n, PP_V1 | PP_V2, &h, &reason)
    took = time.perf_counter() - start
    if r <= 0:
        raise ProxyHeaderError(REFUSALS[reason])
    return took / count


def bench_encode(int version, src, dst, long count):
    """Seconds per pp_encode() of version for (host, port) src and dst, over `count` rounds in C."""
    cdef sockaddr_in6 s, d
    cdef char out[PP_OUT_MAX]
    cdef long _
    cdef int n = 0
    fill(src, &s)
    fill(dst, &d)
    start = time.perf_counter()
    for _ in range(count):
        n += pp_encode(version, &s, &d, out)
    return (time.perf_counter() - start) / count
