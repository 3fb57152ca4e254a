"""HPACK (RFC 7541) header compression in C: the decoder and encoder of HTTP/2 header blocks.

Sans-IO: Decoder.decode() turns one complete header block into a HeaderBlock (hpack.pxd), Encoder.field() and
friends append a block's representations to an OutBuf. Neither touches a Python object on the data path; the
`def` helpers (decode_block, encode_block, the bench_* loops) are for tests, the `hpack` package oracle and the
micro-benchmark.

Decoder:
- Integers (RFC 7541 5.1) take at most four continuation bytes (values below 2**28 + prefix): anything longer is
  a COMPRESSION_ERROR, so no integer overflows and no peer makes us loop over padding bytes.
- Huffman strings (5.2) are decoded 12 bits at a time: a table built at import from the appendix B code table
  below maps the next 12 bits to the one or two whole symbols they hold (16 KiB; codes are 5 to 30 bits, and
  the few longer than 12 are found by length in canonical ranges). Measured against a 4-bit state machine (256
  states x 16 nibbles, two dependent loads per byte): 2.1 vs 7.5 ns per byte of a user-agent/accept/cookie
  mix. EOS in the data, padding longer than 7 bits or padding that is not all ones is a COMPRESSION_ERROR.
- The dynamic table (2.3.2, 4) is a ring of entries, each entry's name and value in one malloc'd buffer; size
  is name + value + 32 per entry; the oldest entries are evicted before an insertion, and an entry larger than
  the table empties it. A size update is accepted only before the first field of a block and only up to our
  acknowledged SETTINGS_HEADER_TABLE_SIZE; when that setting drops below the table's size, the next block
  must open with an update (4.2).
- The decoded list size (RFC 9113 6.5.2: name + value + 32 per field) is checked against max_list_size as the
  block is decoded: past it, fields are no longer copied out, but the block is decoded to its end so that the
  dynamic table stays in sync, and decode() returns HPACK_LIST_TOO_LARGE. Memory stays bounded by the limit
  plus the wire size of one string (the HPACK bomb: a small block indexing a large entry many times).

Encoder:
- Exact static-table matches (":method GET", ":status 200", ...) are one byte; otherwise the static name index
  is used. Repeated fields are found in the dynamic table through two 256-slot hashes (name and value; name
  alone), two candidate slots per key, whose slots hold the low 16 bits of an entry's insertion number: a
  hint, checked against the entry's bytes, so a stale or colliding slot costs compression, never correctness.
- Every field that is not sensitive and whose entry fits in 3/4 of the table is inserted (incremental
  indexing), as the RFC's examples do; a bigger one would flush the table for one field. Sensitive fields go
  out never-indexed (7.1.3; is_sensitive() in hpack.pxd says which ones by default).
- Strings are Huffman-coded only when that is shorter.
- The table's size follows min(the peer's SETTINGS_HEADER_TABLE_SIZE, max_table_size (4096)); when it changes,
  the next block opens with the size update(s) (the smallest size reached, then the final one).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset


cdef extern from *:
    uint64_t __builtin_bswap64(uint64_t x) nogil

from fastmesh._core.buffer cimport ob_reserve, ob_free


# ---------------------------------------------------------------------------------------------------------------
# Spec tables

# RFC 7541 appendix A: the static table, index 1..61.
STATIC_TABLE = (
    (b':authority', b''),  # 1
    (b':method', b'GET'),  # 2
    (b':method', b'POST'),  # 3
    (b':path', b'/'),  # 4
    (b':path', b'/index.html'),  # 5
    (b':scheme', b'http'),  # 6
    (b':scheme', b'https'),  # 7
    (b':status', b'200'),  # 8
    (b':status', b'204'),  # 9
    (b':status', b'206'),  # 10
    (b':status', b'304'),  # 11
    (b':status', b'400'),  # 12
    (b':status', b'404'),  # 13
    (b':status', b'500'),  # 14
    (b'accept-charset', b''),  # 15
    (b'accept-encoding', b'gzip, deflate'),  # 16
    (b'accept-language', b''),  # 17
    (b'accept-ranges', b''),  # 18
    (b'accept', b''),  # 19
    (b'access-control-allow-origin', b''),  # 20
    (b'age', b''),  # 21
    (b'allow', b''),  # 22
    (b'authorization', b''),  # 23
    (b'cache-control', b''),  # 24
    (b'content-disposition', b''),  # 25
    (b'content-encoding', b''),  # 26
    (b'content-language', b''),  # 27
    (b'content-length', b''),  # 28
    (b'content-location', b''),  # 29
    (b'content-range', b''),  # 30
    (b'content-type', b''),  # 31
    (b'cookie', b''),  # 32
    (b'date', b''),  # 33
    (b'etag', b''),  # 34
    (b'expect', b''),  # 35
    (b'expires', b''),  # 36
    (b'from', b''),  # 37
    (b'host', b''),  # 38
    (b'if-match', b''),  # 39
    (b'if-modified-since', b''),  # 40
    (b'if-none-match', b''),  # 41
    (b'if-range', b''),  # 42
    (b'if-unmodified-since', b''),  # 43
    (b'last-modified', b''),  # 44
    (b'link', b''),  # 45
    (b'location', b''),  # 46
    (b'max-forwards', b''),  # 47
    (b'proxy-authenticate', b''),  # 48
    (b'proxy-authorization', b''),  # 49
    (b'range', b''),  # 50
    (b'referer', b''),  # 51
    (b'refresh', b''),  # 52
    (b'retry-after', b''),  # 53
    (b'server', b''),  # 54
    (b'set-cookie', b''),  # 55
    (b'strict-transport-security', b''),  # 56
    (b'transfer-encoding', b''),  # 57
    (b'user-agent', b''),  # 58
    (b'vary', b''),  # 59
    (b'via', b''),  # 60
    (b'www-authenticate', b''),  # 61
)

# RFC 7541 appendix B: (code, bit length) of symbols 0..255 and EOS (256).
HUFFMAN_CODES = (
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28),
    (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28),
    (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10),
    (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6),
    (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7),
    (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5),
    (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14),
    (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23),
    (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22),
    (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22),
    (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23),
    (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22),
    (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27),
    (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
)

cdef const char *st_name[HPACK_STATIC_ENTRIES + 2]    # static entry i's name (index 0 unused)
cdef uint32_t st_nlen[HPACK_STATIC_ENTRIES + 2]
cdef const char *st_value[HPACK_STATIC_ENTRIES + 2]
cdef uint32_t st_vlen[HPACK_STATIC_ENTRIES + 2]
cdef uint32_t st_id[HPACK_STATIC_ENTRIES + 2]         # first index with the same name (Field.id)
cdef uint8_t st_same[HPACK_STATIC_ENTRIES + 2]        # entries from this index on with the same name

cdef enum:
    ST_HASH_SLOTS = 128            # open-addressing table of the static names (52 distinct)

cdef uint8_t st_hash[ST_HASH_SLOTS]                   # first index of a name, 0: empty

cdef uint32_t huff_code[257]
cdef uint8_t huff_len[257]

cdef enum:
    HUFF_PEEK = 12                 # bits the multi-symbol table looks at

# The next HUFF_PEEK bits -> up to two whole symbols in them: sym1 | sym2 << 8 | len1 << 16 | bits << 20 | n << 24
# (bits: what the n symbols take). n == 0: the first code is longer than HUFF_PEEK bits (huff_long).
cdef uint32_t huff_fast[1 << HUFF_PEEK]
cdef uint32_t huff_first[31]       # codes of each length are consecutive: the first one,
cdef uint32_t huff_count[31]       # how many,
cdef uint32_t huff_offset[31]      # and where their symbols start in huff_sorted
cdef uint16_t huff_sorted[257]     # symbols by (code length, code)


cdef inline uint32_t hash_bytes(const char *s, Py_ssize_t n, uint64_t h) noexcept nogil:
    # Eight bytes per step, multiply-mix; not a cryptographic hash (the slots are hints, checked by content).
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, s, 8)
        h = (h ^ w) * <uint64_t>0x9E3779B97F4A7C15
        h ^= h >> 29
        s += 8
        n -= 8
    w = <uint64_t>n << 56
    while n > 0:
        n -= 1
        w |= <uint64_t>(<uint8_t>s[n]) << (8 * n)
    h = (h ^ w) * <uint64_t>0xC2B2AE3D27D4EB4F
    h ^= h >> 32
    return <uint32_t>h


cdef inline int static_name(const char *name, Py_ssize_t nlen, uint32_t h) noexcept nogil:
    # First static index of this name, 0 when the name is not in the static table. h = hash_bytes(name, nlen, 0).
    cdef uint32_t i = h & (ST_HASH_SLOTS - 1)
    cdef int idx
    while True:
        idx = st_hash[i]
        if idx == 0:
            return 0
        if st_nlen[idx] == nlen and memcmp(st_name[idx], name, nlen) == 0:
            return idx
        i = (i + 1) & (ST_HASH_SLOTS - 1)


cdef int _init_tables() except -1:
    cdef int i, b, node, sym, nodes, bit
    cdef uint32_t code
    cdef int child[513][2]
    cdef int leaf[513]
    cdef int pattern
    st_same[HPACK_STATIC_ENTRIES + 1] = 0
    st_id[HPACK_STATIC_ENTRIES + 1] = 0
    for i in range(1, HPACK_STATIC_ENTRIES + 1):
        name, value = STATIC_TABLE[i - 1]
        st_name[i] = PyBytes_AS_STRING(name)
        st_nlen[i] = PyBytes_GET_SIZE(name)
        st_value[i] = PyBytes_AS_STRING(value)
        st_vlen[i] = PyBytes_GET_SIZE(value)
        st_id[i] = st_id[i - 1] if i > 1 and STATIC_TABLE[i - 2][0] == name else i
    for i in range(HPACK_STATIC_ENTRIES, 0, -1):
        st_same[i] = st_same[i + 1] + 1 if st_id[i + 1] == st_id[i] else 1
    memset(st_hash, 0, sizeof(st_hash))
    for i in range(1, HPACK_STATIC_ENTRIES + 1):
        if st_id[i] == <uint32_t>i:
            b = hash_bytes(st_name[i], st_nlen[i], 0) & (ST_HASH_SLOTS - 1)
            while st_hash[b]:
                b = (b + 1) & (ST_HASH_SLOTS - 1)
            st_hash[b] = i
    # The code tree: node 0 is the root; leaf[node] is the symbol, -1 for an internal node.
    for i in range(513):
        child[i][0] = child[i][1] = -1
        leaf[i] = -1
    nodes = 1
    for sym in range(257):
        code, huff_len[sym] = HUFFMAN_CODES[sym]
        huff_code[sym] = code
        node = 0
        for b in range(huff_len[sym] - 1, -1, -1):
            bit = (code >> b) & 1
            if child[node][bit] < 0:
                child[node][bit] = nodes
                nodes += 1
            node = child[node][bit]
        leaf[node] = sym
    if nodes != 513:
        raise RuntimeError("the Huffman code table is not a complete code")
    # The multi-symbol table: walk each HUFF_PEEK-bit pattern down the tree.
    cdef uint32_t entry, got, used, len1
    for pattern in range(1 << HUFF_PEEK):
        node = 0
        got = 0
        used = 0
        len1 = 0
        entry = 0
        for i in range(HUFF_PEEK - 1, -1, -1):
            node = child[node][(pattern >> i) & 1]
            if leaf[node] >= 0:
                entry |= <uint32_t>leaf[node] << (8 * got)
                got += 1
                used = HUFF_PEEK - i
                if got == 1:
                    len1 = used
                node = 0
                if got == 2:
                    break
        huff_fast[pattern] = entry | (len1 << 16) | (used << 20) | (got << 24) if got else 0
    # Long codes, by length: canonical ranges, checked here rather than assumed.
    cdef int count = 0
    by_code = sorted(range(257), key=lambda x: HUFFMAN_CODES[x][0])
    for b in range(31):
        huff_first[b] = 0
        huff_count[b] = 0
        huff_offset[b] = count
        for sym in by_code:
            if huff_len[sym] == b:
                if huff_count[b] and huff_code[sym] != huff_first[b] + huff_count[b]:
                    raise RuntimeError("the Huffman codes of one length are not consecutive")
                if huff_count[b] == 0:
                    huff_first[b] = huff_code[sym]
                huff_sorted[count] = sym
                huff_count[b] += 1
                count += 1
    return 0


_init_tables()


# ---------------------------------------------------------------------------------------------------------------
# Primitives

cdef inline int read_int(const uint8_t **pp, const uint8_t *end, int prefix, uint32_t *out) noexcept nogil:
    # RFC 7541 5.1, the prefix byte at *pp. At most four continuation bytes: longer is an error, not a wrap.
    cdef const uint8_t *p = pp[0]
    cdef uint32_t mask = (1u << prefix) - 1
    cdef uint32_t v = p[0] & mask
    cdef uint32_t b
    cdef int shift = 0
    p += 1
    if v == mask:
        while True:
            if p >= end or shift > 21:
                return -1
            b = p[0]
            p += 1
            v += (b & 0x7f) << shift
            if not (b & 0x80):
                break
            shift += 7
    pp[0] = p
    out[0] = v
    return 0


cdef inline uint8_t *put_int(uint8_t *q, uint8_t first, int prefix, uint32_t v) noexcept nogil:
    cdef uint32_t mask = (1u << prefix) - 1
    if v < mask:
        q[0] = first | v
        return q + 1
    q[0] = first | mask
    q += 1
    v -= mask
    while v >= 128:
        q[0] = (v & 0x7f) | 0x80
        q += 1
        v >>= 7
    q[0] = v
    return q + 1


cdef inline uint64_t load_be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, 8)
    return __builtin_bswap64(w)


cdef inline int huff_long(uint64_t acc, int nb) noexcept nogil:
    # The symbol of a code longer than HUFF_PEEK bits at the top of acc, or -1 (EOS, or past the nb bits held).
    cdef int length
    cdef uint32_t c
    for length in range(HUFF_PEEK + 1, 31):
        c = <uint32_t>(acc >> (64 - length))
        if c - huff_first[length] < huff_count[length]:
            if length > nb:
                return -1
            c = huff_sorted[huff_offset[length] + c - huff_first[length]]
            return -1 if c == 256 else <int>c
    return -1


cdef Py_ssize_t huff_decode(const uint8_t *src, Py_ssize_t n, char *dst) noexcept nogil:
    # Decoded length, or -1 (EOS, bad padding). dst has room for huff_max_decoded(n) bytes.
    # Bits are taken from a 64-bit buffer (the next bit at the top, nb of them valid), HUFF_PEEK at a time
    # through huff_fast: one load per one or two symbols.
    cdef const uint8_t *end = src + n
    cdef uint64_t acc = 0
    cdef int nb = 0, sym
    cdef uint32_t e, used
    cdef Py_ssize_t k = 0
    while True:
        if nb < 32:
            if end - src >= 8:
                acc |= load_be64(src) >> nb
                src += (63 - nb) >> 3
                nb |= 56
            else:
                while nb <= 56 and src < end:
                    acc |= <uint64_t>src[0] << (56 - nb)
                    src += 1
                    nb += 8
                if nb < HUFF_PEEK:
                    break
        e = huff_fast[acc >> (64 - HUFF_PEEK)]
        if e == 0:
            sym = huff_long(acc, nb)
            if sym < 0:
                return -1
            dst[k] = <char>sym
            k += 1
            used = huff_len[sym]
        else:
            dst[k] = <char>e
            dst[k + 1] = <char>(e >> 8)
            k += e >> 24
            used = (e >> 20) & 15
        acc <<= used
        nb -= used
    # Fewer than HUFF_PEEK bits left: symbols while they end within them, then the padding (at most 7 ones).
    while nb > 0:
        e = huff_fast[(acc | (<uint64_t>0xFFFFFFFFFFFFFFFF >> nb)) >> (64 - HUFF_PEEK)]
        used = (e >> 16) & 15
        if e == 0 or used > <uint32_t>nb:
            break
        dst[k] = <char>e
        k += 1
        acc <<= used
        nb -= used
    if nb > 7 or (nb and (acc >> (64 - nb)) != (<uint64_t>1 << nb) - 1):
        return -1
    return k


cdef inline Py_ssize_t huff_encoded_len(const char *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t bits = 0, i
    for i in range(n):
        bits += huff_len[<uint8_t>s[i]]
    return (bits + 7) >> 3


cdef uint8_t *huff_encode(uint8_t *q, const char *s, Py_ssize_t n) noexcept nogil:
    # Codes are at most 30 bits: with fewer than 32 bits pending, acc never holds more than 61. Four bytes leave
    # at a time.
    cdef uint64_t acc = 0
    cdef uint32_t word
    cdef int bits = 0
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = <uint8_t>s[i]
        acc = (acc << huff_len[c]) | huff_code[c]
        bits += huff_len[c]
        if bits >= 32:
            bits -= 32
            word = <uint32_t>(acc >> bits)
            q[0] = <uint8_t>(word >> 24)
            q[1] = <uint8_t>(word >> 16)
            q[2] = <uint8_t>(word >> 8)
            q[3] = <uint8_t>word
            q += 4
    if bits & 7:                     # pad the last byte with ones (the EOS prefix)
        acc = (acc << (8 - (bits & 7))) | (0xff >> (bits & 7))
        bits += 8 - (bits & 7)
    while bits >= 8:
        bits -= 8
        q[0] = <uint8_t>(acc >> bits)
        q += 1
    return q


cdef inline Py_ssize_t huff_max_decoded(Py_ssize_t n) noexcept nogil:
    return (n * 8) // 5 + 2          # + 2: the decoders store a byte or two past the last symbol


# ---------------------------------------------------------------------------------------------------------------
# Header blocks

cdef void block_init(HeaderBlock *b) noexcept:
    b.data = NULL
    b.len = 0
    b.cap = 0
    b.fields = NULL
    b.n = 0
    b.cap_fields = 0
    b.list_size = 0


cdef void block_clear(HeaderBlock *b) noexcept:
    b.len = 0
    b.n = 0
    b.list_size = 0


cdef void block_free(HeaderBlock *b) noexcept:
    free(b.data)
    free(b.fields)
    block_init(b)


cdef inline int block_reserve(HeaderBlock *b, Py_ssize_t more) noexcept:
    cdef Py_ssize_t cap
    cdef char *p
    if b.len + more <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 512
    while cap < b.len + more:
        cap *= 2
    p = <char *>realloc(b.data, cap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = cap
    return 0


cdef inline int block_add_field(HeaderBlock *b, Py_ssize_t name_off, Py_ssize_t nlen, Py_ssize_t vlen,
                                uint32_t id) noexcept:
    # The name and value are at data + name_off, back to back: commit them as one more field.
    cdef int cap
    cdef Field *f
    if b.n == b.cap_fields:
        cap = b.cap_fields * 2 if b.cap_fields else 16
        f = <Field *>realloc(b.fields, cap * sizeof(Field))
        if f == NULL:
            return -1
        b.fields = f
        b.cap_fields = cap
    f = &b.fields[b.n]
    f.name_off = <uint32_t>name_off
    f.name_len = <uint32_t>nlen
    f.value_off = <uint32_t>(name_off + nlen)
    f.value_len = <uint32_t>vlen
    f.id = id
    b.n += 1
    b.len = name_off + nlen + vlen
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The dynamic table

cdef void table_init(DynTable *t, Py_ssize_t max_size) noexcept:
    t.ring = NULL
    t.mask = -1
    t.head = 0
    t.n = 0
    t.size = 0
    t.max_size = max_size
    t.inserted = 0


cdef inline DynEntry *table_at(DynTable *t, Py_ssize_t age) noexcept nogil:
    # The entry `age` insertions older than the newest (0: the newest, HPACK index 62). The caller checks age < n.
    return &t.ring[(t.head - age) & t.mask]


cdef void table_evict_to(DynTable *t, Py_ssize_t size) noexcept:
    # Drop the oldest entries until the table's size is at most `size`.
    cdef DynEntry *e
    while t.size > size and t.n > 0:
        e = table_at(t, t.n - 1)
        t.size -= e.name_len + e.value_len + HPACK_ENTRY_OVERHEAD
        free(e.data)
        e.data = NULL
        t.n -= 1


cdef void table_free(DynTable *t) noexcept:
    table_evict_to(t, -1)
    free(t.ring)
    t.ring = NULL
    t.mask = -1
    t.size = 0


cdef void table_set_max(DynTable *t, Py_ssize_t max_size) noexcept:
    t.max_size = max_size
    table_evict_to(t, max_size)


cdef int table_insert(DynTable *t, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen,
                      uint32_t id, uint32_t h) noexcept:
    # RFC 7541 4.4: evict first; an entry larger than the table leaves it empty. -1: out of memory.
    cdef Py_ssize_t need = nlen + vlen + HPACK_ENTRY_OVERHEAD
    cdef DynEntry *ring
    cdef DynEntry *e
    cdef int slots, i
    cdef char *data
    if need > t.max_size:
        table_evict_to(t, 0)
        return 0
    table_evict_to(t, t.max_size - need)
    if t.n == t.mask + 1:
        slots = (t.mask + 1) * 2 if t.ring != NULL else 8
        ring = <DynEntry *>malloc(slots * sizeof(DynEntry))
        if ring == NULL:
            return -1
        for i in range(t.n):        # oldest first, so that the newest lands at n - 1
            ring[i] = table_at(t, t.n - 1 - i)[0]
        free(t.ring)
        t.ring = ring
        t.mask = slots - 1
        t.head = t.n - 1
    data = <char *>malloc(nlen + vlen if nlen + vlen else 1)
    if data == NULL:
        return -1
    memcpy(data, name, nlen)
    memcpy(data + nlen, value, vlen)
    t.head = (t.head + 1) & t.mask
    e = &t.ring[t.head]
    e.data = data
    e.name_len = <uint32_t>nlen
    e.value_len = <uint32_t>vlen
    e.id = id
    e.hash = h
    t.n += 1
    t.size += need
    t.inserted += 1
    return 0


cdef list table_list(DynTable *t):
    cdef DynEntry *e
    cdef int i
    out = []
    for i in range(t.n):
        e = table_at(t, i)
        out.append((PyBytes_FromStringAndSize(e.data, e.name_len),
                    PyBytes_FromStringAndSize(e.data + e.name_len, e.value_len)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Decoder

class HpackError(ValueError):
    """A header block could not be decoded (COMPRESSION_ERROR)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class HeaderListTooLarge(HpackError):
    """The decoded header list passed max_list_size (the block itself was decoded: a stream error)."""


