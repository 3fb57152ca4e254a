from typing import Any

PENDING: int
FAILED: int
TIMEOUT: int
PROTECTED: frozenset[str]

class FilterMessage:
    headers: list[tuple[str, str]]
    def header(self, name: str) -> str | None: ...
    def set_header(self, name: str, value: str) -> None: ...
    def remove_header(self, name: str) -> None: ...

class FilterRequest(FilterMessage):
    method: str
    authority: str
    path: str
    query: str
    peer: str
    trace_id: str
    identity: str
    listener: str
    route: int
    cluster: str
    cluster_index: int
    owner: Any
    responder: Any
    answer: Any
    def add_response_header(self, name: str, value: str) -> None: ...
    def route_to(self, cluster: str) -> None: ...
    def _resume(self, outcome: Any) -> None: ...

class FilterResponse(FilterMessage):
    status: int
    request: FilterRequest
    def add_header(self, name: str, value: str) -> None: ...

def bench_filter(raw_head: bytes, chain: Any, count: int) -> int: ...
def bench_respond(raw_request: bytes, raw_response: bytes, chain: Any, count: int) -> int: ...
