"""Compile the config's naming table into the core's per-request resolver (one tree per service a route names).

Every reload (a discovery hand-off of a watched table is one) compiles a new Names for the new config, and the
routers built with it use it from their first request; a keep-alive connection's next request uses the new
routers. A `fastmesh-naming` override is compiled here too (the core calls `compile_override` once per new value
and caches the table): the table's rules, then the override's, so the override's rules win.
"""
from __future__ import annotations

from fastmesh._core.naming import NameTable, Names
from fastmesh.config import naming as lang
from fastmesh.config.schema import Config

MAX_OVERRIDE_BYTES = 4096      # a longer fastmesh-naming value is refused (the table is used)


def services_of(config: Config) -> list[str]:
    """The services routes name, each once, in the order they first appear (a router's service index)."""
    out: dict[str, None] = {}
    for lst in config.listeners:
        for route in lst.routes:
            if route.service is not None:
                out.setdefault(route.service, None)
    return list(out)


def compile_table(rules: list[lang.Rule], services: list[str], clusters: list[str], source: object = None
                  ) -> NameTable:
    trees = [lang.flatten(lang.resolve(rules, lang.service_name(s), clusters)) for s in services]
    return NameTable(trees, services, source)


def build_names(config: Config) -> Names:
    """The process's naming for `config`: its table compiled for every service its routes name."""
    services = services_of(config)
    clusters = list(config.clusters)
    rules = lang.parse_table(config.naming.rules, "naming.rules")
    names = Names()
    names.set_table(compile_table(rules, services, clusters, tuple(config.naming.rules)),
                    lambda value: _override(rules, services, clusters, value))
    return names


def _override(rules: list[lang.Rule], services: list[str], clusters: list[str], value: bytes) -> NameTable | None:
    """The table with a fastmesh-naming value's rules added after the table's (so they win); None when it is not
    a valid table (the request then uses the table as it is)."""
    if len(value) > MAX_OVERRIDE_BYTES:
        return None
    try:
        extra = lang.parse_table(value.decode("ascii"), "fastmesh-naming")
    except (UnicodeDecodeError, lang.NamingError):
        return None
    return compile_table([*rules, *extra], services, clusters, ("override", value.decode("ascii")))
