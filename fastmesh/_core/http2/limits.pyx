# HTTP/2 abuse limits: the knobs (one H2Limits per listener or cluster) and the per-connection counters that
# turn floods into GOAWAY ENHANCE_YOUR_CALM. The session asks; nothing here touches frames.
#
# Control-frame floods (CVE-2019-9512/9515/9516/9518 and kin) are told from busy clients by what the frames are
# relative to the work on the connection, as Envoy's ratios and nghttp2's outbound ACK bound do, not by their
# rate: grpcio probes bandwidth with a PING per DATA frame it receives and credits windows with small
# WINDOW_UPDATEs (some on streams that have just closed, which RFC 9113 5.1 allows), so thousands a second are
# normal on a busy channel. Each stream opened and each DATA frame sent earns credit for the frames it may
# draw (limits.pxd, Credit); only frames beyond that credit spend the glitch budget, a leaky bucket drained by
# the receive clock. Answers owed pile up only when the peer does not read them: more than glitch_budget PING
# and SETTINGS ACKs queued since the output was last empty is a flood whatever was paid.

cimport cython


@cython.final
cdef class H2Limits:
    """The HTTP/2 settings and abuse limits of one listener or cluster (defaults are the safe ones)."""

    def __init__(self, *, max_concurrent_streams=100, initial_window=262144, connection_window=16777216,
                 max_frame_size=16384, header_table_size=4096, max_header_list_size=65536,
                 max_continuation_frames=32, max_header_block_bytes=0, rapid_reset_window=100,
                 rapid_reset_ratio=0.5, glitch_budget=1000, glitch_decay=100.0, stall_timeout=30.0,
                 settings_timeout=10.0, goaway_timeout=5.0, max_out_bytes=4194304):
        if not 1 <= initial_window <= 2147483647:
            raise ValueError("initial_window must be 1 .. 2^31-1")
        if not 65535 <= connection_window <= 2147483647:
            raise ValueError("connection_window must be 65535 .. 2^31-1")
        if not 16384 <= max_frame_size <= 16777215:
            raise ValueError("max_frame_size must be 16384 .. 2^24-1")
        if max_concurrent_streams < 1 or max_header_list_size < 1 or max_continuation_frames < 1:
            raise ValueError("max_concurrent_streams, max_header_list_size, max_continuation_frames must be >= 1")
        if rapid_reset_window < 1 or not 0.0 < rapid_reset_ratio <= 1.0:
            raise ValueError("rapid_reset_window must be >= 1 and rapid_reset_ratio in (0, 1]")
        if glitch_budget < 1 or glitch_decay < 0 or max_out_bytes < 65536:
            raise ValueError("glitch_budget >= 1, glitch_decay >= 0, max_out_bytes >= 65536")
        if stall_timeout <= 0 or settings_timeout <= 0 or goaway_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window = initial_window
        self.connection_window = connection_window
        self.max_frame_size = max_frame_size
        self.header_table_size = header_table_size
        self.max_header_list_size = max_header_list_size
        self.max_continuation_frames = max_continuation_frames
        # A compressed block is at most about as long as what it decodes to; twice the list size leaves room
        # for literal encodings without letting one block buffer without bound.
        self.max_header_block_bytes = max_header_block_bytes or 2 * max_header_list_size + 1024
        self.rapid_reset_window = rapid_reset_window
        self.rapid_reset_ratio = rapid_reset_ratio
        self.glitch_budget = glitch_budget
        self.glitch_decay = glitch_decay
        self.stall_timeout = stall_timeout
        self.settings_timeout = settings_timeout
        self.goaway_timeout = goaway_timeout
        self.max_out_bytes = max_out_bytes


cdef void flood_init(FloodState *f) noexcept:
    cdef int i
    f.glitches = 0
    f.glitch_at = 0
    for i in range(CR_KINDS):
        f.credit[i] = 0
    f.acks_owed = 0
    f.early_resets = 0
    f.window_streams = 0
    f.cont_frames = 0
    f.block_bytes = 0


cdef bint glitch(FloodState *f, H2Limits lim, double now, int weight) noexcept:
    # A leaky bucket: the score drains at glitch_decay per second of session time (the receive clock), so a
    # long-lived connection that pings now and then never runs out, while a burst of thousands does.
    if now > f.glitch_at:
        f.glitches -= (now - f.glitch_at) * lim.glitch_decay
        if f.glitches < 0:
            f.glitches = 0
        f.glitch_at = now
    f.glitches += weight
    return f.glitches > lim.glitch_budget


cdef bint charge(FloodState *f, H2Limits lim, double now, int kind, int weight) noexcept:
    if f.credit[kind] > 0:
        f.credit[kind] -= 1
        return False
    return glitch(f, lim, now, weight)


cdef bint ack_queued(FloodState *f, H2Limits lim, bint out_empty) noexcept:
    # nghttp2's outbound ACK bound: what a peer that reads its answers never reaches, whatever its rate.
    if out_empty:
        f.acks_owed = 0
    f.acks_owed += 1
    return f.acks_owed > lim.glitch_budget


cdef bint stream_ended(FloodState *f, H2Limits lim, bint early) noexcept:
    # Windows of rapid_reset_window streams: a window in which more than rapid_reset_ratio of the streams were
    # reset by the peer before we answered is CVE-2023-44487's pattern. The count is checked as it grows, so
    # the GOAWAY comes as soon as the share is certain to pass, not only at the window's end.
    f.window_streams += 1
    if early:
        f.early_resets += 1
        if f.early_resets > lim.rapid_reset_ratio * lim.rapid_reset_window:
            return True
    if f.window_streams >= lim.rapid_reset_window:
        f.window_streams = 0
        f.early_resets = 0
    return False
