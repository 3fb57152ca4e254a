# HPACK (RFC 7541) in C: declarations of the header block, the decoder and the encoder other modules cimport.
#
# Sans-IO and allocation-light: a Decoder turns one complete header block into a HeaderBlock (names and values
# copied back to back, Field offsets into them); an Encoder appends one block's fields to an OutBuf. Each side
# keeps its own dynamic table (RFC 7541 2.3.2) for the life of the connection. No Python object per field.

from libc.stdint cimport uint16_t, uint32_t, uint64_t
from fastmesh._core.request cimport Field
from fastmesh._core.buffer cimport OutBuf

cdef enum:
    # Results of Decoder.decode and the Encoder's methods.
    HPACK_OK = 0
    # Malformed block / bad index / bad Huffman / table size update too big: a connection error
    # COMPRESSION_ERROR (the decoder is unusable after it).
    HPACK_COMPRESSION_ERROR = -1
    # The decoded header list passed max_list_size (RFC 9113 6.5.2 size: name + value + 32 per field). The
    # whole block WAS decoded (the dynamic table stays in sync), only the fields were not all kept: a stream
    # error (431 / RST_STREAM).
    HPACK_LIST_TOO_LARGE = -2
    # malloc failed (the OutBuf, the block or a table entry): a connection error too, since the dynamic table may
    # be out of step with the peer's (a decoder refuses every later block).
    HPACK_NO_MEMORY = -3

cdef enum:
    HPACK_STATIC_ENTRIES = 61      # entries of the static table (RFC 7541 appendix A), indices 1..61
    HPACK_DEFAULT_TABLE_SIZE = 4096    # SETTINGS_HEADER_TABLE_SIZE before any SETTINGS (RFC 9113 6.5.2)
    HPACK_ENTRY_OVERHEAD = 32      # per-entry overhead in table sizes and header list sizes (RFC 7541 4.1)
    HPACK_DEFAULT_MAX_LIST = 65536     # Decoder.max_list_size unless told otherwise

# Static-table name indices (the first entry of each name) that codecs match Field.id against.
cdef enum:
    HPACK_ID_AUTHORITY = 1
    HPACK_ID_METHOD = 2
    HPACK_ID_PATH = 4
    HPACK_ID_SCHEME = 6
    HPACK_ID_STATUS = 8
    HPACK_ID_CONTENT_LENGTH = 28
    HPACK_ID_CONTENT_TYPE = 31
    HPACK_ID_COOKIE = 32
    HPACK_ID_HOST = 38
    HPACK_ID_SET_COOKIE = 55
    HPACK_ID_TRANSFER_ENCODING = 57
    HPACK_ID_AUTHORIZATION = 23
    HPACK_ID_PROXY_AUTHORIZATION = 49

ctypedef struct HeaderBlock:
    # One decoded header block: every name and value copied out back to back in `data`; `fields` point into it
    # (Field from request.pxd: name_off/name_len/value_off/value_len/id). Owned by whoever decodes into it.
    char *data                     # names and values, back to back (malloc'd, grows)
    Py_ssize_t len                 # bytes of data in use
    Py_ssize_t cap                 # bytes allocated at data
    Field *fields                  # decoded fields in wire order (malloc'd, grows)
    int n                          # fields in use
    int cap_fields                 # fields allocated
    Py_ssize_t list_size           # RFC 9113 6.5.2 size of the decoded list (counts dropped fields too)

ctypedef struct DynEntry:
    # One dynamic-table entry: name and value in one malloc'd buffer (name first).
    char *data                     # name bytes then value bytes
    uint32_t name_len              # bytes of name at data
    uint32_t value_len             # bytes of value at data + name_len
    uint32_t id                    # static-table name index of the name (Field.id), 0 when not a static name
    uint32_t hash                  # encoder only: hash of name and value (0 in a decoder's table)

ctypedef struct DynTable:
    # The dynamic table as a ring of entries, newest at `head`; HPACK index 62 is the newest entry.
    DynEntry *ring                 # slots (malloc'd), a power of two
    int mask                       # slots - 1
    int head                       # slot of the newest entry (meaningless while n == 0)
    int n                          # entries in the table
    Py_ssize_t size                # sum of name + value + 32 over the entries (RFC 7541 4.1)
    Py_ssize_t max_size            # the table's current maximum size (the last size update)
    uint64_t inserted              # entries ever inserted (the newest entry's insertion number)


