"""The SNI of a TLS ClientHello, read without decrypting (RFC 8446 4.1.2 and RFC 6066 3), for passthrough
listeners that route by server name and then relay the encrypted bytes untouched.

The parser never trusts a length: every field is checked against what is there, and a message that claims more
than MAX_HELLO bytes is refused rather than waited for. A ClientHello split over several records (large key
shares do that) is gathered first.
"""
from libc.string cimport memcpy


cdef inline unsigned int u16(const unsigned char *p) noexcept:
    return (p[0] << 8) | p[1]


cdef inline unsigned int u24(const unsigned char *p) noexcept:
    return (p[0] << 16) | (p[1] << 8) | p[2]


cdef int hello_server_name(const unsigned char *p, Py_ssize_t n, unsigned char *scratch, Py_ssize_t *off,
                           Py_ssize_t *length, bint *in_scratch) noexcept:
    cdef Py_ssize_t pos = 0, got = 0, rec, need = -1, i, end, ext_end, list_end, name_len
    cdef const unsigned char *m
    cdef unsigned int ext_type, ext_len
    # 1. The handshake message: from one record (no copy) or gathered from several.
    in_scratch[0] = False
    while True:
        if n - pos < 5:
            return HELLO_MORE
        if p[pos] != 0x16 or p[pos + 1] != 0x03:
            return HELLO_BAD                    # not a handshake record (or not TLS at all)
        rec = u16(p + pos + 3)
        if rec == 0 or rec > MAX_HELLO + 2048:
            return HELLO_BAD
        if pos == 0 and n >= 9:
            if p[5] != 0x01:
                return HELLO_BAD                # a handshake, but not a ClientHello
            need = 4 + u24(p + 6)
            if need > MAX_HELLO:
                return HELLO_BAD
            if need <= rec:
                if n < 5 + need:
                    return HELLO_MORE
                m = p + 5
                break
        if n - pos - 5 < rec:
            return HELLO_MORE
        if got + rec > MAX_HELLO:
            return HELLO_BAD
        memcpy(scratch + got, p + pos + 5, rec)
        got += rec
        pos += 5 + rec
        if need < 0:
            if got < 4:
                continue
            need = 4 + u24(scratch + 1)
            if need > MAX_HELLO:
                return HELLO_BAD
        if got >= need:
            m = scratch
            in_scratch[0] = True
            break
    # 2. The ClientHello: version, random, session id, cipher suites, compression methods, extensions.
    end = need
    i = 4 + 2 + 32
    if i + 1 > end:
        return HELLO_BAD
    i += 1 + m[i]                               # session id
    if i + 2 > end:
        return HELLO_BAD
    i += 2 + u16(m + i)                         # cipher suites
    if i + 1 > end:
        return HELLO_BAD
    i += 1 + m[i]                               # compression methods
    if i == end:
        return HELLO_NO_NAME                    # no extensions at all
    if i + 2 > end:
        return HELLO_BAD
    ext_end = i + 2 + u16(m + i)
    if ext_end > end:
        return HELLO_BAD
    i += 2
    while i + 4 <= ext_end:
        ext_type = u16(m + i)
        ext_len = u16(m + i + 2)
        i += 4
        if i + ext_len > ext_end:
            return HELLO_BAD
        if ext_type == 0:                       # server_name
            if ext_len < 2:
                return HELLO_BAD
            list_end = i + 2 + u16(m + i)
            if list_end > i + ext_len:
                return HELLO_BAD
            i += 2
            while i + 3 <= list_end:
                name_len = u16(m + i + 1)
                if i + 3 + name_len > list_end:
                    return HELLO_BAD
                if m[i] == 0 and name_len > 0:  # host_name
                    off[0] = i + 3 + (0 if in_scratch[0] else 5)
                    length[0] = name_len
                    return HELLO_FOUND
                i += 3 + name_len
            return HELLO_NO_NAME
        i += ext_len
    return HELLO_NO_NAME


def server_name(bytes data):
    """(verdict, name): the ClientHello's server name from the bytes a client sent first (for tests and tools).
    verdict: "found", "none", "more" or "bad"."""
    cdef unsigned char scratch[MAX_HELLO]
    cdef Py_ssize_t off = 0, length = 0
    cdef bint in_scratch = False
    cdef int r = hello_server_name(<const unsigned char *><char *>data, len(data), scratch, &off, &length,
                                   &in_scratch)
    if r == HELLO_FOUND:
        name = (<char *>scratch)[off:off + length] if in_scratch else data[off:off + length]
        return "found", name.decode("ascii", "replace")
    return {HELLO_NO_NAME: "none", HELLO_MORE: "more", HELLO_BAD: "bad"}[r], None
