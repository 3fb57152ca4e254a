# HTTP/2 stream states (RFC 9113 5.1) as a transition table over cdef enums, and the Stream: one per open
# stream, holding its state, flow-control windows and decoded header blocks.

from libc.stdint cimport uint32_t, int64_t
from fastmesh._core.http2.hpack cimport HeaderBlock

cdef enum StreamState:
    ST_IDLE = 0
    ST_RESERVED_LOCAL = 1          # never entered: we do not push
    ST_RESERVED_REMOTE = 2         # never entered: we refuse pushes (SETTINGS_ENABLE_PUSH = 0)
    ST_OPEN = 3
    ST_HALF_CLOSED_LOCAL = 4       # we sent END_STREAM
    ST_HALF_CLOSED_REMOTE = 5      # the peer sent END_STREAM
    ST_CLOSED = 6

cdef enum StreamEvent:
    EV_SEND_HEADERS = 0            # we send HEADERS (opens an idle stream)
    EV_RECV_HEADERS = 1            # the peer's HEADERS (opens an idle stream)
    EV_SEND_END = 2                # we send a frame with END_STREAM
    EV_RECV_END = 3                # the peer's frame with END_STREAM
    EV_SEND_RST = 4                # we send RST_STREAM
    EV_RECV_RST = 5                # the peer's RST_STREAM

cdef enum:
    ST_COUNT = 7                   # states
    EV_COUNT = 6                   # events
    ST_INVALID = -1                # transition(): the event is not allowed in that state


# Next state for (state, event), or ST_INVALID where RFC 9113 5.1 forbids the event (the table is in streams.pyx).
cdef int transition(int state, int event) noexcept nogil


cdef inline bint can_receive(int state) noexcept nogil:
    # The peer may still send DATA / HEADERS (trailers) on a stream in this state.
    return state == ST_OPEN or state == ST_HALF_CLOSED_LOCAL


cdef inline bint can_send(int state) noexcept nogil:
    # We may still send DATA / HEADERS on a stream in this state.
    return state == ST_OPEN or state == ST_HALF_CLOSED_REMOTE


cdef class Stream:
    # One HTTP/2 stream of a Session: created when it opens, dropped by the session once closed (after
    # on_stream_closed). The I/O layer keeps its own state in `user`.
    cdef readonly uint32_t id              # stream id (odd: opened by the client)
    cdef readonly int state                # StreamState
    cdef int64_t send_window               # bytes the peer lets us send on it (may go negative after SETTINGS)
    cdef int64_t recv_window               # bytes we still let the peer send on it
    cdef int64_t recv_unacked              # bytes the I/O layer consumed that we have not credited back yet
    cdef int64_t unconsumed                # bytes handed to on_data that the I/O layer has not consumed yet
    cdef int64_t content_length            # the peer's content-length, -1 when absent
    cdef int64_t data_received             # DATA payload bytes received (padding excluded)
    cdef HeaderBlock head                  # the peer's request/response head (client role: the final response)
    cdef HeaderBlock trailers              # the peer's trailers (memory taken only when they come)
    cdef readonly int status               # client role: the head's :status (1xx while informational); server: 0
    cdef short i_method                    # index in head.fields of :method, -1 when absent (pseudo-headers lead)
    cdef short i_scheme                    # ... of :scheme
    cdef short i_authority                 # ... of :authority
    cdef short i_path                      # ... of :path
    cdef short i_protocol                  # ... of :protocol (extended CONNECT)
    cdef short first_field                 # index of the first regular (non-pseudo) field in head.fields
    cdef readonly bint answered            # we sent a head (server) or the peer did (client): not a rapid reset
    cdef readonly bint head_done           # the peer's head arrived (a later HEADERS are trailers)
    cdef readonly bint blocked             # send_data stopped short: on_window when the windows open
    cdef readonly bint informational       # client: the last head was 1xx (another head follows)
    cdef bint counted                      # counts toward the session's concurrent streams
    # The I/O layer knows it (client: opened it; server: on_headers or on_rejected): only such streams get
    # on_reset / on_stream_closed.
    cdef bint announced
    cdef bint head_request                 # client: we sent :method HEAD (content-length promises no body)
    cdef bint in_table                     # listed in the session's stream table (it has an id)
    cdef double blocked_since              # session time when it became blocked on a zero window (stall timer)
    cdef public object user                # the I/O layer's object for this stream (cleared once closed)

    @staticmethod
    cdef Stream new(uint32_t id, int64_t send_window, int64_t recv_window)
    cdef void free_blocks(self) noexcept
