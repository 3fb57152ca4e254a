"""Type stub for fastmesh._core.proxyproto.codec: the PROXY protocol header, read and written."""

V1: int
V2: int
REFUSALS: tuple[str, ...]

class ProxyHeaderError(ValueError):
    reason: str
    def __init__(self, reason: str) -> None: ...

def parse(data: bytes, accept: int = ...) -> tuple[int, int, tuple[str, int] | None, tuple[str, int] | None] | None: ...
def encode(version: int, src: tuple[str, int] | None = None, dst: tuple[str, int] | None = None) -> bytes: ...
