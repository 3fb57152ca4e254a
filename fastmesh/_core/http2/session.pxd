# The sans-IO HTTP/2 connection engine (RFC 9113), both roles: bytes in through receive(), frames out into
# `out`, events out through cdef methods a subclass overrides (C virtual calls). No sockets, no asyncio, no
# Python object per frame; one Stream object per stream.
#
# The I/O layer's contract:
#  - feed received bytes to receive() with the time they came (monotonic seconds: the reactor's clock, which
#    also drains the glitch budget between ticks); it consumes whole frames and returns the bytes used (the
#    tail of a partial frame stays with the caller, who passes it again with more bytes), or RECV_ERROR after a
#    connection error (GOAWAY is queued in `out`, every open stream got on_reset: flush `out`, then close).
#    It also returns early (fewer bytes) while `paused()`: `out` holds more than limits.max_out_bytes unsent;
#    flush, then call receive() again with the rest.
#  - flush `out` (ob_flush) once per event-loop pass, after the events of that pass: many frames, one send.
#  - call tick(now) about once a second (monotonic seconds): SETTINGS ACK timeout, graceful GOAWAY's second
#    step, zero-window stalls (on_stall).
#  - report body bytes it has passed on with consumed(stream, n): the peer gets WINDOW_UPDATE once half a
#    window has been consumed. Bytes still unconsumed when a stream closes are credited to the connection then.
#  - close the socket when finished() says so (after flushing out), and call release() once the connection is
#    gone: it drops the streams still open (and their `user` objects) without events.
# Event methods return 0, or -1 with a Python exception set (receive() then returns -1 and the connection
# should be dropped). Streams handed to events stay valid until on_stream_closed returns; after that the
# session drops them and clears Stream.user.

from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastmesh._core.buffer cimport OutBuf
from fastmesh._core.request cimport Field
from fastmesh._core.http2.hpack cimport HeaderBlock, Decoder, Encoder
from fastmesh._core.http2.streams cimport Stream
from fastmesh._core.http2.limits cimport H2Limits, FloodState
from fastmesh._core.http2.frames cimport FrameHeader

cdef enum Role:
    ROLE_SERVER = 0                # we accepted the connection: the peer opens odd streams
    ROLE_CLIENT = 1                # we connected: we send the preface and open odd streams

cdef enum ConnState:
    CS_PREFACE = 0                 # server: waiting for the client's magic; client: waiting for the server's SETTINGS
    CS_OPEN = 1                    # frames flow
    CS_DRAINING = 2                # our graceful GOAWAY's first step went out (2^31-1 + PING): waiting for the ACK
    CS_GOAWAY = 3                  # our final GOAWAY went out: no new streams, old ones finish
    CS_CLOSED = 4                  # a connection error: GOAWAY with its code queued, nothing more is read

cdef enum:
    RECV_ERROR = -2                # receive(): a connection error; GOAWAY queued, streams reset, close after flush
    HEAD_TOO_LARGE = 1             # headers_end(): the block is over the peer's SETTINGS_MAX_HEADER_LIST_SIZE

