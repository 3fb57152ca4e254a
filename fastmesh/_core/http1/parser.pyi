"""Type stub for fastmesh._core.http1.parser: the Python wrappers (tests, fuzzers, benchmarks) of the head parser."""
from typing import Any

METHOD_NAMES: tuple[str, ...]
TARGET_FORMS: tuple[str, ...]
FIELD_NAMES: tuple[str, ...]

class HttpParseError(ValueError):
    """Defined in fastmesh._core.codes and re-exported here."""

    code: int
    status: int
    reason: str
    detail: str
    def __init__(self, code: int, status: int, reason: str, detail: str) -> None: ...

def parse_request_bytes(
    data: bytes, *, max_start_line: int | None = None, max_header_bytes: int | None = None,
    max_headers: int | None = None,
) -> tuple[int, dict[str, Any] | None]: ...
def parse_response_bytes(
    data: bytes, *, max_start_line: int | None = None, max_header_bytes: int | None = None,
    max_headers: int | None = None,
) -> tuple[int, dict[str, Any] | None]: ...
def request_head_length(data: bytes) -> int: ...
def head_end_hint(data: bytes, start: int = 0) -> int: ...
def bench_parse_request(data: bytes, count: int) -> int: ...
def bench_parse_response(data: bytes, count: int) -> int: ...
def char_class_table() -> bytes: ...
