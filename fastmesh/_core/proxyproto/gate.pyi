"""Type stub for fastmesh._core.proxyproto.gate: a listener's PROXY protocol header reader."""

from fastmesh._core.reactor import ConnectionLimit, Reactor

class ProxyGate:
    name: str
    accept: int
    timeout: float
    waiting: int
    passed: int
    def __init__(self, reactor: Reactor, name: str, accept: int = ..., timeout: float = ...) -> None: ...
    def set_target(self, protocol: object, limit: ConnectionLimit) -> None: ...
    @property
    def refused(self) -> dict[str, int]: ...
    def close_waiting(self) -> None: ...
