"""Type stub for fastmesh._core.http1.conn: the HTTP/1 codec's downstream connections and their listener side
(HttpProxy in http1/proxy.pyi builds them)."""
from collections.abc import Callable
from typing import Any, final

from fastmesh._core.http1.pool import UpstreamUser
from fastmesh._core.reactor import Acceptor, Sweeper
from fastmesh._core.tls.context import TlsServer

AccessLog = Callable[[tuple[str, str, str, int, int, int, str, float, str, str, str, int, int, str, str, str]], Any]

class Handoff(Sweeper): ...

class Front(Acceptor):
    h2: Handoff | None
    tls: TlsServer | None
    @property
    def name(self) -> str: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def body_timeout(self) -> float: ...
    @property
    def access_log(self) -> AccessLog | None: ...
    chains: list[Any] | None          # per route index: its filter chain or None (dataplane/filters.py)
    filter_wait: float
    @property
    def active(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...

@final
class Downstream(UpstreamUser): ...
