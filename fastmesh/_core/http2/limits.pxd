# HTTP/2 abuse limits (each a listener/cluster setting with a safe default) and the per-connection counters
# that enforce them: concurrent streams, rapid reset, CONTINUATION flood, header list size, frame floods
# (a glitch budget), zero-window stall, outbound queue bound.

from libc.stdint cimport uint32_t, uint64_t

cdef class H2Limits:
    # The knobs, shared by every connection of one listener (or cluster); built once from config.
    cdef public uint32_t max_concurrent_streams   # peer-opened streams open at once (100; REFUSED_STREAM beyond)
    cdef public uint32_t initial_window           # our stream receive window (SETTINGS_INITIAL_WINDOW_SIZE, 65535... )
    cdef public uint32_t connection_window        # our connection receive window (16 MiB)
    cdef public uint32_t max_frame_size           # our SETTINGS_MAX_FRAME_SIZE (16384)
    cdef public uint32_t header_table_size        # our SETTINGS_HEADER_TABLE_SIZE (4096)
    cdef public uint32_t max_header_list_size     # decoded header list size (65536): 431 / RST_STREAM beyond
    cdef public uint32_t max_continuation_frames  # CONTINUATION frames in one header block (32)
    cdef public uint32_t max_header_block_bytes   # wire bytes of one header block (HEADERS + CONTINUATION)
    cdef public uint32_t rapid_reset_window       # streams looked at for rapid reset (100)
    cdef public double rapid_reset_ratio          # GOAWAY when more than this share of them were reset early (0.5)
    cdef public uint32_t glitch_budget            # flood glitches tolerated per connection before GOAWAY
    cdef public double glitch_decay               # glitches forgiven per second (the budget refills)
    cdef public double stall_timeout              # a stream blocked on a zero send window this long gets on_stall
    cdef public double settings_timeout           # our SETTINGS must be ACKed within this (SETTINGS_TIMEOUT)
    cdef public double goaway_timeout             # graceful GOAWAY's first step waits this long for the PING ACK
    cdef public Py_ssize_t max_out_bytes          # stop reading the peer while this much output is unsent


ctypedef struct FloodState:
    # One connection's abuse counters (embedded in its Session).
    double glitches                # glitch score (decays by glitch_decay per second)
    double glitch_at               # session time of the last decay
    uint32_t early_resets          # streams of the current rapid-reset window reset by the peer before an answer
    uint32_t window_streams        # streams closed in the current rapid-reset window
    uint32_t cont_frames           # CONTINUATION frames of the header block being received
    uint64_t block_bytes           # wire bytes of the header block being received


cdef enum Glitch:
    # Weights of the things a well-behaved peer rarely does (each spends the glitch budget).
    GL_SETTINGS = 1                # a SETTINGS frame (beyond the first)
    GL_PING = 1                    # a PING we must answer
    GL_EMPTY_DATA = 1              # DATA with no payload and no END_STREAM
    GL_WINDOW_UPDATE = 1           # a WINDOW_UPDATE that opens a window that was not closed, or of 0 on a stream
    GL_PRIORITY = 1                # a PRIORITY frame
    GL_RST = 1                     # a RST_STREAM from the peer
    GL_UNKNOWN = 1                 # an extension frame, a frame on a closed stream we ignore


cdef void flood_init(FloodState *f) noexcept
# Spend `weight` of the glitch budget at time now. Returns True when the budget is spent (GOAWAY ENHANCE_YOUR_CALM).
cdef bint glitch(FloodState *f, H2Limits lim, double now, int weight) noexcept
# A peer-opened stream closed; early: the peer reset it before we answered. True: rapid reset (GOAWAY).
cdef bint stream_ended(FloodState *f, H2Limits lim, bint early) noexcept
