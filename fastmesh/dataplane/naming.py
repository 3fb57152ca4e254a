"""Compile the config's naming table into the core's per-request resolver (one tree per service a route names).

Every reload (a discovery hand-off of a watched table is one) compiles a new Names for the new config, and the
routers built with it use it from their first request; a keep-alive connection's next request uses the new
routers. A `fastmesh-naming` override is compiled here too (the core calls `compile_override` once per new value
and caches the table): the table's rules, then the override's, so the override's rules win.
"""
from __future__ import annotations

from typing import Any

from fastmesh._core.naming import OVERRIDE_HEADER, NameTable, Names
from fastmesh.config import naming as lang
from fastmesh.config.schema import Config

__all__ = ["OVERRIDE_HEADER", "build_names", "compile_table", "explain_service", "services_of"]

MAX_OVERRIDE_BYTES = 4096      # a longer fastmesh-naming value is refused (the table is used)
FAILED = -3                    # a traced node's result when it failed at a `!` (_core/naming.pxd's WALK_FAIL)


def services_of(config: Config) -> list[str]:
    """The services routes (and http listeners, for what no route matches) name, each once, in the order they
    first appear (a router's service index)."""
    out: dict[str, None] = {}
    for lst in config.listeners:
        for service in [*(route.service for route in lst.routes), lst.service]:
            if service is not None:
                out.setdefault(service, None)
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
        extra = lang.parse_table(value.decode("ascii"), lang.OVERRIDE_WHERE)
    except (UnicodeDecodeError, lang.NamingError):
        return None
    return compile_table([*rules, *extra], services, clusters, ("override", value.decode("ascii")))


def explain_service(config: Config, service: str, alive: dict[str, bool], override: str | None = None
                    ) -> dict[str, Any]:
    """How `service` resolves with `config`'s table (plus an override's rules, when given) while the clusters
    `alive` marks have an endpoint up: each step (rule applied, fallback taken, split weights), the cluster the
    core picks, and the share of requests each cluster gets (the core's own walk and draws, 10,000 of them)."""
    clusters = list(config.clusters)
    rules = lang.parse_table(config.naming.rules, "naming.rules")
    if override is not None:
        rules += lang.parse_table(override, lang.OVERRIDE_WHERE)
    tree = lang.resolve(rules, lang.service_name(service), clusters, config.cluster_templates)
    table = NameTable([lang.flatten(tree)], [service])
    live = [bool(alive.get(name)) for name in clusters]
    got, trace = table.trace(0, live)
    nodes = lang.walk(tree)
    steps: list[str] = []
    _steps(tree, nodes, trace, clusters, alive, 0, steps)
    chosen = clusters[got] if got >= 0 else None
    any_live = any(r >= 0 for r in trace)
    if trace and trace[0] == FAILED:
        steps.append("the name failed at a '!': no fallback, no cluster (503 no endpoints)")
    shares = {clusters[c]: round(s, 3) for c, s in table.shares(0, live).items() if c >= 0}
    if chosen is not None and not any_live:
        steps.append(f"nothing resolves to a cluster with an endpoint up: the first cluster the name prefers, "
                     f"{chosen}, takes the request (its own fail-open and errors apply)")
    return {"service": service, "name": lang.service_name(service), "override": override, "steps": steps,
            "cluster": chosen, "shares": shares, "fallback": not any_live and chosen is not None,
            "failed": bool(trace) and trace[0] == FAILED,
            "clusters": [clusters[i] for i in lang.clusters_named(tree)]}


def _steps(node: lang.Node, nodes: list[lang.Node], trace: list[int], clusters: list[str], alive: dict[str, bool],
           depth: int, out: list[str]) -> None:
    result = trace[_index(nodes, node)]
    pad = "  " * depth
    said = ("not reached" if result == -2 else "failed (!)" if result == FAILED else "nothing" if result < 0
            else f"cluster {clusters[result]}")
    if node.kind == "cluster":
        name = clusters[node.cluster]
        out.append(f"{pad}{node.label}: cluster {name} " + ("has an endpoint up" if alive.get(name) else
                                                            "has no endpoint up: skipped"))
        return
    if node.kind == "neg":
        out.append(f"{pad}{node.label}: nothing")
        return
    if node.kind == "fail":
        out.append(f"{pad}{node.label}")
        return
    if node.kind == "split":
        kids = [trace[_index(nodes, kid)] for kid in node.children]
        total = sum(w for w, r in zip(node.weights, kids) if r >= 0)
        parts = [f"{lang.path_text_of(kid)} {round(100 * w / total) if r >= 0 and total else 0}%"
                 for kid, w, r in zip(node.children, node.weights, kids)]
        out.append(f"{pad}split {node.label}: live shares {', '.join(parts)} -> {said}")
    elif node.label.startswith("rule "):
        out.append(f"{pad}{node.label} -> {said}")
    elif not node.label.startswith("/"):
        out.append(f"{pad}either {node.label}: the first that resolves -> {said}")
    else:
        out.append(f"{pad}look up {node.label}: {len(node.children)} matching rule(s), the last first -> {said}")
    for kid in node.children:
        if trace[_index(nodes, kid)] == -2:
            continue
        _steps(kid, nodes, trace, clusters, alive, depth + 1, out)
    if node.kind == "alt" and result >= 0:
        skipped = [kid for kid in node.children if trace[_index(nodes, kid)] == -1]
        if skipped:
            out.append(f"{pad}  fallback: {len(skipped)} earlier branch(es) resolved to nothing")


def _index(nodes: list[lang.Node], node: lang.Node) -> int:
    return next(i for i, n in enumerate(nodes) if n is node)
