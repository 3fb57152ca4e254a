# HTTP/2 abuse limits (each a listener/cluster setting with a safe default) and the per-connection counters
# that enforce them: concurrent streams, rapid reset, CONTINUATION flood, header list size, frame floods
# (credits earned by real work, then a glitch budget), ACKs owed, zero-window stall, outbound queue bound.

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


cdef enum Credit:
    # Control frames a well-behaved peer sends because of work done on the connection. Each kind is paid from
    # its own credit, which that work earns (capped at CREDIT_CAP), before it spends the glitch budget; so a
    # busy client can send one per request or per DATA frame at any rate, while a flood outruns what it paid.
    CR_PING = 0                    # PINGs: 1 per stream opened, 1 per DATA frame we sent (grpc's BDP probes)
    CR_WINDOW = 1                  # WINDOW_UPDATEs: 2 per stream opened, 2 per DATA frame we sent (stream + conn)
    CR_PRIORITY = 2                # PRIORITY frames: 2 per stream opened
    CR_LATE = 3                    # frames on closed streams (RFC 9113 5.1): 2 per stream closed

cdef enum:
    CR_KINDS = 4                   # number of Credit kinds
    CREDIT_CAP = 1024              # most credit of one kind held (work long past pays for nothing)


ctypedef struct FloodState:
    # One connection's abuse counters (embedded in its Session).
    double glitches                # glitch score (decays by glitch_decay per second)
    double glitch_at               # session time of the last decay
    uint32_t credit[CR_KINDS]      # per Credit kind: frames of that kind already paid for
    uint32_t acks_owed             # PING and SETTINGS ACKs queued since the output was last empty
    uint32_t early_resets          # streams of the current rapid-reset window reset by the peer before an answer
    uint32_t window_streams        # streams closed in the current rapid-reset window
    uint32_t cont_frames           # CONTINUATION frames of the header block being received
    uint64_t block_bytes           # wire bytes of the header block being received


cdef enum Glitch:
    # Weights of the things a well-behaved peer rarely does (each spends the glitch budget).
    GL_SETTINGS = 1                # a SETTINGS frame (beyond the first), a SETTINGS ACK we did not ask for
    GL_PING = 1                    # a PING beyond CR_PING, a PING ACK we did not ask for
    GL_EMPTY_DATA = 1              # DATA with no payload and no END_STREAM
    GL_WINDOW_UPDATE = 1           # a WINDOW_UPDATE beyond CR_WINDOW that unblocks nothing
    GL_PRIORITY = 1                # a PRIORITY frame beyond CR_PRIORITY
    GL_RST = 1                     # a RST_STREAM on a closed stream beyond CR_LATE
    GL_UNKNOWN = 1                 # an extension frame, a refused stream, a late frame beyond CR_LATE


cdef void flood_init(FloodState *f) noexcept
# Spend `weight` of the glitch budget at time now. Returns True when the budget is spent (GOAWAY ENHANCE_YOUR_CALM).
cdef bint glitch(FloodState *f, H2Limits lim, double now, int weight) noexcept
# A frame of Credit `kind`: free while its credit lasts, else glitch(). True: the budget is spent.
cdef bint charge(FloodState *f, H2Limits lim, double now, int kind, int weight) noexcept
# A PING or SETTINGS ACK was queued; out_empty: nothing was waiting to be sent before it. True when more ACKs are
# owed than glitch_budget (the peer sends them faster than it reads the answers: GOAWAY ENHANCE_YOUR_CALM).
cdef bint ack_queued(FloodState *f, H2Limits lim, bint out_empty) noexcept


cdef inline void earn(FloodState *f, int kind, uint32_t n) noexcept nogil:
    f.credit[kind] = f.credit[kind] + n if f.credit[kind] + n < CREDIT_CAP else CREDIT_CAP


cdef inline void earn_stream(FloodState *f) noexcept nogil:
    # A stream opened (either side): its PING, WINDOW_UPDATEs and PRIORITY frames are paid for.
    earn(f, CR_PING, 1)
    earn(f, CR_WINDOW, 2)
    earn(f, CR_PRIORITY, 2)


cdef inline void earn_data(FloodState *f, uint32_t frames) noexcept nogil:
    # DATA frames we sent: the peer may answer each with a PING (BDP probe) and WINDOW_UPDATEs.
    earn(f, CR_PING, frames)
    earn(f, CR_WINDOW, 2 * frames)


# A peer-opened stream closed; early: the peer reset it before we answered. True: rapid reset (GOAWAY).
cdef bint stream_ended(FloodState *f, H2Limits lim, bint early) noexcept
