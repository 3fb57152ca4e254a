# The sans-IO HTTP/2 connection engine (RFC 9113) for both roles: frames parsed in place from the caller's bytes,
# header blocks joined and decoded with HPACK, validated (8.2, 8.3), streams driven through streams.pyx's table,
# flow control both ways, abuse limits through limits.pyx; every protocol error answered with GOAWAY or
# RST_STREAM. See session.pxd for the I/O layer's contract.

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp
from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastmesh._core.buffer cimport ob_add, ob_free, ob_pending
from fastmesh._core.request cimport Field, lower_ascii, fold_eq
from fastmesh._core.http2.frames cimport (
    FrameHeader, read_header, read_u32, write_data, write_settings, write_settings_ack,
    write_ping, write_rst, write_goaway, write_window_update, write_headers, strip_padding,
    FRAME_HEADER_LEN, FT_DATA, FT_HEADERS, FT_PRIORITY, FT_RST_STREAM, FT_SETTINGS, FT_PUSH_PROMISE, FT_PING,
    FT_GOAWAY, FT_WINDOW_UPDATE, FT_CONTINUATION, FLAG_END_STREAM, FLAG_ACK, FLAG_END_HEADERS, FLAG_PADDED,
    FLAG_PRIORITY, H2_NO_ERROR, H2_PROTOCOL_ERROR, H2_FLOW_CONTROL_ERROR, H2_SETTINGS_TIMEOUT,
    H2_STREAM_CLOSED, H2_FRAME_SIZE_ERROR, H2_REFUSED_STREAM, H2_CANCEL, H2_COMPRESSION_ERROR, H2_INTERNAL_ERROR,
    H2_ENHANCE_YOUR_CALM, SET_HEADER_TABLE_SIZE, SET_ENABLE_PUSH, SET_MAX_CONCURRENT_STREAMS,
    SET_INITIAL_WINDOW_SIZE, SET_MAX_FRAME_SIZE, SET_MAX_HEADER_LIST_SIZE, SET_ENABLE_CONNECT_PROTOCOL,
    DEFAULT_WINDOW, DEFAULT_MAX_FRAME, MAX_MAX_FRAME, MAX_WINDOW, PREFACE_LEN,
)
from fastmesh._core.http2.hpack cimport (
    HeaderBlock, Decoder, Encoder, block_init, block_clear, block_free, is_sensitive,
    HPACK_LIST_TOO_LARGE,
)
from fastmesh._core.http2.streams cimport (
    Stream, transition, can_receive, can_send, ST_IDLE, ST_CLOSED, EV_SEND_HEADERS, EV_RECV_HEADERS, EV_SEND_END,
    EV_RECV_END, EV_RECV_RST,
)
from fastmesh._core.http2.fields cimport connection_specific, connection_specific_any_case
from fastmesh._core.http2.limits cimport (
    H2Limits, flood_init, glitch, charge, ack_queued, earn, earn_stream, earn_data, stream_ended, CR_PING,
    CR_WINDOW, CR_PRIORITY, CR_LATE, GL_SETTINGS, GL_PING, GL_EMPTY_DATA, GL_WINDOW_UPDATE, GL_PRIORITY, GL_RST,
    GL_UNKNOWN,
)

cdef const char *PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef enum:
    NO_GOAWAY = 0x7fffffff         # the last stream id of a graceful GOAWAY's first step (2^31-1)
    CLOSED_RING = 16               # entries of the recently-closed ring (session.pxd)
    BAD_HEAD = -3                  # validate(): malformed (stream error PROTOCOL_ERROR)
    CLOSE_NORMAL = 0               # close_stream(): both sides ended it (or GOAWAY refused it)
    CLOSE_PEER_RESET = 1           # the peer's RST_STREAM
    CLOSE_OUR_RESET = 2            # our RST_STREAM (late frames from the peer are then ignored)

# Field name bytes RFC 9113 8.2.1 lets through that are also HTTP tokens (RFC 9110 5.6.2) in lowercase: a name
# an HTTP/1 hop could not carry is refused here, not at the downgrade.
cdef unsigned char NAME_OK[256]
# Value bytes RFC 9113 8.2.1 forbids anywhere in a value: NUL, LF, CR.
cdef unsigned char VALUE_BAD[256]


cdef void init_tables() noexcept:
    cdef int c
    cdef const char *extra = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        NAME_OK[c] = (48 <= c <= 57) or (97 <= c <= 122)
        VALUE_BAD[c] = c == 0 or c == 10 or c == 13
    c = 0
    while extra[c]:
        NAME_OK[<unsigned char>extra[c]] = 1
        c += 1


init_tables()


cdef inline bint name_is(const char *p, Py_ssize_t n, const char *lit, Py_ssize_t m) noexcept nogil:
    return n == m and memcmp(p, lit, m) == 0


cdef inline int64_t parse_length(const char *p, Py_ssize_t n) noexcept nogil:
    # A content-length value: 1..18 digits, nothing else; -1 when malformed.
    cdef int64_t v = 0
    cdef Py_ssize_t i
    if n < 1 or n > 18:
        return -1
    for i in range(n):
        if not 48 <= <unsigned char>p[i] <= 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef int no_memory() except -1:
    raise MemoryError()


