"""fastmesh: a service-mesh proxy and load balancer with a compiled data path.

Public API: `Proxy` (run the proxy inside your own asyncio program), `run()` (the blocking CLI entry),
`load_config()` / `loads_config()` (validate a config), `ConfigError`, `__version__`.
"""
from fastmesh._version import __version__

__all__ = ["Proxy", "ConfigError", "load_config", "loads_config", "run", "__version__"]


def __getattr__(name: str):  # lazy: `fastmesh --version` and config checks must not need the compiled core
    if name == "Proxy":
        from fastmesh.proxy import Proxy
        return Proxy
    if name in ("load_config", "loads_config"):
        from fastmesh.config import load
        return getattr(load, name)
    if name == "run":
        from fastmesh.process.supervisor import run
        return run
    if name == "ConfigError":
        from fastmesh.errors import ConfigError
        return ConfigError
    raise AttributeError(f"module 'fastmesh' has no attribute {name!r}")
