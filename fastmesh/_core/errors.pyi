"""Type stub for fastmesh._core.errors: the proxy-error table (errors.pxd's ProxyError, by number)."""
from typing import TypedDict

class ErrorEntry(TypedDict):
    name: str
    status: int
    reason: str
    cause: str
    rst_code: int
    grpc_status: int

NAMES: tuple[str, ...]

def describe(err: int) -> ErrorEntry: ...
def table() -> list[ErrorEntry]: ...
def connect_error_of(err: int) -> int: ...