cdef void block_init(HeaderBlock *b) noexcept
cdef void block_clear(HeaderBlock *b) noexcept    # empty, memory kept
cdef void block_free(HeaderBlock *b) noexcept


# Whether a field should go out never-indexed (RFC 7541 7.1.3): credentials, and cookies short enough to guess.
cdef inline bint is_sensitive(const char *name, Py_ssize_t nlen, Py_ssize_t vlen) noexcept nogil:
    if nlen == 13:
        return name[0] == b'a' and name[12] == b'n' and name[4] == b'o'      # authorization
    if nlen == 19:
        return name[0] == b'p' and name[18] == b'n' and name[10] == b'o'     # proxy-authorization
    if nlen == 6:
        return vlen < 20 and name[0] == b'c' and name[5] == b'e' and name[3] == b'k'   # cookie
    return False


cdef class Decoder:
    cdef Py_ssize_t max_list_size     # public knob, default 65536 (the listener's max_header_bytes)
    cdef Py_ssize_t settings_max      # our SETTINGS_HEADER_TABLE_SIZE (acked): no size update may exceed it
    cdef bint update_due              # the setting went below the table's size: next block starts with an update
    cdef bint failed                  # a COMPRESSION_ERROR happened: every later decode fails too
    cdef DynTable table               # the dynamic table
    # Decode one complete header block (HEADERS + CONTINUATION payloads already joined) into out (appending).
    # Field.id = the HPACK static-table index (1..61) of the field's NAME when the name is in the static table
    # (e.g. 1 :authority, 2 :method, 4 :path, 6 :scheme, 8 :status, 32 cookie, 28 content-length ...), else 0.
    # Names are NOT validated here (uppercase etc.: the session checks RFC 9113 8.2/8.3).
    cdef int decode(self, const unsigned char *data, Py_ssize_t n, HeaderBlock *out) noexcept
    cdef void set_max_table_size(self, Py_ssize_t n) noexcept   # our SETTINGS_HEADER_TABLE_SIZE (acked)


cdef enum:
    HPACK_ENC_SLOTS = 256          # slots of each of the encoder's two direct-mapped hashes (power of two)

cdef class Encoder:
    cdef DynTable table               # the dynamic table (mirrors the peer decoder's)
    cdef Py_ssize_t max_table_size    # our cap on the table, whatever the peer allows (default 4096)
    cdef Py_ssize_t peer_max          # the peer's SETTINGS_HEADER_TABLE_SIZE
    cdef Py_ssize_t pending_min       # smallest size the table went through since the last block, -1: none
    cdef bint huffman                 # Huffman-code strings when that is shorter (False: never; tests, RFC C.3)
    cdef bint indexing                # insert non-sensitive fields into the dynamic table (False: never)
    # Hashes of (name, value) / name, two candidate slots per key (bits 0-7 and 8-15 of the hash): the low 16 bits
    # of the insertion number of an entry with them. A slot is only a hint: the entry must still be in the table
    # and its bytes are compared.
    cdef uint16_t pair_slot[HPACK_ENC_SLOTS]
    cdef uint16_t name_slot[HPACK_ENC_SLOTS]
    cdef int find(self, uint16_t *slots, uint32_t h, const char *name, Py_ssize_t nlen, const char *value,
                  Py_ssize_t vlen) noexcept
    cdef void remember(self, uint16_t *slots, uint32_t h) noexcept
    cdef void set_peer_max_table_size(self, Py_ssize_t n) noexcept  # the peer's SETTINGS_HEADER_TABLE_SIZE
    cdef int begin(self, OutBuf *o) noexcept          # start a block: emits a pending dynamic-table-size update
    # A block was encoded but will never be sent: empty the table, and have the next block begin with a size
    # update to 0 and back, so that the peer's table is emptied too and both stay the same.
    cdef void forget(self) noexcept
    # One field; name lowercase. sensitive: never-indexed literal (authorization, cookie under ~20 bytes ...).
    cdef int field(self, OutBuf *o, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen,
                   bint sensitive) noexcept
    cdef int status(self, OutBuf *o, int status) noexcept   # :status, with the static table's fast cases
