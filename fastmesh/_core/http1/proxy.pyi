"""Type stub for fastmesh._core.http1.proxy: the HttpProxy an http listener hands its connections to."""
from collections.abc import Sequence

from fastmesh._core.http1.conn import AccessLog, Front
from fastmesh._core.reactor import Reactor
from fastmesh._core.router import Router
from fastmesh._core.stats import StatsBlock
from fastmesh._core.tls.context import TlsServer
from fastmesh._core.upstream.connector import Connector

class HttpProxy(Front):
    def __init__(self, reactor: Reactor, name: str, router: Router, pools: Sequence[Connector], *,
                 header_timeout: float = 10.0, idle_timeout: float = 60.0, max_request_line: int = 8192,
                 max_header_bytes: int = 65536, max_headers: int = 100, forwarded_headers: bool = True,
                 request_id_header: str = "x-request-id", access_log: AccessLog | None = None,
                 trust_headers: bool = True, body_timeout: float = 60.0, tls: TlsServer | None = None,
                 identity_header: str = "fastmesh-client-identity") -> None: ...
    def attach_stats(self, block: StatsBlock, offset: int, requests: dict[int, int],
                     durations: dict[int, int]) -> None: ...
    def set_tracing(self, mode: str, sample_rate: float = 1.0) -> None: ...
    def reconfigure(self, router: Router, pools: Sequence[Connector], *, header_timeout: float, idle_timeout: float,
                    forwarded_headers: bool, request_id_header: str, access_log: AccessLog | None,
                    trust_headers: bool, body_timeout: float, tls: TlsServer | None = None,
                    identity_header: str = "fastmesh-client-identity") -> None: ...
    def drain(self) -> None: ...
    def close_all(self) -> None: ...
    @property
    def status_classes(self) -> dict[str, int]: ...
    @property
    def exchanges_held(self) -> int: ...
    @property
    def tunnel_count(self) -> int: ...
