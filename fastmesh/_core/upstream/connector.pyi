"""Type stub for fastmesh._core.upstream.connector: the upstream connector every protocol shares."""
from typing import Any

class Connector:
    cluster: Any
    policy: Any
    active: int
    def __init__(self, reactor: Any, cluster: Any) -> None: ...