cdef class Session:
    cdef readonly int role                 # Role
    cdef readonly int state                # ConnState
    cdef OutBuf out                        # frames not yet sent: the I/O layer flushes it
    cdef H2Limits limits                   # abuse limits and our settings (shared by the listener's connections)
    cdef FloodState flood                  # this connection's abuse counters
    cdef Decoder decoder                   # HPACK for the peer's header blocks
    cdef Encoder encoder                   # HPACK for ours
    cdef double now                        # session time: the latest tick(now) or receive(..., now)
    # --- peer settings (what we must honour when sending) ---
    cdef readonly uint32_t peer_max_concurrent     # SETTINGS_MAX_CONCURRENT_STREAMS (2^32-1 when unset)
    cdef readonly uint32_t peer_initial_window     # SETTINGS_INITIAL_WINDOW_SIZE (65535)
    cdef readonly uint32_t peer_max_frame          # SETTINGS_MAX_FRAME_SIZE (16384)
    cdef readonly uint32_t peer_max_list           # SETTINGS_MAX_HEADER_LIST_SIZE (2^32-1 when unset)
    cdef readonly bint peer_settings_seen          # the peer's first SETTINGS arrived
    # --- our settings ---
    cdef uint32_t local_initial_window     # the stream window the peer may use (after our SETTINGS were ACKed)
    cdef bint settings_pending             # our SETTINGS went out, not yet ACKed
    cdef double settings_sent_at           # when (session time), for the ACK timeout
    # --- flow control ---
    cdef int64_t send_window               # connection window the peer lets us use
    cdef int64_t recv_window               # connection window we still give the peer
    cdef int64_t recv_unacked              # bytes consumed that we have not credited back yet (connection)
    # --- streams ---
    cdef void **table                      # open streams by id: open addressing, owned references (PyObject *)
    cdef uint32_t table_mask               # table size - 1 (a power of two)
    cdef readonly int num_streams          # streams in the table
    cdef readonly int peer_open            # peer-opened streams counted against our max_concurrent_streams
    cdef readonly int local_open           # streams we opened, counted against the peer's max
    cdef readonly uint32_t last_peer_id    # highest stream id the peer opened (the GOAWAY last-stream-id)
    cdef uint32_t next_local_id            # next stream id we open (client: 1, 3, ...)
    cdef int blocked_count                 # streams waiting for a window (on_window)
    # --- header block being received (HEADERS + CONTINUATION joined) ---
    cdef char *hb_data                     # the joined block fragments
    cdef Py_ssize_t hb_len                 # bytes in hb_data
    cdef Py_ssize_t hb_cap                 # allocated size of hb_data
    cdef uint32_t hb_stream                # the stream whose block is open (0: no CONTINUATION expected)
    cdef bint hb_end_stream                # that HEADERS carried END_STREAM
    cdef bint hb_bad_priority              # that HEADERS made the stream depend on itself
    cdef HeaderBlock scratch               # blocks decoded only to keep HPACK in sync (refused/closed streams)
    # --- our header block being built (headers_begin .. headers_end) ---
    cdef OutBuf hb_out                     # HPACK output of the block being built
    cdef bint hb_head_request              # the block being built carries :method HEAD
    cdef Py_ssize_t hb_list                # its header list size as RFC 9113 6.5.2 counts it (name + value + 32)
    # --- recently closed streams (frames that arrive late are told apart from frames on idle streams) ---
    cdef uint32_t closed_ids[16]           # ring of the last stream ids closed
    cdef unsigned char closed_reset[16]    # per entry: True when we reset it (late frames are then ignored)
    cdef int closed_pos                    # next ring slot
    # --- GOAWAY ---
    cdef readonly uint32_t goaway_sent_id  # last stream id in the GOAWAY we sent (2^31-1 in the first step)
    cdef readonly uint32_t goaway_code     # its code
    cdef readonly bint goaway_received     # the peer sent GOAWAY: open no new streams
    cdef readonly uint32_t peer_goaway_id  # the lowest last stream id of the peer's GOAWAYs
    cdef readonly uint32_t peer_goaway_code    # the error code of the peer's last GOAWAY
    cdef bint ping_pending                 # our PING awaits its ACK
    cdef bint drain_ping                   # that PING is the graceful GOAWAY's (its ACK sends the final GOAWAY)
    cdef unsigned long long ping_seq       # opaque data of our PINGs
    cdef double drain_started              # when the graceful GOAWAY's first step went out
    cdef readonly int conn_error           # the H2Error of the connection error that closed us, or -1
    # --- counters (read by metrics) ---
    cdef readonly unsigned long long streams_opened    # streams opened, either side
    cdef readonly unsigned long long streams_refused   # peer streams refused (REFUSED_STREAM: over the limit, GOAWAY)
    cdef readonly unsigned long long resets_sent       # RST_STREAM we sent
    cdef readonly unsigned long long resets_received   # RST_STREAM the peer sent

    # --- life ---
    cdef int setup(self, int role, H2Limits limits) except -1      # call once after construction; client: preface
    cdef void release(self) noexcept                               # free buffers and drop streams (no events)

    # --- input ---
    cdef Py_ssize_t receive(self, const char *data, Py_ssize_t n, double now) except -1
    cdef int tick(self, double now) except -1                      # 0, or RECV_ERROR (SETTINGS timeout)
    cdef int consumed(self, Stream s, Py_ssize_t n) except -1      # body bytes of s passed on (credit the peer)

    # --- output ---
    cdef Stream open_stream(self)          # client: a new idle stream (then send_headers), None when none may open
    cdef bint can_open(self) noexcept      # client: open_stream() would succeed
    # Build a header block: headers_begin, then :status / fields (pseudo-headers first), then headers_end sends
    # it as HEADERS (+ CONTINUATION) on s. Names are lowercased on the way; the caller drops connection-specific
    # fields. Returns 0 or -1 (exception). A block over the peer's SETTINGS_MAX_HEADER_LIST_SIZE is not sent:
    # headers_end returns HEAD_TOO_LARGE, leaving a stream we have not sent on yet (a request's) idle for the
    # caller to fail, and resetting one that already went out (INTERNAL_ERROR: its answer cannot be sent).
    cdef int headers_begin(self) except -1
    cdef int headers_status(self, int status) except -1
    cdef int headers_field(self, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen,
                           bint sensitive) except -1
    cdef int headers_end(self, Stream s, bint end_stream) except -1
    # Shorthands: a response head (status + fields as offsets into base), trailers (always END_STREAM).
    cdef int send_headers(self, Stream s, int status, const char *base, const Field *fields, int n,
                          bint end_stream) except -1
    cdef int send_trailers(self, Stream s, const char *base, const Field *fields, int n) except -1
    # DATA on s: returns how many bytes the windows let through (0..n; the rest is the caller's to keep, and
    # on_window(s) says when to try again). end_stream is sent only with the last byte (or alone when n == 0).
    cdef Py_ssize_t send_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1
    cdef Py_ssize_t send_window_of(self, Stream s) noexcept         # what send_data would let through now
    cdef int reset(self, Stream s, uint32_t code) except -1         # RST_STREAM; s closes (on_stream_closed)
    cdef int goaway(self, uint32_t code, bint graceful) except -1   # graceful: two-step (2^31-1 + PING first)
    cdef int ping(self) except -1                                   # a PING of ours (on_ping_ack when answered)
    cdef bint paused(self) noexcept        # out holds more than max_out_bytes: flush before receiving more
    # The I/O layer flushed out completely: streams held back by the outbound bound get on_window.
    cdef int drained(self) except -1
    cdef bint finished(self) noexcept      # nothing more will happen: flush out, then close the socket
    cdef Stream find(self, uint32_t id)    # an open stream by id, or None

    # --- internal (session.pyx) ---
    cdef int table_put(self, Stream s) except -1            # list s by its id (grows the table)
    cdef void slot_insert(self, void *p, uint32_t mask) noexcept
    cdef void table_remove(self, Stream s) noexcept         # unlist s, drop the table's reference
    cdef void **snapshot(self, int *count, bint blocked_only) noexcept   # owned refs to open (blocked) streams
    cdef void drop_snapshot(self, void **arr, int n) noexcept
    cdef bint is_idle(self, uint32_t id) noexcept           # no stream with this id was ever opened
    cdef int closed_how(self, uint32_t id) noexcept         # recently closed ring: 1 we reset it, 0 other, -1 absent
    cdef int close_stream(self, Stream s, int how) except -1
    cdef int stream_error(self, Stream s, uint32_t code) except -1     # RST_STREAM + on_reset + close
    cdef int rst_id(self, uint32_t id, uint32_t code) except -1        # RST_STREAM for a stream without object
    cdef int conn_fail(self, uint32_t code) except -1       # GOAWAY + every stream failed; returns RECV_ERROR
    cdef int spend(self, int weight) except -1              # one glitch; RECV_ERROR when the budget is spent
    cdef int pay(self, int kind, int weight) except -1      # a frame of Credit kind: its credit, else spend()
    cdef int owe_ack(self) except -1                        # an ACK about to be queued; RECV_ERROR: too many owed
    cdef int frame(self, FrameHeader *h, const unsigned char *payload) except -1   # dispatch by type
    cdef int rx_data(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int rx_headers(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef bint self_dependent(self, FrameHeader *h, const unsigned char *payload) noexcept
    cdef int hb_append(self, const unsigned char *p, Py_ssize_t n) except -1
    cdef int rx_continuation(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int sync_decode(self, const unsigned char *block, Py_ssize_t n) except -1
    cdef int head_block(self, uint32_t id, const unsigned char *block, Py_ssize_t n, bint end,
                        bint bad_priority) except -1        # a complete block: new stream, response or trailers
    cdef int late_frame(self, uint32_t id) except -1
    cdef int new_stream(self, uint32_t id, const unsigned char *block, Py_ssize_t n, bint end,
                        bint bad_priority) except -1
    cdef int reject(self, Stream s, int status) except -1   # answer a head ourselves (431)
    cdef int response_head(self, Stream s, const unsigned char *block, Py_ssize_t n, bint end) except -1
    cdef int trailers_block(self, Stream s, const unsigned char *block, Py_ssize_t n, bint end) except -1
    cdef int validate(self, Stream s, HeaderBlock *b, bint head, bint end) noexcept   # RFC 9113 8.2, 8.3
    cdef bint same_host(self, const char *base, const Field *a, const Field *b) noexcept
    cdef int rx_rst(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int rx_settings(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int shift_send_windows(self, int64_t delta) except -1
    cdef void shift_recv_windows(self, int64_t delta) noexcept   # our smaller initial window took effect
    cdef int64_t recv_initial(self) noexcept                # a new stream's receive window
    cdef int rx_ping(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int rx_goaway(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int rx_window_update(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int rx_priority(self, FrameHeader *h, const unsigned char *payload) except -1
    cdef int frame_stream_error(self, uint32_t id, uint32_t code) except -1
    cdef int credit_connection(self, Py_ssize_t n) except -1   # WINDOW_UPDATE on 0 once half the window is owed
    cdef int credit(self, Stream s, Py_ssize_t n) except -1    # the same for s (and the connection)
    cdef int send_fields(self, const char *base, const Field *fields, int n) except -1
    cdef int wake(self, Stream s) except -1                 # unblock s: on_window
    cdef int wake_blocked(self) except -1
    cdef int final_goaway(self, uint32_t code) except -1

    # --- events (override; the defaults do nothing, but on_stall's resets the stream with CANCEL) ---
    cdef int on_headers(self, Stream s, bint end_stream) except -1  # a head decoded into s.head (validated)
    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1
    cdef int on_trailers(self, Stream s) except -1                  # trailers in s.trailers; the peer's side ended
    # The stream failed: the peer's RST_STREAM, our stream error, the peer's GOAWAY (REFUSED_STREAM for streams we
    # opened above its last id) or a connection error.
    cdef int on_reset(self, Stream s, uint32_t code) except -1
    cdef int on_rejected(self, Stream s, int status) except -1      # server: we answered a bad head ourselves (431)
    cdef int on_window(self, Stream s) except -1                    # s was blocked and may send again
    cdef int on_stall(self, Stream s) except -1                     # s was blocked on a zero window for stall_timeout
    cdef int on_stream_closed(self, Stream s) except -1             # s is done both ways; it is dropped next
    cdef int on_goaway(self, uint32_t last_id, uint32_t code) except -1   # the peer's GOAWAY: open no new streams
    cdef int on_settings(self) except -1                            # the peer's SETTINGS were applied
    cdef int on_ping_ack(self) except -1                            # the ACK of our ping() arrived
