"""Type stub for fastmesh._core.endpoints."""
from collections.abc import Callable
from typing import Any, TypeVar

_E = TypeVar("_E")

def parse_endpoints(items: list[Any], slow: Callable[[Any, int], _E], endpoint: type[_E], max_weight: int,
                    max_priority: int) -> tuple[list[_E], str | None]: ...
def make_endpoints(hosts: list[str], ports: list[int], weights: list[int], priorities: list[int],
                   endpoint: type[_E]) -> list[_E]: ...
def literal_rows(slots: list[Any], ranks: dict[int, int], v4: int, v6: int
                 ) -> list[tuple[int, str, int, int, int, int] | None]: ...