cdef inline Py_ssize_t read_string(const uint8_t **pp, const uint8_t *end, HeaderBlock *out) noexcept:
    # The string literal at *pp, decoded to out.data + out.len (not committed): its length, -1 (malformed) or
    # HPACK_NO_MEMORY.
    cdef uint32_t n
    cdef Py_ssize_t k
    cdef bint huff
    if pp[0] >= end:
        return -1
    huff = pp[0][0] & 0x80
    if read_int(pp, end, 7, &n) < 0 or n > end - pp[0]:
        return -1
    if huff:
        if block_reserve(out, huff_max_decoded(n)) < 0:
            return HPACK_NO_MEMORY
        k = huff_decode(pp[0], n, out.data + out.len)
    else:
        if block_reserve(out, n) < 0:
            return HPACK_NO_MEMORY
        memcpy(out.data + out.len, pp[0], n)
        k = n
    pp[0] += n
    return k


cdef class Decoder:

    def __cinit__(self, Py_ssize_t max_list_size=HPACK_DEFAULT_MAX_LIST,
                  Py_ssize_t max_table_size=HPACK_DEFAULT_TABLE_SIZE):
        # max_table_size: our SETTINGS_HEADER_TABLE_SIZE in force from the start (as in RFC 7541 C.5), no update
        # expected; a setting acknowledged later goes through set_max_table_size().
        table_init(&self.table, max_table_size)
        self.max_list_size = max_list_size
        self.settings_max = max_table_size
        self.update_due = False
        self.failed = False

    def __dealloc__(self):
        table_free(&self.table)

    cdef void set_max_table_size(self, Py_ssize_t n) noexcept:
        self.settings_max = n
        if n < self.table.max_size:
            self.update_due = True

    cdef int decode(self, const unsigned char *data, Py_ssize_t n, HeaderBlock *out) noexcept:
        cdef const uint8_t *p = data
        cdef const uint8_t *end = data + n
        cdef uint8_t b
        cdef uint32_t idx, v, id
        cdef bint at_start = True, too_large = False, indexing
        cdef Py_ssize_t base, nlen, vlen
        cdef const char *name
        cdef const char *value
        cdef DynEntry *e
        cdef int err = HPACK_COMPRESSION_ERROR
        if self.failed:
            return HPACK_COMPRESSION_ERROR
        while p < end:
            b = p[0]
            if b & 0x80:                            # indexed field (6.1)
                if read_int(&p, end, 7, &idx) < 0 or idx == 0:
                    break
                if idx <= HPACK_STATIC_ENTRIES:
                    name = st_name[idx]
                    nlen = st_nlen[idx]
                    value = st_value[idx]
                    vlen = st_vlen[idx]
                    id = st_id[idx]
                else:
                    idx -= HPACK_STATIC_ENTRIES + 1
                    if idx >= <uint32_t>self.table.n:
                        break
                    e = table_at(&self.table, idx)
                    name = e.data
                    nlen = e.name_len
                    value = e.data + e.name_len
                    vlen = e.value_len
                    id = e.id
                if at_start:
                    if self.update_due:
                        break
                    at_start = False
                out.list_size += nlen + vlen + HPACK_ENTRY_OVERHEAD
                if too_large or out.list_size > self.max_list_size:
                    too_large = True
                    continue
                if block_reserve(out, nlen + vlen) < 0:
                    err = HPACK_NO_MEMORY
                    break
                base = out.len
                memcpy(out.data + base, name, nlen)
                memcpy(out.data + base + nlen, value, vlen)
                if block_add_field(out, base, nlen, vlen, id) < 0:
                    err = HPACK_NO_MEMORY
                    break
                continue
            if (b & 0xe0) == 0x20:                  # dynamic table size update (6.3)
                if not at_start or read_int(&p, end, 5, &v) < 0 or v > self.settings_max:
                    break
                table_set_max(&self.table, v)
                self.update_due = False
                continue
            if at_start:
                if self.update_due:
                    break
                at_start = False
            # A literal (6.2): with incremental indexing (01, 6-bit index), without / never indexed (000x, 4-bit).
            indexing = b & 0x40
            if read_int(&p, end, 6 if indexing else 4, &idx) < 0:
                break
            base = out.len
            if idx:
                if idx <= HPACK_STATIC_ENTRIES:
                    name = st_name[idx]
                    nlen = st_nlen[idx]
                    id = st_id[idx]
                else:
                    idx -= HPACK_STATIC_ENTRIES + 1
                    if idx >= <uint32_t>self.table.n:
                        break
                    e = table_at(&self.table, idx)
                    name = e.data
                    nlen = e.name_len
                    id = e.id
                if block_reserve(out, nlen) < 0:
                    err = HPACK_NO_MEMORY
                    break
                memcpy(out.data + base, name, nlen)
            else:
                nlen = read_string(&p, end, out)
                if nlen < 0:
                    if nlen == HPACK_NO_MEMORY:
                        err = HPACK_NO_MEMORY
                    break
                id = static_name(out.data + base, nlen, hash_bytes(out.data + base, nlen, 0))
            out.len = base + nlen                   # the value decodes after the name
            vlen = read_string(&p, end, out)
            out.len = base
            if vlen < 0:
                if vlen == HPACK_NO_MEMORY:
                    err = HPACK_NO_MEMORY
                break
            if indexing and table_insert(&self.table, out.data + base, nlen, out.data + base + nlen, vlen,
                                         id, 0) < 0:
                err = HPACK_NO_MEMORY
                break
            out.list_size += nlen + vlen + HPACK_ENTRY_OVERHEAD
            if too_large or out.list_size > self.max_list_size:
                too_large = True
                continue
            if block_add_field(out, base, nlen, vlen, id) < 0:
                err = HPACK_NO_MEMORY
                break
        else:
            if at_start and self.update_due:
                self.failed = True
                return HPACK_COMPRESSION_ERROR
            return HPACK_LIST_TOO_LARGE if too_large else HPACK_OK
        self.failed = True          # the table may be out of step with the peer's: nothing more decodes
        return err

    # Python helpers (tests, the oracle, benchmarks): the data path calls the cdef methods.

    @property
    def max_list_size(self):
        """Largest decoded header list (name + value + 32 per field) decode() keeps."""
        return self.max_list_size

    @max_list_size.setter
    def max_list_size(self, Py_ssize_t n):
        self.max_list_size = n

    @property
    def table(self):
        """The dynamic table as (name, value) pairs, newest (HPACK index 62) first."""
        return table_list(&self.table)

    @property
    def table_size(self):
        """The dynamic table's size: name + value + 32 per entry."""
        return self.table.size

    @property
    def table_max_size(self):
        """The dynamic table's maximum size (the peer's last size update; 4096 before any)."""
        return self.table.max_size

    def set_table_size_setting(self, Py_ssize_t n):
        """Our SETTINGS_HEADER_TABLE_SIZE, acknowledged by the peer (set_max_table_size)."""
        self.set_max_table_size(n)

    def decode_fields(self, bytes data not None):
        """Decode one header block: a list of (name, value, field id); HpackError / HeaderListTooLarge."""
        cdef HeaderBlock block
        cdef Field *f
        cdef int rc, i
        block_init(&block)
        try:
            rc = self.decode(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &block)
            if rc == HPACK_COMPRESSION_ERROR:
                raise HpackError(rc, "malformed header block (COMPRESSION_ERROR)")
            if rc == HPACK_NO_MEMORY:
                raise MemoryError()
            if rc == HPACK_LIST_TOO_LARGE:
                raise HeaderListTooLarge(rc, f"decoded header list of {block.list_size} bytes is over "
                                             f"{self.max_list_size}")
            out = []
            for i in range(block.n):
                f = &block.fields[i]
                out.append((PyBytes_FromStringAndSize(block.data + f.name_off, f.name_len),
                            PyBytes_FromStringAndSize(block.data + f.value_off, f.value_len), f.id))
            return out
        finally:
            block_free(&block)

    def decode_block(self, bytes data not None):
        """Decode one header block: a list of (name, value); HpackError / HeaderListTooLarge."""
        return [(name, value) for name, value, _ in self.decode_fields(data)]