cdef class Session:

    def __cinit__(self):
        self.state = CS_OPEN
        self.conn_error = -1
        self.peer_max_concurrent = 0xffffffff
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_max_list = 0xffffffff
        self.send_window = DEFAULT_WINDOW
        self.peer_goaway_id = NO_GOAWAY
        self.next_local_id = 1
        block_init(&self.scratch)
        flood_init(&self.flood)

    def __dealloc__(self):
        self.release()

    cdef int setup(self, int role, H2Limits limits) except -1:
        cdef uint32_t ids[6]
        cdef uint32_t values[6]
        cdef int n = 0
        self.role = role
        self.limits = limits
        self.decoder = Decoder()
        self.encoder = Encoder()
        self.decoder.max_list_size = limits.max_header_list_size
        self.table_mask = 15
        self.table = <void **>calloc(16, sizeof(void *))
        if self.table == NULL:
            return no_memory()
        self.local_initial_window = limits.initial_window
        self.recv_window = limits.connection_window
        if role == ROLE_CLIENT:
            if ob_add(&self.out, PREFACE, PREFACE_LEN) < 0:
                return no_memory()
            self.state = CS_OPEN
        else:
            self.state = CS_PREFACE
        # Our SETTINGS: what differs from the protocol's initial values, and push always off.
        if limits.header_table_size != 4096:
            ids[n] = SET_HEADER_TABLE_SIZE
            values[n] = limits.header_table_size
            n += 1
        ids[n] = SET_ENABLE_PUSH
        values[n] = 0
        n += 1
        ids[n] = SET_MAX_CONCURRENT_STREAMS
        values[n] = limits.max_concurrent_streams
        n += 1
        ids[n] = SET_INITIAL_WINDOW_SIZE
        values[n] = limits.initial_window
        n += 1
        if limits.max_frame_size != DEFAULT_MAX_FRAME:
            ids[n] = SET_MAX_FRAME_SIZE
            values[n] = limits.max_frame_size
            n += 1
        ids[n] = SET_MAX_HEADER_LIST_SIZE
        values[n] = limits.max_header_list_size
        n += 1
        if write_settings(&self.out, ids, values, n) < 0:
            return no_memory()
        if limits.connection_window > DEFAULT_WINDOW:
            if write_window_update(&self.out, 0, limits.connection_window - DEFAULT_WINDOW) < 0:
                return no_memory()
        self.settings_pending = True
        self.settings_sent_at = self.now
        return 0

    cdef void release(self) noexcept:
        cdef uint32_t i
        if self.table != NULL:
            for i in range(self.table_mask + 1):
                if self.table[i] != NULL:
                    (<Stream>self.table[i]).in_table = False
                    (<Stream>self.table[i]).user = None       # the I/O layer's object may point back at us
                    Py_XDECREF(<PyObject *>self.table[i])
            free(self.table)
            self.table = NULL
        self.num_streams = 0
        free(self.hb_data)
        self.hb_data = NULL
        self.hb_len = 0
        self.hb_cap = 0
        ob_free(&self.out)
        ob_free(&self.hb_out)
        block_free(&self.scratch)

    # ------------------------------------------------------------------ stream table

    cdef Stream find(self, uint32_t id):
        cdef uint32_t i = (id >> 1) & self.table_mask
        cdef void *p
        if self.table == NULL:
            return None
        while True:
            p = self.table[i]
            if p == NULL:
                return None
            if (<Stream>p).id == id:
                return <Stream>p
            i = (i + 1) & self.table_mask

    cdef int table_put(self, Stream s) except -1:
        cdef uint32_t i, size
        cdef void **old
        if (self.num_streams + 1) * 2 > <int>(self.table_mask + 1):
            size = (self.table_mask + 1) * 2
            old = self.table
            self.table = <void **>calloc(size, sizeof(void *))
            if self.table == NULL:
                self.table = old
                return no_memory()
            for i in range(self.table_mask + 1):
                if old[i] != NULL:
                    self.slot_insert(old[i], size - 1)
            free(old)
            self.table_mask = size - 1
        Py_INCREF(s)
        self.slot_insert(<void *>s, self.table_mask)
        s.in_table = True
        self.num_streams += 1
        return 0

    cdef void slot_insert(self, void *p, uint32_t mask) noexcept:
        cdef uint32_t i = ((<Stream>p).id >> 1) & mask
        while self.table[i] != NULL:
            i = (i + 1) & mask
        self.table[i] = p

    cdef void table_remove(self, Stream s) noexcept:
        # Linear probing with backward-shift deletion: no tombstones, lookups stay short.
        cdef uint32_t mask = self.table_mask
        cdef uint32_t i = (s.id >> 1) & mask
        cdef uint32_t j, k
        if not s.in_table:
            return
        while self.table[i] != <void *>s:
            i = (i + 1) & mask
        self.table[i] = NULL
        j = i
        while True:
            j = (j + 1) & mask
            if self.table[j] == NULL:
                break
            k = ((<Stream>self.table[j]).id >> 1) & mask
            if (j > i and (k <= i or k > j)) or (j < i and k <= i and k > j):
                self.table[i] = self.table[j]
                self.table[j] = NULL
                i = j
        s.in_table = False
        self.num_streams -= 1
        Py_XDECREF(<PyObject *>s)

    cdef void **snapshot(self, int *count, bint blocked_only) noexcept:
        # Owned references to the open streams (or the blocked ones), so events may close streams meanwhile.
        cdef void **arr
        cdef uint32_t i
        cdef int n = 0
        count[0] = 0
        if self.num_streams == 0:
            return NULL
        arr = <void **>malloc(self.num_streams * sizeof(void *))
        if arr == NULL:
            return NULL
        for i in range(self.table_mask + 1):
            if self.table[i] != NULL and (not blocked_only or (<Stream>self.table[i]).blocked):
                Py_INCREF(<object>self.table[i])
                arr[n] = self.table[i]
                n += 1
        count[0] = n
        return arr

    cdef void drop_snapshot(self, void **arr, int n) noexcept:
        cdef int i
        for i in range(n):
            Py_XDECREF(<PyObject *>arr[i])
        free(arr)

    cdef bint is_idle(self, uint32_t id) noexcept:
        # A stream id nobody opened yet: no push, so even ids are always idle.
        if id & 1 == 0:
            return True
        if self.role == ROLE_SERVER:
            return id > self.last_peer_id
        return id >= self.next_local_id

    cdef int closed_how(self, uint32_t id) noexcept:
        # 1: we reset it lately, 0: it closed lately otherwise, -1: not in the ring.
        cdef int i
        for i in range(CLOSED_RING):
            if self.closed_ids[i] == id:
                return self.closed_reset[i]
        return -1

    # ------------------------------------------------------------------ closing streams, errors

    cdef int close_stream(self, Stream s, int how) except -1:
        # s is done: out of the table, off the counts, the I/O layer told, rapid reset counted.
        cdef bint rapid = False
        cdef Py_ssize_t n
        if s.counted:
            s.counted = False
            if self.role == ROLE_SERVER:
                self.peer_open -= 1
                if self.state != CS_CLOSED:
                    rapid = stream_ended(&self.flood, self.limits, how == CLOSE_PEER_RESET and not s.answered)
            else:
                self.local_open -= 1
        if s.blocked:
            s.blocked = False
            self.blocked_count -= 1
        if s.unconsumed > 0:
            # Data the I/O layer will now drop: the connection window must not shrink for good.
            n = s.unconsumed
            s.unconsumed = 0
            if self.credit_connection(n) < 0:
                return -1
        s.state = ST_CLOSED
        if s.id != 0:
            earn(&self.flood, CR_LATE, 2)     # a RST_STREAM or WINDOW_UPDATE may still be on its way (5.1)
            self.closed_ids[self.closed_pos] = s.id
            self.closed_reset[self.closed_pos] = how == CLOSE_OUR_RESET
            self.closed_pos = (self.closed_pos + 1) % CLOSED_RING
        self.table_remove(s)
        if s.announced:
            try:
                self.on_stream_closed(s)
            finally:
                s.user = None
        if rapid:
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        return 0

    cdef int stream_error(self, Stream s, uint32_t code) except -1:
        # A stream error of ours (RFC 9113 5.4.2): RST_STREAM, the I/O layer told, the stream closed.
        if write_rst(&self.out, s.id, code) < 0:
            return no_memory()
        self.resets_sent += 1
        if s.announced:
            self.on_reset(s, code)
        return self.close_stream(s, CLOSE_OUR_RESET)

    cdef int rst_id(self, uint32_t id, uint32_t code) except -1:
        # A stream error on a stream that has no object (refused, or closed already).
        if write_rst(&self.out, id, code) < 0:
            return no_memory()
        self.resets_sent += 1
        return 0

    cdef int conn_fail(self, uint32_t code) except -1:
        # A connection error (RFC 9113 5.4.1): GOAWAY with the code, every open stream failed, nothing more read.
        cdef void **arr
        cdef int n, i
        cdef Stream s
        if self.state == CS_CLOSED:
            return RECV_ERROR
        self.state = CS_CLOSED
        self.conn_error = code
        self.hb_stream = 0
        if write_goaway(&self.out, self.last_peer_id, code, NULL, 0) < 0:
            return no_memory()
        self.goaway_sent_id = self.last_peer_id
        self.goaway_code = code
        arr = self.snapshot(&n, False)
        try:
            for i in range(n):
                s = <Stream>arr[i]
                if s.in_table:
                    if s.announced:
                        self.on_reset(s, code)
                    self.close_stream(s, CLOSE_OUR_RESET)
        finally:
            self.drop_snapshot(arr, n)
        return RECV_ERROR

    cdef int spend(self, int weight) except -1:
        # A glitch: RECV_ERROR (GOAWAY ENHANCE_YOUR_CALM) once the budget is spent.
        if glitch(&self.flood, self.limits, self.now, weight):
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        return 0

    cdef int pay(self, int kind, int weight) except -1:
        # A control frame of Credit `kind`: free while the work done pays for it, else a glitch.
        if charge(&self.flood, self.limits, self.now, kind, weight):
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        return 0

    cdef int owe_ack(self) except -1:
        # An ACK is about to be queued: RECV_ERROR when the peer has not read too many of them.
        if ack_queued(&self.flood, self.limits, ob_pending(&self.out) == 0):
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        return 0

    # ------------------------------------------------------------------ input

    cdef Py_ssize_t receive(self, const char *data, Py_ssize_t n, double now) except -1:
        cdef Py_ssize_t pos = 0
        cdef FrameHeader h
        cdef const unsigned char *p = <const unsigned char *>data
        cdef int r
        cdef Py_ssize_t m
        if now > self.now:
            self.now = now                 # the receive clock: the glitch budget refills by it
        if self.state == CS_CLOSED:
            return RECV_ERROR
        if self.state == CS_PREFACE:
            m = n if n < PREFACE_LEN else PREFACE_LEN
            if memcmp(data, PREFACE, m) != 0:
                # Not HTTP/2 (or a broken client): no GOAWAY is owed before the preface, but one is harmless.
                return self.conn_fail(H2_PROTOCOL_ERROR)
            if n < PREFACE_LEN:
                return 0
            pos = PREFACE_LEN
            self.state = CS_OPEN
        while n - pos >= FRAME_HEADER_LEN:
            if ob_pending(&self.out) > self.limits.max_out_bytes:
                break
            read_header(p + pos, &h)
            if h.length > self.limits.max_frame_size:
                return self.conn_fail(H2_FRAME_SIZE_ERROR)
            if n - pos - FRAME_HEADER_LEN < h.length:
                break
            if not self.peer_settings_seen and (h.type != FT_SETTINGS or h.flags & FLAG_ACK):
                # The peer's preface ends with SETTINGS (RFC 9113 3.4).
                return self.conn_fail(H2_PROTOCOL_ERROR)
            if self.hb_stream != 0 and h.type != FT_CONTINUATION:
                return self.conn_fail(H2_PROTOCOL_ERROR)
            r = self.frame(&h, p + pos + FRAME_HEADER_LEN)
            if r < 0:
                return r
            pos += FRAME_HEADER_LEN + h.length
            if self.state == CS_CLOSED:
                return RECV_ERROR
        return pos

    cdef int frame(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef uint8_t t = h.type
        if t == FT_DATA:
            return self.rx_data(h, payload)
        if t == FT_HEADERS:
            return self.rx_headers(h, payload)
        if t == FT_CONTINUATION:
            return self.rx_continuation(h, payload)
        if t == FT_WINDOW_UPDATE:
            return self.rx_window_update(h, payload)
        if t == FT_RST_STREAM:
            return self.rx_rst(h, payload)
        if t == FT_SETTINGS:
            return self.rx_settings(h, payload)
        if t == FT_PING:
            return self.rx_ping(h, payload)
        if t == FT_GOAWAY:
            return self.rx_goaway(h, payload)
        if t == FT_PRIORITY:
            return self.rx_priority(h, payload)
        if t == FT_PUSH_PROMISE:
            # Clients never push; servers may not, as our SETTINGS_ENABLE_PUSH is 0 (RFC 9113 8.4).
            return self.conn_fail(H2_PROTOCOL_ERROR)
        # Extension frames are ignored (RFC 9113 5.5), within the glitch budget.
        return self.spend(GL_UNKNOWN)

    cdef int rx_data(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef const unsigned char *p = payload
        cdef Py_ssize_t n = h.length
        cdef Stream s
        cdef bint end = h.flags & FLAG_END_STREAM
        cdef int how, r
        if h.stream == 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if strip_padding(&p, &n, h.flags, False) < 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        # The whole frame, padding included, counts against the connection window (RFC 9113 6.9).
        if h.length > self.recv_window:
            return self.conn_fail(H2_FLOW_CONTROL_ERROR)
        self.recv_window -= h.length
        s = self.find(h.stream)
        if s is None:
            if self.is_idle(h.stream):
                return self.conn_fail(H2_PROTOCOL_ERROR)
            r = self.credit_connection(h.length)
            if r < 0:
                return r
            how = self.closed_how(h.stream)
            if how == 1:
                return self.pay(CR_LATE, GL_UNKNOWN)  # in flight when we reset it: ignore (RFC 9113 5.1 closed)
            return self.rst_id(h.stream, H2_STREAM_CLOSED)
        if not can_receive(s.state) or not s.head_done or s.informational:
            r = self.credit_connection(h.length)
            if r < 0:
                return r
            return self.stream_error(s, H2_STREAM_CLOSED if s.head_done else H2_PROTOCOL_ERROR)
        if h.length > s.recv_window:
            r = self.credit_connection(h.length)
            if r < 0:
                return r
            return self.stream_error(s, H2_FLOW_CONTROL_ERROR)
        s.recv_window -= h.length
        if n == 0 and not end:
            r = self.spend(GL_EMPTY_DATA)
            if r < 0:
                return r
        s.data_received += n
        if s.content_length >= 0 and (s.data_received > s.content_length or
                                      (end and s.data_received != s.content_length)):
            r = self.credit_connection(h.length)
            if r < 0:
                return r
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        if h.length > n:
            # Padding is ours to credit back at once: the I/O layer never sees it.
            r = self.credit(s, h.length - n)
            if r < 0:
                return r
        if end:
            s.state = transition(s.state, EV_RECV_END)
        s.unconsumed += n
        if n > 0 or end:
            r = self.on_data(s, <const char *>p, n, end)
            if r < 0:
                return r
        if s.state == ST_CLOSED and s.in_table:
            return self.close_stream(s, CLOSE_NORMAL)
        return 0

    cdef int rx_headers(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef const unsigned char *p = payload
        cdef Py_ssize_t n = h.length
        if h.stream == 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if strip_padding(&p, &n, h.flags, True) < 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        # A stream cannot depend on itself (RFC 9113 5.3.1): a stream error once the block is decoded.
        if h.flags & FLAG_END_HEADERS:
            return self.head_block(h.stream, p, n, h.flags & FLAG_END_STREAM,
                                   h.flags & FLAG_PRIORITY and self.self_dependent(h, payload))
        # The block continues: join the fragments (bounded by the CONTINUATION flood limits).
        self.flood.cont_frames = 0
        self.flood.block_bytes = n
        if n > self.limits.max_header_block_bytes:
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        if self.hb_append(p, n) < 0:
            return no_memory()
        self.hb_stream = h.stream
        self.hb_end_stream = h.flags & FLAG_END_STREAM
        self.hb_bad_priority = h.flags & FLAG_PRIORITY and self.self_dependent(h, payload)
        return 0

    cdef bint self_dependent(self, FrameHeader *h, const unsigned char *payload) noexcept:
        cdef const unsigned char *q = payload + (1 if h.flags & FLAG_PADDED else 0)
        return (read_u32(q) & 0x7fffffff) == h.stream

    cdef int hb_append(self, const unsigned char *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef char *d
        if self.hb_len + n > self.hb_cap:
            cap = self.hb_cap * 2 if self.hb_cap else 4096
            while cap < self.hb_len + n:
                cap *= 2
            d = <char *>realloc(self.hb_data, cap)
            if d == NULL:
                return no_memory()
            self.hb_data = d
            self.hb_cap = cap
        if n > 0:
            memcpy(self.hb_data + self.hb_len, p, n)
        self.hb_len += n
        return 0

    cdef int rx_continuation(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef uint32_t id = self.hb_stream
        cdef int r
        if id == 0 or h.stream != id:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        self.flood.cont_frames += 1
        self.flood.block_bytes += h.length
        if self.flood.cont_frames > self.limits.max_continuation_frames or \
                self.flood.block_bytes > self.limits.max_header_block_bytes:
            return self.conn_fail(H2_ENHANCE_YOUR_CALM)
        if self.hb_append(payload, h.length) < 0:
            return no_memory()
        if not h.flags & FLAG_END_HEADERS:
            return 0
        self.hb_stream = 0
        r = self.head_block(id, <const unsigned char *>self.hb_data, self.hb_len, self.hb_end_stream,
                            self.hb_bad_priority)
        self.hb_len = 0
        if self.hb_cap > 65536:
            # A big block once is no reason to keep its buffer for the life of the connection.
            free(self.hb_data)
            self.hb_data = NULL
            self.hb_cap = 0
        return r

    cdef int sync_decode(self, const unsigned char *block, Py_ssize_t n) except -1:
        # Decode a block nobody will use, so that the HPACK dynamic table stays in step with the peer's.
        cdef int r
        block_clear(&self.scratch)
        r = self.decoder.decode(block, n, &self.scratch)
        block_clear(&self.scratch)
        if r < 0 and r != HPACK_LIST_TOO_LARGE:
            return self.conn_fail(H2_COMPRESSION_ERROR)
        return 0

    cdef int head_block(self, uint32_t id, const unsigned char *block, Py_ssize_t n, bint end,
                        bint bad_priority) except -1:
        # One complete header block of stream id: a new stream's head, a response head, or trailers.
        cdef Stream s = self.find(id)
        cdef int r, how
        if s is None:
            if self.role == ROLE_CLIENT or id & 1 == 0:
                # Servers do not open streams (no push), and clients open odd ones only.
                if self.role == ROLE_CLIENT and not self.is_idle(id):
                    r = self.sync_decode(block, n)
                    if r < 0:
                        return r
                    return self.late_frame(id)
                return self.conn_fail(H2_PROTOCOL_ERROR)
            if id <= self.last_peer_id:
                r = self.sync_decode(block, n)
                if r < 0:
                    return r
                how = self.closed_how(id)
                if how < 0:
                    # Not a stream that closed lately: a new stream with a decreasing id (RFC 9113 5.1.1).
                    return self.conn_fail(H2_PROTOCOL_ERROR)
                return self.late_frame(id)
            return self.new_stream(id, block, n, end, bad_priority)
        if bad_priority:
            r = self.sync_decode(block, n)
            if r < 0:
                return r
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        if not can_receive(s.state):
            r = self.sync_decode(block, n)
            if r < 0:
                return r
            return self.stream_error(s, H2_STREAM_CLOSED)
        if self.role == ROLE_CLIENT and (not s.head_done or s.informational):
            return self.response_head(s, block, n, end)
        return self.trailers_block(s, block, n, end)

    cdef int late_frame(self, uint32_t id) except -1:
        # A frame for a stream closed lately: ignored when we reset it (the peer had not seen our RST_STREAM),
        # else a stream error STREAM_CLOSED (RFC 9113 5.1, closed).
        if self.closed_how(id) == 1:
            return self.pay(CR_LATE, GL_UNKNOWN)
        return self.conn_fail(H2_STREAM_CLOSED)

    cdef int new_stream(self, uint32_t id, const unsigned char *block, Py_ssize_t n, bint end,
                        bint bad_priority) except -1:
        cdef Stream s
        cdef int r
        self.last_peer_id = id
        if self.state >= CS_GOAWAY or self.peer_open >= <int>self.limits.max_concurrent_streams or bad_priority:
            r = self.sync_decode(block, n)
            if r < 0:
                return r
            if bad_priority:
                return self.rst_id(id, H2_PROTOCOL_ERROR)
            if self.state >= CS_GOAWAY:
                # Above the last id of our final GOAWAY: ignored, the client retries it elsewhere.
                return 0
            self.streams_refused += 1
            r = self.rst_id(id, H2_REFUSED_STREAM)
            if r < 0:
                return r
            return self.spend(GL_UNKNOWN)
        s = Stream.new(id, self.peer_initial_window, self.recv_initial())
        r = self.table_put(s)
        if r < 0:
            return r
        s.counted = True
        self.peer_open += 1
        self.streams_opened += 1
        earn_stream(&self.flood)
        s.state = transition(ST_IDLE, EV_RECV_HEADERS)
        r = self.decoder.decode(block, n, &s.head)
        if r == HPACK_LIST_TOO_LARGE:
            if end:
                s.state = transition(s.state, EV_RECV_END)
            return self.reject(s, 431)
        if r < 0:
            return self.conn_fail(H2_COMPRESSION_ERROR)
        if self.validate(s, &s.head, True, end) < 0:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        s.head_done = True
        s.announced = True
        if end:
            s.state = transition(s.state, EV_RECV_END)
        return self.on_headers(s, end)

    cdef int reject(self, Stream s, int status) except -1:
        # Answer a head we cannot take ourselves (431), END_STREAM; RST_STREAM NO_ERROR if the request goes on.
        cdef int r
        if self.encoder.begin(&self.hb_out) < 0 or self.encoder.status(&self.hb_out, status) < 0:
            return no_memory()
        if write_headers(&self.out, s.id, self.hb_out.data, self.hb_out.len, True, self.peer_max_frame) < 0:
            return no_memory()
        self.hb_out.len = 0
        s.answered = True
        s.announced = True
        s.state = transition(s.state, EV_SEND_HEADERS)
        s.state = transition(s.state, EV_SEND_END)
        r = self.on_rejected(s, status)
        if r < 0:
            return r
        if s.state != ST_CLOSED:
            if write_rst(&self.out, s.id, H2_NO_ERROR) < 0:
                return no_memory()
            return self.close_stream(s, CLOSE_OUR_RESET)
        return self.close_stream(s, CLOSE_NORMAL)

    cdef int response_head(self, Stream s, const unsigned char *block, Py_ssize_t n, bint end) except -1:
        cdef int r
        block_clear(&s.head)
        s.status = 0
        s.informational = False
        s.content_length = -1
        r = self.decoder.decode(block, n, &s.head)
        if r == HPACK_LIST_TOO_LARGE:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        if r < 0:
            return self.conn_fail(H2_COMPRESSION_ERROR)
        if self.validate(s, &s.head, True, end) < 0:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        s.informational = s.status < 200
        if s.informational and end:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        s.head_done = True
        s.answered = True
        if not s.informational and (s.head_request or s.status == 204 or s.status == 304):
            s.content_length = -1
        if end:
            if s.content_length > 0:
                return self.stream_error(s, H2_PROTOCOL_ERROR)
            s.state = transition(s.state, EV_RECV_END)
        r = self.on_headers(s, end)
        if r < 0:
            return r
        if s.state == ST_CLOSED and s.in_table:
            return self.close_stream(s, CLOSE_NORMAL)
        return 0

    cdef int trailers_block(self, Stream s, const unsigned char *block, Py_ssize_t n, bint end) except -1:
        cdef int r
        block_clear(&s.trailers)
        r = self.decoder.decode(block, n, &s.trailers)
        if r == HPACK_LIST_TOO_LARGE:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        if r < 0:
            return self.conn_fail(H2_COMPRESSION_ERROR)
        # Trailers end the stream and carry no pseudo-header fields (RFC 9113 8.1).
        if not end or self.validate(s, &s.trailers, False, True) < 0:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        if s.content_length >= 0 and s.data_received != s.content_length:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        s.state = transition(s.state, EV_RECV_END)
        r = self.on_trailers(s)
        if r < 0:
            return r
        if s.state == ST_CLOSED and s.in_table:
            return self.close_stream(s, CLOSE_NORMAL)
        return 0

    cdef int validate(self, Stream s, HeaderBlock *b, bint head, bint end) noexcept:
        # RFC 9113 8.2 and 8.3 on a decoded block: 0, or BAD_HEAD when the message is malformed. Heads also get
        # their pseudo-header indices and content-length noted on s.
        cdef const char *base = b.data
        cdef const Field *f
        cdef const char *name
        cdef const char *value
        cdef Py_ssize_t nl, vl, j
        cdef int i
        cdef bint regular = False
        cdef int64_t cl
        cdef int host = -1
        cdef bint request = self.role == ROLE_SERVER
        for i in range(b.n):
            f = &b.fields[i]
            name = base + f.name_off
            value = base + f.value_off
            nl = f.name_len
            vl = f.value_len
            if nl == 0:
                return BAD_HEAD
            # Values: no NUL, CR, LF anywhere; no whitespace at either end (8.2.1).
            if vl > 0:
                if value[0] == 32 or value[0] == 9 or value[vl - 1] == 32 or value[vl - 1] == 9:
                    return BAD_HEAD
                for j in range(vl):
                    if VALUE_BAD[<unsigned char>value[j]]:
                        return BAD_HEAD
            if name[0] == 58:          # ':'
                if regular or not head:
                    return BAD_HEAD
                for j in range(1, nl):
                    if not NAME_OK[<unsigned char>name[j]]:
                        return BAD_HEAD
                if request:
                    if name_is(name, nl, b":method", 7):
                        if s.i_method >= 0:
                            return BAD_HEAD
                        s.i_method = i
                    elif name_is(name, nl, b":scheme", 7):
                        if s.i_scheme >= 0:
                            return BAD_HEAD
                        s.i_scheme = i
                    elif name_is(name, nl, b":authority", 10):
                        if s.i_authority >= 0:
                            return BAD_HEAD
                        s.i_authority = i
                    elif name_is(name, nl, b":path", 5):
                        if s.i_path >= 0:
                            return BAD_HEAD
                        s.i_path = i
                    else:
                        # :protocol too: we do not offer SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 4).
                        return BAD_HEAD
                else:
                    if not name_is(name, nl, b":status", 7) or s.status > 0:
                        return BAD_HEAD
                    if vl != 3 or not (49 <= <unsigned char>value[0] <= 57 and 48 <= <unsigned char>value[1] <= 57
                                       and 48 <= <unsigned char>value[2] <= 57):
                        return BAD_HEAD
                    s.status = (value[0] - 48) * 100 + (value[1] - 48) * 10 + (value[2] - 48)
                    if s.status == 101:
                        return BAD_HEAD            # no Upgrade in HTTP/2 (8.6)
                continue
            if not regular:
                regular = True
                if head:
                    s.first_field = i
            for j in range(nl):
                if not NAME_OK[<unsigned char>name[j]]:
                    return BAD_HEAD        # uppercase, separators, controls, a colon inside
            if connection_specific(name, nl):
                return BAD_HEAD
            if nl == 2 and name[0] == 116 and name[1] == 101:        # te
                if not (vl == 8 and fold_eq(value, b"trailers", 8)):
                    return BAD_HEAD
            elif nl == 14 and memcmp(name, b"content-length", 14) == 0:
                if not head:
                    return BAD_HEAD
                cl = parse_length(value, vl)
                if cl < 0 or (s.content_length >= 0 and cl != s.content_length):
                    return BAD_HEAD
                s.content_length = cl
            elif nl == 4 and memcmp(name, b"host", 4) == 0 and request and head:
                host = i
        if not head:
            return 0
        if not regular:
            s.first_field = b.n
        if not request:
            return 0 if s.status > 0 else BAD_HEAD
        # Requests (8.3.1): :method always; CONNECT takes :authority only; others :scheme and a non-empty :path.
        if s.i_method < 0:
            return BAD_HEAD
        f = &b.fields[s.i_method]
        if f.value_len == 0:
            return BAD_HEAD
        if f.value_len == 7 and memcmp(base + f.value_off, b"CONNECT", 7) == 0:
            if s.i_scheme >= 0 or s.i_path >= 0 or s.i_authority < 0:
                return BAD_HEAD
        else:
            if s.i_scheme < 0 or s.i_path < 0 or b.fields[s.i_path].value_len == 0 or \
                    b.fields[s.i_scheme].value_len == 0:
                return BAD_HEAD
            value = base + b.fields[s.i_path].value_off
            if value[0] != 47 and not (b.fields[s.i_path].value_len == 1 and value[0] == 42 and
                                       f.value_len == 7 and memcmp(base + f.value_off, b"OPTIONS", 7) == 0):
                return BAD_HEAD
        if host >= 0 and s.i_authority >= 0:
            # A Host that names another authority than :authority is a request two hops could route apart.
            if not self.same_host(base, &b.fields[host], &b.fields[s.i_authority]):
                return BAD_HEAD
        if end and s.content_length > 0:
            return BAD_HEAD
        return 0

    cdef bint same_host(self, const char *base, const Field *a, const Field *b) noexcept:
        # Case-insensitive comparison both ways (fold_eq folds only its first argument).
        cdef Py_ssize_t i
        if a.value_len != b.value_len:
            return False
        for i in range(a.value_len):
            if lower_ascii(<unsigned char>base[a.value_off + i]) != lower_ascii(<unsigned char>base[b.value_off + i]):
                return False
        return True

    cdef int rx_rst(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef Stream s
        cdef uint32_t code
        cdef int r
        if h.stream == 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if h.length != 4:
            return self.conn_fail(H2_FRAME_SIZE_ERROR)
        if self.is_idle(h.stream):
            return self.conn_fail(H2_PROTOCOL_ERROR)
        s = self.find(h.stream)
        if s is None:
            return self.pay(CR_LATE, GL_RST)     # closed: RST_STREAMs may cross (RFC 9113 5.1)
        code = read_u32(payload)
        self.resets_received += 1
        s.state = transition(s.state, EV_RECV_RST)
        if s.announced:
            r = self.on_reset(s, code)
            if r < 0:
                return r
        return self.close_stream(s, CLOSE_PEER_RESET)

    cdef int rx_settings(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef Py_ssize_t i
        cdef uint32_t ident, v
        cdef int64_t delta
        cdef bint grew = False
        cdef int r
        if h.stream != 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if h.flags & FLAG_ACK:
            if h.length != 0:
                return self.conn_fail(H2_FRAME_SIZE_ERROR)
            if not self.settings_pending:
                return self.spend(GL_SETTINGS)
            self.settings_pending = False
            # Our smaller table only binds the peer's encoder once it has seen our SETTINGS.
            self.decoder.set_max_table_size(self.limits.header_table_size)
            if self.local_initial_window < DEFAULT_WINDOW:
                # Streams opened before the ACK were allowed 65535 (RFC 9113 6.9.3): now the smaller window binds.
                self.shift_recv_windows(<int64_t>self.local_initial_window - DEFAULT_WINDOW)
            return 0
        if h.length % 6 != 0:
            return self.conn_fail(H2_FRAME_SIZE_ERROR)
        if self.peer_settings_seen:
            r = self.spend(GL_SETTINGS)
            if r < 0:
                return r
        for i in range(0, h.length, 6):
            ident = (<uint32_t>payload[i] << 8) | payload[i + 1]
            v = read_u32(payload + i + 2)
            if ident == SET_HEADER_TABLE_SIZE:
                self.encoder.set_peer_max_table_size(v)
            elif ident == SET_ENABLE_PUSH:
                if v > 1 or (v == 1 and self.role == ROLE_CLIENT):
                    return self.conn_fail(H2_PROTOCOL_ERROR)
            elif ident == SET_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent = v
            elif ident == SET_INITIAL_WINDOW_SIZE:
                if v > MAX_WINDOW:
                    return self.conn_fail(H2_FLOW_CONTROL_ERROR)
                delta = <int64_t>v - <int64_t>self.peer_initial_window
                self.peer_initial_window = v
                if delta != 0:
                    r = self.shift_send_windows(delta)
                    if r < 0:
                        return r
                    grew = grew or delta > 0
            elif ident == SET_MAX_FRAME_SIZE:
                if v < DEFAULT_MAX_FRAME or v > MAX_MAX_FRAME:
                    return self.conn_fail(H2_PROTOCOL_ERROR)
                self.peer_max_frame = v
            elif ident == SET_MAX_HEADER_LIST_SIZE:
                self.peer_max_list = v
            elif ident == SET_ENABLE_CONNECT_PROTOCOL:
                if v > 1:
                    return self.conn_fail(H2_PROTOCOL_ERROR)
        r = self.owe_ack()
        if r < 0:
            return r
        if write_settings_ack(&self.out) < 0:
            return no_memory()
        self.peer_settings_seen = True
        r = self.on_settings()
        if r < 0:
            return r
        if grew:
            return self.wake_blocked()
        return 0

    cdef int shift_send_windows(self, int64_t delta) except -1:
        # SETTINGS_INITIAL_WINDOW_SIZE changed: every stream's send window moves by delta (RFC 9113 6.9.2).
        cdef uint32_t i
        cdef Stream s
        for i in range(self.table_mask + 1):
            if self.table[i] != NULL:
                s = <Stream>self.table[i]
                s.send_window += delta
                if s.send_window > MAX_WINDOW:
                    return self.conn_fail(H2_FLOW_CONTROL_ERROR)
        return 0

    cdef void shift_recv_windows(self, int64_t delta) noexcept:
        cdef uint32_t i
        for i in range(self.table_mask + 1):
            if self.table[i] != NULL:
                (<Stream>self.table[i]).recv_window += delta

    cdef int64_t recv_initial(self) noexcept:
        # A new stream's receive window: until our SETTINGS are ACKed the peer may still assume 65535 (6.9.3).
        if self.settings_pending and self.local_initial_window < DEFAULT_WINDOW:
            return DEFAULT_WINDOW
        return self.local_initial_window

    cdef int rx_ping(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef unsigned long long seq = 0
        cdef int i, r
        if h.stream != 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if h.length != 8:
            return self.conn_fail(H2_FRAME_SIZE_ERROR)
        if h.flags & FLAG_ACK:
            for i in range(8):
                seq = (seq << 8) | payload[i]
            if not self.ping_pending or seq != self.ping_seq:
                return self.spend(GL_PING)
            self.ping_pending = False
            if self.drain_ping:
                self.drain_ping = False
                if self.state == CS_DRAINING:
                    r = self.final_goaway(H2_NO_ERROR)
                    if r < 0:
                        return r
            return self.on_ping_ack()
        r = self.owe_ack()
        if r < 0:
            return r
        r = self.pay(CR_PING, GL_PING)
        if r < 0:
            return r
        if write_ping(&self.out, <const char *>payload, True) < 0:
            return no_memory()
        return 0

    cdef int rx_goaway(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef uint32_t last, code
        cdef void **arr
        cdef int n, i, r = 0
        cdef Stream s
        if h.stream != 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if h.length < 8:
            return self.conn_fail(H2_FRAME_SIZE_ERROR)
        last = read_u32(payload) & 0x7fffffff
        code = read_u32(payload + 4)
        if self.goaway_received and last > self.peer_goaway_id:
            last = self.peer_goaway_id     # a later GOAWAY may not raise the last id (RFC 9113 6.8)
        self.goaway_received = True
        self.peer_goaway_id = last
        self.peer_goaway_code = code
        # Streams we opened above the peer's last id were never processed: safe to retry elsewhere.
        arr = self.snapshot(&n, False)
        try:
            for i in range(n):
                s = <Stream>arr[i]
                if s.in_table and self.role == ROLE_CLIENT and s.id > last:
                    if s.announced:
                        r = self.on_reset(s, H2_REFUSED_STREAM)
                        if r < 0:
                            return r
                    r = self.close_stream(s, CLOSE_NORMAL)
                    if r < 0:
                        return r
        finally:
            self.drop_snapshot(arr, n)
        return self.on_goaway(last, code)

    cdef int rx_window_update(self, FrameHeader *h, const unsigned char *payload) except -1:
        cdef uint32_t inc
        cdef Stream s
        if h.length != 4:
            return self.conn_fail(H2_FRAME_SIZE_ERROR)
        inc = read_u32(payload) & 0x7fffffff
        if h.stream == 0:
            if inc == 0:
                return self.conn_fail(H2_PROTOCOL_ERROR)
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                return self.conn_fail(H2_FLOW_CONTROL_ERROR)
            if self.blocked_count > 0:
                return self.wake_blocked()
            return self.pay(CR_WINDOW, GL_WINDOW_UPDATE)
        if self.is_idle(h.stream):
            return self.conn_fail(H2_PROTOCOL_ERROR)
        s = self.find(h.stream)
        if s is None:
            return self.pay(CR_WINDOW, GL_WINDOW_UPDATE)     # closed lately: legal (5.1), paid like any other
        if inc == 0:
            return self.stream_error(s, H2_PROTOCOL_ERROR)
        s.send_window += inc
        if s.send_window > MAX_WINDOW:
            return self.stream_error(s, H2_FLOW_CONTROL_ERROR)
        if s.blocked:
            if s.send_window > 0 and self.send_window > 0:
                return self.wake(s)
            return 0
        return self.pay(CR_WINDOW, GL_WINDOW_UPDATE)

    cdef int rx_priority(self, FrameHeader *h, const unsigned char *payload) except -1:
        # Parsed for its errors and ignored (RFC 9113 5.3.2 deprecates the scheme).
        if h.stream == 0:
            return self.conn_fail(H2_PROTOCOL_ERROR)
        if h.length != 5:
            return self.frame_stream_error(h.stream, H2_FRAME_SIZE_ERROR)
        if (read_u32(payload) & 0x7fffffff) == h.stream:
            return self.frame_stream_error(h.stream, H2_PROTOCOL_ERROR)
        return self.pay(CR_PRIORITY, GL_PRIORITY)

    cdef int frame_stream_error(self, uint32_t id, uint32_t code) except -1:
        cdef Stream s = self.find(id)
        if s is not None:
            return self.stream_error(s, code)
        return self.rst_id(id, code)

    # ------------------------------------------------------------------ receive flow control

    cdef int credit_connection(self, Py_ssize_t n) except -1:
        # Bytes the I/O layer will never see (padding, DATA on dead streams) or has consumed: WINDOW_UPDATE on
        # the connection once half of its window is owed.
        self.recv_unacked += n
        if self.recv_unacked >= self.limits.connection_window // 2:
            if write_window_update(&self.out, 0, <uint32_t>self.recv_unacked) < 0:
                return no_memory()
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        return 0

    cdef int credit(self, Stream s, Py_ssize_t n) except -1:
        if self.credit_connection(n) < 0:
            return -1
        if not can_receive(s.state):
            return 0                       # the peer sends no more on it: no stream credit needed
        s.recv_unacked += n
        if s.recv_unacked >= self.local_initial_window // 2:
            if write_window_update(&self.out, s.id, <uint32_t>s.recv_unacked) < 0:
                return no_memory()
            s.recv_window += s.recv_unacked
            s.recv_unacked = 0
        return 0

    cdef int consumed(self, Stream s, Py_ssize_t n) except -1:
        if n <= 0 or self.state == CS_CLOSED or not s.in_table:
            return 0                       # a closed stream's unconsumed bytes were credited when it closed
        if n > s.unconsumed:
            n = s.unconsumed
        s.unconsumed -= n
        return self.credit(s, n)

    # ------------------------------------------------------------------ time

    cdef int tick(self, double now) except -1:
        cdef void **arr
        cdef int n, i, r = 0
        cdef Stream s
        self.now = now
        if self.state == CS_CLOSED:
            return 0
        if self.settings_sent_at == 0 and self.settings_pending:
            self.settings_sent_at = now    # setup() ran before the first tick: the ACK timer starts here
        if self.settings_pending and now - self.settings_sent_at > self.limits.settings_timeout:
            return self.conn_fail(H2_SETTINGS_TIMEOUT)
        if self.state == CS_DRAINING:
            if self.drain_started == 0:
                self.drain_started = now
            elif now - self.drain_started > self.limits.goaway_timeout:
                r = self.final_goaway(H2_NO_ERROR)
                if r < 0:
                    return r
        if self.blocked_count > 0:
            arr = self.snapshot(&n, True)
            try:
                for i in range(n):
                    s = <Stream>arr[i]
                    if not s.blocked or not s.in_table:
                        continue
                    if s.blocked_since == 0:
                        s.blocked_since = now
                    elif now - s.blocked_since >= self.limits.stall_timeout:
                        s.blocked_since = now
                        r = self.on_stall(s)
                        if r < 0:
                            return r
            finally:
                self.drop_snapshot(arr, n)
        return 0

    # ------------------------------------------------------------------ output

    cdef bint can_open(self) noexcept:
        return (self.role == ROLE_CLIENT and self.state == CS_OPEN and not self.goaway_received and
                <uint32_t>self.local_open < self.peer_max_concurrent and self.next_local_id < NO_GOAWAY)

    cdef Stream open_stream(self):
        cdef Stream s
        if not self.can_open():
            return None
        s = Stream.new(0, self.peer_initial_window, self.recv_initial())
        s.counted = True
        s.announced = True
        self.local_open += 1
        return s

    cdef int headers_begin(self) except -1:
        self.hb_out.len = 0
        self.hb_out.off = 0
        self.hb_head_request = False
        self.hb_list = 0
        if self.encoder.begin(&self.hb_out) < 0:
            return no_memory()
        return 0

    cdef int headers_status(self, int status) except -1:
        self.hb_list += 42                 # ":status", three digits, 32
        if self.encoder.status(&self.hb_out, status) < 0:
            return no_memory()
        return 0

    cdef int headers_field(self, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen,
                           bint sensitive) except -1:
        cdef char small[64]
        cdef char *low = small
        cdef Py_ssize_t i
        cdef bint upper = False
        cdef int r
        self.hb_list += nlen + vlen + 32
        for i in range(nlen):
            if <unsigned char>(name[i] - 65) < 26:
                upper = True
                break
        if upper:
            if nlen > 64:
                low = <char *>malloc(nlen)
                if low == NULL:
                    return no_memory()
            for i in range(nlen):
                low[i] = <char>lower_ascii(<unsigned char>name[i])
            name = low
        if nlen == 7 and vlen == 4 and memcmp(name, b":method", 7) == 0 and memcmp(value, b"HEAD", 4) == 0:
            self.hb_head_request = True
        r = self.encoder.field(&self.hb_out, name, nlen, value, vlen, sensitive or is_sensitive(name, nlen, vlen))
        if low != small:
            free(low)
        if r < 0:
            return no_memory()
        return 0

    cdef int headers_end(self, Stream s, bint end_stream) except -1:
        cdef int st
        cdef int r
        if s.state == ST_CLOSED or not (s.state == ST_IDLE or can_send(s.state)) or self.state == CS_CLOSED:
            self.hb_out.len = 0
            return 0                       # the stream went away meanwhile: nothing to send
        if s.id == 0 and (self.goaway_received or self.state >= CS_GOAWAY):
            # Opened before a GOAWAY, never sent: refused here, as the peer would.
            self.hb_out.len = 0
            r = self.on_reset(s, H2_REFUSED_STREAM)
            if r < 0:
                return r
            return self.close_stream(s, CLOSE_NORMAL)
        if self.hb_list > <Py_ssize_t>self.peer_max_list:
            # The peer said it would refuse it (RFC 9113 10.5.1): never sent. The encoder's table took this block's
            # fields: it is emptied, and the next block empties the peer's the same way.
            self.hb_out.len = 0
            self.encoder.forget()
            if s.id != 0:
                r = self.reset(s, H2_INTERNAL_ERROR)
                if r < 0:
                    return r
            return HEAD_TOO_LARGE
        if s.id == 0:
            # Client: the id is taken now, so ids go out in increasing order whatever the open order was.
            s.id = self.next_local_id
            self.next_local_id += 2
            r = self.table_put(s)
            if r < 0:
                return r
            self.streams_opened += 1
            earn_stream(&self.flood)
            s.head_request = self.hb_head_request
        st = transition(s.state, EV_SEND_HEADERS)
        if write_headers(&self.out, s.id, self.hb_out.data, self.hb_out.len, end_stream, self.peer_max_frame) < 0:
            return no_memory()
        self.hb_out.len = 0
        s.state = st
        if self.role == ROLE_SERVER:
            s.answered = True
        if end_stream:
            s.state = transition(s.state, EV_SEND_END)
            if s.state == ST_CLOSED:
                return self.close_stream(s, CLOSE_NORMAL)
        return 0

    cdef int send_fields(self, const char *base, const Field *fields, int n) except -1:
        cdef int i
        cdef const char *name
        for i in range(n):
            name = base + fields[i].name_off
            if connection_specific_any_case(name, fields[i].name_len):
                continue
            if fields[i].name_len == 2 and fold_eq(name, b"te", 2):
                if not (fields[i].value_len == 8 and fold_eq(base + fields[i].value_off, b"trailers", 8)):
                    continue
            if self.headers_field(name, fields[i].name_len, base + fields[i].value_off, fields[i].value_len,
                                  False) < 0:
                return -1
        return 0

    cdef int send_headers(self, Stream s, int status, const char *base, const Field *fields, int n,
                          bint end_stream) except -1:
        if self.headers_begin() < 0 or self.headers_status(status) < 0 or self.send_fields(base, fields, n) < 0:
            return -1
        return self.headers_end(s, end_stream)

    cdef int send_trailers(self, Stream s, const char *base, const Field *fields, int n) except -1:
        if self.headers_begin() < 0 or self.send_fields(base, fields, n) < 0:
            return -1
        return self.headers_end(s, True)

    cdef Py_ssize_t send_window_of(self, Stream s) noexcept:
        cdef int64_t w = self.send_window if self.send_window < s.send_window else s.send_window
        cdef int64_t room = self.limits.max_out_bytes - ob_pending(&self.out)
        if room < w:
            w = room
        return w if w > 0 else 0

    cdef Py_ssize_t send_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        cdef Py_ssize_t allow, chunk, left
        cdef Py_ssize_t frame = self.peer_max_frame
        cdef uint32_t frames = 0
        cdef bint last
        cdef int r
        if not can_send(s.state) or self.state == CS_CLOSED:
            return n                       # the stream (or connection) is gone: the bytes are dropped
        allow = self.send_window_of(s)
        if allow > n:
            allow = n
        left = allow
        while True:
            chunk = left if left <= frame else frame
            last = chunk == left and allow == n and end_stream
            if chunk > 0 or last:
                if write_data(&self.out, s.id, data, chunk, last) < 0:
                    return no_memory()
                frames += 1
            data += chunk
            left -= chunk
            if left == 0:
                break
        self.send_window -= allow
        s.send_window -= allow
        earn_data(&self.flood, frames)
        if allow < n:
            if not s.blocked:
                s.blocked = True
                s.blocked_since = self.now
                self.blocked_count += 1
            return allow
        if end_stream:
            s.state = transition(s.state, EV_SEND_END)
            if s.state == ST_CLOSED:
                r = self.close_stream(s, CLOSE_NORMAL)
                if r < 0:
                    return r
        return allow

    cdef int wake(self, Stream s) except -1:
        s.blocked = False
        self.blocked_count -= 1
        return self.on_window(s)

    cdef int wake_blocked(self) except -1:
        # Windows opened (or out drained): every blocked stream that could send now hears of it.
        cdef void **arr
        cdef int n, i, r = 0
        cdef Stream s
        if self.blocked_count == 0 or self.send_window <= 0 or self.paused():
            return 0
        arr = self.snapshot(&n, True)
        try:
            for i in range(n):
                s = <Stream>arr[i]
                if s.blocked and s.in_table and s.send_window > 0:
                    r = self.wake(s)
                    if r < 0:
                        return r
                    if self.send_window <= 0 or self.paused():
                        break
        finally:
            self.drop_snapshot(arr, n)
        return 0

    cdef int drained(self) except -1:
        self.flood.acks_owed = 0           # every ACK queued so far has left
        if self.state == CS_CLOSED:
            return 0
        return self.wake_blocked()

    cdef int reset(self, Stream s, uint32_t code) except -1:
        if s.state == ST_CLOSED:
            return 0
        if s.id != 0:
            if write_rst(&self.out, s.id, code) < 0:
                return no_memory()
            self.resets_sent += 1
        s.state = ST_CLOSED
        return self.close_stream(s, CLOSE_OUR_RESET)

    cdef int goaway(self, uint32_t code, bint graceful) except -1:
        if self.state == CS_CLOSED:
            return 0
        if code != H2_NO_ERROR:
            return self.conn_fail(code)
        if self.state == CS_GOAWAY:
            return 0
        if graceful and self.role == ROLE_SERVER and (self.state == CS_OPEN or self.state == CS_PREFACE):
            # First step: tell the client to stop opening streams without refusing those already in flight,
            # and time the round trip with a PING; its ACK (or goaway_timeout) sends the real last id.
            if write_goaway(&self.out, NO_GOAWAY, H2_NO_ERROR, NULL, 0) < 0:
                return no_memory()
            self.goaway_sent_id = NO_GOAWAY
            self.state = CS_DRAINING
            self.drain_started = self.now
            if self.ping() < 0:
                return -1
            self.drain_ping = True
            return 0
        if self.state == CS_DRAINING and graceful:
            return 0
        return self.final_goaway(H2_NO_ERROR)

    cdef int final_goaway(self, uint32_t code) except -1:
        if write_goaway(&self.out, self.last_peer_id, code, NULL, 0) < 0:
            return no_memory()
        self.goaway_sent_id = self.last_peer_id
        self.goaway_code = code
        self.state = CS_GOAWAY
        self.drain_ping = False
        return 0

    cdef int ping(self) except -1:
        cdef char opaque[8]
        cdef int i
        cdef unsigned long long v
        if self.state == CS_CLOSED:
            return 0
        self.ping_seq += 1
        v = self.ping_seq
        for i in range(7, -1, -1):
            opaque[i] = <char>(v & 0xff)
            v >>= 8
        if write_ping(&self.out, opaque, False) < 0:
            return no_memory()
        self.ping_pending = True
        self.drain_ping = False
        return 0

    cdef bint paused(self) noexcept:
        return ob_pending(&self.out) > self.limits.max_out_bytes

    cdef bint finished(self) noexcept:
        if self.state == CS_CLOSED:
            return True
        return (self.state == CS_GOAWAY or self.goaway_received) and self.num_streams == 0 and \
            (self.role == ROLE_SERVER or self.local_open == 0)

    # ------------------------------------------------------------------ events (defaults)

    cdef int on_headers(self, Stream s, bint end_stream) except -1:
        return 0

    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        return 0

    cdef int on_trailers(self, Stream s) except -1:
        return 0

    cdef int on_reset(self, Stream s, uint32_t code) except -1:
        return 0

    cdef int on_rejected(self, Stream s, int status) except -1:
        return 0

    cdef int on_window(self, Stream s) except -1:
        return 0

    cdef int on_stall(self, Stream s) except -1:
        if s.announced:
            self.on_reset(s, H2_CANCEL)
        return self.reset(s, H2_CANCEL)

    cdef int on_stream_closed(self, Stream s) except -1:
        return 0

    cdef int on_goaway(self, uint32_t last_id, uint32_t code) except -1:
        return 0

    cdef int on_settings(self) except -1:
        return 0

    cdef int on_ping_ack(self) except -1:
        return 0
