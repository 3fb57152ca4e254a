# Compiled Session subclasses for tests and benchmarks: Recorder turns events into Python tuples and offers
# def-level calls for every send; Answerer answers each request in C (the per-request cost of the engine).

from libc.stdint cimport uint32_t
from fastmesh._core.buffer cimport ob_pending
from fastmesh._core.request cimport Field
from fastmesh._core.http2.streams cimport Stream
from fastmesh._core.http2.limits cimport H2Limits
from fastmesh._core.http2.session cimport Session, ROLE_SERVER, ROLE_CLIENT


cdef class Recorder(Session):
    """A session whose events are appended to `events` as tuples; streams are named by id.

    Events: ("headers", id, [(name, value), ...], end_stream), ("data", id, bytes, end_stream),
    ("trailers", id, pairs), ("reset", id, code), ("rejected", id, status), ("window", id), ("stall", id),
    ("closed", id), ("goaway", last_id, code), ("settings",), ("ping_ack",).
    With auto_consume (the default), DATA is reported consumed as soon as it is recorded.
    """
    cdef public list events
    cdef public bint auto_consume
    cdef dict opened               # client: id -> Stream for streams opened through request()

    def __init__(self, bint client=False, H2Limits limits=None, bint auto_consume=True):
        self.events = []
        self.opened = {}
        self.auto_consume = auto_consume
        self.setup(ROLE_CLIENT if client else ROLE_SERVER, limits if limits is not None else H2Limits())

    # --- driving ---

    def feed(self, bytes data, now=None):
        """receive() at time now (default: the session's time): bytes consumed, or -2 (RECV_ERROR) after a
        connection error."""
        return self.receive(data, len(data), self.now if now is None else now)

    def take(self):
        """Everything queued in out, as bytes (as a flush would send it)."""
        cdef bytes b = self.out.data[self.out.off:self.out.len] if self.out.len > self.out.off else b""
        self.out.off = 0
        self.out.len = 0
        return b

    def pending(self):
        return ob_pending(&self.out)

    def flushed(self):
        """take() then drained(): what an I/O layer does after a complete send."""
        b = self.take()
        self.drained()
        return b

    def at(self, double now):
        return self.tick(now)

    def stream(self, uint32_t id):
        return self.find(id)

    cdef Stream need(self, uint32_t id):
        cdef Stream s = self.find(id)
        if s is None:
            s = self.opened.get(id)
        if s is None:
            raise KeyError(id)
        return s

    def respond(self, uint32_t id, int status, list fields=None, bint end=False):
        cdef Stream s = self.need(id)
        self.headers_begin()
        self.headers_status(status)
        for name, value in fields or ():
            self.headers_field(name, len(name), value, len(value), False)
        self.headers_end(s, end)

    def respond_fields(self, uint32_t id, int status, bytes base, list offsets, bint end=False):
        """send_headers() with fields given as (name_off, name_len, value_off, value_len) into base."""
        cdef Field fields[32]
        cdef int i
        for i, (no, nl, vo, vl) in enumerate(offsets[:32]):
            fields[i].name_off = no
            fields[i].name_len = nl
            fields[i].value_off = vo
            fields[i].value_len = vl
            fields[i].id = 0
        self.send_headers(self.need(id), status, base, fields, min(len(offsets), 32), end)

    def send(self, uint32_t id, bytes data, bint end=False):
        return self.send_data(self.need(id), data, len(data), end)

    def window_of(self, uint32_t id):
        return self.send_window_of(self.need(id))

    def trailers(self, uint32_t id, list fields):
        cdef Stream s = self.need(id)
        self.headers_begin()
        for name, value in fields:
            self.headers_field(name, len(name), value, len(value), False)
        self.headers_end(s, True)

    def rst(self, uint32_t id, uint32_t code):
        self.reset(self.need(id), code)

    def consume(self, uint32_t id, Py_ssize_t n):
        self.consumed(self.need(id), n)

    def go_away(self, uint32_t code=0, bint graceful=False):
        self.goaway(code, graceful)

    def send_ping(self):
        self.ping()

    def request(self, list fields, bint end=True):
        """Client: open a stream and send its head; returns the stream id, or None when none may open."""
        cdef Stream s = self.open_stream()
        if s is None:
            return None
        self.headers_begin()
        for name, value in fields:
            self.headers_field(name, len(name), value, len(value), False)
        self.headers_end(s, end)
        if s.id:
            self.opened[s.id] = s
        return s.id

    @property
    def is_paused(self):
        return self.paused()

    @property
    def is_finished(self):
        return self.finished()

    @property
    def connection_windows(self):
        """(send window, receive window) of the connection."""
        return (self.send_window, self.recv_window)

    # --- events ---

    cdef int on_headers(self, Stream s, bint end_stream) except -1:
        self.events.append(("headers", s.id, s.fields(), end_stream))
        return 0

    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        self.events.append(("data", s.id, data[:n], end_stream))
        if self.auto_consume and n:
            self.consumed(s, n)
        return 0

    cdef int on_trailers(self, Stream s) except -1:
        self.events.append(("trailers", s.id, s.trailer_fields()))
        return 0

    cdef int on_reset(self, Stream s, uint32_t code) except -1:
        self.events.append(("reset", s.id, code))
        return 0

    cdef int on_rejected(self, Stream s, int status) except -1:
        self.events.append(("rejected", s.id, status))
        return 0

    cdef int on_window(self, Stream s) except -1:
        self.events.append(("window", s.id))
        return 0

    cdef int on_stall(self, Stream s) except -1:
        self.events.append(("stall", s.id))
        return Session.on_stall(self, s)

    cdef int on_stream_closed(self, Stream s) except -1:
        self.events.append(("closed", s.id))
        self.opened.pop(s.id, None)
        return 0

    cdef int on_goaway(self, uint32_t last_id, uint32_t code) except -1:
        self.events.append(("goaway", last_id, code))
        return 0

    cdef int on_settings(self) except -1:
        self.events.append(("settings",))
        return 0

    cdef int on_ping_ack(self) except -1:
        self.events.append(("ping_ack",))
        return 0


cdef class Answerer(Session):
    """A server session that answers every complete request in C: 200, one field, a small body."""
    cdef bytes body
    cdef public unsigned long long answered_count

    def __init__(self, bytes body=b"ok", H2Limits limits=None):
        self.body = body
        self.setup(ROLE_SERVER, limits if limits is not None else H2Limits())

    def feed(self, bytes data):
        return self.receive(data, len(data), self.now)

    def feed_view(self, const unsigned char[:] data):
        return self.receive(<const char *>&data[0], data.shape[0], self.now)

    def discard_output(self):
        cdef Py_ssize_t n = self.out.len - self.out.off
        self.out.off = 0
        self.out.len = 0
        return n

    cdef int on_headers(self, Stream s, bint end_stream) except -1:
        if end_stream:
            self.headers_begin()
            self.headers_status(200)
            self.headers_field(b"content-type", 12, b"text/plain", 10, False)
            self.headers_end(s, False)
            self.send_data(s, self.body, len(self.body), True)
            self.answered_count += 1
        return 0

    cdef int on_data(self, Stream s, const char *data, Py_ssize_t n, bint end_stream) except -1:
        if n:
            self.consumed(s, n)
        if end_stream:
            return self.on_headers(s, True)
        return 0