# ---------------------------------------------------------------------------------------------------------------
# Encoder

cdef inline uint32_t pair_hash(uint32_t name_hash, const char *value, Py_ssize_t vlen) noexcept nogil:
    return hash_bytes(value, vlen, <uint64_t>name_hash * <uint64_t>0x100000001B3 + 1)


cdef inline uint8_t *put_string(uint8_t *q, const char *s, Py_ssize_t n, bint huffman) noexcept nogil:
    # A string literal, Huffman-coded when that is shorter (and allowed). q has room for n + 5 bytes.
    cdef Py_ssize_t h
    if huffman and n > 1:
        h = huff_encoded_len(s, n)
        if h < n:
            q = put_int(q, 0x80, 7, <uint32_t>h)
            return huff_encode(q, s, n)
    q = put_int(q, 0, 7, <uint32_t>n)
    memcpy(q, s, n)
    return q + n


cdef class Encoder:

    def __cinit__(self, Py_ssize_t max_table_size=HPACK_DEFAULT_TABLE_SIZE, bint huffman=True,
                  bint indexing=True, Py_ssize_t peer_table_size=HPACK_DEFAULT_TABLE_SIZE):
        # peer_table_size: the peer's SETTINGS_HEADER_TABLE_SIZE in force from the start (4096 on a new connection;
        # 256 in RFC 7541 C.5). A cap below it is announced by a size update at the first block.
        table_init(&self.table, peer_table_size)
        self.max_table_size = max_table_size
        self.peer_max = peer_table_size
        self.pending_min = -1
        self.huffman = huffman
        self.indexing = indexing
        memset(self.pair_slot, 0, sizeof(self.pair_slot))
        memset(self.name_slot, 0, sizeof(self.name_slot))
        self.set_peer_max_table_size(peer_table_size)

    def __dealloc__(self):
        table_free(&self.table)

    cdef void set_peer_max_table_size(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t size = n if n < self.max_table_size else self.max_table_size
        self.peer_max = n
        if size == self.table.max_size:
            return
        table_set_max(&self.table, size)
        if self.pending_min < 0 or size < self.pending_min:
            self.pending_min = size

    cdef void forget(self) noexcept:
        cdef Py_ssize_t size = self.table.max_size
        table_set_max(&self.table, 0)
        table_set_max(&self.table, size)
        self.pending_min = 0

    cdef int begin(self, OutBuf *o) noexcept:
        cdef uint8_t *q
        if self.pending_min < 0:
            return HPACK_OK
        if ob_reserve(o, 12) < 0:
            return HPACK_NO_MEMORY
        q = <uint8_t *>o.data + o.len
        if self.pending_min < self.table.max_size:
            q = put_int(q, 0x20, 5, <uint32_t>self.pending_min)
        q = put_int(q, 0x20, 5, <uint32_t>self.table.max_size)
        o.len = <char *>q - o.data
        self.pending_min = -1
        return HPACK_OK

    cdef int field(self, OutBuf *o, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen,
                   bint sensitive) noexcept:
        cdef uint32_t nh = hash_bytes(name, nlen, 0)
        cdef uint32_t ph = 0
        cdef int sid = static_name(name, nlen, nh)
        cdef int i, idx = 0, nidx = sid
        cdef uint8_t *q
        cdef bint insert = False
        if not sensitive:
            if sid and st_vlen[sid + st_same[sid] - 1]:      # a name with values in the static table
                for i in range(sid, sid + st_same[sid]):
                    if st_vlen[i] == vlen and memcmp(st_value[i], value, vlen) == 0:
                        idx = i
                        break
            if idx == 0 and self.indexing:
                ph = pair_hash(nh, value, vlen)
                if self.table.n:
                    idx = self.find(self.pair_slot, ph, name, nlen, value, vlen)
            if idx:
                if ob_reserve(o, 6) < 0:
                    return HPACK_NO_MEMORY
                q = put_int(<uint8_t *>o.data + o.len, 0x80, 7, idx)
                o.len = <char *>q - o.data
                return HPACK_OK
            insert = self.indexing and (nlen + vlen + HPACK_ENTRY_OVERHEAD) * 4 <= self.table.max_size * 3
        if nidx == 0 and self.table.n:
            nidx = self.find(self.name_slot, nh, name, nlen, NULL, -1)
        if ob_reserve(o, nlen + vlen + 16) < 0:
            return HPACK_NO_MEMORY
        q = <uint8_t *>o.data + o.len
        if sensitive:
            q = put_int(q, 0x10, 4, nidx)
        elif insert:
            q = put_int(q, 0x40, 6, nidx)
        else:
            q = put_int(q, 0, 4, nidx)
        if nidx == 0:
            q = put_string(q, name, nlen, self.huffman)
        q = put_string(q, value, vlen, self.huffman)
        o.len = <char *>q - o.data
        if insert:
            if table_insert(&self.table, name, nlen, value, vlen, sid, ph) < 0:
                return HPACK_NO_MEMORY
            if self.table.n:
                self.remember(self.pair_slot, ph)
                self.remember(self.name_slot, nh)
        return HPACK_OK

    cdef inline int find(self, uint16_t *slots, uint32_t h, const char *name, Py_ssize_t nlen, const char *value,
                         Py_ssize_t vlen) noexcept:
        # HPACK index of a dynamic entry with this name (value NULL) or name and value, found through its two
        # slots in `slots`; 0 when none.
        cdef int k
        cdef Py_ssize_t age
        cdef DynEntry *e
        for k in range(2):
            age = <uint16_t>(<uint16_t>self.table.inserted - slots[(h >> (8 * k)) & (HPACK_ENC_SLOTS - 1)])
            if age >= self.table.n:
                continue
            e = table_at(&self.table, age)
            if e.name_len != nlen or memcmp(e.data, name, nlen) != 0:
                continue
            if value == NULL or (e.hash == h and e.value_len == vlen and memcmp(e.data + nlen, value, vlen) == 0):
                return <int>(age + HPACK_STATIC_ENTRIES + 1)
        return 0

    cdef inline void remember(self, uint16_t *slots, uint32_t h) noexcept:
        # The newest entry goes into whichever of its two slots holds the older (or a gone) entry.
        cdef uint32_t a = h & (HPACK_ENC_SLOTS - 1)
        cdef uint32_t b = (h >> 8) & (HPACK_ENC_SLOTS - 1)
        cdef uint16_t now = <uint16_t>self.table.inserted
        cdef uint16_t age_a = <uint16_t>(now - slots[a])
        cdef uint16_t age_b = <uint16_t>(now - slots[b])
        if age_a >= self.table.n or (age_b < self.table.n and age_a >= age_b):
            slots[a] = now
        else:
            slots[b] = now

    cdef int status(self, OutBuf *o, int status) noexcept:
        cdef int idx = 0
        cdef char digits[3]
        if status == 200:
            idx = 8
        elif status == 204:
            idx = 9
        elif status == 206:
            idx = 10
        elif status == 304:
            idx = 11
        elif status == 400:
            idx = 12
        elif status == 404:
            idx = 13
        elif status == 500:
            idx = 14
        if idx:
            if ob_reserve(o, 1) < 0:
                return HPACK_NO_MEMORY
            o.data[o.len] = <char>(0x80 | idx)
            o.len += 1
            return HPACK_OK
        if status < 100 or status > 999:
            status = 500
        digits[0] = <char>(48 + status // 100)
        digits[1] = <char>(48 + status // 10 % 10)
        digits[2] = <char>(48 + status % 10)
        return self.field(o, ":status", 7, digits, 3, False)

    # Python helpers (tests, the oracle, benchmarks): the data path calls the cdef methods.

    @property
    def table(self):
        """The dynamic table as (name, value) pairs, newest (HPACK index 62) first."""
        return table_list(&self.table)

    @property
    def table_size(self):
        """The dynamic table's size: name + value + 32 per entry."""
        return self.table.size

    @property
    def table_max_size(self):
        """The dynamic table's maximum size: min(the peer's setting, max_table_size)."""
        return self.table.max_size

    @property
    def max_table_size(self):
        """Our cap on the dynamic table, whatever the peer allows."""
        return self.max_table_size

    @max_table_size.setter
    def max_table_size(self, Py_ssize_t n):
        self.max_table_size = n
        self.set_peer_max_table_size(self.peer_max)

    @property
    def huffman(self):
        """Huffman-code strings when that is shorter."""
        return self.huffman

    @huffman.setter
    def huffman(self, bint on):
        self.huffman = on

    @property
    def indexing(self):
        """Insert fields into the dynamic table."""
        return self.indexing

    @indexing.setter
    def indexing(self, bint on):
        self.indexing = on

    def set_peer_table_size(self, Py_ssize_t n):
        """The peer's SETTINGS_HEADER_TABLE_SIZE (set_peer_max_table_size)."""
        self.set_peer_max_table_size(n)

    def encode_block(self, fields):
        """One header block from (name, value) or (name, value, sensitive) tuples of bytes or str. Without
        `sensitive`, is_sensitive() decides (authorization, proxy-authorization, cookies under 20 bytes)."""
        cdef OutBuf o
        cdef int rc = HPACK_OK
        cdef bytes name, value
        cdef bint sensitive
        o.data = NULL
        o.off = o.len = o.cap = 0
        try:
            rc = self.begin(&o)
            for item in fields:
                name = _as_bytes(item[0])
                value = _as_bytes(item[1])
                if len(item) > 2:
                    sensitive = item[2]
                else:
                    sensitive = is_sensitive(PyBytes_AS_STRING(name), len(name), len(value))
                if rc == HPACK_OK:
                    rc = self.field(&o, PyBytes_AS_STRING(name), len(name), PyBytes_AS_STRING(value),
                                    len(value), sensitive)
            if rc != HPACK_OK:
                raise MemoryError()
            return PyBytes_FromStringAndSize(o.data, o.len)
        finally:
            ob_free(&o)

    def encode_status(self, int status):
        """A block holding only :status (the status() fast path)."""
        cdef OutBuf o
        o.data = NULL
        o.off = o.len = o.cap = 0
        try:
            if self.begin(&o) != HPACK_OK or self.status(&o, status) != HPACK_OK:
                raise MemoryError()
            return PyBytes_FromStringAndSize(o.data, o.len)
        finally:
            ob_free(&o)


cdef bytes _as_bytes(s):
    return s if isinstance(s, bytes) else s.encode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Helpers for tests and benchmarks

def huffman_encode(bytes data not None):
    """The Huffman code of data (RFC 7541 5.2), padded with ones."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, huff_encoded_len(PyBytes_AS_STRING(data), n))
    huff_encode(<uint8_t *>PyBytes_AS_STRING(out), PyBytes_AS_STRING(data), n)
    return out


def huffman_decode(bytes data not None):
    """Decode a Huffman string; HpackError for EOS or bad padding."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef char *buf = <char *>malloc(huff_max_decoded(n))
    cdef Py_ssize_t k
    if buf == NULL:
        raise MemoryError()
    try:
        k = huff_decode(<const uint8_t *>PyBytes_AS_STRING(data), n, buf)
        if k < 0:
            raise HpackError(HPACK_COMPRESSION_ERROR, "bad Huffman string (EOS or padding)")
        return PyBytes_FromStringAndSize(buf, k)
    finally:
        free(buf)


def bench_decode(bytes first not None, bytes block not None, int count, bint cold):
    """Decode `block` count times with one decoder, after decoding `first` once; cold: empty the dynamic table
    before each decode. Returns the fields decoded (proof of work)."""
    cdef Decoder d = Decoder()
    cdef HeaderBlock out
    cdef Py_ssize_t total = 0
    cdef int _round, rc
    block_init(&out)
    try:
        rc = d.decode(<const unsigned char *>PyBytes_AS_STRING(first), PyBytes_GET_SIZE(first), &out)
        if rc != HPACK_OK:
            raise HpackError(rc, "the first block did not decode")
        for _round in range(count):
            block_clear(&out)
            if cold:
                table_evict_to(&d.table, 0)
            rc = d.decode(<const unsigned char *>PyBytes_AS_STRING(block), PyBytes_GET_SIZE(block), &out)
            if rc != HPACK_OK:
                raise HpackError(rc, "the block did not decode")
            total += out.n
        return total
    finally:
        block_free(&out)


def bench_encode(fields, int count, bint cold, bint indexing=True):
    """Encode the block `fields` ((name, value) pairs) count times with one encoder; cold: empty the dynamic
    table before each block. Returns the bytes produced."""
    cdef Encoder enc = Encoder(indexing=indexing)
    cdef OutBuf o
    cdef Py_ssize_t total = 0
    cdef int _round, j, nf, rc = HPACK_OK
    cdef const char **ptrs
    cdef Py_ssize_t *lens
    pairs = [_as_bytes(s) for field in fields for s in field[:2]]
    nf = len(pairs) // 2
    ptrs = <const char **>malloc((2 * nf + 1) * sizeof(char *))
    lens = <Py_ssize_t *>malloc((2 * nf + 1) * sizeof(Py_ssize_t))
    o.data = NULL
    o.off = o.len = o.cap = 0
    try:
        if ptrs == NULL or lens == NULL:
            raise MemoryError()
        for j in range(2 * nf):
            ptrs[j] = PyBytes_AS_STRING(pairs[j])
            lens[j] = PyBytes_GET_SIZE(pairs[j])
        for _round in range(count):
            o.len = 0
            if cold:
                table_evict_to(&enc.table, 0)
            rc |= enc.begin(&o)
            for j in range(nf):
                rc |= enc.field(&o, ptrs[2 * j], lens[2 * j], ptrs[2 * j + 1], lens[2 * j + 1],
                                is_sensitive(ptrs[2 * j], lens[2 * j], lens[2 * j + 1]))
            total += o.len
        if rc != HPACK_OK:
            raise MemoryError()
        return total
    finally:
        ob_free(&o)
        free(ptrs)
        free(lens)
