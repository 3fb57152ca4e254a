"""Typed configuration for every section; all defaults live here and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BALANCERS = ("round_robin", "least_request", "random")
PROTOCOLS = ("tcp",)


@dataclass(frozen=True)
class Endpoint:
    """One backend address of a cluster."""
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Cluster:
    """A named set of endpoints and how to choose among them."""
    name: str
    endpoints: list[Endpoint]
    balancer: str = "round_robin"
    connect_timeout: float = 1.0       # seconds
    connect_attempts: int = 3          # endpoints tried per connection before giving up


@dataclass
class Listener:
    """A bound address whose traffic goes to one cluster."""
    name: str
    host: str
    port: int
    cluster: str
    protocol: str = "tcp"
    idle_timeout: float = 3600.0       # seconds without a byte either way before the relay is closed
    backlog: int = 1024
    splice: bool = True                # zero-copy splice(2) relay; False uses recv/send buffers

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Admin:
    """The admin server's address (served by later work; accepted now)."""
    host: str = "127.0.0.1"
    port: int = 9990


@dataclass
class Demo:
    """Demo backends that `fastmesh run` starts itself, so an example config works with nothing else running."""
    backends: list[Endpoint] = field(default_factory=list)


@dataclass
class Config:
    """The whole validated configuration."""
    listeners: list[Listener]
    clusters: dict[str, Cluster]
    workers: int | Literal["auto"] = 1
    drain_timeout: float = 10.0        # seconds open connections get to finish on shutdown
    admin: Admin = field(default_factory=Admin)
    demo: Demo | None = None
    source: str = "<config>"           # file name (or "<string>") the config came from, for messages

    def worker_count(self) -> int:
        import os
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
