"""Type stub for fastmesh._core.http2.limits: HTTP/2 settings and abuse limits of a listener or cluster."""
from typing import final


@final
class H2Limits:
    max_concurrent_streams: int
    initial_window: int
    connection_window: int
    max_frame_size: int
    header_table_size: int
    max_header_list_size: int
    max_continuation_frames: int
    max_header_block_bytes: int
    rapid_reset_window: int
    rapid_reset_ratio: float
    glitch_budget: int
    glitch_decay: float
    stall_timeout: float
    settings_timeout: float
    goaway_timeout: float
    max_out_bytes: int

    def __init__(self, *, max_concurrent_streams: int = 100, initial_window: int = 262144,
                 connection_window: int = 16777216, max_frame_size: int = 16384, header_table_size: int = 4096,
                 max_header_list_size: int = 65536, max_continuation_frames: int = 32,
                 max_header_block_bytes: int = 0, rapid_reset_window: int = 100, rapid_reset_ratio: float = 0.5,
                 glitch_budget: int = 1000, glitch_decay: float = 100.0, stall_timeout: float = 30.0,
                 settings_timeout: float = 10.0, goaway_timeout: float = 5.0, max_out_bytes: int = 4194304) -> None: ...
