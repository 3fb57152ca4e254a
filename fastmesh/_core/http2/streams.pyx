# HTTP/2 stream states (RFC 9113 5.1): the transition table, and the Stream object (one per open stream).

cimport cython
from libc.stdint cimport uint32_t, int64_t
from fastmesh._core.http2.hpack cimport HeaderBlock, block_init, block_free

# transition_table[state][event]: the next state, ST_INVALID (-1) where the event is not allowed. Events that
# close the stream from either half-closed side lead to ST_CLOSED; reserved states exist only for
# completeness (no push: SETTINGS_ENABLE_PUSH = 0 both ways).
cdef signed char transition_table[ST_COUNT][EV_COUNT]


cdef void fill(int state, int send_headers, int recv_headers, int send_end, int recv_end, int send_rst,
               int recv_rst) noexcept:
    transition_table[state][<int>EV_SEND_HEADERS] = send_headers
    transition_table[state][<int>EV_RECV_HEADERS] = recv_headers
    transition_table[state][<int>EV_SEND_END] = send_end
    transition_table[state][<int>EV_RECV_END] = recv_end
    transition_table[state][<int>EV_SEND_RST] = send_rst
    transition_table[state][<int>EV_RECV_RST] = recv_rst


#    state                 send HEADERS           recv HEADERS          send END_STREAM       recv END_STREAM
#                          send RST_STREAM        recv RST_STREAM
fill(ST_IDLE,              ST_OPEN,               ST_OPEN,              ST_INVALID,           ST_INVALID,
     ST_INVALID,           ST_INVALID)
fill(ST_RESERVED_LOCAL,    ST_HALF_CLOSED_REMOTE, ST_INVALID,           ST_INVALID,           ST_INVALID,
     ST_CLOSED,            ST_CLOSED)
fill(ST_RESERVED_REMOTE,   ST_INVALID,            ST_HALF_CLOSED_LOCAL, ST_INVALID,           ST_INVALID,
     ST_CLOSED,            ST_CLOSED)
fill(ST_OPEN,              ST_OPEN,               ST_OPEN,              ST_HALF_CLOSED_LOCAL, ST_HALF_CLOSED_REMOTE,
     ST_CLOSED,            ST_CLOSED)
fill(ST_HALF_CLOSED_LOCAL, ST_INVALID,            ST_HALF_CLOSED_LOCAL, ST_INVALID,           ST_CLOSED,
     ST_CLOSED,            ST_CLOSED)
fill(ST_HALF_CLOSED_REMOTE, ST_HALF_CLOSED_REMOTE, ST_INVALID,          ST_CLOSED,            ST_INVALID,
     ST_CLOSED,            ST_CLOSED)
fill(ST_CLOSED,            ST_INVALID,            ST_INVALID,           ST_INVALID,           ST_INVALID,
     ST_INVALID,           ST_INVALID)


cdef int transition(int state, int event) noexcept nogil:
    return transition_table[state][event]


@cython.freelist(64)
@cython.final
cdef class Stream:

    def __cinit__(self):
        block_init(&self.head)
        block_init(&self.trailers)

    def __dealloc__(self):
        block_free(&self.head)
        block_free(&self.trailers)

    @staticmethod
    cdef Stream new(uint32_t id, int64_t send_window, int64_t recv_window):
        cdef Stream s = Stream.__new__(Stream)
        s.id = id
        s.state = ST_IDLE
        s.send_window = send_window
        s.recv_window = recv_window
        s.content_length = -1
        s.i_method = -1
        s.i_scheme = -1
        s.i_authority = -1
        s.i_path = -1
        s.i_protocol = -1
        return s

    cdef void free_blocks(self) noexcept:
        block_free(&self.head)
        block_free(&self.trailers)

    @property
    def windows(self):
        """(send window, receive window) of this stream, for tests."""
        return (self.send_window, self.recv_window)

    def fields(self):
        """The decoded head as a list of (name, value) bytes pairs, pseudo-headers included (tests)."""
        return block_pairs(&self.head)

    def trailer_fields(self):
        """The decoded trailers as (name, value) pairs (tests)."""
        return block_pairs(&self.trailers)


cdef list block_pairs(HeaderBlock *b):
    cdef list out = []
    cdef int i
    for i in range(b.n):
        out.append((b.data[b.fields[i].name_off:b.fields[i].name_off + b.fields[i].name_len],
                    b.data[b.fields[i].value_off:b.fields[i].value_off + b.fields[i].value_len]))
    return out


def next_state(int state, int event):
    """transition() for tests: the next state or -1."""
    if not 0 <= state < ST_COUNT or not 0 <= event < EV_COUNT:
        raise ValueError("no such state or event")
    return transition(state, event)
